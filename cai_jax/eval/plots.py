"""Figures for evaluation reports (matplotlib, drawn off-screen: no display is needed).

`reliability_diagram` draws the output of `calibration.reliability`: observed preference
frequency against predicted probability per bin (bars at the bins, the diagonal for perfect
calibration, each bin's count written above its bar) and, below, the count per bin.
"""

from __future__ import annotations

import os


def reliability_diagram(rel: dict, path: str, *, title: str = "",
                        xlabel: str = "predicted P(preferred)",
                        ylabel: str = "observed frequency preferred") -> str:
  """Writes a PNG to `path` (folders created) and returns the path."""
  from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

  bins = rel["bins"]
  width = 1.0 / rel["num_bins"]
  centers = [b["lo"] + width / 2 for b in bins]
  fig = Figure(figsize=(5.5, 6.5), dpi=100)
  top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  observed = [b["observed"] if b["count"] else 0.0 for b in bins]
  top.bar(centers, observed, width=width * 0.9, color="#4c72b0", edgecolor="black",
          label="observed")
  for c, b in zip(centers, bins):
    if b["count"]:
      top.plot([c - width * 0.45, c + width * 0.45], [b["mean_predicted"]] * 2, color="#c44e52",
               linewidth=2)
    top.text(c, (b["observed"] or 0.0) + 0.02, f"n={b['count']}", ha="center", va="bottom",
             fontsize=7)
  top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
  top.plot([], [], color="#c44e52", linewidth=2, label="mean predicted in bin")
  top.set_xlim(0, 1)
  top.set_ylim(0, 1.1)
  top.set_ylabel(ylabel)
  ece = rel.get("ece")
  top.set_title((title + "\n" if title else "") +
                (f"ECE {ece:.4f} over {rel['n']} points" if ece is not None else "no points"),
                fontsize=10)
  top.legend(loc="upper left", fontsize=8)
  bottom.bar(centers, [b["count"] for b in bins], width=width * 0.9, color="#8c8c8c",
             edgecolor="black")
  bottom.set_ylabel("count")
  bottom.set_xlabel(xlabel)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png")
  return path
