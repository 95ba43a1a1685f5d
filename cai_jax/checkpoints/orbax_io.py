"""cai_jax's own checkpoint folder: orbax parameters + model config + tokenizer.

Layout (`DIR/`):
  cai_jax_checkpoint.json   {"format_version": 1, "model_config": {...}}
  params/                   orbax StandardCheckpointer tree (our parameter names)
  tokenizer files            as the tokenizer writes them for an HF folder (`save_hf_files`)
Restoring takes an abstract target, so a caller can pass shardings and never gather the full
parameters on one device.
"""

from __future__ import annotations

import json
import os

import jax

from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.model import decoder, families, layer_scan
from cai_jax.model.config import DecoderConfig

MARKER = "cai_jax_checkpoint.json"
FORMAT_VERSION = 1


def is_orbax_folder(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MARKER))


def save(folder: str, config: DecoderConfig, params, tokenizer) -> None:
  import orbax.checkpoint as ocp

  folder = os.path.abspath(folder)
  os.makedirs(folder, exist_ok=True)
  # Folders hold the unrolled layer layout whatever the run used (the loader stacks on request).
  params = layer_scan.unstack(params, config.layer_types)
  config = config.replace(scan_layers=False)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(folder, "params"), params, force=True)
  checkpointer.wait_until_finished()
  tokenizer.save_hf_files(folder, model_max_length=config.max_seq_len,
                          tokenizer_class=families.get(config.family).sentencepiece_class)
  # The marker is written last: a folder without it is an unfinished save, never loaded.
  with open(os.path.join(folder, MARKER), "w") as f:
    json.dump({"format_version": FORMAT_VERSION, "model_config": config.to_dict()}, f, indent=2)


def read_config(folder: str) -> DecoderConfig:
  path = os.path.join(folder, MARKER)
  try:
    with open(path) as f:
      meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
      raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r}, "
                            f"this cai_jax reads {FORMAT_VERSION}")
    return families.config_from_dict(meta["model_config"])
  except CheckpointError:
    raise
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{path}: cannot read checkpoint metadata ({e})") from e


def load(folder: str, param_dtype: str | None = None, shardings=None):
  """(config, params) restored from `folder`; `shardings` (a tree like params) places them."""
  import orbax.checkpoint as ocp

  folder = os.path.abspath(folder)
  config = read_config(folder)
  if param_dtype:
    config = config.replace(param_dtype=param_dtype)
  abstract = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x,
                          decoder.abstract_params(config),
                          is_leaf=lambda x: hasattr(x, "names"))
  if shardings is None:
    shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                             abstract)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  try:
    params = ocp.StandardCheckpointer().restore(os.path.join(folder, "params"), target)
  except Exception as e:  # orbax raises several error types for missing or mismatched trees
    raise CheckpointError(f"{folder}: cannot restore parameters ({type(e).__name__}: {e})") from e
  return config, params
