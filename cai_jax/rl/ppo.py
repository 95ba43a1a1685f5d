"""PPO for RLHF on token sequences: the math as small pure, jit-friendly functions.

Everything works on `[B, T]` arrays of *response* tokens (row b, response position t) with a
float `mask_BT`: 1 for real response tokens, 0 for padding. Nothing loops over tokens in Python:
GAE is one reverse `jax.lax.scan` over T, everything else is elementwise or a masked reduction.
Habits from Tunix's `algo_core.py`, lmpo and lm-human-preferences(-details).

One PPO iteration, in the order a trainer calls these:

    score_B   = read_at_index(pm_scores_BL, end_index_B)           # PM score at each row's end
    score_B   = missing_end_penalty(score_B, finished_B, -1.0)     # rows cut off at max length
    kl_BT     = kl_per_token(logp_BT, ref_logp_BT, "k1")           # sampling policy vs reference
    rewards   = token_rewards(score_B, kl_BT, mask_BT, kl_coef, end_index_B)
    adv, ret  = gae(rewards, values_BT, mask_BT, gamma, lam)       # returns from raw advantages
    adv       = whiten(adv, mask_BT)                               # over the whole rollout batch
    ... for each PPO epoch and micro-batch:
    pg_sum, n, stats = policy_loss(new_logp, logp_BT, adv, mask, clip_eps)
    vf_sum, _        = value_loss(new_values, values_BT, ret, mask, clip_eps_value)
    ent_sum, _       = entropy_of_logprobs(new_logp_BTV, mask)     # optional bonus
    loss_sum = pg_sum + vf_coef * vf_sum - ent_coef * ent_sum      # divided once by the global n
    ... after the iteration:
    kl_coef = AdaptiveKLController(target, horizon).update(kl_coef, mean_kl, n_steps=B)

(sum, count) convention: losses and statistics return sums over tokens together with the token
count (the mask's sum), never means. A micro-batch or host adds its sums and counts to the
others' and the trainer divides once, so the token mean is the same whatever the split
(`masked_sum_count`).

Conventions, fixed here once:
- `kl_per_token`: k1 = logp - ref_logp (unbiased, can be negative per token);
  k2 = 0.5 (logp - ref_logp)^2; k3 = (r - 1) - log r with r = exp(ref_logp - logp) = q/p
  (Schulman's "Approximating KL divergence": unbiased for KL(p || ref) when tokens are sampled
  from p, and >= 0 per token).
- `whiten`: biased (population) variance by default, as lm-human-preferences
  (`tf.nn.moments`); `unbiased=True` applies Bessel's correction (as TRL's `masked_whiten`).
- `policy_loss`'s `approx_kl_sum` is lm-human-preferences' 0.5 (logp - old_logp)^2; the k3 form
  is reported too, as `approx_kl_k3_sum`. `clipfrac_sum` counts tokens whose clipped loss term
  is strictly larger than the unclipped one (the clip is what the gradient sees).
- GAE treats masked positions as absent: they get advantage and return 0, their rewards and
  values are ignored, and the recursion passes over them unchanged, so after a row's last real
  token the bootstrap value is 0 (the episode ends there).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(_F32)


# ---------------------------------------------------------------------------------------------
# (sum, count) reductions


def masked_sum_count(x_BT: jax.Array, mask_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of x * mask, sum of mask), float32 scalars.

  Why pairs and not means: the mean of per-micro-batch means is not the token mean when the
  micro-batches hold different numbers of tokens. Adding sums and counts over micro-batches and
  hosts and dividing once is exact."""
  m = _f32(mask_BT)
  return jnp.sum(_f32(x_BT) * m), jnp.sum(m)


def masked_mean(x_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
  """Token mean of x over mask (0 when the mask is empty)."""
  s, n = masked_sum_count(x_BT, mask_BT)
  return s / jnp.maximum(n, 1e-8)


def masked_var(x_BT: jax.Array, mask_BT: jax.Array, unbiased: bool = False) -> jax.Array:
  """Masked variance of x: biased (divide by n) by default, Bessel-corrected (n - 1) if asked."""
  m = _f32(mask_BT)
  x = _f32(x_BT)
  mean = masked_mean(x, m)
  s, n = masked_sum_count(jnp.square(x - mean), m)
  denom = n - 1.0 if unbiased else n
  return s / jnp.maximum(denom, 1e-8)


# ---------------------------------------------------------------------------------------------
# Indices, rewards, KL


def read_at_index(x_BT: jax.Array, index_B: jax.Array) -> jax.Array:
  """x_BT[b, index_B[b]] for each row: e.g. the preference model's score at the end token.

  Read scores at an explicit end index (the position of each row's last real token, known to
  whoever built the batch) rather than guessing it from padding."""
  idx = jnp.asarray(index_B, jnp.int32)[:, None]
  return jnp.take_along_axis(x_BT, idx, axis=1)[:, 0]


def last_index_from_mask(mask_BT: jax.Array) -> jax.Array:
  """[B] int32: the last t with mask[b, t] > 0, or -1 for a row with no real token."""
  T = mask_BT.shape[1]
  real = jnp.asarray(mask_BT) > 0
  t = jnp.arange(T, dtype=jnp.int32)
  return jnp.max(jnp.where(real, t[None, :], -1), axis=1)


def mask_from_end_index(end_index_B: jax.Array, T: int) -> jax.Array:
  """[B, T] float32 mask, 1 at positions 0..end_index_B[b] (a row with end index -1 is empty)."""
  t = jnp.arange(T, dtype=jnp.int32)
  return (t[None, :] <= jnp.asarray(end_index_B, jnp.int32)[:, None]).astype(_F32)


@functools.partial(jax.jit, static_argnames=("estimator",))
def kl_per_token(logp_BT: jax.Array, ref_logp_BT: jax.Array, estimator: str = "k1") -> jax.Array:
  """[B, T] per-token estimate of KL(policy || reference) from the sampled tokens' log-probs.

  The tokens must have been sampled from the policy whose log-probs are `logp_BT`.
  - "k1": logp - ref_logp. Unbiased, high variance, negative on some tokens. What
    lm-human-preferences and most RLHF code put in the reward.
  - "k2": 0.5 (logp - ref_logp)^2. Biased, low variance, >= 0.
  - "k3": (r - 1) - log r, r = exp(ref_logp - logp). Unbiased, lower variance than k1 and
    >= 0 on every token (log r <= r - 1). Computed with expm1 so it stays exact for small
    differences.
  Masked positions are not zeroed here; `token_rewards` and the reductions apply the mask."""
  d = _f32(logp_BT) - _f32(ref_logp_BT)
  if estimator == "k1":
    return d
  if estimator == "k2":
    return 0.5 * jnp.square(d)
  if estimator == "k3":
    log_r = -d
    return jnp.expm1(log_r) - log_r
  raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


@jax.jit
def token_rewards(score_B: jax.Array, kl_BT: jax.Array, mask_BT: jax.Array, kl_coef,
                  end_index_B: jax.Array | None = None) -> jax.Array:
  """[B, T] per-token rewards: -kl_coef * kl on every real token, plus the sequence score at
  the row's last real token (0 on padding).

  `end_index_B` is the index of each row's last real response token. Pass it explicitly: the
  trainer knows where each response ended, while deriving it from the mask (the fallback when
  it is None: the last t with mask > 0) silently goes wrong for masks with holes. A row whose
  end index is -1 (no real token) receives no score. An end index at a masked position puts the
  score where `gae` ignores it: keep it on a real token. `kl_coef` may be a traced scalar (the
  adaptive controller's current value), so changing it does not recompile."""
  m = _f32(mask_BT)
  T = m.shape[1]
  if end_index_B is None:
    end_index_B = last_index_from_mask(m)
  at_end = jax.nn.one_hot(jnp.asarray(end_index_B, jnp.int32), T, dtype=_F32)  # -1 -> all zero
  return -_f32(kl_coef) * _f32(kl_BT) * m + at_end * _f32(score_B)[:, None]


def missing_end_penalty(score_B: jax.Array, finished_B: jax.Array, penalty,
                        replace: bool = False) -> jax.Array:
  """Scores with rows that did not end on a stop string or EOS penalised.

  A response cut off at the length limit was never judged as complete by the preference model,
  and without a penalty the policy can learn to ramble into the limit. `finished_B` is True
  where the row ended on a stop/EOS. Unfinished rows get `score + penalty` (pass a negative
  value, e.g. -1.0), or exactly `penalty` with `replace=True` (lm-human-preferences' choice)."""
  score = _f32(score_B)
  penalised = _f32(penalty) if replace else score + _f32(penalty)
  return jnp.where(jnp.asarray(finished_B, bool), score, penalised)


# ---------------------------------------------------------------------------------------------
# Advantages


@jax.jit
def gae(rewards_BT: jax.Array, values_BT: jax.Array, mask_BT: jax.Array, gamma,
        lam) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation: ([B, T] advantages, [B, T] returns), one reverse scan.

      delta_t = r_t + gamma V_{t+1} - V_t,     A_t = delta_t + gamma lam A_{t+1},
      R_t = A_t + V_t,

  where "t+1" is the next *real* position of the row: masked positions are skipped (their
  reward and value are ignored, their advantage and return are 0, the carry passes over them
  unchanged), and after a row's last real token V = A = 0 (the episode ends; no bootstrap). A
  row whose mask is all 0 gets zeros. Returns are computed from these raw advantages; whiten
  the advantages afterwards (for the policy loss), not the returns (the value target).
  `gamma` and `lam` may be traced."""
  r = _f32(rewards_BT)
  v = _f32(values_BT)
  real = jnp.asarray(mask_BT) > 0
  gamma = _f32(gamma)
  lam = _f32(lam)
  B = r.shape[0]

  def step(carry, xs):
    next_value, next_adv = carry
    r_t, v_t, real_t = xs
    delta = r_t + gamma * next_value - v_t
    adv = delta + gamma * lam * next_adv
    new_carry = (jnp.where(real_t, v_t, next_value), jnp.where(real_t, adv, next_adv))
    return new_carry, jnp.where(real_t, adv, 0.0)

  init = (jnp.zeros((B,), _F32), jnp.zeros((B,), _F32))
  _, adv_TB = jax.lax.scan(step, init, (r.T, v.T, real.T), reverse=True)
  adv = adv_TB.T
  returns = jnp.where(real, adv + v, 0.0)
  return adv, returns


@functools.partial(jax.jit, static_argnames=("shift_mean", "unbiased"))
def whiten(x_BT: jax.Array, mask_BT: jax.Array, shift_mean: bool = True, eps: float = 1e-8,
           unbiased: bool = False) -> jax.Array:
  """(x - mean) / sqrt(var + eps) over the real tokens; 0 on masked positions.

  Mean and variance are over every real token of the batch (biased variance by default, as
  lm-human-preferences; `unbiased=True` for Bessel's correction). With `shift_mean=False` the
  mean is added back (only the scale changes), as lm-human-preferences does for rewards.
  Whiten the whole rollout batch at once (before splitting into micro-batches): the statistics
  are batch-wide. Under jit with a batch sharded over devices and hosts the sums are global."""
  x = _f32(x_BT)
  m = _f32(mask_BT)
  mean = masked_mean(x, m)
  var = masked_var(x, m, unbiased=unbiased)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return jnp.where(m > 0, out, 0.0)


# ---------------------------------------------------------------------------------------------
# Losses: (sum, count[, stats]) over tokens


@jax.jit
def policy_loss(logp_BT: jax.Array, old_logp_BT: jax.Array, advantages_BT: jax.Array,
                mask_BT: jax.Array, clip_eps) -> tuple[jax.Array, jax.Array, dict]:
  """PPO's clipped surrogate: (loss sum, token count, stats sums).

      ratio = exp(logp - old_logp),
      loss_t = max(-A_t ratio, -A_t clip(ratio, 1 - eps, 1 + eps)).

  `old_logp_BT` are the log-probs of the policy that sampled (or last saw) the tokens; they and
  the advantages are treated as constants (stop_gradient). Stats (all sums over real tokens,
  to be divided by the same global count): `clipfrac_sum` (tokens where the clipped term is
  strictly larger, i.e. the clip is active), `approx_kl_sum` (0.5 (logp - old_logp)^2, as
  lm-human-preferences), `approx_kl_k3_sum` ((ratio - 1) - log ratio) and `ratio_sum`."""
  m = _f32(mask_BT)
  logp = _f32(logp_BT)
  old = jax.lax.stop_gradient(_f32(old_logp_BT))
  adv = jax.lax.stop_gradient(_f32(advantages_BT))
  eps = _f32(clip_eps)
  log_ratio = logp - old
  ratio = jnp.exp(log_ratio)
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - eps, 1.0 + eps)
  loss = jnp.maximum(unclipped, clipped)
  loss_sum, count = masked_sum_count(loss, m)
  lr = jax.lax.stop_gradient(log_ratio)
  stats = {
      "clipfrac_sum": jnp.sum((clipped > unclipped).astype(_F32) * m),
      "approx_kl_sum": jnp.sum(0.5 * jnp.square(lr) * m),
      "approx_kl_k3_sum": jnp.sum((jnp.expm1(lr) - lr) * m),
      "ratio_sum": jnp.sum(jnp.exp(lr) * m),
  }
  return loss_sum, count, stats


@jax.jit
def value_loss(values_BT: jax.Array, old_values_BT: jax.Array, returns_BT: jax.Array,
               mask_BT: jax.Array, clip_eps) -> tuple[jax.Array, jax.Array]:
  """Clipped value loss: (sum, count) of 0.5 max((v - R)^2, (clip(v, v_old +- eps) - R)^2).

  The clip keeps the value head near the values the advantages were computed with, as PPO's
  ratio clip does for the policy (lm-human-preferences' `cliprange_value`). `old_values_BT` and
  `returns_BT` are constants (stop_gradient)."""
  m = _f32(mask_BT)
  v = _f32(values_BT)
  old = jax.lax.stop_gradient(_f32(old_values_BT))
  ret = jax.lax.stop_gradient(_f32(returns_BT))
  eps = _f32(clip_eps)
  v_clipped = jnp.clip(v, old - eps, old + eps)
  loss = 0.5 * jnp.maximum(jnp.square(v - ret), jnp.square(v_clipped - ret))
  return masked_sum_count(loss, m)


def entropy_of_logprobs(logp_BTV: jax.Array, mask_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum, count) of the per-token entropy -sum_v p log p, from normalised log-probs [B, T, V].

  Terms with p = 0 (log p = -inf) count 0. With a 262,144-token vocabulary a full
  [B, T, V] array is large: callers compute it over chunks of T (as `train.losses` does for
  log-probs) and add the (sum, count) pairs."""
  logp = _f32(logp_BTV)
  p = jnp.exp(logp)
  plogp = jnp.where(p > 0, p * logp, 0.0)
  return masked_sum_count(-jnp.sum(plogp, axis=-1), mask_BT)


def entropy_from_logits(logits_BTV: jax.Array, mask_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum, count) of per-token entropy from unnormalised logits (see `entropy_of_logprobs`)."""
  return entropy_of_logprobs(jax.nn.log_softmax(_f32(logits_BTV), axis=-1), mask_BT)


def explained_variance(values_BT: jax.Array, returns_BT: jax.Array,
                       mask_BT: jax.Array) -> jax.Array:
  """1 - Var[R - V] / Var[R] over real tokens (biased variances): 1 is a perfect value head,
  0 no better than a constant, negative worse. NaN when the returns have zero variance."""
  v = _f32(values_BT)
  ret = _f32(returns_BT)
  var_r = masked_var(ret, mask_BT)
  var_d = masked_var(ret - v, mask_BT)
  return jnp.where(var_r > 0, 1.0 - var_d / jnp.where(var_r > 0, var_r, 1.0), jnp.nan)


# ---------------------------------------------------------------------------------------------
# KL coefficient control


def adaptive_kl_update(kl_coef, current_kl, target_kl, horizon, n_steps) -> jax.Array:
  """lm-human-preferences' adaptive KL controller (Ziegler et al., 2019), one update:

      error = clip(current_kl / target_kl - 1, -0.2, 0.2)
      kl_coef <- kl_coef * (1 + error * n_steps / horizon)

  `current_kl` is the mean per-sequence KL (summed over a response's tokens) of the last batch,
  `n_steps` the number of episodes (rows) it held, `horizon` how many episodes it takes to close
  the gap. The coefficient rises when the KL is above target and falls when below, by at most
  20% * n_steps / horizon per update. Pure (works on floats and traced scalars)."""
  error = jnp.clip(_f32(current_kl) / _f32(target_kl) - 1.0, -0.2, 0.2)
  return _f32(kl_coef) * (1.0 + error * _f32(n_steps) / _f32(horizon))


@dataclasses.dataclass(frozen=True)
class AdaptiveKLController:
  """The adaptive rule as a frozen dataclass; the coefficient itself is state the caller keeps
  (in the train state or the checkpointed metrics), so the controller never mutates."""
  target: float
  horizon: float

  def update(self, kl_coef, current_kl, n_steps) -> jax.Array:
    return adaptive_kl_update(kl_coef, current_kl, self.target, self.horizon, n_steps)


@dataclasses.dataclass(frozen=True)
class FixedKLController:
  """Same interface as `AdaptiveKLController`; the coefficient never changes."""

  def update(self, kl_coef, current_kl, n_steps) -> jax.Array:
    del current_kl, n_steps
    return _f32(kl_coef)
