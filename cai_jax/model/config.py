"""Decoder hyper-parameters: one frozen dataclass for every supported family.

A family (`cai_jax/model/families/`) is a set of choices among the fields below: the norm
convention, which norms exist, biases, the activation, RoPE, windows, soft-caps. The Flax module
(`decoder.py`) reads only these fields, so a new family that recombines them needs no model code.
Checkpoint importers fill the dataclass from file metadata and exporters write it back; it
round-trips through JSON (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

LOCAL = "local"    # sliding-window attention
GLOBAL = "global"  # full causal attention

ACTIVATIONS = ("silu", "gelu_tanh")
ROPE_SCALINGS = ("none", "linear", "llama3", "yarn")


def layer_types_from_pattern(num_layers: int, pattern: int) -> tuple[str, ...]:
  """(pattern - 1) sliding-window layers, then one global layer, repeated."""
  return tuple(GLOBAL if (i + 1) % pattern == 0 else LOCAL for i in range(num_layers))


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture of a decoder-only transformer (the Flax module and checkpoint formats read it).

  Defaults are the plain pre-norm decoder (Llama's choices); families override what differs."""

  vocab_size: int
  embed_dim: int
  mlp_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  # Queries are multiplied by query_pre_attn_scalar ** -0.5 (head_dim in most families).
  query_pre_attn_scalar: float
  layer_types: tuple[str, ...]
  # The family that wrote this config (registry key in cai_jax.model.families): it decides the
  # checkpoint formats' names; the model itself reads only the fields below.
  family: str = "llama"
  sliding_window: int = 0             # window of LOCAL layers (positions), 0 when none are
  local_rope_base: float = 10_000.0
  global_rope_base: float = 10_000.0
  # RoPE scaling of GLOBAL layers: 'none', 'linear' (frequencies / factor), 'llama3' (Llama
  # 3.1's piecewise rule: low frequencies / factor, high ones kept, a smooth band between) or
  # 'yarn' (a linear ramp between the two by rotations, and an attention temperature).
  rope_scaling: str = "none"
  global_rope_scale: float = 1.0      # the factor of 'linear', 'llama3' and 'yarn'
  rope_low_freq_factor: float = 1.0   # 'llama3' only
  rope_high_freq_factor: float = 4.0  # 'llama3' only
  rope_original_max_len: int = 8192   # 'llama3' and 'yarn'
  rope_beta_fast: float = 32.0        # 'yarn' only: the ramp between interpolated and
  rope_beta_slow: float = 1.0         #   extrapolated frequencies, in rotations
  rope_truncate: bool = True          # 'yarn' only: the ramp's ends rounded outwards
  rope_attention_factor: float = 1.0  # 'yarn' only: cos and sin times this
  # RMSNorm multiplies by (norm_offset + w): 0 with w initialised to ones, or 1 + w with
  # w initialised to zeros (the init follows from the offset: every norm starts as identity).
  norm_offset: float = 0.0
  post_norms: bool = False            # norms on the attention and MLP outputs too
  qk_norm: bool = False               # RMSNorm of each query / key head
  qkv_bias: bool = False              # biases on the q, k, v projections
  activation: str = "silu"            # of the gated MLP: 'silu' or 'gelu_tanh'
  embed_scale: bool = False           # embeddings times sqrt(embed_dim)
  tie_embeddings: bool = True         # output head = the embedding table; else its own table
  attn_softcap: float = 0.0           # cap * tanh(logits / cap) on attention logits; 0 = off
  final_softcap: float = 0.0          # the same on the output logits; 0 = off
  rms_norm_eps: float = 1e-6
  max_seq_len: int = 32_768
  # Storage dtype of the parameters and dtype of the matmuls; norms, RoPE and softmax stay float32.
  param_dtype: str = "float32"
  dtype: str = "float32"
  # Weights stored narrower than `dtype` (e.g. bfloat16 sampling weights with float32 compute):
  # False upcasts each weight to `dtype` for its matmul; True feeds the matmul the weight as
  # stored and the activations cast down to it, accumulating in `dtype` (no upcast copy of the
  # weights, which XLA materialises on CPU at every decode step).
  narrow_matmuls: bool = False
  # Recompute in the backward pass: '' (off), 'full' (each block from its input) or 'dots'
  # (keep matmul outputs, recompute the rest: norms, activations, attention). True = 'full'.
  remat: bool | str = False
  # Run the layers as a scan over repeated groups (`layer_scan`): compile time independent of
  # depth; parameters then live in the scanned layout (checkpoint files never do).
  scan_layers: bool = False

  def __post_init__(self):
    if len(self.layer_types) != self.num_layers:
      raise ValueError(
          f"layer_types has {len(self.layer_types)} entries, num_layers is {self.num_layers}")
    bad = set(self.layer_types) - {LOCAL, GLOBAL}
    if bad:
      raise ValueError(f"unknown layer types {sorted(bad)}; expected {LOCAL!r} or {GLOBAL!r}")
    if LOCAL in self.layer_types and self.sliding_window <= 0:
      raise ValueError("sliding-window layers need sliding_window > 0")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation {self.activation!r}; expected one of {ACTIVATIONS}")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise ValueError(f"rope_scaling {self.rope_scaling!r}; expected one of {ROPE_SCALINGS}")
    if self.rope_scaling == "none" and self.global_rope_scale != 1.0:
      raise ValueError(f"global_rope_scale={self.global_rope_scale} with rope_scaling='none'; "
                       "name the scaling ('linear' or 'llama3')")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

  def replace(self, **kwargs) -> DecoderConfig:
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["layer_types"] = list(self.layer_types)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
    """The inverse of `to_dict` (`families.config_from_dict` also reads older dicts)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown DecoderConfig fields: {sorted(unknown)}")
    if "family" not in d:
      raise ValueError("a DecoderConfig dict without 'family' (read it with "
                       "families.config_from_dict)")
    d = dict(d)
    d["layer_types"] = tuple(d["layer_types"])
    return cls(**d)

  @property
  def window(self) -> int | None:
    """The sliding window of LOCAL layers (None when every layer is global)."""
    return self.sliding_window if LOCAL in self.layer_types else None

  def num_params(self) -> int:
    """Parameter count (a tied embedding counted once)."""
    D, N, K, H = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim
    attn = D * H * (2 * N + 2 * K)
    if self.qkv_bias:
      attn += H * (N + 2 * K)
    mlp = 3 * D * self.mlp_dim
    norms = (4 if self.post_norms else 2) * D + (2 * H if self.qk_norm else 0)
    head = 0 if self.tie_embeddings else self.vocab_size * D
    return self.vocab_size * D + head + self.num_layers * (attn + mlp + norms) + D

