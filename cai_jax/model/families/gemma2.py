"""Gemma 2: Gemma's (1 + w) norms, pre- and post-norms, GeGLU and scaled embeddings, alternating
sliding-window and global layers with one RoPE base, soft-capped attention and output logits."""

from __future__ import annotations

from typing import Any, Mapping

from cai_jax.model.config import GLOBAL, LOCAL, DecoderConfig
from cai_jax.model.families import base, gemma3

NAME = "gemma2"
FIXED = dict(family=NAME, norm_offset=1.0, post_norms=True, qk_norm=False, qkv_bias=False,
             activation="gelu_tanh", embed_scale=True, tie_embeddings=True)


def _alternating(num_layers: int) -> tuple[str, ...]:
  return tuple(LOCAL if i % 2 == 0 else GLOBAL for i in range(num_layers))


def config_from_hf(d: Mapping[str, Any], where: str) -> DecoderConfig:
  num_layers = int(base.require(d, "num_hidden_layers", where))
  kinds = (base.hf_layer_types(d, num_layers, where) if d.get("layer_types")
           else _alternating(num_layers))
  head_dim = base.head_dim_of(d, where)
  return DecoderConfig(
      vocab_size=int(d.get("vocab_size", 256_000)),
      embed_dim=int(base.require(d, "hidden_size", where)),
      mlp_dim=int(base.require(d, "intermediate_size", where)),
      num_layers=num_layers,
      num_heads=int(base.require(d, "num_attention_heads", where)),
      num_kv_heads=int(base.require(d, "num_key_value_heads", where)),
      head_dim=head_dim,
      query_pre_attn_scalar=float(d.get("query_pre_attn_scalar", head_dim)),
      layer_types=kinds,
      sliding_window=int(d.get("sliding_window") or 4096),
      attn_softcap=float(d.get("attn_logit_softcapping") or 0.0),
      final_softcap=float(d.get("final_logit_softcapping") or 0.0),
      rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
      max_seq_len=int(d.get("max_position_embeddings", 8192)),
      **base.rope_fields(d, where), **FIXED)


def config_to_hf(c: DecoderConfig) -> dict[str, Any]:
  return {
      "architectures": ["Gemma2ForCausalLM"], "model_type": NAME, **base.common_to_hf(c),
      "hidden_activation": "gelu_pytorch_tanh",
      "query_pre_attn_scalar": base.int_if_integral(c.query_pre_attn_scalar),
      "sliding_window": c.sliding_window,
      "layer_types": base.layer_types_to_hf(c),
      "attn_logit_softcapping": c.attn_softcap or None,
      "final_logit_softcapping": c.final_softcap or None,
      "attention_bias": False, **base.rope_to_hf(c)}


def config_from_gguf(m: base.GgufMetadata) -> DecoderConfig:
  num_layers = int(m.get("block_count"))
  head_dim = int(m.get("attention.key_length"))
  rope_base = m.f32("rope.freq_base", 10_000.0)
  return DecoderConfig(
      vocab_size=m.vocab_size(),
      embed_dim=int(m.get("embedding_length")),
      mlp_dim=int(m.get("feed_forward_length")),
      num_layers=num_layers,
      num_heads=int(m.get("attention.head_count")),
      num_kv_heads=int(m.get("attention.head_count_kv")),
      head_dim=head_dim,
      # llama.cpp scales Gemma 2 queries by 1/sqrt(head_dim) except the 27B (46 layers).
      query_pre_attn_scalar=float(int(m.get("embedding_length")) // int(
          m.get("attention.head_count")) if num_layers == 46 else head_dim),
      layer_types=_alternating(num_layers),
      sliding_window=int(m.get("attention.sliding_window")),
      attn_softcap=m.f32("attn_logit_softcapping"),
      final_softcap=m.f32("final_logit_softcapping"),
      local_rope_base=rope_base, global_rope_base=rope_base,
      rms_norm_eps=m.f32("attention.layer_norm_rms_epsilon"),
      max_seq_len=int(m.get("context_length")),
      **FIXED)


_G2 = dict(vocab_size=256_000, sliding_window=4096, attn_softcap=50.0, final_softcap=30.0,
           max_seq_len=8192)
PRESETS = {
    "gemma2-2b": DecoderConfig(
        embed_dim=2304, mlp_dim=9216, num_layers=26, num_heads=8, num_kv_heads=4, head_dim=256,
        query_pre_attn_scalar=256, layer_types=_alternating(26), **_G2, **FIXED),
    "gemma2-9b": DecoderConfig(
        embed_dim=3584, mlp_dim=14336, num_layers=42, num_heads=16, num_kv_heads=8, head_dim=256,
        query_pre_attn_scalar=256, layer_types=_alternating(42), **_G2, **FIXED),
    "gemma2-27b": DecoderConfig(
        embed_dim=4608, mlp_dim=36864, num_layers=46, num_heads=32, num_kv_heads=16,
        head_dim=128, query_pre_attn_scalar=144, layer_types=_alternating(46), **_G2, **FIXED),
    "tiny-gemma2": base.tiny(
        NAME, layer_types=_alternating(4), sliding_window=8, attn_softcap=50.0,
        final_softcap=30.0, **{k: v for k, v in FIXED.items() if k != "family"}),
}

FAMILY = base.Family(
    name=NAME, hf_model_types=(NAME,), hf_architecture="Gemma2ForCausalLM",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_norm_names=base.FOUR_NORM_NAMES, presets=PRESETS, gguf_architectures=("gemma2",),
    config_from_gguf=config_from_gguf, from_gguf_tensor=gemma3.from_gguf_tensor,
    special_ids=gemma3.SPECIAL_IDS, sentencepiece_class=gemma3.SENTENCEPIECE_CLASS)
