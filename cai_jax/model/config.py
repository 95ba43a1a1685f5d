"""Gemma 3 text-decoder hyper-parameters and the published presets.

One frozen dataclass describes every size; checkpoint importers fill it from file metadata and
exporters write it back, so it round-trips through JSON (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

LOCAL = "local"
GLOBAL = "global"


def layer_types_from_pattern(num_layers: int, pattern: int) -> tuple[str, ...]:
  """Gemma 3 interleaves (pattern - 1) sliding-window layers with one global layer."""
  return tuple(GLOBAL if (i + 1) % pattern == 0 else LOCAL for i in range(num_layers))


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Architecture of a Gemma 3 text decoder (the Flax module and the checkpoint formats read it)."""

  vocab_size: int
  embed_dim: int
  mlp_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  query_pre_attn_scalar: float
  sliding_window: int
  layer_types: tuple[str, ...]
  local_rope_base: float = 10_000.0
  global_rope_base: float = 1_000_000.0
  # Linear RoPE scaling ("position interpolation") on global layers: 8.0 for the 4B-27B models.
  global_rope_scale: float = 1.0
  rms_norm_eps: float = 1e-6
  max_seq_len: int = 32_768
  # Storage dtype of the parameters and dtype of the matmuls; norms, RoPE and softmax stay float32.
  param_dtype: str = "float32"
  dtype: str = "float32"
  # Recompute in the backward pass: '' (off), 'full' (each block from its input) or 'dots'
  # (keep matmul outputs, recompute the rest: norms, activations, attention). True = 'full'.
  remat: bool | str = False

  def __post_init__(self):
    if len(self.layer_types) != self.num_layers:
      raise ValueError(
          f"layer_types has {len(self.layer_types)} entries, num_layers is {self.num_layers}")
    bad = set(self.layer_types) - {LOCAL, GLOBAL}
    if bad:
      raise ValueError(f"unknown layer types {sorted(bad)}; expected {LOCAL!r} or {GLOBAL!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")

  def replace(self, **kwargs) -> GemmaConfig:
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["layer_types"] = list(self.layer_types)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> GemmaConfig:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown GemmaConfig fields: {sorted(unknown)}")
    d = dict(d)
    d["layer_types"] = tuple(d["layer_types"])
    return cls(**d)

  def num_params(self) -> int:
    """Parameter count (tied embedding counted once)."""
    attn = self.embed_dim * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.embed_dim * self.mlp_dim
    norms = 4 * self.embed_dim + 2 * self.head_dim
    return (self.vocab_size * self.embed_dim + self.num_layers * (attn + mlp + norms)
            + self.embed_dim)


def _preset(num_layers, pattern=6, **kw) -> GemmaConfig:
  return GemmaConfig(num_layers=num_layers,
                     layer_types=layer_types_from_pattern(num_layers, pattern), **kw)


# Values from the published Gemma 3 model cards / configs (text towers). The 4B+ checkpoints carry
# 262,208 vocabulary rows (image tokens included), the 270M and 1B 262,144.
PRESETS: dict[str, GemmaConfig] = {
    "gemma3-270m": _preset(
        18, vocab_size=262_144, embed_dim=640, mlp_dim=2048, num_heads=4, num_kv_heads=1,
        head_dim=256, query_pre_attn_scalar=256, sliding_window=512),
    "gemma3-1b": _preset(
        26, vocab_size=262_144, embed_dim=1152, mlp_dim=6912, num_heads=4, num_kv_heads=1,
        head_dim=256, query_pre_attn_scalar=256, sliding_window=512),
    "gemma3-4b": _preset(
        34, vocab_size=262_208, embed_dim=2560, mlp_dim=10240, num_heads=8, num_kv_heads=4,
        head_dim=256, query_pre_attn_scalar=256, sliding_window=1024, global_rope_scale=8.0,
        max_seq_len=131_072),
    "gemma3-12b": _preset(
        48, vocab_size=262_208, embed_dim=3840, mlp_dim=15360, num_heads=16, num_kv_heads=8,
        head_dim=256, query_pre_attn_scalar=256, sliding_window=1024, global_rope_scale=8.0,
        max_seq_len=131_072),
    "gemma3-27b": _preset(
        62, vocab_size=262_208, embed_dim=5376, mlp_dim=21504, num_heads=32, num_kv_heads=16,
        head_dim=128, query_pre_attn_scalar=168, sliding_window=1024, global_rope_scale=8.0,
        max_seq_len=131_072),
    # A few-hundred-KB model for unit tests: every code path of the real ones (GQA, both layer
    # kinds, a window smaller than test sequences) at a size that compiles in seconds.
    "tiny": _preset(
        4, pattern=2, vocab_size=512, embed_dim=64, mlp_dim=128, num_heads=4, num_kv_heads=2,
        head_dim=16, query_pre_attn_scalar=16, sliding_window=8, max_seq_len=1024),
}


def preset(name: str, **overrides) -> GemmaConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
  return PRESETS[name].replace(**overrides)
