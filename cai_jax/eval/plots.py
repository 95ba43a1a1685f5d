"""Figures for evaluation reports (matplotlib, drawn off-screen: no display is needed).

`reliability_diagram` draws the output of `calibration.reliability`: observed preference
frequency against predicted probability per bin (bars at the bins, the diagonal for perfect
calibration, each bin's count written above its bar) and, below, the count per bin.
"""

from __future__ import annotations

import math
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


def _save(fig, path: str) -> str:
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png")
  return path


_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


def elo_chart(tables: dict, path: str, *, title: str = "Elo per stage") -> str:
  """Grouped bars: one group per set (e.g. harmless, helpful), one bar per stage, error bars
  from the tables' bootstrap intervals (`cai_jax.eval.elo.elo_table` outputs)."""
  from matplotlib.figure import Figure

  sets = list(tables)
  players = tables[sets[0]]["players"] if sets else []
  fig = Figure(figsize=(max(5.0, 1.6 * len(sets) * len(players) / 2 + 2), 4.5), dpi=100)
  ax = fig.subplots()
  width = 0.8 / max(1, len(players))
  for k, p in enumerate(players):
    xs = [g + (k - (len(players) - 1) / 2) * width for g in range(len(sets))]
    ys = [tables[s]["elo"][p] for s in sets]
    err = [[tables[s]["elo"][p] - tables[s]["elo_low"][p] for s in sets],
           [tables[s]["elo_high"][p] - tables[s]["elo"][p] for s in sets]]
    ax.bar(xs, ys, width=width * 0.9, color=_COLORS[k % len(_COLORS)], edgecolor="black",
           yerr=err, capsize=4, label=p)
  ax.axhline(0, color="gray", linewidth=0.8)
  ax.set_xticks(range(len(sets)))
  ax.set_xticklabels([f"{s}\n({tables[s]['num_groups']} prompts)" for s in sets])
  ref = tables[sets[0]]["reference"] if sets else ""
  conf = int(round(100 * tables[sets[0]]["confidence"])) if sets else 95
  ax.set_ylabel(f"Elo relative to {ref} (points; {conf}% bootstrap CI)")
  ax.set_xlabel("prompt set judged")
  ax.set_title(title, fontsize=10)
  ax.legend(title="stage", fontsize=8)
  return _save(fig, path)


def score_distributions(scores: dict, path: str, *, title: str = "Preference-model scores",
                        ylabel: str = "PM score (reward, logits)") -> str:
  """One panel per set: a box plot per stage with the individual scores jittered over it.
  `scores[set][stage]` is a list of numbers."""
  import numpy as np
  from matplotlib.figure import Figure

  sets = list(scores)
  fig = Figure(figsize=(4.5 * max(1, len(sets)), 4.5), dpi=100)
  axes = fig.subplots(1, max(1, len(sets)), squeeze=False)[0]
  rng = np.random.default_rng(0)
  for ax, s in zip(axes, sets):
    stages = list(scores[s])
    data = [np.asarray(scores[s][st], float) for st in stages]
    ax.boxplot(data, showmeans=True, widths=0.5)
    ax.set_xticks(range(1, len(stages) + 1))
    ax.set_xticklabels(stages)
    for k, d in enumerate(data):
      ax.scatter(k + 1 + rng.uniform(-0.12, 0.12, len(d)), d, s=10, alpha=0.6,
                 color=_COLORS[k % len(_COLORS)])
    n = max((len(d) for d in data), default=0)
    ax.set_title(f"{s} prompts (n={n} per stage)", fontsize=10)
    ax.set_xlabel("stage")
    ax.set_ylabel(ylabel)
  fig.suptitle(title, fontsize=11)
  return _save(fig, path)


def _readable_y(ax, values) -> None:
  """Tick labels that are plain numbers: no offset ("1e-10 + 5e-2" for a float32 constant
  beside its float64 twin), and a series flat within float rounding drawn as a constant with
  limits around it rather than zoomed into its last bits."""
  from matplotlib.ticker import ScalarFormatter

  fmt = ScalarFormatter(useOffset=False)
  fmt.set_scientific(False)
  ax.yaxis.set_major_formatter(fmt)
  finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if finite:
    lo, hi = min(finite), max(finite)
    scale = max(abs(lo), abs(hi))
    if hi - lo <= 1e-6 * scale or scale == 0.0:
      mid = (lo + hi) / 2
      pad = 0.05 * abs(mid) if mid else 1.0
      ax.set_ylim(mid - pad, mid + pad)


def _series(panel) -> tuple[str, list, str]:
  """(title, [(label, xs, ys), ...], ylabel) from either panel form (see `curves`)."""
  if len(panel) == 4:
    name, xs, ys, ylabel = panel
    return name, [("", xs, ys)], ylabel
  return panel


def _fmt_value(v) -> str:
  return f"{v:.4g}" if v is not None and math.isfinite(float(v)) else "-"


def curves(panels: list, path: str, *, title: str = "", xlabel: str = "step") -> str:
  """Small multiples. A panel is (title, x values, y values, y label), or (title, [(series
  label, xs, ys), ...], y label) for several series on one axis (e.g. training and held-out
  loss). Each panel's title ends with its first and last values, so the numbers can be read
  without the axis."""
  fig = curves_figure(panels, title=title, xlabel=xlabel)
  return _save(fig, path)


def curves_figure(panels: list, *, title: str = "", xlabel: str = "step"):
  from matplotlib.figure import Figure
  from matplotlib.ticker import MaxNLocator

  cols = min(3, max(1, len(panels)))
  rows = (len(panels) + cols - 1) // cols
  fig = Figure(figsize=(4.2 * cols, 3.3 * rows), dpi=100)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, panel in zip(axes, panels):
    name, series, ylabel = _series(panel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values, ends = [], []
    for k, (label, xs, ys) in enumerate(series):
      ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3,
              color=_COLORS[k % len(_COLORS)], label=label or None)
      values += list(ys)
      if len(ys):
        ends.append((label, ys[0], ys[-1]))
    _readable_y(ax, values)
    if any(label for label, _, _ in series):
      ax.legend(fontsize=7)
    parts = [f"{label + ' ' if label else ''}{_fmt_value(a)} -> {_fmt_value(b)}"
             for label, a, b in ends]
    # a line that would run past the panel's width wraps one series per line
    summary = ("\n" if sum(map(len, parts)) > 48 else "; ").join(parts)
    ax.set_title(f"{name}\n{summary}" if summary else name, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  for ax in axes[len(panels):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  return fig
