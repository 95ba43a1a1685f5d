"""Scalar heads on the decoder: the preference (reward) model, and its saved form.

`RewardModel` runs the decoder (`Decoder(..., return_hidden=True)`, final-normed hidden states),
takes the hidden state of each row at an EXPLICIT index `last_B` (the row's last real token,
computed on the host from the tokenized length: never inferred from the token ids, since a
tokenizer's pad and EOS ids may coincide and a response may end with EOS) and maps it to a
scalar with `ScalarHead` (Dense embed -> 1 with bias, computed in float32).

Parameters: `{"decoder": <Decoder params, as in decoder.py>, "head": {"kernel": [D, 1], "bias":
[1]}}`; the head's kernel carries the logical axes ("embed", None), so the same
`cai_jax.parallel` rules shard it (embed over fsdp). Loading a decoder checkpoint into a reward
model = putting its params under "decoder" and initialising the head (`init_head`).

The head is initialised N(0, (scale / sqrt(embed_dim + 1))^2) (as in lm-human-preferences'
reward head), scale 0 giving zeros; the bias starts at 0. Under the Bradley-Terry loss only
reward DIFFERENCES matter, so the bias gets no gradient; it is kept for a value head and for
reward normalisation.

Saved preference model (`save_pm` / `load_pm`), a folder:
  pm.json            {"format": "cai_jax_pm", "format_version": 1, "settings": {...}} (written
                     last: a folder without it is an unfinished save)
  decoder/           the decoder as an HF folder (checkpoints.hf.save_hf_folder, tokenizer
                     included), loadable by transformers as a causal LM
  head.npz           kernel [D, 1], bias [1] (float32)
`settings` records how sequences were built in training (`append_eos`, `max_length`), so that
evaluation scores them the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.model import decoder
from cai_jax.model.config import DecoderConfig

PM_MARKER = "pm.json"
PM_FORMAT = "cai_jax_pm"
PM_FORMAT_VERSION = 1


def head_init_std(config: DecoderConfig, scale: float = 1.0) -> float:
  return float(scale) / float(np.sqrt(config.embed_dim + 1))


class ScalarHead(nn.Module):
  """h_BD -> r_B (float32): h @ kernel + bias."""
  param_dtype: str = "float32"
  init_std: float = 0.0

  @nn.compact
  def __call__(self, h_BD):
    D = h_BD.shape[-1]
    pdt = jnp.dtype(self.param_dtype)
    init = (nn.initializers.normal(stddev=self.init_std) if self.init_std > 0
            else nn.initializers.zeros_init())
    kernel = self.param("kernel", nn.with_logical_partitioning(init, ("embed", None)), (D, 1),
                        pdt)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
                      (1,), pdt)
    out = h_BD.astype(jnp.float32) @ kernel.astype(jnp.float32) + bias.astype(jnp.float32)
    return out[..., 0]


def gather_last(hidden_BLD: jax.Array, last_B: jax.Array) -> jax.Array:
  """hidden_BLD[b, last_B[b]] -> [B, D]."""
  idx = jnp.asarray(last_B, jnp.int32)[:, None, None]
  return jnp.take_along_axis(hidden_BLD, idx, axis=1)[:, 0]


class RewardModel(nn.Module):
  """(tokens_BL, valid_BL, last_B) -> rewards_B (float32). Rows are right-padded; `valid_BL`
  marks real tokens and `last_B` is each row's last real token (an explicit index)."""
  config: DecoderConfig
  head_init_std: float = 0.0

  def setup(self):
    self.decoder = decoder.Decoder(self.config)
    self.head = ScalarHead(self.config.param_dtype, self.head_init_std)

  def __call__(self, tokens_BL, valid_BL, last_B):
    positions, mask = decoder.sequence_inputs(valid_BL)
    hidden, _ = self.decoder(tokens_BL, positions, mask, return_hidden=True)
    return self.head(gather_last(hidden, last_B))


def _dummy_inputs(abstract: bool):
  if abstract:
    return (jax.ShapeDtypeStruct((1, 4), jnp.int32), jax.ShapeDtypeStruct((1, 4), jnp.bool_),
            jax.ShapeDtypeStruct((1,), jnp.int32))
  return jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool), jnp.full((1,), 3, jnp.int32)


def abstract_params(config: DecoderConfig):
  """Shapes/dtypes of the reward model's parameters with logical partitioning boxes."""
  return jax.eval_shape(
      lambda t, v, l: RewardModel(config).init(jax.random.PRNGKey(0), t, v, l)["params"],
      *_dummy_inputs(True))


def init_params(config: DecoderConfig, rng: jax.Array, head_scale: float = 1.0):
  """Randomly initialised (unboxed) reward-model parameters (decoder and head)."""
  variables = RewardModel(config, head_init_std(config, head_scale)).init(
      rng, *_dummy_inputs(False))
  return nn.unbox(variables["params"])


def init_head(config: DecoderConfig, rng: jax.Array, scale: float = 1.0) -> dict:
  """The head's parameters alone (host NumPy arrays in param_dtype): kernel [D, 1], bias [1]."""
  variables = ScalarHead(config.param_dtype, head_init_std(config, scale)).init(
      rng, jnp.zeros((1, config.embed_dim), jnp.float32))
  return jax.tree.map(np.asarray, nn.unbox(variables["params"]))


def reward_apply(config: DecoderConfig, params, tokens_BL, valid_BL, last_B) -> jax.Array:
  return RewardModel(config).apply({"params": params}, tokens_BL, valid_BL, last_B)


# ------------------------------------------------------------------------------------------
# The saved preference model.


@dataclasses.dataclass
class LoadedPM:
  config: DecoderConfig
  params: Any            # {"decoder": ..., "head": ...}
  tokenizer: Any
  settings: dict         # {"append_eos": bool, "max_length": int, ...}
  source: str


def is_pm_folder(path: str) -> bool:
  return os.path.isfile(os.path.join(path, PM_MARKER))


def save_pm(folder: str, config: DecoderConfig, params, tokenizer, settings: dict) -> None:
  """Writes the folder described in the module docstring, atomically (a sibling temporary
  folder renamed into place; an older `folder` is replaced)."""
  from cai_jax.checkpoints import hf

  folder = os.path.abspath(folder)
  tmp = folder + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  params = jax.tree.map(np.asarray, jax.device_get(params))
  hf.save_hf_folder(os.path.join(tmp, "decoder"), config.replace(remat=False), params["decoder"],
                    tokenizer)
  head = params["head"]
  np.savez(os.path.join(tmp, "head.npz"), kernel=np.asarray(head["kernel"], np.float32),
           bias=np.asarray(head["bias"], np.float32))
  with open(os.path.join(tmp, PM_MARKER), "w") as f:
    json.dump({"format": PM_FORMAT, "format_version": PM_FORMAT_VERSION,
               "embed_dim": config.embed_dim, "settings": dict(settings)}, f, indent=2)
  if os.path.isdir(folder):
    shutil.rmtree(folder)
  os.replace(tmp, folder)


def read_pm_meta(folder: str) -> dict:
  path = os.path.join(folder, PM_MARKER)
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read preference-model metadata ({e})") from e
  if meta.get("format") != PM_FORMAT or meta.get("format_version") != PM_FORMAT_VERSION:
    raise CheckpointError(f"{path}: not a {PM_FORMAT} v{PM_FORMAT_VERSION} folder (format "
                          f"{meta.get('format')!r}, version {meta.get('format_version')!r})")
  return meta


def load_pm(folder: str, *, param_dtype: str = "float32", dtype: str = "float32",
            shardings_for: Callable[[DecoderConfig], Any] | None = None,
            scan_layers: bool = False) -> LoadedPM:
  """A saved preference model. `shardings_for(config)` (a tree like {"decoder", "head"}) places
  each parameter in its shards and `scan_layers` picks the decoder's layout, as `loader.load`
  does for a decoder."""
  from cai_jax.checkpoints import loader

  folder = os.path.expanduser(folder)
  if not is_pm_folder(folder):
    raise CheckpointError(f"{folder}: not a preference-model folder (no {PM_MARKER}); "
                          "pm_train writes one to WORKDIR/pm_train/pm")
  meta = read_pm_meta(folder)
  shardings = {}

  def decoder_shardings(cfg):
    shardings.update(shardings_for(cfg))
    return shardings["decoder"]

  model = loader.load(os.path.join(folder, "decoder"), cache_dir=folder,
                      param_dtype=param_dtype, dtype=dtype,
                      shardings_for=decoder_shardings if shardings_for is not None else None,
                      scan_layers=scan_layers)
  head_path = os.path.join(folder, "head.npz")
  try:
    with np.load(head_path) as z:
      head = {"kernel": z["kernel"], "bias": z["bias"]}
  except (OSError, KeyError, ValueError) as e:
    raise CheckpointError(f"{head_path}: cannot read the head ({e})") from e
  D = model.config.embed_dim
  if head["kernel"].shape != (D, 1) or head["bias"].shape != (1,):
    raise CheckpointError(f"{head_path}: head shapes {head['kernel'].shape}, "
                          f"{head['bias'].shape} do not fit embed_dim={D} (expected ({D}, 1), (1,))")
  head = {k: v.astype(jnp.dtype(param_dtype)) for k, v in head.items()}
  if shardings_for is not None:
    from cai_jax import parallel
    head = parallel.shard_host_tree(head, shardings["head"])
  else:
    head = jax.tree.map(jnp.asarray, head)
  return LoadedPM(config=model.config, params={"decoder": model.params, "head": head},
                  tokenizer=model.tokenizer, settings=dict(meta.get("settings", {})),
                  source=folder)
