"""cai_jax.rl.ppo against straightforward NumPy references (loops over rows and tokens)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.rl import ppo

RTOL = 1e-5
ATOL = 1e-5


def _batch(seed=0, B=5, T=7):
  """Random [B, T] arrays and a mask with rows of length 7, 4, 1, 0 and one with a hole."""
  rng = np.random.default_rng(seed)
  lengths = [T, 4, 1, 0, 5][:B]
  mask = np.zeros((B, T), np.float32)
  for b, n in enumerate(lengths):
    mask[b, :n] = 1.0
  if B >= 5:
    mask[4, 2] = 0.0   # an interior hole: skipped by gae
  return rng, mask


# ---------------------------------------------------------------------------------------------
# NumPy references


def ref_gae(rewards, values, mask, gamma, lam):
  B, T = rewards.shape
  adv = np.zeros((B, T), np.float64)
  ret = np.zeros((B, T), np.float64)
  for b in range(B):
    idx = [t for t in range(T) if mask[b, t] > 0]          # the real tokens, in order
    last = 0.0
    for k in reversed(range(len(idx))):
      t = idx[k]
      next_v = values[b, idx[k + 1]] if k + 1 < len(idx) else 0.0
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      last = delta + gamma * lam * last
      adv[b, t] = last
      ret[b, t] = last + values[b, t]
  return adv, ret


def ref_whiten(x, mask, shift_mean=True, unbiased=False, eps=1e-8):
  vals = np.array([x[b, t] for b in range(x.shape[0]) for t in range(x.shape[1])
                   if mask[b, t] > 0], np.float64)
  mean = vals.mean()
  var = vals.var(ddof=1 if unbiased else 0)
  out = np.zeros_like(x, np.float64)
  for b in range(x.shape[0]):
    for t in range(x.shape[1]):
      if mask[b, t] > 0:
        out[b, t] = (x[b, t] - mean) / np.sqrt(var + eps) + (0.0 if shift_mean else mean)
  return out


def ref_policy_loss(logp, old, adv, mask, eps):
  tot = n = clip = akl = 0.0
  for b in range(logp.shape[0]):
    for t in range(logp.shape[1]):
      if mask[b, t] == 0:
        continue
      r = np.exp(logp[b, t] - old[b, t])
      l1 = -adv[b, t] * r
      l2 = -adv[b, t] * min(max(r, 1 - eps), 1 + eps)
      tot += max(l1, l2)
      clip += float(l2 > l1)
      akl += 0.5 * (logp[b, t] - old[b, t]) ** 2
      n += 1
  return tot, n, clip, akl


def ref_value_loss(v, old, ret, mask, eps):
  tot = n = 0.0
  for b in range(v.shape[0]):
    for t in range(v.shape[1]):
      if mask[b, t] == 0:
        continue
      vc = min(max(v[b, t], old[b, t] - eps), old[b, t] + eps)
      tot += 0.5 * max((v[b, t] - ret[b, t]) ** 2, (vc - ret[b, t]) ** 2)
      n += 1
  return tot, n


# ---------------------------------------------------------------------------------------------
# GAE and whitening


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_reference_with_masks(gamma, lam):
  rng, mask = _batch(seed=1)
  rewards = rng.normal(size=mask.shape).astype(np.float32)
  values = rng.normal(size=mask.shape).astype(np.float32)
  adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
  ref_adv, ref_ret = ref_gae(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(adv, ref_adv, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(ret, ref_ret, rtol=RTOL, atol=ATOL)
  # length-1 row: A = r - V; all-masked row: zeros; padding: zeros.
  np.testing.assert_allclose(adv[2, 0], rewards[2, 0] - values[2, 0], rtol=RTOL, atol=ATOL)
  assert np.all(np.asarray(adv)[3] == 0) and np.all(np.asarray(ret)[3] == 0)
  assert np.all(np.asarray(adv)[mask == 0] == 0)


def test_gae_ignores_padding_contents():
  rng, mask = _batch(seed=2)
  rewards = rng.normal(size=mask.shape).astype(np.float32)
  values = rng.normal(size=mask.shape).astype(np.float32)
  junk = rng.normal(size=mask.shape).astype(np.float32) * 100
  a1, r1 = ppo.gae(rewards, values, mask, 0.95, 0.9)
  a2, r2 = ppo.gae(np.where(mask > 0, rewards, junk), np.where(mask > 0, values, junk), mask,
                   0.95, 0.9)
  np.testing.assert_array_equal(a1, a2)
  np.testing.assert_array_equal(r1, r2)


@pytest.mark.parametrize("shift_mean", [True, False])
@pytest.mark.parametrize("unbiased", [False, True])
def test_whiten_matches_reference(shift_mean, unbiased):
  rng, mask = _batch(seed=3)
  x = (rng.normal(size=mask.shape) * 3 + 2).astype(np.float32)
  out = ppo.whiten(x, mask, shift_mean=shift_mean, unbiased=unbiased)
  np.testing.assert_allclose(out, ref_whiten(x, mask, shift_mean, unbiased), rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(out)[mask == 0] == 0)
  if shift_mean and not unbiased:
    real = np.asarray(out)[mask > 0]
    assert abs(real.mean()) < 1e-5 and abs(real.var() - 1) < 1e-4


# ---------------------------------------------------------------------------------------------
# KL, rewards, penalties


def test_kl_estimators_pointwise():
  rng = np.random.default_rng(4)
  logp = rng.normal(size=(3, 6)).astype(np.float32) - 2
  ref = rng.normal(size=(3, 6)).astype(np.float32) - 2
  k1 = ppo.kl_per_token(logp, ref, "k1")
  k2 = ppo.kl_per_token(logp, ref, "k2")
  k3 = ppo.kl_per_token(logp, ref, "k3")
  d = logp.astype(np.float64) - ref
  r = np.exp(-d)
  np.testing.assert_allclose(k1, d, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(k2, 0.5 * d ** 2, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(k3, (r - 1) - np.log(r), rtol=1e-4, atol=ATOL)
  assert np.all(np.asarray(k3) >= 0)
  # k3 is exactly 0 (not a rounding residue) where the log-probs agree, and tiny near it
  assert float(ppo.kl_per_token(jnp.array([[-1.0]]), jnp.array([[-1.0]]), "k3")[0, 0]) == 0.0
  small = float(ppo.kl_per_token(jnp.array([[-1.0]]), jnp.array([[-1.0 + 1e-3]]), "k3")[0, 0])
  np.testing.assert_allclose(small, 0.5e-6, rtol=1e-2)
  with pytest.raises(ValueError):
    ppo.kl_per_token(logp, ref, "k4")


def test_kl_estimators_unbiased_on_samples():
  """Sampling tokens from p, mean k1 and mean k3 approach KL(p || q); k3 is never negative."""
  rng = np.random.default_rng(5)
  V = 20
  p = rng.dirichlet(np.ones(V))
  q = rng.dirichlet(np.ones(V))
  true_kl = float(np.sum(p * (np.log(p) - np.log(q))))
  x = rng.choice(V, size=(400, 500), p=p)
  logp = np.log(p)[x].astype(np.float32)
  ref = np.log(q)[x].astype(np.float32)
  k1 = np.asarray(ppo.kl_per_token(logp, ref, "k1"), np.float64)
  k3 = np.asarray(ppo.kl_per_token(logp, ref, "k3"), np.float64)
  assert np.all(k3 >= 0)
  assert abs(k3.mean() - true_kl) < 0.03 * true_kl, (k3.mean(), true_kl)
  assert abs(k1.mean() - true_kl) < 0.03 * true_kl, (k1.mean(), true_kl)


def test_token_rewards_explicit_and_derived_end_index():
  rng, mask = _batch(seed=6, B=4)
  kl = rng.normal(size=mask.shape).astype(np.float32)
  score = np.array([1.5, -2.0, 3.0, 7.0], np.float32)
  coef = 0.1
  end = np.array([6, 3, 0, -1])
  expected = -coef * kl * mask
  for b in range(4):
    if end[b] >= 0:
      expected[b, end[b]] += score[b]
  out = ppo.token_rewards(score, kl, mask, coef, end)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)
  # derived from the mask: the same here
  np.testing.assert_allclose(ppo.token_rewards(score, kl, mask, coef), expected, rtol=RTOL,
                             atol=ATOL)
  np.testing.assert_array_equal(ppo.last_index_from_mask(mask), end)
  np.testing.assert_array_equal(ppo.mask_from_end_index(end, mask.shape[1]), mask)
  # an explicit index is used as given, not the mask's last position
  out2 = ppo.token_rewards(score, np.zeros_like(kl), mask, coef, np.array([2, 1, 0, -1]))
  assert float(out2[0, 2]) == pytest.approx(1.5) and float(out2[0, 6]) == 0.0
  assert float(out2[1, 1]) == pytest.approx(-2.0) and float(out2[1, 3]) == 0.0
  # reading a PM score at the explicit end index
  pm_BL = rng.normal(size=(4, 7)).astype(np.float32)
  np.testing.assert_array_equal(ppo.read_at_index(pm_BL, np.array([6, 3, 0, 2])),
                                [pm_BL[0, 6], pm_BL[1, 3], pm_BL[2, 0], pm_BL[3, 2]])


def test_missing_end_penalty():
  score = np.array([1.0, 2.0, -0.5], np.float32)
  finished = np.array([True, False, False])
  np.testing.assert_allclose(ppo.missing_end_penalty(score, finished, -1.0), [1.0, 1.0, -1.5])
  np.testing.assert_allclose(ppo.missing_end_penalty(score, finished, -1.0, replace=True),
                             [1.0, -1.0, -1.0])


# ---------------------------------------------------------------------------------------------
# Losses


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_loss_matches_reference(seed):
  rng, mask = _batch(seed=10 + seed)
  old = rng.normal(size=mask.shape).astype(np.float32) - 2
  logp = old + rng.normal(size=mask.shape).astype(np.float32) * 0.3   # ratios in ~[0.4, 2.5]
  adv = rng.normal(size=mask.shape).astype(np.float32)
  s, n, stats = ppo.policy_loss(logp, old, adv, mask, 0.2)
  rs, rn, rclip, rakl = ref_policy_loss(logp, old, adv, mask, 0.2)
  np.testing.assert_allclose(s, rs, rtol=1e-4, atol=ATOL)
  assert float(n) == rn
  assert float(stats["clipfrac_sum"]) == rclip and 0 < rclip < rn   # both regimes present
  np.testing.assert_allclose(stats["approx_kl_sum"], rakl, rtol=1e-4)


@pytest.mark.parametrize("a,ratio,expected", [
    (1.0, 1.1, -1.1),    # A > 0, inside the clip range: unclipped
    (1.0, 1.5, -1.2),    # A > 0, ratio above 1 + eps: clipped (no incentive to go further)
    (1.0, 0.5, -0.5),    # A > 0, ratio below 1 - eps: the pessimistic unclipped term
    (-1.0, 0.9, 0.9),    # A < 0, inside
    (-1.0, 0.5, 0.8),    # A < 0, ratio below 1 - eps: clipped
    (-1.0, 1.5, 1.5),    # A < 0, ratio above 1 + eps: unclipped, pessimistic
])
def test_policy_loss_clipping_cases(a, ratio, expected):
  old = np.array([[-1.0]], np.float32)
  logp = old + np.log(ratio).astype(np.float32)
  s, n, stats = ppo.policy_loss(logp, old, np.array([[a]], np.float32), np.ones((1, 1)), 0.2)
  assert float(s) == pytest.approx(expected, rel=1e-5) and float(n) == 1
  clipped = expected != pytest.approx(-a * ratio)
  assert float(stats["clipfrac_sum"]) == float(clipped)
  # gradient w.r.t. logp is zero exactly when clipped
  g = jax.grad(lambda lp: ppo.policy_loss(lp, old, np.array([[a]], np.float32),
                                          np.ones((1, 1)), 0.2)[0])(jnp.asarray(logp))
  assert (float(g[0, 0]) == 0.0) == clipped


def test_value_loss_matches_reference_and_clips():
  rng, mask = _batch(seed=20)
  old = rng.normal(size=mask.shape).astype(np.float32)
  v = old + rng.normal(size=mask.shape).astype(np.float32) * 0.5
  ret = rng.normal(size=mask.shape).astype(np.float32)
  s, n = ppo.value_loss(v, old, ret, mask, 0.2)
  rs, rn = ref_value_loss(v, old, ret, mask, 0.2)
  np.testing.assert_allclose(s, rs, rtol=1e-4)
  assert float(n) == rn
  one = np.ones((1, 1), np.float32)
  # inactive: v inside old +- eps -> 0.5 (v - R)^2
  assert float(ppo.value_loss(one * 0.1, one * 0.0, one * 1.0, one, 0.2)[0]) == pytest.approx(
      0.5 * 0.81)
  # v outside old +- eps (clip active) but the unclipped error is the larger one: it wins
  assert float(ppo.value_loss(one * 1.0, one * 0.0, one * -1.0, one, 0.2)[0]) == pytest.approx(
      0.5 * 4.0)  # (1 - -1)^2 = 4 > (0.2 - -1)^2
  # v outside old +- eps and the clipped value is further from R: the clipped term wins
  assert float(ppo.value_loss(one * 1.0, one * 0.0, one * 0.9, one, 0.2)[0]) == pytest.approx(
      0.5 * 0.49)  # clipped 0.2: (0.2 - 0.9)^2 = 0.49 > (1 - 0.9)^2


def test_sum_count_split_is_exact():
  """Two uneven halves' (sum, count) pairs add up to the full batch's token mean."""
  rng, mask = _batch(seed=30)
  old = rng.normal(size=mask.shape).astype(np.float32)
  logp = old + rng.normal(size=mask.shape).astype(np.float32) * 0.3
  adv = rng.normal(size=mask.shape).astype(np.float32)
  vals = rng.normal(size=mask.shape).astype(np.float32)
  ret = rng.normal(size=mask.shape).astype(np.float32)
  logp_V = jax.nn.log_softmax(jnp.asarray(rng.normal(size=mask.shape + (11,)), jnp.float32))

  def all_pairs(sl):
    pg, n, st = ppo.policy_loss(logp[sl], old[sl], adv[sl], mask[sl], 0.2)
    vf, n2 = ppo.value_loss(vals[sl], old[sl], ret[sl], mask[sl], 0.2)
    ent, n3 = ppo.entropy_of_logprobs(logp_V[sl], mask[sl])
    kls, n4 = ppo.masked_sum_count(ppo.kl_per_token(logp[sl], old[sl], "k3"), mask[sl])
    return np.array([pg, st["clipfrac_sum"], st["approx_kl_sum"], vf, ent, kls]), \
        np.array([n, n2, n3, n4])

  full_s, full_n = all_pairs(slice(None))
  a_s, a_n = all_pairs(slice(0, 2))   # 11 tokens
  b_s, b_n = all_pairs(slice(2, 5))   # 5 tokens
  np.testing.assert_allclose((a_s + b_s) / (a_n[0] + b_n[0]), full_s / full_n[0], rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_array_equal(a_n + b_n, full_n)
  # the mean of the halves' means would be wrong (uneven counts)
  assert not np.allclose((a_s / a_n[0] + b_s / b_n[0]) / 2, full_s / full_n[0], rtol=1e-3)


def test_entropy_and_explained_variance():
  rng, mask = _batch(seed=40)
  logits = rng.normal(size=mask.shape + (9,)).astype(np.float32) * 2
  logits[0, 0, :4] = -np.inf                    # zero-probability tokens count 0
  s, n = ppo.entropy_from_logits(logits, mask)
  ref = 0.0
  for b in range(mask.shape[0]):
    for t in range(mask.shape[1]):
      if mask[b, t] > 0:
        z = logits[b, t].astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        ref -= sum(pi * np.log(pi) for pi in p if pi > 0)
  np.testing.assert_allclose(s, ref, rtol=1e-5)
  assert float(n) == mask.sum() and np.isfinite(float(s))

  v = rng.normal(size=mask.shape).astype(np.float32)
  ret = v + rng.normal(size=mask.shape).astype(np.float32) * 0.5
  real = mask > 0
  ref_ev = 1 - np.var((ret - v)[real]) / np.var(ret[real])
  np.testing.assert_allclose(ppo.explained_variance(v, ret, mask), ref_ev, rtol=1e-4)
  assert float(ppo.explained_variance(ret, ret, mask)) == pytest.approx(1.0)
  assert np.isnan(float(ppo.explained_variance(v, np.ones_like(v), mask)))


# ---------------------------------------------------------------------------------------------
# KL controllers


def test_adaptive_kl_controller():
  ctl = ppo.AdaptiveKLController(target=6.0, horizon=10000)
  coef = 0.2
  # synthetic per-batch KLs: above target, then below; batches of 64 episodes
  kls = [12.0, 9.0, 6.6, 6.0, 5.0, 1.0, 3.0]
  ref = coef
  for kl in kls:
    new = float(ctl.update(coef, kl, n_steps=64))
    err = np.clip(kl / 6.0 - 1, -0.2, 0.2)
    ref = ref * (1 + err * 64 / 10000)
    assert new == pytest.approx(ref, rel=1e-6)
    if kl > 6.0:
      assert new > coef
    elif kl < 6.0:
      assert new < coef
    else:
      assert new == pytest.approx(coef)
    coef = new
  # the step is clipped at +-20% scaled by n_steps / horizon
  assert float(ppo.adaptive_kl_update(1.0, 1000.0, 6.0, 100, 50)) == pytest.approx(1.1)
  assert float(ppo.adaptive_kl_update(1.0, 0.0, 6.0, 100, 50)) == pytest.approx(0.9)
  assert float(ppo.adaptive_kl_update(1.0, 6.6, 6.0, 100, 100)) == pytest.approx(1.1)
  # traceable
  assert float(jax.jit(ppo.adaptive_kl_update)(1.0, 7.2, 6.0, 100, 100)) == pytest.approx(1.2)
  assert float(ppo.FixedKLController().update(0.05, 100.0, 64)) == pytest.approx(0.05)


# ---------------------------------------------------------------------------------------------
# jit


def test_jit_no_recompile_on_same_shapes():
  traces = {"gae": 0, "whiten": 0, "pg": 0, "vf": 0, "rew": 0}

  def counted(name, fn):
    def wrapped(*args):
      traces[name] += 1
      return fn(*args)
    return jax.jit(wrapped)

  f_gae = counted("gae", lambda r, v, m, g, l: ppo.gae(r, v, m, g, l))
  f_wh = counted("whiten", lambda x, m: ppo.whiten(x, m))
  f_pg = counted("pg", lambda a, b, c, m, e: ppo.policy_loss(a, b, c, m, e))
  f_vf = counted("vf", lambda a, b, c, m, e: ppo.value_loss(a, b, c, m, e))
  f_rew = counted("rew", lambda s, k, m, c, e: ppo.token_rewards(s, k, m, c, e))
  for seed in range(2):
    rng, mask = _batch(seed=50 + seed)
    x = [rng.normal(size=mask.shape).astype(np.float32) for _ in range(3)]
    f_gae(x[0], x[1], mask, np.float32(0.9 + 0.05 * seed), np.float32(0.95))
    f_wh(x[0], mask)
    f_pg(x[0], x[1], x[2], mask, np.float32(0.2 + 0.1 * seed))
    f_vf(x[0], x[1], x[2], mask, np.float32(0.2))
    f_rew(x[0][:, 0], x[1], mask, np.float32(0.1 * seed), np.arange(5, dtype=np.int32))
  assert traces == {"gae": 1, "whiten": 1, "pg": 1, "vf": 1, "rew": 1}
  # the module's own jitted functions also hit their caches on a second call
  if not hasattr(ppo.gae, "_cache_size"):   # a private jax API; skip that part if it goes
    return
  rng, mask = _batch(seed=60)
  r = rng.normal(size=mask.shape).astype(np.float32)
  before = ppo.gae._cache_size()
  ppo.gae(r, r, mask, 0.5, 0.5)
  ppo.gae(r + 1, r, mask, 0.7, 0.6)
  assert ppo.gae._cache_size() - before <= 1
