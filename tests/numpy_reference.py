"""An independent float64 NumPy forward pass of the Gemma 3 text decoder, for testing.

Written from the architecture description (Gemma 3 technical report / the HF modelling layout),
not from cai_jax.model.gemma, and fed the HF-named state dict (torch's [out, in] weight layout):

  x = embed[tokens] * sqrt(D)
  per layer:  h = x + post_attn_norm(attn(pre_attn_norm(x)))
              x = h + post_ffw_norm(mlp(pre_ffw_norm(h)))
  logits = final_norm(x) @ embed.T

RMSNorm(x) = x / sqrt(mean(x^2) + eps) * (1 + w). Attention: q/k/v projections, QK-norm per
head, RoPE in the rotate_half layout (local layers: local base; global layers: global base with
frequencies divided by the linear scale), queries times query_pre_attn_scalar**-0.5, grouped
query heads sharing kv heads, causal mask, and on local layers only keys with
q_pos - k_pos < sliding_window. MLP: down(gelu_tanh(gate x) * up x).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
  x = np.asarray(x, np.float64)
  denom = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
  return x / denom * (1.0 + np.asarray(w, np.float64))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _rotate_half(x: np.ndarray) -> np.ndarray:
  half = x.shape[-1] // 2
  return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x_LNH: np.ndarray, positions_L: np.ndarray, base: float,
               scale: float) -> np.ndarray:
  """x: [L, heads, head_dim]; the cos/sin tables repeat each frequency for both halves."""
  head_dim = x_LNH.shape[-1]
  inv_freq = np.array([base ** (-(2.0 * i) / head_dim) for i in range(head_dim // 2)])
  inv_freq = inv_freq / scale
  freqs = np.outer(positions_L.astype(np.float64), inv_freq)     # [L, H/2]
  emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]      # [L, 1, H]
  return x_LNH * np.cos(emb) + _rotate_half(x_LNH) * np.sin(emb)


def _linear(x: np.ndarray, w_out_in: np.ndarray) -> np.ndarray:
  return x @ np.asarray(w_out_in, np.float64).T


def attention(x_LD: np.ndarray, state: Mapping[str, np.ndarray], prefix: str, config,
              is_global: bool, positions_L: np.ndarray) -> np.ndarray:
  c = config
  L = x_LD.shape[0]
  n_q, n_kv, hd = c.num_heads, c.num_kv_heads, c.head_dim
  q = _linear(x_LD, state[prefix + "q_proj.weight"]).reshape(L, n_q, hd)
  k = _linear(x_LD, state[prefix + "k_proj.weight"]).reshape(L, n_kv, hd)
  v = _linear(x_LD, state[prefix + "v_proj.weight"]).reshape(L, n_kv, hd)
  q = rms_norm(q, state[prefix + "q_norm.weight"], c.rms_norm_eps)
  k = rms_norm(k, state[prefix + "k_norm.weight"], c.rms_norm_eps)
  if is_global:
    base, scale = c.global_rope_base, c.global_rope_scale
  else:
    base, scale = c.local_rope_base, 1.0
  q = apply_rope(q, positions_L, base, scale) * (float(c.query_pre_attn_scalar) ** -0.5)
  k = apply_rope(k, positions_L, base, scale)

  qp = positions_L[:, None]
  kp = positions_L[None, :]
  allowed = kp <= qp
  if not is_global:
    allowed &= (qp - kp) < c.sliding_window

  group = n_q // n_kv
  out = np.zeros((L, n_q, hd))
  for h in range(n_q):
    kv = h // group
    scores = q[:, h, :] @ k[:, kv, :].T                          # [L, L]
    scores = np.where(allowed, scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    out[:, h, :] = p @ v[:, kv, :]
  return _linear(out.reshape(L, n_q * hd), state[prefix + "o_proj.weight"])


def mlp(x_LD: np.ndarray, state: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
  gate = gelu_tanh(_linear(x_LD, state[prefix + "gate_proj.weight"]))
  up = _linear(x_LD, state[prefix + "up_proj.weight"])
  return _linear(gate * up, state[prefix + "down_proj.weight"])


def forward_one(state: Mapping[str, np.ndarray], config, tokens_L,
                positions_L: Optional[np.ndarray] = None, return_hidden: bool = False):
  """Logits [L, V] (float64) of one unpadded sequence; positions default to 0..L-1."""
  c = config
  tokens_L = np.asarray(tokens_L)
  positions_L = (np.arange(len(tokens_L)) if positions_L is None
                 else np.asarray(positions_L))
  embed = np.asarray(state["model.embed_tokens.weight"], np.float64)
  x = embed[tokens_L] * math.sqrt(c.embed_dim)
  eps = c.rms_norm_eps
  for i, kind in enumerate(c.layer_types):
    p = f"model.layers.{i}."
    a = attention(rms_norm(x, state[p + "input_layernorm.weight"], eps), state,
                  p + "self_attn.", c, kind == "global", positions_L)
    h = x + rms_norm(a, state[p + "post_attention_layernorm.weight"], eps)
    m = mlp(rms_norm(h, state[p + "pre_feedforward_layernorm.weight"], eps), state, p + "mlp.")
    x = h + rms_norm(m, state[p + "post_feedforward_layernorm.weight"], eps)
  hidden = rms_norm(x, state["model.norm.weight"], eps)
  if return_hidden:
    return hidden
  return hidden @ embed.T


def forward(state: Mapping[str, np.ndarray], config, tokens_BL) -> np.ndarray:
  """Logits [B, L, V] (float64) for a batch of unpadded rows."""
  return np.stack([forward_one(state, config, row) for row in np.asarray(tokens_BL)])
