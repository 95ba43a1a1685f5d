"""Qwen 2 / 2.5: a Llama-shaped decoder with biases on the q, k and v projections."""

from __future__ import annotations

from typing import Any, Mapping

from cai_jax.model.config import DecoderConfig
from cai_jax.model.families import base

NAME = "qwen2"


def config_from_hf(d: Mapping[str, Any], where: str) -> DecoderConfig:
  return base.pre_norm_config_from_hf(base.unused_window_dropped(d, where), where, family=NAME, qkv_bias=True, qk_norm=False)


def config_to_hf(c: DecoderConfig) -> dict[str, Any]:
  out = base.pre_norm_config_to_hf(c, "Qwen2ForCausalLM", NAME)
  out["use_sliding_window"] = c.window is not None
  out.setdefault("sliding_window", None)
  return out


def config_from_gguf(m: base.GgufMetadata) -> DecoderConfig:
  return base.pre_norm_config_from_gguf(m, family=NAME, qkv_bias=True, qk_norm=False)


def _qwen25(layers, dim, mlp, heads, kv, *, vocab=151_936, tied=True, max_len=32_768):
  return DecoderConfig(
      family=NAME, vocab_size=vocab, embed_dim=dim, mlp_dim=mlp, num_layers=layers,
      num_heads=heads, num_kv_heads=kv, head_dim=dim // heads,
      query_pre_attn_scalar=float(dim // heads), layer_types=("global",) * layers,
      local_rope_base=1e6, global_rope_base=1e6, rms_norm_eps=1e-6, max_seq_len=max_len,
      tie_embeddings=tied, qkv_bias=True)


# Published configs (Qwen/Qwen2.5-*).
PRESETS = {
    "qwen2.5-0.5b": _qwen25(24, 896, 4864, 14, 2),
    "qwen2.5-1.5b": _qwen25(28, 1536, 8960, 12, 2),
    "qwen2.5-7b": _qwen25(28, 3584, 18944, 28, 4, vocab=152_064, tied=False),
    "tiny-qwen2": base.tiny(NAME, qkv_bias=True),
}

FAMILY = base.Family(
    name=NAME, hf_model_types=(NAME,), hf_architecture="Qwen2ForCausalLM",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_norm_names=base.PRE_NORM_NAMES, presets=PRESETS, gguf_architectures=("qwen2",),
    config_from_gguf=config_from_gguf)
