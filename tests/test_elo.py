"""Elo from soft pairwise judgements (cai_jax.eval.elo) against closed forms and a plain
gradient-descent fit of the same likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cai_jax.eval import elo as E


def _gd_fit(n, i, j, s, ridge, steps=20000, lr=0.2):
  """Independent reference: gradient descent on the ridge-penalised soft BT loss (mean form)."""
  theta = np.zeros(n)
  i, j, s = np.asarray(i), np.asarray(j), np.asarray(s, float)
  m = len(s)
  for _ in range(steps):
    p = 1 / (1 + np.exp(-(theta[i] - theta[j])))
    g = ridge * theta
    for k in range(m):
      g[i[k]] += p[k] - s[k]
      g[j[k]] -= p[k] - s[k]
    theta -= lr * g / m
  return theta


def test_two_players_closed_form():
  # every judgement says A beats B with probability 0.75: the MLE difference is logit(0.75)
  i, j, s = [0] * 10, [1] * 10, [0.75] * 10
  r = E.fit_ratings(2, i, j, s, ridge=1e-9)
  assert r[0] - r[1] == pytest.approx(math.log(3.0), rel=1e-6)
  assert r.sum() == pytest.approx(0.0, abs=1e-9)
  e = E.elo(r)
  assert e[0] == 0.0 and e[1] == pytest.approx(-400 * math.log10(3.0), rel=1e-6)
  assert E.win_probability(e[0] - e[1]) == pytest.approx(0.75, rel=1e-6)


def test_recovers_generating_ratings_and_matches_gradient_descent():
  true = np.array([0.0, 0.8, -0.5, 1.3])
  i, j, s = [], [], []
  for a in range(4):
    for b in range(4):
      if a != b:
        i.append(a)
        j.append(b)
        s.append(1 / (1 + math.exp(-(true[a] - true[b]))))
  r = E.fit_ratings(4, i, j, s, ridge=1e-9)
  np.testing.assert_allclose(r - r[0], true - true[0], atol=1e-6)
  # with a real ridge and noisy outcomes: the same optimum as plain gradient descent
  rng = np.random.default_rng(0)
  s_noisy = np.clip(np.asarray(s) + rng.normal(0, 0.1, len(s)), 0, 1)
  np.testing.assert_allclose(E.fit_ratings(4, i, j, s_noisy, ridge=0.5),
                             _gd_fit(4, i, j, s_noisy, ridge=0.5), atol=1e-5)


def test_order_of_the_pair_does_not_matter_and_sweeps_stay_finite():
  i, j, s = [0, 1, 2], [1, 2, 0], [0.9, 0.3, 0.6]
  a = E.fit_ratings(3, i, j, s)
  b = E.fit_ratings(3, j, i, 1 - np.asarray(s))
  np.testing.assert_allclose(a, b, atol=1e-12)
  sweep = E.fit_ratings(2, [0, 0, 0], [1, 1, 1], [1.0, 1.0, 1.0])
  assert np.all(np.isfinite(sweep)) and sweep[0] > sweep[1] + 3


def test_bad_input():
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    E.fit_ratings(2, [0], [1], [1.5])
  with pytest.raises(ValueError, match="distinct"):
    E.fit_ratings(2, [0], [0], [0.5])
  with pytest.raises(ValueError, match="same length"):
    E.fit_ratings(2, [0, 1], [1], [0.5])


def test_bootstrap_resamples_whole_groups():
  groups = ["p1", "p1", "p2", "p3", "p3", "p3"]
  for idx in E.bootstrap_indices(groups, 50, seed=3):
    counts = np.bincount(idx, minlength=6)
    # the judgements of one prompt always come together, as often as each other
    assert counts[0] == counts[1] and counts[3] == counts[4] == counts[5]
    assert sum(1 for _ in idx) == 2 * (counts[0]) + counts[2] + 3 * counts[3]
  a = E.bootstrap_indices(groups, 5, seed=1)
  b = E.bootstrap_indices(groups, 5, seed=1)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_elo_table_intervals():
  rng = np.random.default_rng(1)
  players = ["base", "sl", "rl"]
  i, j, s, g = [], [], [], []
  for prompt in range(40):
    for a, b, p in ((1, 0, 0.7), (2, 0, 0.8), (2, 1, 0.6)):
      i.append(a)
      j.append(b)
      s.append(float(np.clip(p + rng.normal(0, 0.15), 0, 1)))
      g.append(f"q{prompt}")
  t = E.elo_table(players, i, j, s, g, num_bootstrap=200, seed=0)
  assert t["elo"]["base"] == 0.0 and t["elo_low"]["base"] == t["elo_high"]["base"] == 0.0
  assert t["elo"]["rl"] > t["elo"]["sl"] > 0
  for p in ("sl", "rl"):
    assert t["elo_low"][p] < t["elo"][p] < t["elo_high"][p]
  assert t["num_groups"] == 40 and t["num_judgements"] == 120
  # fewer prompts: wider intervals
  small = E.elo_table(players, i[:15], j[:15], s[:15], g[:15], num_bootstrap=200, seed=0)
  width = lambda t, p: t["elo_high"][p] - t["elo_low"][p]  # noqa: E731
  assert width(small, "rl") > width(t, "rl")


def test_win_rates_count_both_directions():
  players = ["base", "sl"]
  # (sl, base, 0.8) says sl wins with 0.8; (base, sl, 0.4) says sl wins with 0.6
  rows = E.win_rates(players, [1, 0], [0, 1], [0.8, 0.4], ["a", "b"], num_bootstrap=0)
  assert len(rows) == 1 and rows[0]["a"] == "base" and rows[0]["b"] == "sl"
  assert rows[0]["win_rate_a"] == pytest.approx(0.3) and rows[0]["n"] == 2
  assert rows[0]["low"] == rows[0]["high"] == rows[0]["win_rate_a"]
  boot = E.win_rates(players, [1, 0], [0, 1], [0.8, 0.4], ["a", "b"], num_bootstrap=300)[0]
  assert boot["low"] == pytest.approx(0.2) and boot["high"] == pytest.approx(0.4)
