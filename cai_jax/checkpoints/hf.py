"""Hugging Face folders (config.json + safetensors, sharded or not): import and export for every
model family.

The HF state dict (names like `model.layers.3.self_attn.q_proj.weight`, torch's [out, in] layout)
is also the common currency of the GGUF importer, so both formats share one parameter mapping.
Families differ only in which tensors exist (biases, q/k-norms, post-norms, a separate head) and
in their norms' HF names, which the family supplies.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from cai_jax.model import families, layer_scan
from cai_jax.model.config import DecoderConfig
from cai_jax.model.families.base import CheckpointError

# Prefixes of the text decoder's weights in the checkpoint kinds we read (causal LMs, and both
# generations of multimodal wrappers).
_TEXT_PREFIXES = ("model.", "model.language_model.", "language_model.model.")


# ----------------------------------------------------------------------------- config


def config_from_hf(d: Mapping[str, Any], where: str) -> DecoderConfig:
  """DecoderConfig from a config.json dict, by the family its `model_type` names."""
  return families.config_from_hf(d, where)


def config_to_hf(config: DecoderConfig, special_ids: Mapping[str, int] | None = None
                 ) -> dict[str, Any]:
  """config.json of the family's causal LM class, with the tokenizer's special ids (by default
  the family's usual ones)."""
  family = families.get(config.family)
  special = family.special_ids if special_ids is None else special_ids
  return {**family.config_to_hf(config), **special}


# ----------------------------------------------------------------------------- weights


def params_from_hf_state(config: DecoderConfig, state: Mapping[str, np.ndarray],
                         where: str) -> dict:
  """Our parameter tree (numpy, config.param_dtype) from an HF state dict ([out, in] layout)."""
  c = config
  dtype = jnp.dtype(c.param_dtype)

  def get(name, shape):
    if name not in state:
      raise CheckpointError(f"{where}: tensor {name!r} is missing")
    x = np.asarray(state[name])
    if x.shape != shape:
      raise CheckpointError(
          f"{where}: tensor {name!r} has shape {x.shape}, the config implies {shape}")
    # A copy: the state may be a memory map of the file, which a later export may overwrite.
    return np.array(x, dtype=dtype)

  D, F, N, K, H = c.embed_dim, c.mlp_dim, c.num_heads, c.num_kv_heads, c.head_dim
  embedder = {"embedding": get("model.embed_tokens.weight", (c.vocab_size, D))}
  if not c.tie_embeddings:
    embedder["lm_head"] = get("lm_head.weight", (c.vocab_size, D))
  params: dict[str, Any] = {"embedder": embedder,
                            "final_norm": {"scale": get("model.norm.weight", (D,))}}
  norm_names = _norm_names(c)
  for i in range(c.num_layers):
    p = f"model.layers.{i}."
    attn = {
        "q_proj": get(p + "self_attn.q_proj.weight", (N * H, D)).T.reshape(D, N, H),
        "k_proj": get(p + "self_attn.k_proj.weight", (K * H, D)).T.reshape(D, K, H),
        "v_proj": get(p + "self_attn.v_proj.weight", (K * H, D)).T.reshape(D, K, H),
        "o_proj": get(p + "self_attn.o_proj.weight", (D, N * H)).T.reshape(N, H, D),
    }
    if c.qkv_bias:
      attn["q_bias"] = get(p + "self_attn.q_proj.bias", (N * H,)).reshape(N, H)
      attn["k_bias"] = get(p + "self_attn.k_proj.bias", (K * H,)).reshape(K, H)
      attn["v_bias"] = get(p + "self_attn.v_proj.bias", (K * H,)).reshape(K, H)
    if c.qk_norm:
      attn["q_norm"] = {"scale": get(p + "self_attn.q_norm.weight", (H,))}
      attn["k_norm"] = {"scale": get(p + "self_attn.k_norm.weight", (H,))}
    layer = {
        "attn": attn,
        "mlp": {
            "gate": get(p + "mlp.gate_proj.weight", (F, D)).T,
            "up": get(p + "mlp.up_proj.weight", (F, D)).T,
            "down": get(p + "mlp.down_proj.weight", (D, F)).T,
        },
    }
    for ours, theirs in norm_names.items():
      layer[ours] = {"scale": get(p + theirs + ".weight", (D,))}
    params[f"layer_{i}"] = layer
  return params


def _norm_names(config: DecoderConfig) -> Mapping[str, str]:
  names = families.get(config.family).hf_norm_names
  if config.post_norms:
    return names
  return {k: v for k, v in names.items() if not k.startswith("post_")}


def hf_state_from_params(config: DecoderConfig, params) -> dict[str, np.ndarray]:
  """The inverse of `params_from_hf_state` (contiguous float arrays, HF names)."""
  c = config
  params = layer_scan.unstack(params, c.layer_types)  # files hold the unrolled layout
  D, N, K, H = c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim
  arr = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))  # noqa: E731
  state = {
      "model.embed_tokens.weight": arr(params["embedder"]["embedding"]),
      "model.norm.weight": arr(params["final_norm"]["scale"]),
  }
  if not c.tie_embeddings:
    state["lm_head.weight"] = arr(params["embedder"]["lm_head"])
  norm_names = _norm_names(c)
  for i in range(c.num_layers):
    layer, p = params[f"layer_{i}"], f"model.layers.{i}."
    attn, mlp = layer["attn"], layer["mlp"]
    state[p + "self_attn.q_proj.weight"] = arr(np.asarray(attn["q_proj"]).reshape(D, N * H).T)
    state[p + "self_attn.k_proj.weight"] = arr(np.asarray(attn["k_proj"]).reshape(D, K * H).T)
    state[p + "self_attn.v_proj.weight"] = arr(np.asarray(attn["v_proj"]).reshape(D, K * H).T)
    state[p + "self_attn.o_proj.weight"] = arr(np.asarray(attn["o_proj"]).reshape(N * H, D).T)
    if c.qkv_bias:
      for x in "qkv":
        state[p + f"self_attn.{x}_proj.bias"] = arr(np.asarray(attn[f"{x}_bias"]).reshape(-1))
    if c.qk_norm:
      state[p + "self_attn.q_norm.weight"] = arr(attn["q_norm"]["scale"])
      state[p + "self_attn.k_norm.weight"] = arr(attn["k_norm"]["scale"])
    state[p + "mlp.gate_proj.weight"] = arr(np.asarray(mlp["gate"]).T)
    state[p + "mlp.up_proj.weight"] = arr(np.asarray(mlp["up"]).T)
    state[p + "mlp.down_proj.weight"] = arr(np.asarray(mlp["down"]).T)
    for ours, theirs in norm_names.items():
      state[p + theirs + ".weight"] = arr(layer[ours]["scale"])
  return state


# ----------------------------------------------------------------------------- folders


def is_hf_folder(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and any(
      f.endswith(".safetensors") for f in os.listdir(path))


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Memory-mapped tensors of one .safetensors file (bfloat16 included, which numpy lacks)."""
  try:
    with open(path, "rb") as f:
      header_len = int.from_bytes(f.read(8), "little")
      header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    state = {}
    for name, info in header.items():
      if name == "__metadata__":
        continue
      start, end = info["data_offsets"]
      dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
      state[name] = data[start:end].view(dtype).reshape(info["shape"])
    return state
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})") from e


def write_safetensors(path: str, state: Mapping[str, np.ndarray]) -> None:
  """float32 tensors in the safetensors layout (header JSON, then raw little-endian data)."""
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  names = sorted(state)
  for name in names:
    nbytes = state[name].nbytes
    header[name] = {"dtype": "F32", "shape": list(state[name].shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned
  with open(path, "wb") as f:
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for name in names:
      f.write(np.ascontiguousarray(state[name], dtype="<f4").tobytes())


def _read_state(folder: str) -> dict[str, np.ndarray]:
  """All tensors of a (possibly sharded) safetensors checkpoint, text decoder names normalised."""
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
  state: dict[str, np.ndarray] = {}
  for name in files:
    state.update(read_safetensors(os.path.join(folder, name)))
  # Text decoder weights under the prefixes of causal LMs and of both generations of multimodal
  # wrappers; everything else (vision tower, projector) is ignored.
  for prefix in reversed(_TEXT_PREFIXES):
    if prefix + "embed_tokens.weight" in state:
      out = {"model." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
      if "lm_head.weight" in state:
        out["lm_head.weight"] = state["lm_head.weight"]
      return out
  raise CheckpointError(f"{folder}: no text decoder weights (embed_tokens) found")


def load_hf_folder(folder: str, param_dtype: str = "float32") -> tuple[DecoderConfig, dict]:
  config_path = os.path.join(folder, "config.json")
  try:
    with open(config_path) as f:
      raw = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{config_path}: cannot read config ({e})") from e
  config = config_from_hf(raw, config_path).replace(param_dtype=param_dtype)
  state = _read_state(folder)
  return config, params_from_hf_state(config, state, folder)


def save_hf_folder(folder: str, config: DecoderConfig, params, tokenizer=None) -> None:
  """Writes config.json, model.safetensors, generation_config.json and, given a tokenizer, its
  files (`tokenizer.save_hf_files`). Without one, the family's usual special ids are written."""
  os.makedirs(folder, exist_ok=True)
  special = dict(families.get(config.family).special_ids)
  if tokenizer is not None:
    special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
               "pad_token_id": tokenizer.pad_id}
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config_to_hf(config.replace(param_dtype="float32"), special), f, indent=2)
  write_safetensors(os.path.join(folder, "model.safetensors"),
                    hf_state_from_params(config, params))
  if special:
    # generate() stops at any of these: EOS and the chat template's end of turn, if different.
    eos = [special["eos_token_id"]]
    if tokenizer is not None:
      eos += [i for i in tokenizer.end_of_turn_ids if i not in eos]
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
      json.dump({"bos_token_id": special.get("bos_token_id"), "eos_token_id": eos,
                 "pad_token_id": special.get("pad_token_id")}, f, indent=2)
  if tokenizer is not None:
    tokenizer.save_hf_files(folder, model_max_length=config.max_seq_len,
                            tokenizer_class=families.get(config.family).sentencepiece_class)
