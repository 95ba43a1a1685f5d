"""Small-scale reproductions of two of the paper's analyses: the pure computations and figures.

1. PM score against the number of revisions (the paper's figure: the harmlessness preference
   model scores the initial answer and the answer after revision 1, 2, ...).
   - `read_sl_records`: the records of `sl_generate` (`initial_response`, `rounds[*].revision`),
     validated with file:line errors; `revision_texts` = [initial, revision 1, ..., revision R].
   - `flatten_transcripts` / `split_scores`: every transcript as one (prompt, response) item for
     `PMScorer.score_responses` (one reward per sequence BOS + prompt + response [+ EOS], built
     as in training), and the scores back per record.
   - `revision_score_table`: per revision number r, mean and standard error of the scores of the
     records that have revision r (`mean_se`: SE = sample std (ddof 1) / sqrt(n)), and the same
     of the paired differences score_r - score_0 (less noisy: each record is its own control).
2. The chain-of-thought clamp and calibration (the paper: CoT probabilities are overconfident;
   clamping them to 40-60% calibrates them better).
   - The `feedback` job keeps the RAW P(A) of every question (`p_a_orig`, `p_a_swapped`) in its
     records, and clamps only inside `p_first_better`; so `relabel` recomputes a label under any
     clamp offline: the clamp on each P(A), then both orders, then the mean over principles,
     exactly as `FeedbackLabeller.principle_label` / `ensemble_average`. `check_stored_labels`
     verifies that a file's stored labels follow from its raw values under the clamp it was
     made with.
   - `compare_calibration`: for each variant (no CoT, CoT unclamped, CoT clamped, ...) the labels
     matched to the human comparisons (`pm_eval.match_labels`: same prompt and responses, either
     order), q = P(human-chosen answer better), then accuracy, ECE (`calibration.pair_calibration`:
     each pair from both sides, equal-width bins), mean confidence max(q, 1 - q) and
     overconfidence = mean confidence - accuracy; by default on the pairs every variant labelled.

Figures (matplotlib `Figure`, no pyplot, as in `plots.py`): `plot_revision_scores` (mean +- SE
per revision number) and `plot_reliability_overlay` (several reliability curves on one diagram,
with counts per bin below).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

from cai_jax.cai import feedback as F
from cai_jax.data.jsonl import DataError, read_jsonl, require
from cai_jax.eval import calibration, pm_eval

# ----------------------------------------------------------------------------------------------
# Statistics.


def mean_se(values: Sequence[float]) -> dict:
  """{"n", "mean", "std", "se"}: std with ddof 1, se = std / sqrt(n); None where undefined
  (mean of nothing, std and se of one value)."""
  x = np.asarray(values, np.float64).ravel()
  n = int(x.size)
  if n == 0:
    return {"n": 0, "mean": None, "std": None, "se": None}
  if n == 1:
    return {"n": 1, "mean": float(x[0]), "std": None, "se": None}
  std = float(np.std(x, ddof=1))
  return {"n": n, "mean": float(np.mean(x)), "std": std, "se": std / float(np.sqrt(n))}


# ----------------------------------------------------------------------------------------------
# 1. PM score against the number of revisions.


def read_sl_records(path: str, *, drop_flagged: bool = False) -> tuple[list[dict], list[str]]:
  """(records, ids of flagged records dropped) from an `sl_generate` records jsonl. Each record
  is checked to hold `id`, `prompt`, `initial_response` and `rounds` (a list whose entries hold
  a string `revision`), else DataError file:line; `where` ("file:line") is added to each."""
  out, dropped, seen = [], [], {}
  for lineno, obj in read_jsonl(path):
    rid = str(require(obj, "id", (str, int), path, lineno))
    if rid in seen:
      raise DataError(f"{path}:{lineno}: duplicate id {rid!r} (first on line {seen[rid]})")
    seen[rid] = lineno
    require(obj, "prompt", str, path, lineno)
    require(obj, "initial_response", str, path, lineno)
    rounds = require(obj, "rounds", list, path, lineno)
    for i, r in enumerate(rounds):
      if not isinstance(r, dict) or not isinstance(r.get("revision"), str):
        raise DataError(f"{path}:{lineno}: rounds[{i}] should be an object with a string "
                        "'revision' (sl_generate records each round's revision)")
    if drop_flagged and obj.get("flags"):
      dropped.append(rid)
      continue
    out.append({**obj, "id": rid, "where": f"{path}:{lineno}"})
  if not out:
    raise DataError(f"{path}: no records" + (" left after dropping flagged ones"
                                              if dropped else ""))
  return out, dropped


def revision_texts(record: dict) -> list[str]:
  """[initial response, revision 1, ..., revision R] of one sl_generate record."""
  return [record["initial_response"]] + [r["revision"] for r in record["rounds"]]


def flatten_transcripts(records: Sequence[dict]) -> tuple[list[tuple[str, str]], list[int]]:
  """((prompt, response) for every transcript of every record, in record then revision order;
  the number of transcripts per record), the input of `PMScorer.score_responses`."""
  items, sizes = [], []
  for rec in records:
    texts = revision_texts(rec)
    items += [(rec["prompt"], t) for t in texts]
    sizes.append(len(texts))
  return items, sizes


def split_scores(flat: Sequence[float], sizes: Sequence[int]) -> list[list[float]]:
  """The flat per-transcript scores cut back into one list per record (0 = initial)."""
  flat = np.asarray(flat, np.float64).ravel()
  if flat.size != sum(sizes):
    raise ValueError(f"{flat.size} scores for {sum(sizes)} transcripts")
  ends = np.cumsum(sizes)
  return [flat[e - n:e].tolist() for e, n in zip(ends, sizes)]


def revision_score_table(scores: Sequence[Sequence[float]]) -> list[dict]:
  """One row per revision number r (0 = the initial answer): {"revision", "n", "mean", "std",
  "se", "delta_vs_initial": mean_se(score_r - score_0)} over the records that have revision r
  (records may have different numbers of rounds)."""
  rounds = max((len(s) for s in scores), default=0)
  table = []
  for r in range(rounds):
    values = [s[r] for s in scores if len(s) > r]
    deltas = [s[r] - s[0] for s in scores if len(s) > r]
    table.append({"revision": r, **mean_se(values), "delta_vs_initial": mean_se(deltas)})
  return table


# ----------------------------------------------------------------------------------------------
# 2. The chain-of-thought clamp and calibration.


def relabel(per_principle: Sequence[Mapping], lo: float = 0.0, hi: float = 1.0) -> float:
  """p(first better) of one labelled pair recomputed from its raw per-question P(A): each P(A)
  clamped to [lo, hi] (0, 1: unclamped), both orders averaged where the swapped order was asked,
  then the mean over principles."""
  return F.ensemble_average([F.principle_probability(e["p_a_orig"], e.get("p_a_swapped"), lo, hi)
                             for e in per_principle])


def relabelled(labels: Sequence[F.FeedbackLabel], lo: float = 0.0, hi: float = 1.0
               ) -> list[F.FeedbackLabel]:
  """The labels with `p_first_better` recomputed under the clamp [lo, hi] (`relabel`)."""
  return [dataclasses.replace(x, p_first_better=relabel(x.per_principle, lo, hi))
          for x in labels]


def labelling_clamp(path: str) -> tuple[float, float] | None:
  """The (clamp_low, clamp_high) a feedback labels file was made with: (0, 1) for mc-mode lines,
  the provenance settings for cot-mode lines; None when no line records it. Lines that disagree
  are a DataError."""
  found, first = None, None
  for lineno, obj in read_jsonl(path):
    if obj.get("mode") == "mc":
      clamp = (0.0, 1.0)
    else:
      settings = (obj.get("provenance") or {}).get("settings") or {}
      if "clamp_low" not in settings or "clamp_high" not in settings:
        continue
      clamp = (float(settings["clamp_low"]), float(settings["clamp_high"]))
    if found is None:
      found, first = clamp, lineno
    elif clamp != found:
      raise DataError(f"{path}:{lineno}: labelled with clamp {list(clamp)}, but line {first} "
                      f"with {list(found)}; label each setting into its own file")
  return found


def check_stored_labels(labels: Sequence[F.FeedbackLabel], lo: float, hi: float,
                        tol: float = 1e-9) -> None:
  """DataError (file:line) unless every stored `p_first_better` equals `relabel` under the
  clamp the file was made with: the per-question values then are the raw ones."""
  for x in labels:
    p = relabel(x.per_principle, lo, hi)
    if abs(p - x.p_first_better) > tol:
      raise DataError(f"{x.where}: p_first_better {x.p_first_better!r} does not follow from the "
                      f"per-principle p_a_orig / p_a_swapped under the clamp [{lo}, {hi}] "
                      f"(recomputed {p!r}); the raw probabilities cannot be re-clamped")


def _content_key(prompt: str, responses) -> tuple:
  return prompt, frozenset(responses)


def matched_q(labels: Sequence[F.FeedbackLabel], comparisons) -> tuple[dict, list[str]]:
  """({comparison content key: q = P(human-chosen better)}, unmatched label ids)."""
  m = pm_eval.match_labels(labels, comparisons)
  by_id = {x.id: x for x in labels}
  q = {}
  for lid, value in zip(m.matched_ids, m.q):
    q[_content_key(by_id[lid].prompt, by_id[lid].responses)] = float(value)
  return q, m.unmatched_labels


def calibration_summary(q: Sequence[float], num_bins: int = 10) -> dict:
  """Accuracy (a tie counts half), ECE and the reliability bins of q = P(better answer
  preferred), mean confidence max(q, 1 - q) and overconfidence = mean confidence - accuracy."""
  q = np.asarray(q, np.float64).ravel()
  acc, ties = calibration.accuracy(q)
  rel = calibration.pair_calibration(q, num_bins)
  conf = float(np.mean(np.maximum(q, 1.0 - q))) if q.size else None
  return {"n": int(q.size), "accuracy": acc, "ties": ties,
          "mean_p_chosen": float(np.mean(q)) if q.size else None,
          "mean_confidence": conf, "overconfidence": conf - acc if q.size else None,
          "ece": rel["ece"], "calibration": rel}


def compare_calibration(variants: Mapping[str, Sequence[F.FeedbackLabel]], comparisons,
                        num_bins: int = 10, common_only: bool = True) -> dict:
  """{"pairs": number of pairs compared (common_only), "variants": {name: calibration_summary
  + "unmatched_labels"}}. With `common_only` every variant is scored on the same pairs: the
  comparisons that all variants labelled (in the comparisons' order)."""
  matched = {name: matched_q(labels, comparisons) for name, labels in variants.items()}
  order = [_content_key(c.prompt, (c.chosen, c.rejected)) for c in comparisons]
  common = [k for k in order if all(k in q for q, _ in matched.values())]
  if common_only and not common:
    raise DataError("no human comparison is labelled by every variant (same prompt and the "
                    "same two responses); were the label files made on the same pairs?")
  out = {}
  for name, (q, unmatched) in matched.items():
    keys = common if common_only else [k for k in order if k in q]
    if not keys:
      raise DataError(f"{name}: no label matches a comparison of the human file")
    out[name] = {**calibration_summary([q[k] for k in keys], num_bins),
                 "unmatched_labels": len(unmatched)}
  return {"pairs": len(common) if common_only else None, "variants": out}


# ----------------------------------------------------------------------------------------------
# Figures.

COLORS = ("#4c72b0", "#c44e52", "#55a868", "#8172b2", "#ccb974", "#64b5cd")


def _save(fig, path: str) -> str:
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png")
  return path


def plot_revision_scores(table: Sequence[dict], path: str, *, title: str = "",
                         ylabel: str = "harmlessness PM score") -> str:
  """Mean PM score +- one standard error per number of revisions (0 = the initial answer), with
  n per point; writes a PNG and returns its path."""
  from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

  rows = [r for r in table if r["n"]]
  x = [r["revision"] for r in rows]
  y = [r["mean"] for r in rows]
  err = [r["se"] or 0.0 for r in rows]
  fig = Figure(figsize=(5.5, 4.2), dpi=100)
  ax = fig.subplots()
  ax.errorbar(x, y, yerr=err, marker="o", color=COLORS[0], ecolor="black", capsize=4,
              linewidth=2, label="mean +- 1 standard error")
  for xi, yi, r in zip(x, y, rows):
    ax.annotate(f"n={r['n']}", (xi, yi), textcoords="offset points", xytext=(6, -12),
                fontsize=7)
  ax.set_xticks(x)
  ax.set_xlabel("number of revisions (0 = initial answer)")
  ax.set_ylabel(ylabel)
  ax.set_title(title or "PM score vs number of revisions", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize=8)
  return _save(fig, path)


def plot_reliability_overlay(results: Mapping[str, dict], path: str, *, title: str = "",
                             labels: Mapping[str, str] | None = None,
                             xlabel: str = "label P(answer better)",
                             ylabel: str = "observed frequency humans chose it") -> str:
  """Reliability curves of several labellers on one diagram: per non-empty bin, observed
  frequency against mean predicted probability (marker area ~ count), the diagonal for perfect
  calibration, and below, grouped bars of the count per bin. `results[name]` holds "calibration"
  (`calibration.reliability` output), "ece", "accuracy" and "n"."""
  from matplotlib.figure import Figure

  labels = dict(labels or {})
  fig = Figure(figsize=(6.0, 7.0), dpi=100)
  top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
  k = max(len(results), 1)
  for i, (name, res) in enumerate(results.items()):
    rel, color = res["calibration"], COLORS[i % len(COLORS)]
    bins = [b for b in rel["bins"] if b["count"]]
    total = max(rel["n"], 1)
    top.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], color=color,
             linewidth=1.5, label=f"{labels.get(name, name)}: ECE {res['ece']:.3f}, "
                                  f"acc {res['accuracy']:.2f}, n={res['n']}")
    top.scatter([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], color=color,
                s=[20 + 300 * b["count"] / total for b in bins], edgecolor="black", zorder=3)
    width = 1.0 / rel["num_bins"]
    bottom.bar([b["lo"] + width * (i + 0.5) / k for b in rel["bins"]],
               [b["count"] for b in rel["bins"]], width=width / k * 0.9, color=color,
               edgecolor="black")
  top.set_xlim(0, 1)
  top.set_ylim(-0.02, 1.05)
  top.set_ylabel(ylabel)
  top.set_title(title or "calibration of AI labels against human choices", fontsize=10)
  top.legend(loc="upper left", fontsize=7)
  top.grid(alpha=0.3)
  bottom.set_ylabel("count")
  bottom.set_xlabel(xlabel)
  return _save(fig, path)
