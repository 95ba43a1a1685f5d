"""Qwen 3: a Llama-shaped decoder with RMSNorm on each query and key head, no biases."""

from __future__ import annotations

from typing import Any, Mapping

from cai_jax.model.config import DecoderConfig
from cai_jax.model.families import base

NAME = "qwen3"


def config_from_hf(d: Mapping[str, Any], where: str) -> DecoderConfig:
  if d.get("attention_bias"):
    raise base.CheckpointError(f"{where}: attention_bias=true is not supported for Qwen 3")
  return base.pre_norm_config_from_hf(base.unused_window_dropped(d, where), where, family=NAME, qkv_bias=False, qk_norm=True)


def config_to_hf(c: DecoderConfig) -> dict[str, Any]:
  out = base.pre_norm_config_to_hf(c, "Qwen3ForCausalLM", NAME)
  out["use_sliding_window"] = c.window is not None
  out["attention_bias"] = False
  out.setdefault("sliding_window", None)
  return out


def config_from_gguf(m: base.GgufMetadata) -> DecoderConfig:
  return base.pre_norm_config_from_gguf(m, family=NAME, qkv_bias=False, qk_norm=True)


def _qwen3(layers, dim, mlp, heads, *, tied=True):
  return DecoderConfig(
      family=NAME, vocab_size=151_936, embed_dim=dim, mlp_dim=mlp, num_layers=layers,
      num_heads=heads, num_kv_heads=8, head_dim=128, query_pre_attn_scalar=128.0,
      layer_types=("global",) * layers, local_rope_base=1e6, global_rope_base=1e6,
      rms_norm_eps=1e-6, max_seq_len=40_960, tie_embeddings=tied, qk_norm=True)


# Published configs (Qwen/Qwen3-*).
PRESETS = {
    "qwen3-0.6b": _qwen3(28, 1024, 3072, 16),
    "qwen3-1.7b": _qwen3(28, 2048, 6144, 16),
    "qwen3-4b": _qwen3(36, 2560, 9728, 32),
    "qwen3-8b": _qwen3(36, 4096, 12288, 32, tied=False),
    "qwen3-32b": _qwen3(64, 5120, 25600, 64, tied=False),
    "tiny-qwen3": base.tiny(NAME, qk_norm=True, head_dim=32, query_pre_attn_scalar=32),
}

FAMILY = base.Family(
    name=NAME, hf_model_types=(NAME,), hf_architecture="Qwen3ForCausalLM",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_norm_names=base.PRE_NORM_NAMES, presets=PRESETS, gguf_architectures=("qwen3",),
    config_from_gguf=config_from_gguf)
