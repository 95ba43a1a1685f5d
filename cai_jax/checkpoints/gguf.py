"""GGUF import for every family with a GGUF architecture: the config from the metadata (by the
family that reads `general.architecture`), tensors dequantized to float32 and renamed to their
HF names, and what llama.cpp's converter changed in them undone by the family (a 1 + w
norms, Llama's interleaved RoPE rows).
"""

from __future__ import annotations

import os

import numpy as np

from cai_jax.model import families
from cai_jax.model.config import DecoderConfig
from cai_jax.model.families.base import CheckpointError, GgufMetadata

_LAYER_NAMES = {  # GGUF -> HF, inside one block
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# GGUF norm names -> ours; their HF names are the family's (`Family.hf_norm_names`: pre-norm
# families call the MLP's input norm `post_attention_layernorm`, post-norm families have four).
_NORMS = {"attn_norm": "pre_attn_norm", "post_attention_norm": "post_attn_norm",
          "ffn_norm": "pre_ffw_norm", "post_ffw_norm": "post_ffw_norm"}


def open_reader(path: str):
  """A GGUFReader, or an error naming the file when it is missing, truncated or not GGUF."""
  import gguf

  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: GGUF file not found")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError, struct and numpy errors alike
    raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def config_from_reader(reader, path: str) -> DecoderConfig:
  metadata = GgufMetadata(reader, path)
  return families.for_gguf_architecture(metadata.arch, path).config_from_gguf(metadata)


def dequantize(tensor, path: str) -> np.ndarray:
  """float32 array in numpy (row-major, HF) layout, whatever quantization the file uses."""
  import gguf

  try:
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError as e:
    raise CheckpointError(f"{path}: tensor {tensor.name!r} uses quantization "
                          f"{tensor.tensor_type.name}, which gguf cannot dequantize") from e
  shape = tuple(int(n) for n in reversed(tensor.shape))
  return np.asarray(data, dtype=np.float32).reshape(shape)


def hf_state_from_reader(reader, path: str, config: DecoderConfig) -> dict[str, np.ndarray]:
  """Every tensor renamed to its HF name, dequantized, with llama.cpp's changes undone."""
  family = families.get(config.family)
  names = dict(_LAYER_NAMES)
  names.update({g: family.hf_norm_names[ours] for g, ours in _NORMS.items()
                if ours in family.hf_norm_names})
  state = {}
  for t in reader.tensors:
    parts = t.name.split(".")
    if t.name == "token_embd.weight":
      name = "model.embed_tokens.weight"
    elif t.name == "output_norm.weight":
      name = "model.norm.weight"
    elif t.name == "output.weight":
      name = "lm_head.weight"
    elif t.name in family.gguf_ignored:
      continue
    elif parts[0] == "blk" and len(parts) == 4 and parts[2] in names:
      name = f"model.layers.{parts[1]}.{names[parts[2]]}.{parts[3]}"
    else:
      raise CheckpointError(f"{path}: unexpected tensor {t.name!r} for a {family.name} model")
    x = dequantize(t, path)
    if family.from_gguf_tensor is not None:
      x = family.from_gguf_tensor(name, x, config)
    state[name] = x
  return state


def load_gguf(path: str):
  """(DecoderConfig, HF-named float32 state dict, tokenizer) from a GGUF file."""
  from cai_jax.tokenizer import tokenizer_from_gguf_reader

  reader = open_reader(path)
  config = config_from_reader(reader, path)
  try:
    tokenizer = tokenizer_from_gguf_reader(reader, path)
  except ValueError as e:
    raise CheckpointError(str(e)) from e
  return config, hf_state_from_reader(reader, path, config), tokenizer
