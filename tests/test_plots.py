"""Curve panels a person can read: no axis offsets, a float32 constant drawn flat, small real
changes still resolved, and each panel's first and last values in its title."""

from __future__ import annotations

import numpy as np

from cai_jax.eval import plots


def _draw(panels):
  fig = plots.curves_figure(panels)
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  FigureCanvasAgg(fig).draw()
  return fig.axes


def test_curves_have_no_offset_and_keep_small_changes():
  kl_coef = [0.05] + [float(np.float32(0.05))] * 3  # the config's float, then float32 copies
  held_out = [0.693147, 0.69301, 0.69288, 0.69280]
  approx_kl = [4.1e-5, 3.2e-5, 5.0e-5, 4.4e-5]
  axes = _draw([("KL coefficient", [1, 2, 3, 4], kl_coef, "beta"),
                ("loss", [("train", [1, 2, 3, 4], held_out), ("held-out", [0, 4],
                                                                [0.693147, 0.6929])], "nats"),
                ("approx KL", [1, 2, 3, 4], approx_kl, "nats")])
  for ax in axes:
    assert ax.yaxis.get_offset_text().get_text() == "", ax.get_title()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert len(set(labels)) == len(labels) >= 2, labels
  lo, hi = axes[0].get_ylim()
  assert lo < 0.05 < hi and hi - lo > 0.004  # flat, not zoomed into 7e-10 of float32 rounding
  lo, hi = axes[1].get_ylim()
  assert hi - lo < 0.001  # a change in the 4th decimal is still visible
  assert axes[0].get_title() == "KL coefficient\n0.05 -> 0.05"
  assert "train 0.6931 -> 0.6928; held-out 0.6931 -> 0.6929" in axes[1].get_title()
  assert "4.1e-05 -> 4.4e-05" in axes[2].get_title()


def test_long_panel_summaries_wrap_one_series_per_line():
  axes = _draw([("per set", [("red-team", [1, 2], [-0.07339, -0.03136]),
                             ("helpful", [1, 2], [-0.08848, -0.07489])], "score")])
  assert axes[0].get_title() == ("per set\nred-team -0.07339 -> -0.03136\n"
                                 "helpful -0.08848 -> -0.07489")
