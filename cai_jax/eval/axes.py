"""Many behavioural axes: how preference models trained under different constitutions agree.

The paper's section 6 asks for constitutions along many axes and for the correlations of their
preference models. Given the scores every axis's PM gives one set of answers (`scores[axis][i]`
for answer i), this module computes the correlation matrices (Pearson on the raw scores,
Spearman on their ranks, both invariant to each PM's offset and scale), finds the answers on
which two axes disagree most (largest gap between their standardised scores), and draws the
matrix as a PNG.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def ranks(x: Sequence[float]) -> np.ndarray:
  """Ranks 0..n-1 of `x`, ties given their mean rank (as Spearman's coefficient needs)."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="stable")
  r = np.empty(len(x), np.float64)
  r[order] = np.arange(len(x), dtype=np.float64)
  for value in np.unique(x):
    tied = x == value
    if tied.sum() > 1:
      r[tied] = r[tied].mean()
  return r


def standardise(x: Sequence[float]) -> np.ndarray:
  x = np.asarray(x, np.float64)
  sd = x.std()
  return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def correlation_matrix(scores: Mapping[str, Sequence[float]], *, method: str = "pearson"
                       ) -> tuple[list[str], np.ndarray]:
  """(axes in the given order, [A, A] correlations); NaN where an axis's scores are constant."""
  if method not in ("pearson", "spearman"):
    raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
  axes = list(scores)
  lengths = {len(scores[a]) for a in axes}
  if len(lengths) != 1:
    raise ValueError(f"every axis must score the same answers; lengths {sorted(lengths)}")
  cols = [np.asarray(scores[a], np.float64) for a in axes]
  if method == "spearman":
    cols = [ranks(c) for c in cols]
  out = np.full((len(axes), len(axes)), math.nan)
  for i, a in enumerate(cols):
    for j, b in enumerate(cols):
      if a.std() > 0 and b.std() > 0:
        out[i, j] = float(np.mean(standardise(a) * standardise(b)))
  return axes, out


def disagreements(scores: Mapping[str, Sequence[float]], a: str, b: str, k: int = 3
                  ) -> list[dict]:
  """The `k` answers whose standardised scores under axes `a` and `b` differ most, as
  {"index", "z_<a>", "z_<b>", "gap"} (gap = z_a - z_b; positive: axis a likes it more)."""
  za, zb = standardise(scores[a]), standardise(scores[b])
  gap = za - zb
  order = np.argsort(-np.abs(gap), kind="stable")[:k]
  return [{"index": int(i), f"z_{a}": float(za[i]), f"z_{b}": float(zb[i]), "gap": float(gap[i])}
          for i in order]


def heatmap(axes: Sequence[str], matrix: np.ndarray, path: str, *, title: str = "") -> str:
  """The matrix as a PNG (values written in the cells); returns the path."""
  from matplotlib.figure import Figure

  from cai_jax.eval.plots import _save
  n = len(axes)
  fig = Figure(figsize=(1.6 + 1.1 * n, 1.2 + 1.0 * n), dpi=100)
  ax = fig.subplots()
  image = ax.imshow(np.nan_to_num(matrix, nan=0.0), vmin=-1, vmax=1, cmap="RdBu_r")
  ax.set_xticks(range(n), labels=list(axes), rotation=30, ha="right")
  ax.set_yticks(range(n), labels=list(axes))
  for i in range(n):
    for j in range(n):
      v = matrix[i, j]
      ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center",
              color="white" if abs(v) > 0.6 else "black", fontsize=10)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  if title:
    ax.set_title(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)
