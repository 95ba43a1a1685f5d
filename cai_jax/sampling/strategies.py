"""Sampling strategies: small frozen dataclasses with one method, `sample(logits, key)`.

`key` is one PRNG key for the batch or one per row ([B, 2]: a row's draws then depend on its
own key alone). Each returns the chosen tokens and their log-probabilities under the *sampling* distribution
(after temperature and truncation); the sampler separately records log-probs under the raw
model distribution, which is what PPO needs.

Logits come as [B, V], or vocab-major as [V, B] with `vocab_axis=0` (the CPU sampler's fast
matmul layout): greedy and untruncated sampling then reduce over the vocabulary where it lies,
instead of reading a transposed view (at 64 rows XLA's fused transposed reads cost as much as
the vocabulary projection itself).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def argmax(logits: jax.Array, axis: int = -1) -> jax.Array:
  """int32 index of the maximum along `axis`, the first one on ties (as jnp.argmax), computed as
  a max and then a min over the indices where it is reached: two plain reductions, which XLA
  runs several times faster on CPU than argmax's reduction over (value, index) pairs."""
  axis = axis % logits.ndim
  top = jnp.max(logits, axis=axis, keepdims=True)
  index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, axis)
  last = logits.shape[axis] - 1  # a NaN row (never equal to its max) gets the last id
  return jnp.min(jnp.where(logits == top, index, last), axis=axis)


def logprob_of(logits: jax.Array, tokens_B: jax.Array, axis: int = -1) -> jax.Array:
  """log_softmax(logits)[token] per row, over the vocabulary along `axis` (0 or -1 of a 2-D
  array): the chosen logit minus the logsumexp, with no [B, V] log_softmax."""
  index = jnp.expand_dims(tokens_B, axis)
  chosen = jnp.take_along_axis(logits, index, axis=axis).squeeze(axis)
  return chosen - jax.nn.logsumexp(logits, axis=axis)


@dataclasses.dataclass(frozen=True)
class Greedy:
  """argmax; the sampling distribution puts all mass on it (log-prob 0)."""

  def sample(self, logits: jax.Array, key: jax.Array,
             vocab_axis: int = -1) -> tuple[jax.Array, jax.Array]:
    del key
    tokens = argmax(logits, vocab_axis)
    return tokens, jnp.zeros(tokens.shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Temperature sampling, optionally truncated to the top-k tokens and/or the top-p nucleus
  (top-k first, then top-p within it). Defaults sample from the raw model distribution."""
  temperature: float = 1.0
  top_k: int = 0      # 0: no top-k truncation
  top_p: float = 1.0  # 1.0: no nucleus truncation

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0 (use Greedy for 0), got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  def masked_logits(self, logits_BV: jax.Array) -> jax.Array:
    """Tempered logits with the truncated-away tokens at -inf ([B, V]; without truncation any
    layout)."""
    logits = logits_BV.astype(jnp.float32) / self.temperature
    if self.top_k:
      kth = jax.lax.top_k(logits, self.top_k)[0][..., -1:]
      logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if self.top_p < 1.0:
      sorted_desc = jnp.sort(logits, axis=-1)[..., ::-1]
      probs = jax.nn.softmax(sorted_desc, axis=-1)
      # Keep a token while the mass strictly before it is below top_p (the first always stays).
      before = jnp.cumsum(probs, axis=-1) - probs
      kept = jnp.where(before < self.top_p, sorted_desc, jnp.inf)
      threshold = jnp.min(kept, axis=-1, keepdims=True)
      logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return logits

  def sample(self, logits: jax.Array, key: jax.Array,
             vocab_axis: int = -1) -> tuple[jax.Array, jax.Array]:
    vocab_major = vocab_axis % logits.ndim == 0
    if vocab_major and (self.top_k or self.top_p < 1.0):
      logits, vocab_major = logits.T, False  # top_k and the nucleus sort work on [B, V]
    logits = self.masked_logits(logits)
    axis, rows = (0, logits.shape[1]) if vocab_major else (-1, logits.shape[0])
    tokens = inverse_cdf_draw(logits, row_uniforms(key, rows), axis)
    return tokens, logprob_of(logits, tokens, axis)


def row_uniforms(key: jax.Array, rows: int) -> jax.Array:
  """[rows] float32 uniforms in [0, 1): from one key for the batch, or one key per row (`key`
  [B, 2]: row b's draw then depends on its own key only, not on the batch it is sampled in)."""
  if key.ndim == 2:
    return jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(key)
  return jax.random.uniform(key, (rows,), jnp.float32)


def inverse_cdf_draw(logits: jax.Array, u_B: jax.Array, axis: int = -1) -> jax.Array:
  """One token per row drawn from softmax(logits) by inverting its cumulative distribution:
  the first token whose running sum of exp(logits - max) exceeds u * the total. One uniform
  per row instead of jax.random.categorical's Gumbel noise for every vocabulary entry: for 8
  rows of a 262,144-token vocabulary 6.0 ms against 15.8 ms per draw on this repository's CPU
  (benchmarks/sampling_draw.py). Tokens of probability 0 (masked to -inf) are never drawn;
  should rounding in the running sum ever land on one, the row takes its most probable token."""
  axis = axis % logits.ndim
  weights = jnp.exp(logits - jnp.max(logits, axis=axis, keepdims=True))
  running = jnp.cumsum(weights, axis=axis)
  total = jax.lax.index_in_dim(running, logits.shape[axis] - 1, axis, keepdims=True)
  x = jnp.expand_dims(u_B, axis) * total
  tokens = jnp.sum(running <= x, axis=axis, dtype=jnp.int32)
  tokens = jnp.minimum(tokens, logits.shape[axis] - 1)
  chosen = jnp.take_along_axis(weights, jnp.expand_dims(tokens, axis), axis=axis).squeeze(axis)
  return jnp.where(chosen > 0, tokens, argmax(logits, axis))


def from_settings(temperature: float, top_k: int = 0, top_p: float = 1.0):
  """Greedy for temperature 0, else Sampling: what a config's generate.* fields mean."""
  if temperature == 0:
    if top_k or top_p != 1.0:
      raise ValueError("top_k / top_p need temperature > 0 (temperature 0 means greedy)")
    return Greedy()
  return Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
