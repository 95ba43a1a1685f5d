"""GGUF import for Gemma 3: architecture from the metadata, tensors dequantized to float32.

llama.cpp stores Gemma's RMSNorm weights as (1 + w) and omits what its runtime hard-codes (the
local RoPE base, the 5-local-1-global layer pattern, the attention query scale); those are filled
in from the Gemma 3 family's published values.
"""

from __future__ import annotations

import os

import numpy as np

from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.model.config import GemmaConfig, layer_types_from_pattern

ARCH = "gemma3"
GEMMA3_LOCAL_ROPE_BASE = 10_000.0
GEMMA3_LAYER_PATTERN = 6

_LAYER_NAMES = {  # GGUF -> HF, inside one block
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
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


def _field(reader, key: str, path: str, default=None):
  field = reader.fields.get(key)
  if field is None:
    if default is not None:
      return default
    raise CheckpointError(f"{path}: GGUF metadata field {key!r} is missing")
  return field.contents()


def _f32(value) -> float:
  """GGUF stores float32: 1e-6 comes back as 9.99999997e-07. Read it as it was written."""
  return float(str(np.float32(value)))


def config_from_reader(reader, path: str) -> GemmaConfig:
  arch = _field(reader, "general.architecture", path)
  if arch != ARCH:
    raise CheckpointError(f"{path}: general.architecture is {arch!r}; cai_jax reads {ARCH!r}")
  f = lambda key, default=None: _field(reader, f"{ARCH}.{key}", path, default)  # noqa: E731
  num_layers = int(f("block_count"))
  embed_dim = int(f("embedding_length"))
  num_heads = int(f("attention.head_count"))
  head_dim = int(f("attention.key_length"))
  # llama.cpp scales queries by 1/sqrt(head_dim), except 27B (62 layers): 1/sqrt(embed/heads).
  query_scalar = embed_dim // num_heads if num_layers == 62 else head_dim
  scale = 1.0
  scaling_type = reader.fields.get(f"{ARCH}.rope.scaling.type")
  if scaling_type is not None and scaling_type.contents() not in ("none", ""):
    if scaling_type.contents() != "linear":
      raise CheckpointError(f"{path}: RoPE scaling {scaling_type.contents()!r} is not supported")
    scale = _f32(f("rope.scaling.factor"))
  embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
  if embedding is None:
    raise CheckpointError(f"{path}: tensor 'token_embd.weight' is missing")
  return GemmaConfig(
      vocab_size=int(embedding.shape[-1]),
      embed_dim=embed_dim,
      mlp_dim=int(f("feed_forward_length")),
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=int(f("attention.head_count_kv")),
      head_dim=head_dim,
      query_pre_attn_scalar=float(query_scalar),
      sliding_window=int(f("attention.sliding_window")),
      layer_types=layer_types_from_pattern(num_layers, GEMMA3_LAYER_PATTERN),
      local_rope_base=GEMMA3_LOCAL_ROPE_BASE,
      global_rope_base=_f32(f("rope.freq_base")),
      global_rope_scale=scale,
      rms_norm_eps=_f32(f("attention.layer_norm_rms_epsilon")),
      max_seq_len=int(f("context_length")),
  )


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


def hf_state_from_reader(reader, path: str) -> dict[str, np.ndarray]:
  """Every tensor renamed to its HF name, dequantized, with the (1 + w) norm shift undone."""
  state = {}
  for t in reader.tensors:
    parts = t.name.split(".")
    if t.name == "token_embd.weight":
      name = "model.embed_tokens.weight"
    elif t.name == "output_norm.weight":
      name = "model.norm.weight"
    elif parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
      name = f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    else:
      raise CheckpointError(f"{path}: unexpected tensor {t.name!r} for a Gemma 3 model")
    x = dequantize(t, path)
    if name.endswith("norm.weight"):
      x = x - 1.0
    state[name] = x
  return state


def load_gguf(path: str):
  """(GemmaConfig, HF-named float32 state dict, Tokenizer) from a Gemma 3 GGUF file."""
  from cai_jax.tokenizer import Tokenizer

  reader = open_reader(path)
  config = config_from_reader(reader, path)
  try:
    tokenizer = Tokenizer.from_gguf_reader(reader, path)
  except ValueError as e:
    raise CheckpointError(str(e)) from e
  return config, hf_state_from_reader(reader, path), tokenizer
