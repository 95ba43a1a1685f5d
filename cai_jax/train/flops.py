"""Model FLOPs (for MFU) and the machine's measured matmul peak.

Training FLOPs per token = 6 x parameters (forward 2, backward 4; with tied embeddings the
parameter count includes the vocabulary projection once, which is the matmul that happens) plus
attention: 12 x layers x heads x head_dim x context (scores and weighted sum, forward and
backward), with context = the sequence length (sliding-window layers count min(L, window))."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from cai_jax.model.config import GLOBAL, GemmaConfig


def train_flops_per_token(config: GemmaConfig, seq_len: int) -> float:
  attn = 0.0
  for kind in config.layer_types:
    context = seq_len if kind == GLOBAL else min(seq_len, config.sliding_window)
    attn += 12.0 * config.num_heads * config.head_dim * context
  return 6.0 * config.num_params() + attn


def measure_matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 5,
                        device: jax.Device | None = None) -> float:
  """Best-of-`repeats` FLOP/s of one jitted n x n x n matmul on `device` (default device)."""
  device = device or jax.devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  b = jax.device_put(jnp.ones((n, n), dtype), device)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best
