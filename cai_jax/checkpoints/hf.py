"""Hugging Face folders (config.json + safetensors) for Gemma 3: import and export.

The HF state dict (names like `model.layers.3.self_attn.q_proj.weight`, torch's [out, in] layout)
is also the common currency of the GGUF importer, so both formats share one parameter mapping.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from cai_jax.model.config import GLOBAL, LOCAL, GemmaConfig, layer_types_from_pattern

GEMMA3_TEXT = "gemma3_text"
GEMMA3_MULTIMODAL = "gemma3"
_HF_LAYER_TYPES = {"sliding_attention": LOCAL, "full_attention": GLOBAL}
# Prefixes of the text decoder's weights in the checkpoint kinds we read.
_TEXT_PREFIXES = ("model.", "model.language_model.", "language_model.model.")


GEMMA_SPECIAL_IDS = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}


class CheckpointError(ValueError):
  """A checkpoint file or folder that cai_jax cannot read; the message names it."""


# ----------------------------------------------------------------------------- config


def _rope_settings(d: Mapping[str, Any], where: str) -> tuple[float, float, float]:
  """(local base, global base, global linear scale) from legacy or transformers-5 config keys."""
  global_base = float(d.get("rope_theta", 1_000_000.0))
  local_base = float(d.get("rope_local_base_freq", 10_000.0))
  scaling = d.get("rope_scaling")
  params = d.get("rope_parameters")
  if isinstance(params, Mapping) and "full_attention" in params:
    full = params.get("full_attention") or {}
    sliding = params.get("sliding_attention") or {}
    global_base = float(full.get("rope_theta", global_base))
    local_base = float(sliding.get("rope_theta", local_base))
    scaling = full if full.get("rope_type", "default") != "default" else None
  scale = 1.0
  if scaling:
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "linear":
      raise CheckpointError(f"{where}: RoPE scaling type {kind!r} is not supported (linear only)")
    scale = float(scaling["factor"])
  return local_base, global_base, scale


def config_from_hf(d: Mapping[str, Any], where: str) -> GemmaConfig:
  """GemmaConfig from a config.json dict of Gemma3ForCausalLM or Gemma3ForConditionalGeneration."""
  model_type = d.get("model_type")
  if model_type == GEMMA3_MULTIMODAL:
    d = d.get("text_config") or {}
    model_type = GEMMA3_TEXT
  if model_type != GEMMA3_TEXT:
    raise CheckpointError(
        f"{where}: model_type is {model_type!r}; cai_jax reads Gemma 3 checkpoints "
        f"({GEMMA3_TEXT!r} or {GEMMA3_MULTIMODAL!r})")
  try:
    num_layers = int(d["num_hidden_layers"])
    if d.get("layer_types"):
      layer_types = tuple(_HF_LAYER_TYPES[t] for t in d["layer_types"])
    else:
      layer_types = layer_types_from_pattern(num_layers, int(d.get("sliding_window_pattern", 6)))
    local_base, global_base, scale = _rope_settings(d, where)
    return GemmaConfig(
        vocab_size=int(d.get("vocab_size", 262_208)),
        embed_dim=int(d["hidden_size"]),
        mlp_dim=int(d["intermediate_size"]),
        num_layers=num_layers,
        # transformers' Gemma3TextConfig defaults, which published multimodal configs rely on.
        num_heads=int(d.get("num_attention_heads", 8)),
        num_kv_heads=int(d.get("num_key_value_heads", 4)),
        head_dim=int(d.get("head_dim", 256)),
        query_pre_attn_scalar=float(d.get("query_pre_attn_scalar", 256)),
        sliding_window=int(d.get("sliding_window", 4096)),
        layer_types=layer_types,
        local_rope_base=local_base,
        global_rope_base=global_base,
        global_rope_scale=scale,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(d.get("max_position_embeddings", 131_072)),
    )
  except KeyError as e:
    raise CheckpointError(f"{where}: config is missing field {e.args[0]!r}") from None


def _int_if_integral(x: float):
  return int(x) if float(x).is_integer() else x


def config_to_hf(config: GemmaConfig, special_ids: Mapping[str, int]) -> dict[str, Any]:
  """config.json for Gemma3ForCausalLM; legacy RoPE keys, which transformers 4.5x and 5.x read."""
  return {
      "architectures": ["Gemma3ForCausalLM"],
      "model_type": GEMMA3_TEXT,
      "vocab_size": config.vocab_size,
      "hidden_size": config.embed_dim,
      "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "hidden_activation": "gelu_pytorch_tanh",
      # transformers' strict config wants an int here whenever the value is integral.
      "query_pre_attn_scalar": _int_if_integral(config.query_pre_attn_scalar),
      "sliding_window": config.sliding_window,
      "layer_types": [
          "full_attention" if t == GLOBAL else "sliding_attention" for t in config.layer_types],
      "rope_theta": config.global_rope_base,
      "rope_local_base_freq": config.local_rope_base,
      "rope_scaling": (None if config.global_rope_scale == 1.0 else
                       {"rope_type": "linear", "factor": config.global_rope_scale}),
      "rms_norm_eps": config.rms_norm_eps,
      "max_position_embeddings": config.max_seq_len,
      "final_logit_softcapping": None,
      "attn_logit_softcapping": None,
      "attention_bias": False,
      "attention_dropout": 0.0,
      "tie_word_embeddings": True,
      "torch_dtype": config.param_dtype,
      "use_cache": True,
      **special_ids,
  }


# ----------------------------------------------------------------------------- weights

_NORMS = {  # ours -> HF, inside one layer
    "pre_attn_norm": "input_layernorm",
    "post_attn_norm": "post_attention_layernorm",
    "pre_ffw_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def params_from_hf_state(config: GemmaConfig, state: Mapping[str, np.ndarray],
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
  params: dict[str, Any] = {
      "embedder": {"embedding": get("model.embed_tokens.weight", (c.vocab_size, D))},
      "final_norm": {"scale": get("model.norm.weight", (D,))},
  }
  for i in range(c.num_layers):
    p = f"model.layers.{i}."
    layer = {
        "attn": {
            "q_proj": get(p + "self_attn.q_proj.weight", (N * H, D)).T.reshape(D, N, H),
            "k_proj": get(p + "self_attn.k_proj.weight", (K * H, D)).T.reshape(D, K, H),
            "v_proj": get(p + "self_attn.v_proj.weight", (K * H, D)).T.reshape(D, K, H),
            "o_proj": get(p + "self_attn.o_proj.weight", (D, N * H)).T.reshape(N, H, D),
            "q_norm": {"scale": get(p + "self_attn.q_norm.weight", (H,))},
            "k_norm": {"scale": get(p + "self_attn.k_norm.weight", (H,))},
        },
        "mlp": {
            "gate": get(p + "mlp.gate_proj.weight", (F, D)).T,
            "up": get(p + "mlp.up_proj.weight", (F, D)).T,
            "down": get(p + "mlp.down_proj.weight", (D, F)).T,
        },
    }
    for ours, theirs in _NORMS.items():
      layer[ours] = {"scale": get(p + theirs + ".weight", (D,))}
    params[f"layer_{i}"] = layer
  return params


def hf_state_from_params(config: GemmaConfig, params) -> dict[str, np.ndarray]:
  """The inverse of `params_from_hf_state` (contiguous float arrays, HF names)."""
  c = config
  D, N, K, H = c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim
  arr = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))  # noqa: E731
  state = {
      "model.embed_tokens.weight": arr(params["embedder"]["embedding"]),
      "model.norm.weight": arr(params["final_norm"]["scale"]),
  }
  for i in range(c.num_layers):
    layer, p = params[f"layer_{i}"], f"model.layers.{i}."
    attn, mlp = layer["attn"], layer["mlp"]
    state[p + "self_attn.q_proj.weight"] = arr(np.asarray(attn["q_proj"]).reshape(D, N * H).T)
    state[p + "self_attn.k_proj.weight"] = arr(np.asarray(attn["k_proj"]).reshape(D, K * H).T)
    state[p + "self_attn.v_proj.weight"] = arr(np.asarray(attn["v_proj"]).reshape(D, K * H).T)
    state[p + "self_attn.o_proj.weight"] = arr(np.asarray(attn["o_proj"]).reshape(N * H, D).T)
    state[p + "self_attn.q_norm.weight"] = arr(attn["q_norm"]["scale"])
    state[p + "self_attn.k_norm.weight"] = arr(attn["k_norm"]["scale"])
    state[p + "mlp.gate_proj.weight"] = arr(np.asarray(mlp["gate"]).T)
    state[p + "mlp.up_proj.weight"] = arr(np.asarray(mlp["up"]).T)
    state[p + "mlp.down_proj.weight"] = arr(np.asarray(mlp["down"]).T)
    for ours, theirs in _NORMS.items():
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
  # Text decoder weights under the prefixes used by Gemma3ForCausalLM and both generations of
  # Gemma3ForConditionalGeneration; everything else (vision tower, projector) is ignored.
  for prefix in reversed(_TEXT_PREFIXES):
    if prefix + "embed_tokens.weight" in state:
      return {"model." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  raise CheckpointError(f"{folder}: no Gemma 3 text decoder weights (embed_tokens) found")


def load_hf_folder(folder: str, param_dtype: str = "float32") -> tuple[GemmaConfig, dict]:
  config_path = os.path.join(folder, "config.json")
  try:
    with open(config_path) as f:
      raw = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{config_path}: cannot read config ({e})") from e
  config = config_from_hf(raw, config_path).replace(param_dtype=param_dtype)
  state = _read_state(folder)
  return config, params_from_hf_state(config, state, folder)


def save_hf_folder(folder: str, config: GemmaConfig, params, tokenizer=None) -> None:
  """Writes config.json, model.safetensors, generation_config.json and, given a tokenizer, its
  tokenizer.model and tokenizer_config.json (without one, Gemma's usual special ids are used)."""
  os.makedirs(folder, exist_ok=True)
  if tokenizer is not None:
    special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
               "pad_token_id": tokenizer.pad_id}
  else:
    special = dict(GEMMA_SPECIAL_IDS)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config_to_hf(config.replace(param_dtype="float32"), special), f, indent=2)
  write_safetensors(os.path.join(folder, "model.safetensors"),
                    hf_state_from_params(config, params))
  eos = [special["eos_token_id"]]
  if tokenizer is not None:
    end_of_turn = tokenizer.piece_to_id("<end_of_turn>")
    if end_of_turn not in (tokenizer.unk_id, tokenizer.eos_id):
      eos.append(end_of_turn)
  with open(os.path.join(folder, "generation_config.json"), "w") as f:
    json.dump({"bos_token_id": special["bos_token_id"], "eos_token_id": eos,
               "pad_token_id": special["pad_token_id"]}, f, indent=2)
  if tokenizer is None:
    return
  tokenizer.save(os.path.join(folder, "tokenizer.model"))
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "GemmaTokenizer", "add_bos_token": True,
               "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
               "pad_token": "<pad>", "unk_token": "<unk>", "padding_side": "left",
               "model_max_length": config.max_seq_len}, f, indent=2)
