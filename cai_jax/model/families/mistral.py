"""Mistral: a Llama whose every layer may attend through one sliding window."""

from __future__ import annotations

from typing import Any, Mapping

from cai_jax.model.config import DecoderConfig
from cai_jax.model.families import base

NAME = "mistral"


def config_from_hf(d: Mapping[str, Any], where: str) -> DecoderConfig:
  return base.pre_norm_config_from_hf(d, where, family=NAME, qkv_bias=False, qk_norm=False,
                                      window_everywhere=True)


def config_to_hf(c: DecoderConfig) -> dict[str, Any]:
  """Mistral's window applies to every layer and it has no `layer_types` (transformers reads a
  Mistral config with layer_types as a Ministral)."""
  if c.window is not None and set(c.layer_types) != {"local"}:
    raise base.CheckpointError("a Mistral config has one window for every layer; this one "
                               f"mixes layer types {sorted(set(c.layer_types))}")
  out = base.pre_norm_config_to_hf(c, "MistralForCausalLM", NAME)
  out.pop("layer_types", None)
  out.setdefault("sliding_window", None)
  return out


PRESETS = {
    # mistralai/Mistral-7B-v0.1 (a 4096-token window) and v0.3 (none, a larger vocabulary).
    "mistral-7b-v0.1": DecoderConfig(
        family=NAME, vocab_size=32_000, embed_dim=4096, mlp_dim=14336, num_layers=32,
        num_heads=32, num_kv_heads=8, head_dim=128, query_pre_attn_scalar=128,
        layer_types=("local",) * 32, sliding_window=4096, rms_norm_eps=1e-5,
        max_seq_len=32_768, tie_embeddings=False),
    "mistral-7b-v0.3": DecoderConfig(
        family=NAME, vocab_size=32_768, embed_dim=4096, mlp_dim=14336, num_layers=32,
        num_heads=32, num_kv_heads=8, head_dim=128, query_pre_attn_scalar=128,
        layer_types=("global",) * 32, local_rope_base=1e6, global_rope_base=1e6,
        rms_norm_eps=1e-5, max_seq_len=32_768, tie_embeddings=False),
    "tiny-mistral": base.tiny(NAME, layer_types=("local",) * 4, sliding_window=8,
                              tie_embeddings=False),
}

# llama.cpp converts Mistral checkpoints as architecture "llama"; the Llama family reads those.
FAMILY = base.Family(
    name=NAME, hf_model_types=(NAME,), hf_architecture="MistralForCausalLM",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_norm_names=base.PRE_NORM_NAMES, presets=PRESETS)
