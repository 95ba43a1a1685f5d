"""Llama 2 / 3 / 3.1 / 3.2 (and SmolLM2, which is a Llama): pre-norm RMSNorm (w), SwiGLU, plain
embeddings, one RoPE base (Llama 3.1+ with its piecewise frequency scaling), tied or separate
output head."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cai_jax.model.config import DecoderConfig
from cai_jax.model.families import base

NAME = "llama"


def config_from_hf(d: Mapping[str, Any], where: str) -> DecoderConfig:
  if d.get("attention_bias"):
    raise base.CheckpointError(f"{where}: attention_bias=true (a bias on o_proj too) is not "
                               "supported")
  return base.pre_norm_config_from_hf(d, where, family=NAME, qkv_bias=False, qk_norm=False)


def config_to_hf(c: DecoderConfig) -> dict[str, Any]:
  return {**base.pre_norm_config_to_hf(c, "LlamaForCausalLM", NAME),
          "attention_bias": False, "mlp_bias": False}


def config_from_gguf(m: base.GgufMetadata) -> DecoderConfig:
  return base.pre_norm_config_from_gguf(m, family=NAME, qkv_bias=False, qk_norm=False)


def from_gguf_tensor(name: str, x: np.ndarray, config: DecoderConfig) -> np.ndarray:
  """llama.cpp's Llama converter interleaves the RoPE halves of q and k rows; undo it."""
  if name.endswith("self_attn.q_proj.weight"):
    return base.unpermute_rope_rows(x, config.num_heads)
  if name.endswith("self_attn.k_proj.weight"):
    return base.unpermute_rope_rows(x, config.num_kv_heads)
  return x


def _llama(layers, dim, mlp, heads, kv, *, vocab=128_256, tied=False, factor=8.0, **kw):
  return DecoderConfig(
      family=NAME, vocab_size=vocab, embed_dim=dim, mlp_dim=mlp, num_layers=layers,
      num_heads=heads, num_kv_heads=kv, head_dim=dim // heads,
      query_pre_attn_scalar=float(dim // heads), layer_types=("global",) * layers,
      local_rope_base=500_000.0, global_rope_base=500_000.0, rope_scaling="llama3",
      global_rope_scale=factor, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
      rope_original_max_len=8192, rms_norm_eps=1e-5, max_seq_len=131_072,
      tie_embeddings=tied, **kw)


def _smollm2(layers, dim, mlp, heads, kv, rope_base):
  return DecoderConfig(
      family=NAME, vocab_size=49_152, embed_dim=dim, mlp_dim=mlp, num_layers=layers,
      num_heads=heads, num_kv_heads=kv, head_dim=dim // heads,
      query_pre_attn_scalar=float(dim // heads), layer_types=("global",) * layers,
      local_rope_base=rope_base, global_rope_base=rope_base, rms_norm_eps=1e-5,
      max_seq_len=8192, tie_embeddings=True)


# Published configs (meta-llama/Llama-3.x, HuggingFaceTB/SmolLM2-*).
PRESETS = {
    "llama3.1-8b": _llama(32, 4096, 14336, 32, 8),
    "llama3.1-70b": _llama(80, 8192, 28672, 64, 8),
    "llama3.2-1b": _llama(16, 2048, 8192, 32, 8, tied=True, factor=32.0),
    "llama3.2-3b": _llama(28, 3072, 8192, 24, 8, tied=True, factor=32.0),
    "smollm2-135m": _smollm2(30, 576, 1536, 9, 3, 100_000.0),
    "smollm2-360m": _smollm2(32, 960, 2560, 15, 5, 100_000.0),
    "smollm2-1.7b": _smollm2(24, 2048, 8192, 32, 32, 130_000.0),
    "tiny-llama": base.tiny(NAME, tie_embeddings=False, rope_scaling="llama3",
                            global_rope_scale=8.0, rope_original_max_len=64,
                            local_rope_base=500_000.0, global_rope_base=500_000.0),
}

FAMILY = base.Family(
    name=NAME, hf_model_types=(NAME,), hf_architecture="LlamaForCausalLM",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_norm_names=base.PRE_NORM_NAMES, presets=PRESETS, gguf_architectures=("llama",),
    config_from_gguf=config_from_gguf, from_gguf_tensor=from_gguf_tensor,
    gguf_ignored=("rope_freqs.weight",))
