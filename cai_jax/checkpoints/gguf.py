"""GGUF import for every family with a GGUF architecture: the config from the metadata (by the
family that reads `general.architecture`), tensors dequantized to float32 and renamed to their
HF names, and what llama.cpp's converter changed in them undone by the family (Gemma's 1 + w
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
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Norm names whose HF meaning depends on the family: pre-norm families (Llama, Qwen) call the
# MLP's input norm `post_attention_layernorm`; Gemma 2 / 3 have four norms.
_PRE_NORM_LAYER_NAMES = {"ffn_norm": "post_attention_layernorm"}
_FOUR_NORM_LAYER_NAMES = {
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def open_reader(path: str):
  """A GGUFReader, or an error naming the file when it is missing, truncated or not GGUF."""
  import gguf

  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: GGUF file not found")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError, struct and numpy errors alike
    raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def family_of(reader, path: str):
  arch = GgufMetadata(reader, path).arch
  return families.for_gguf_architecture(arch, path)


def config_from_reader(reader, path: str) -> DecoderConfig:
  family = family_of(reader, path)
  return family.config_from_gguf(GgufMetadata(reader, path))


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



def hf_state_from_reader(reader, path: str, config: DecoderConfig | None = None
                         ) -> dict[str, np.ndarray]:
  """Every tensor renamed to its HF name, dequantized, with llama.cpp's changes undone."""
  family = family_of(reader, path)
  config = config or family.config_from_gguf(GgufMetadata(reader, path))
  names = dict(_LAYER_NAMES)
  names.update(_FOUR_NORM_LAYER_NAMES if config.post_norms else _PRE_NORM_LAYER_NAMES)
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
