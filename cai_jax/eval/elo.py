"""Elo scores and win rates from soft pairwise judgements, with bootstrap confidence intervals.

A judgement says how likely player `i` (a checkpoint's answer) is better than player `j` on one
prompt: a soft outcome s in [0, 1] (the AI judge's both-orders, principle-ensemble probability).
Ratings are the Bradley-Terry maximum-likelihood fit with soft outcomes,

    loss(theta) = -sum_k [s_k log sigmoid(theta_i - theta_j) + (1 - s_k) log sigmoid(theta_j - theta_i)]
                  + ridge / 2 * |theta|^2,

solved by Newton's method (the loss is convex; the small ridge keeps it finite when one player
wins every game and fixes the free offset: the fitted ratings sum to zero). Elo is the same
scale times 400 / ln 10, so an Elo difference D means P(win) = 1 / (1 + 10^(-D / 400)). Scores
are reported relative to a reference player (the base model: Elo 0), as in the paper's figures.

Confidence intervals: a percentile bootstrap over prompts (every judgement of a resampled prompt
goes in together, since the answers to one prompt are correlated), refitting each time.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ELO_PER_NAT = 400.0 / math.log(10.0)


def _sigmoid(x):
  return np.exp(-np.logaddexp(0.0, -x))


def fit_ratings(num_players: int, i: Sequence[int], j: Sequence[int], s: Sequence[float],
                weight: Sequence[float] | None = None, *, ridge: float = 1e-3,
                iterations: int = 100, tol: float = 1e-12) -> np.ndarray:
  """[num_players] Bradley-Terry ratings (natural-log odds scale, summing to zero)."""
  i = np.asarray(i, np.int64)
  j = np.asarray(j, np.int64)
  s = np.asarray(s, np.float64)
  w = np.ones_like(s) if weight is None else np.asarray(weight, np.float64)
  if not (i.shape == j.shape == s.shape == w.shape):
    raise ValueError("i, j, s and weight must have the same length")
  if np.any((s < 0) | (s > 1)) or not np.all(np.isfinite(s)):
    raise ValueError("outcomes must lie in [0, 1]")
  if np.any(i == j) or np.any((i < 0) | (j < 0) | (i >= num_players) | (j >= num_players)):
    raise ValueError("players must be distinct indices in [0, num_players)")
  if ridge <= 0:
    raise ValueError("ridge must be > 0 (it makes the fit finite and unique)")
  theta = np.zeros(num_players)
  for _ in range(iterations):
    p = _sigmoid(theta[i] - theta[j])
    r = w * (p - s)                                  # d loss / d (theta_i - theta_j)
    grad = ridge * theta + np.bincount(i, r, num_players) - np.bincount(j, r, num_players)
    h = w * p * (1.0 - p)
    hess = ridge * np.eye(num_players)
    np.add.at(hess, (i, i), h)
    np.add.at(hess, (j, j), h)
    np.add.at(hess, (i, j), -h)
    np.add.at(hess, (j, i), -h)
    step = np.linalg.solve(hess, grad)
    theta = theta - step
    if np.max(np.abs(step)) < tol:
      break
  return theta


def elo(ratings: np.ndarray, reference: int = 0) -> np.ndarray:
  """Elo scores from ratings, with the reference player at 0."""
  ratings = np.asarray(ratings, np.float64)
  return ELO_PER_NAT * (ratings - ratings[reference])


def win_probability(elo_diff) -> np.ndarray:
  """P(a player beats one rated `elo_diff` lower)."""
  return 1.0 / (1.0 + 10.0 ** (-np.asarray(elo_diff, np.float64) / 400.0))


def _groups(groups: Sequence) -> tuple[np.ndarray, int]:
  _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
  return inverse, int(inverse.max()) + 1 if len(inverse) else 0


def bootstrap_indices(groups: Sequence, num_samples: int, seed: int) -> list[np.ndarray]:
  """Judgement indices of `num_samples` resamplings of the groups (prompts) with replacement."""
  inverse, n = _groups(groups)
  members = [np.flatnonzero(inverse == g) for g in range(n)]
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num_samples):
    picked = rng.integers(0, n, size=n)
    out.append(np.concatenate([members[g] for g in picked]) if n else np.zeros(0, np.int64))
  return out


def _interval(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
  lo = (1.0 - confidence) / 2.0
  return (np.quantile(samples, lo, axis=0), np.quantile(samples, 1.0 - lo, axis=0))


def elo_table(players: Sequence[str], i, j, s, groups: Sequence, *, reference: int = 0,
              num_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
              ridge: float = 1e-3) -> dict:
  """Elo per player (reference at 0) with bootstrap percentile intervals over `groups`, plus
  the number of judgements and groups."""
  i, j, s = (np.asarray(x) for x in (i, j, s))
  n = len(players)
  point = elo(fit_ratings(n, i, j, s, ridge=ridge), reference)
  samples = np.stack([elo(fit_ratings(n, i[k], j[k], s[k], ridge=ridge), reference)
                      for k in bootstrap_indices(groups, num_bootstrap, seed)]) \
      if num_bootstrap else point[None]
  lo, hi = _interval(samples, confidence)
  return {
      "players": list(players), "reference": players[reference], "confidence": confidence,
      "num_bootstrap": num_bootstrap, "num_judgements": int(len(s)),
      "num_groups": _groups(groups)[1],
      "elo": {p: float(point[k]) for k, p in enumerate(players)},
      "elo_low": {p: float(lo[k]) for k, p in enumerate(players)},
      "elo_high": {p: float(hi[k]) for k, p in enumerate(players)},
  }


def win_rates(players: Sequence[str], i, j, s, groups: Sequence, *, num_bootstrap: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> list[dict]:
  """For every pair of players that met: the mean probability that `a` beats `b` over their
  judgements, with a bootstrap interval over the groups (prompts) of those judgements."""
  i, j, s = (np.asarray(x) for x in (i, j, s))
  groups = np.asarray([str(g) for g in groups])
  out = []
  for a in range(len(players)):
    for b in range(a + 1, len(players)):
      fwd, back = (i == a) & (j == b), (i == b) & (j == a)
      sel = fwd | back
      if not sel.any():
        continue
      p_a = np.where(fwd, s, 1.0 - s)[sel]
      g = groups[sel]
      rate = float(p_a.mean())
      if num_bootstrap:
        boots = np.array([p_a[k].mean() for k in bootstrap_indices(g, num_bootstrap, seed)])
        lo, hi = (float(x) for x in _interval(boots, confidence))
      else:
        lo = hi = rate
      out.append({"a": players[a], "b": players[b], "win_rate_a": rate, "low": lo, "high": hi,
                  "n": int(sel.sum())})
  return out
