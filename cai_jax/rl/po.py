"""Preference optimisation on soft AI labels: the DPO family as objectives for the engine.

Every open DPO implementation takes a hard winner. The feedback model gives a probability p that
answer a is the better one (an ensemble over principles, clamped under chain of thought), so the
losses here take p itself:

  implied reward  r(y) = beta * (log pi(y | x) - log pi_ref(y | x))   (summed over response tokens)
  margin          m = r(a) - r(b)
  dpo   p * softplus(-m) + (1 - p) * softplus(m)      binary cross-entropy of sigmoid(m) against
                                                     p; p = 1 is DPO, p = 1 - eps the
                                                     conservative ("label smoothing") variant
  ipo   (h - (p - 1/2) / beta)^2,  h = m / beta       Azar et al.'s squared loss; with both orders
                                                     of a pair labelled by a Bernoulli(p) draw its
                                                     minimiser is h = (p - 1/2) / tau (tau =
                                                     beta); p = 1 gives (h - 1 / (2 tau))^2
  hard  dpo with p rounded to 0 or 1; ties (p = 1/2) carry no weight: the baseline that throws
        the label's confidence away

Batches (`cai_jax.data.po_pairs.make_batch`): tokens, targets, valid, weights [B, 2, L] (weights
on the response tokens of each answer), ref_logp [B, 2] (the reference's summed log-probs,
computed once before training and stored), p [B], weight [B] (1 real pair, 0 padding row). The
two answers run as one [2B, L] batch (a reshape that keeps every data shard's rows in place).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cai_jax.model import decoder
from cai_jax.model.config import DecoderConfig
from cai_jax.train import lm, losses

LOSSES = ("dpo", "ipo", "hard")
_F32 = jnp.float32


def target_probability(p: jax.Array, loss: str, label_smoothing: float = 0.0
                       ) -> tuple[jax.Array, jax.Array]:
  """(the target P(a better) each loss trains towards, the weight each pair keeps): `hard`
  rounds p and drops ties; `label_smoothing` eps moves the target to (1 - eps) p + eps (1 - p)."""
  p = jnp.asarray(p, _F32)
  keep = jnp.ones_like(p)
  if loss == "hard":
    keep = (p != 0.5).astype(_F32)
    p = (p > 0.5).astype(_F32)
  if label_smoothing:
    p = (1.0 - label_smoothing) * p + label_smoothing * (1.0 - p)
  return p, keep


def pair_loss(logratio_a: jax.Array, logratio_b: jax.Array, p: jax.Array, *, loss: str,
              beta: float, label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """(per-pair loss, per-pair weight from the label) from the policy-minus-reference log-ratios
  of the two answers; see the module docstring."""
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
  target, keep = target_probability(p, loss, label_smoothing)
  h = logratio_a.astype(_F32) - logratio_b.astype(_F32)
  if loss == "ipo":
    return (h - (target - 0.5) / beta) ** 2, keep
  m = beta * h
  return target * jax.nn.softplus(-m) + (1.0 - target) * jax.nn.softplus(m), keep


def po_loss_sums(logp_B2: jax.Array, ref_logp_B2: jax.Array, p_B: jax.Array, weight_B: jax.Array,
                 *, loss: str, beta: float, label_smoothing: float = 0.0
                 ) -> tuple[jax.Array, dict]:
  """(sum of weight x loss, sums) for the engine's exact averaging.

  sums: `weight` (pairs that carry loss), `sum_reward_margin` (over decisive pairs, p != 1/2:
  beta x (log-ratio of the labelled-better answer - log-ratio of the other)), `sum_correct`
  (decisive pairs whose margin has the label's sign; a margin of exactly 0 counts 1/2, so the
  untrained policy, equal to its reference, scores 0.5), `sum_decisive`, `sum_chosen_reward` /
  `sum_rejected_reward` (the implied rewards of the better / worse answer over decisive pairs)."""
  w = weight_B.astype(_F32)
  p = jnp.asarray(p_B, _F32)
  ratio = logp_B2.astype(_F32) - ref_logp_B2.astype(_F32)
  per_pair, keep = pair_loss(ratio[:, 0], ratio[:, 1], p, loss=loss, beta=beta,
                             label_smoothing=label_smoothing)
  decisive = (p != 0.5).astype(_F32) * w
  sign = jnp.where(p > 0.5, 1.0, -1.0)
  margin = beta * (ratio[:, 0] - ratio[:, 1]) * sign
  correct = jnp.where(margin == 0, 0.5, (margin > 0).astype(_F32))
  chosen = beta * jnp.where(p > 0.5, ratio[:, 0], ratio[:, 1])
  rejected = beta * jnp.where(p > 0.5, ratio[:, 1], ratio[:, 0])
  return jnp.sum(per_pair * keep * w), {
      "weight": jnp.sum(keep * w), "sum_reward_margin": jnp.sum(margin * decisive),
      "sum_correct": jnp.sum(correct * decisive), "sum_decisive": jnp.sum(decisive),
      "sum_chosen_reward": jnp.sum(chosen * decisive),
      "sum_rejected_reward": jnp.sum(rejected * decisive)}


def sequence_logprobs(config: DecoderConfig, params, batch, *, chunk_tokens: int = 1024
                      ) -> jax.Array:
  """[B, 2] float32: each answer's summed log-probability of its weighted (response) tokens."""
  tokens = batch["tokens"]
  B, S, L = tokens.shape
  flat = lambda x: x.reshape(B * S, L)  # noqa: E731
  hidden = lm.hidden_states(config, params, flat(tokens), flat(batch["valid"]))
  logp = losses.token_logprobs(hidden, decoder.output_table(params), flat(batch["targets"]),
                               chunk_tokens=chunk_tokens, dtype=jnp.dtype(config.dtype),
                               softcap=config.final_softcap)
  return jnp.sum(logp * flat(batch["weights"]).astype(_F32), axis=-1).reshape(B, S)


def make_po_loss(config: DecoderConfig, *, loss: str, beta: float, label_smoothing: float = 0.0,
                 chunk_tokens: int = 1024):
  """loss_fn(params, batch, rng) -> (sum of weight x loss, sums incl. `sum_tokens`)."""
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")

  def loss_fn(params, batch, rng):
    del rng  # the decoder has no dropout
    logp = sequence_logprobs(config, params, batch, chunk_tokens=chunk_tokens)
    loss_sum, sums = po_loss_sums(logp, batch["ref_logp"], batch["p"], batch["weight"],
                                  loss=loss, beta=beta, label_smoothing=label_smoothing)
    sums["sum_tokens"] = jnp.sum(batch["valid"], dtype=_F32)
    return loss_sum, sums

  return loss_fn


def make_logprob_fn(config: DecoderConfig, *, chunk_tokens: int = 1024):
  """(params, batch) -> [B, 2] summed response log-probs; compile with
  `engine.compile_eval_step` (the reference pass, once before training)."""
  return lambda params, batch: sequence_logprobs(config, params, batch, chunk_tokens=chunk_tokens)
