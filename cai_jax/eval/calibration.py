"""Calibration of preference probabilities: reliability bins and expected calibration error.

Convention (used for the preference model and for the AI labeller alike): for a pair whose
better answer is known (the human-chosen one, or the HHH file's correct one), q = the predicted
P(better answer preferred). Each pair enters TWICE (`symmetric_points`): as (q, outcome 1) and
as (1 - q, outcome 0), i.e. once from each side. The points then cover [0, 1], every bin holds a
mix of outcomes, and the reliability diagram is symmetric about (0.5, 0.5); a perfectly
calibrated predictor lies on the diagonal. (Without the doubling every outcome would be 1.)

Binning: `num_bins` (default 10) equal-width bins over [0, 1]: [0, 0.1), [0.1, 0.2), ...,
[0.9, 1.0] (the last one closed; see `bin_index` for values on an edge). Per bin: count n_b, mean predicted probability conf_b and
observed frequency acc_b (mean outcome; outcomes may be soft, in [0, 1]).
ECE = sum over bins of (n_b / N) * |acc_b - conf_b|, N = 2 x pairs. Because of the doubling
this equals the ECE of the "folded" points (max(q, 1 - q), whether the favoured side was the
better) over the upper half's bins.

Multiple-choice items (the paper's figure 9; `mc_option_points`): every option of every item is
one point, (P(option), 1 if the option is correct else 0), where P is the softmax of the item's
option scores (summed log-probabilities): the probability of choosing that option among the
item's options. No doubling is needed: the incorrect options supply the outcomes 0. For items
with two options, one correct, the points are exactly `symmetric_points` of P(correct).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def symmetric_points(q: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """(predicted, outcome) with each pair from both sides: (q, 1) and (1 - q, 0)."""
  q = np.asarray(q, np.float64).ravel()
  return np.concatenate([q, 1.0 - q]), np.concatenate([np.ones_like(q), np.zeros_like(q)])


def bin_index(pred: np.ndarray, num_bins: int) -> np.ndarray:
  """Bin of each prediction: floor(pred * num_bins), with pred = 1 in the last bin. pred *
  num_bins is first rounded to 9 decimals, so a value a rounding error away from an edge counts
  as on it (0.3 and 1 - 0.7 = 0.30000000000000004 share a bin; labels such as 0.6 are common)."""
  scaled = np.round(np.asarray(pred, np.float64) * num_bins, 9)
  return np.clip(np.floor(scaled).astype(np.int64), 0, num_bins - 1)


def reliability(pred: Sequence[float], outcome: Sequence[float], num_bins: int = 10) -> dict:
  """{"num_bins", "n", "ece", "bins": [{"lo", "hi", "count", "mean_predicted", "observed"}]};
  empty bins have count 0 and null means."""
  pred = np.asarray(pred, np.float64).ravel()
  outcome = np.asarray(outcome, np.float64).ravel()
  if pred.shape != outcome.shape:
    raise ValueError(f"{pred.size} predictions but {outcome.size} outcomes")
  if num_bins < 1:
    raise ValueError(f"num_bins={num_bins} must be >= 1")
  if pred.size and (not np.all(np.isfinite(pred)) or pred.min() < 0 or pred.max() > 1):
    raise ValueError("predictions must be probabilities in [0, 1]")
  idx = bin_index(pred, num_bins)
  bins, ece = [], 0.0
  for b in range(num_bins):
    sel = idx == b
    n = int(sel.sum())
    conf = float(pred[sel].mean()) if n else None
    acc = float(outcome[sel].mean()) if n else None
    if n:
      ece += n / pred.size * abs(acc - conf)
    bins.append({"lo": b / num_bins, "hi": (b + 1) / num_bins, "count": n,
                 "mean_predicted": conf, "observed": acc})
  return {"num_bins": num_bins, "n": int(pred.size), "ece": float(ece) if pred.size else None,
          "bins": bins}


def expected_calibration_error(pred, outcome, num_bins: int = 10) -> float:
  return reliability(pred, outcome, num_bins)["ece"]


def mc_option_points(scores: Sequence[Sequence[float]], is_correct: Sequence[Sequence[bool]]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(prob, outcome, p_correct): prob and outcome flat over every option of every item, in order
  (prob = softmax of the item's scores, outcome 1.0 for a correct option); p_correct per item =
  the summed probability of its correct options (the chance of choosing a correct one)."""
  if len(scores) != len(is_correct):
    raise ValueError(f"{len(scores)} items scored but {len(is_correct)} with correct flags")
  probs, outcomes, p_correct = [], [], []
  for i, (s, c) in enumerate(zip(scores, is_correct)):
    s, c = np.asarray(s, np.float64), np.asarray(c, bool)
    if s.ndim != 1 or s.size == 0 or s.shape != c.shape:
      raise ValueError(f"item {i}: {s.size} option scores but {c.size} correct flags")
    p = np.exp(s - s.max())
    p /= p.sum()
    probs.append(p)
    outcomes.append(c.astype(np.float64))
    p_correct.append(p[c].sum())
  if not probs:
    return np.zeros(0), np.zeros(0), np.zeros(0)
  return np.concatenate(probs), np.concatenate(outcomes), np.asarray(p_correct)


def mc_calibration(scores, is_correct, num_bins: int = 10) -> dict:
  """{"n_options", "mean_p_correct", "ece", "calibration"}: the `reliability` of every option's
  probability against its correctness, and the mean over items of P(correct option)."""
  prob, outcome, p_correct = mc_option_points(scores, is_correct)
  rel = reliability(prob, outcome, num_bins)
  return {"n_options": int(prob.size),
          "mean_p_correct": float(p_correct.mean()) if p_correct.size else None,
          "ece": rel["ece"], "calibration": rel}


def pair_calibration(q: Sequence[float], num_bins: int = 10) -> dict:
  """`reliability` of the symmetric points of q = P(better answer preferred) per pair."""
  return reliability(*symmetric_points(q), num_bins=num_bins)


def accuracy(q: Sequence[float]) -> tuple[float, int]:
  """(accuracy, ties): the share of pairs with q > 1/2, a tie (q = 1/2) counting as half."""
  q = np.asarray(q, np.float64).ravel()
  if q.size == 0:
    return float("nan"), 0
  ties = int(np.sum(q == 0.5))
  return float((np.sum(q > 0.5) + 0.5 * ties) / q.size), ties
