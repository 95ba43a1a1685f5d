"""Gemma 3 (text decoder): (1 + w) norms, pre- and post-norms, q/k-norm, GeGLU, scaled embeddings,
5 sliding-window layers to 1 global, two RoPE bases (linear scaling on global layers, 4B+)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cai_jax.model.config import DecoderConfig, layer_types_from_pattern
from cai_jax.model.families import base

NAME = "gemma3"
TEXT = "gemma3_text"
MULTIMODAL = "gemma3"
LAYER_PATTERN = 6          # not in the GGUF: llama.cpp hard-codes it
GGUF_LOCAL_ROPE_BASE = 10_000.0
SPECIAL_IDS = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}

FIXED = dict(family=NAME, norm_offset=1.0, post_norms=True, qk_norm=True, qkv_bias=False,
             activation="gelu_tanh", embed_scale=True, tie_embeddings=True)


def _rope(d: Mapping[str, Any], where: str) -> dict[str, Any]:
  """Global and local bases and the global layers' scaling, from legacy or transformers-5 keys."""
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
  out = {"local_rope_base": local_base, "global_rope_base": global_base}
  fields = base.rope_scaling_fields(scaling, where)
  if fields.get("rope_scaling", "linear") != "linear":
    raise base.CheckpointError(f"{where}: Gemma 3 uses linear RoPE scaling, the config says "
                               f"{fields['rope_scaling']!r}")
  out.update(fields)
  return out


def config_from_hf(d: Mapping[str, Any], where: str) -> DecoderConfig:
  """Gemma3ForCausalLM's config, or the text part of Gemma3ForConditionalGeneration's."""
  if d.get("model_type") == MULTIMODAL:
    d = d.get("text_config") or {}
  try:
    num_layers = int(d["num_hidden_layers"])
    if d.get("layer_types"):
      layer_types = tuple(base.HF_LAYER_TYPES[t] for t in d["layer_types"])
    else:
      layer_types = layer_types_from_pattern(num_layers, int(d.get("sliding_window_pattern", 6)))
    return DecoderConfig(
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
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(d.get("max_position_embeddings", 131_072)),
        **_rope(d, where), **FIXED)
  except KeyError as e:
    raise base.CheckpointError(f"{where}: config is missing field {e.args[0]!r}") from None


def config_to_hf(c: DecoderConfig) -> dict[str, Any]:
  return {
      "architectures": ["Gemma3ForCausalLM"],
      "model_type": TEXT,
      **base.common_to_hf(c),
      "hidden_activation": "gelu_pytorch_tanh",
      "query_pre_attn_scalar": base.int_if_integral(c.query_pre_attn_scalar),
      "sliding_window": c.sliding_window,
      "layer_types": base.layer_types_to_hf(c),
      "rope_theta": c.global_rope_base,
      "rope_local_base_freq": c.local_rope_base,
      "rope_scaling": (None if c.rope_scaling == "none" else
                       {"rope_type": "linear", "factor": c.global_rope_scale}),
      "final_logit_softcapping": None,
      "attn_logit_softcapping": None,
      "attention_bias": False,
  }


def config_from_gguf(m: base.GgufMetadata) -> DecoderConfig:
  """llama.cpp omits what its runtime hard-codes (the local RoPE base, the layer pattern, the
  query scale); those come from the family's published values."""
  num_layers = int(m.get("block_count"))
  embed_dim = int(m.get("embedding_length"))
  num_heads = int(m.get("attention.head_count"))
  head_dim = int(m.get("attention.key_length"))
  # llama.cpp scales queries by 1/sqrt(head_dim), except 27B (62 layers): 1/sqrt(embed/heads).
  query_scalar = embed_dim // num_heads if num_layers == 62 else head_dim
  return DecoderConfig(
      vocab_size=m.vocab_size(),
      embed_dim=embed_dim,
      mlp_dim=int(m.get("feed_forward_length")),
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=int(m.get("attention.head_count_kv")),
      head_dim=head_dim,
      query_pre_attn_scalar=float(query_scalar),
      sliding_window=int(m.get("attention.sliding_window")),
      layer_types=layer_types_from_pattern(num_layers, LAYER_PATTERN),
      local_rope_base=GGUF_LOCAL_ROPE_BASE,
      global_rope_base=m.f32("rope.freq_base"),
      rms_norm_eps=m.f32("attention.layer_norm_rms_epsilon"),
      max_seq_len=int(m.get("context_length")),
      **m.linear_rope_scaling(), **FIXED)


def from_gguf_tensor(name: str, x: np.ndarray, config: DecoderConfig) -> np.ndarray:
  """llama.cpp stores Gemma's norm weights as 1 + w."""
  return x - 1.0 if name.endswith("norm.weight") else x


def _preset(num_layers, pattern=6, **kw) -> DecoderConfig:
  return DecoderConfig(num_layers=num_layers,
                       layer_types=layer_types_from_pattern(num_layers, pattern),
                       local_rope_base=10_000.0, global_rope_base=1_000_000.0, **FIXED, **kw)


_LONG = dict(rope_scaling="linear", global_rope_scale=8.0, max_seq_len=131_072)
# Values from the published Gemma 3 model cards / configs (text towers). The 4B+ checkpoints carry
# 262,208 vocabulary rows (image tokens included), the 270M and 1B 262,144.
PRESETS = {
    "gemma3-270m": _preset(
        18, vocab_size=262_144, embed_dim=640, mlp_dim=2048, num_heads=4, num_kv_heads=1,
        head_dim=256, query_pre_attn_scalar=256, sliding_window=512),
    "gemma3-1b": _preset(
        26, vocab_size=262_144, embed_dim=1152, mlp_dim=6912, num_heads=4, num_kv_heads=1,
        head_dim=256, query_pre_attn_scalar=256, sliding_window=512),
    "gemma3-4b": _preset(
        34, vocab_size=262_208, embed_dim=2560, mlp_dim=10240, num_heads=8, num_kv_heads=4,
        head_dim=256, query_pre_attn_scalar=256, sliding_window=1024, **_LONG),
    "gemma3-12b": _preset(
        48, vocab_size=262_208, embed_dim=3840, mlp_dim=15360, num_heads=16, num_kv_heads=8,
        head_dim=256, query_pre_attn_scalar=256, sliding_window=1024, **_LONG),
    "gemma3-27b": _preset(
        62, vocab_size=262_208, embed_dim=5376, mlp_dim=21504, num_heads=32, num_kv_heads=16,
        head_dim=128, query_pre_attn_scalar=168, sliding_window=1024, **_LONG),
    # A few-hundred-KB model for unit tests: every code path of the real ones (GQA, both layer
    # kinds, a window smaller than test sequences) at a size that compiles in seconds; the
    # context of the 270M, since tests feed it few-shot prompts at about a token per character.
    "tiny": _preset(
        4, pattern=2, vocab_size=512, embed_dim=64, mlp_dim=128, num_heads=4, num_kv_heads=2,
        head_dim=16, query_pre_attn_scalar=16, sliding_window=8, max_seq_len=32_768),
}

SENTENCEPIECE_CLASS = "GemmaTokenizer"  # no dummy prefix, unlike LlamaTokenizer

FAMILY = base.Family(
    name=NAME, hf_model_types=(TEXT, MULTIMODAL), hf_architecture="Gemma3ForCausalLM",
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    hf_norm_names=base.FOUR_NORM_NAMES, presets=PRESETS, gguf_architectures=("gemma3",),
    config_from_gguf=config_from_gguf, from_gguf_tensor=from_gguf_tensor,
    special_ids=SPECIAL_IDS, sentencepiece_class=SENTENCEPIECE_CLASS)
