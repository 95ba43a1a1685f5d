"""Model FLOPs (for MFU) and the machine's measured matmul peak.

Training FLOPs per token = 6 x the parameters that take part in a matmul (forward 2, backward
4) plus attention: 12 x layers x heads x head_dim x context (scores and weighted sum, forward and
backward), with context = the sequence length (sliding-window layers count min(L, window)).

The embedding lookup is a gather, not a matmul: its V x D table costs FLOPs only where the model
projects onto the vocabulary (`lm_head=True`: the LM loss, PPO's policy). A preference or value
model reads a scalar head instead (`lm_head=False`, + 6 x D for the head); counting the
vocabulary there (168M of the default 270M model's 268M parameters) overstated its FLOPs about
2.7x and read as an MFU above 1. `tests/test_train_engine.py` checks both counts against XLA's
own count of the compiled steps."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from cai_jax.model.config import GLOBAL, DecoderConfig


def train_flops_per_token(config: DecoderConfig, seq_len: int, *, lm_head: bool = True) -> float:
  """Model FLOPs of one token's forward + backward pass at padded length `seq_len`."""
  attn = 0.0
  for kind in config.layer_types:
    context = seq_len if kind == GLOBAL else min(seq_len, config.sliding_window)
    attn += 12.0 * config.num_heads * config.head_dim * context
  if lm_head:
    return 6.0 * config.num_params() + attn
  body = config.num_params() - config.vocab_size * config.embed_dim
  return 6.0 * (body + config.embed_dim) + attn


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
