"""Calibration of AI feedback labels against human choices: no chain of thought, chain of thought
unclamped, and chain of thought with each P(A) clamped to [0.4, 0.6] (the paper: CoT labels are
overconfident; the clamp calibrates them better).

From label files of the `feedback` job made on pairs of a human comparison file:
python experiments/cot_clamp_calibration.py --human-file HH.jsonl \
    [--mc-labels W/feedback/labels.jsonl] [--cot-labels W_COT/feedback/labels.jsonl] \
    [--clamp 0.4 0.6] [--num-bins 10] [--out runs/cot_clamp_calibration]
or labelling the first N comparisons itself (the `feedback` job twice, mode mc and mode cot, on
one pairs file; `--set` passes config overrides to both; resumable):
python experiments/cot_clamp_calibration.py \
    --human-file ../shared/reference/hh-rlhf/harmless-base-test-first200.jsonl --label 16 \
    --set feedback.num_principles=2 --set feedback.max_reasoning_tokens=64

Offline re-clamping: the labels file of a CoT run keeps the RAW P(A) of every question
(`per_principle[*].p_a_orig` / `p_a_swapped`) and applies the clamp only inside
`p_first_better`, so one CoT run gives both the unclamped and the clamped labels
(`analysis.relabel`); each file's stored labels are first checked to follow from its raw values
under the clamp it was made with. Every variant is scored on the same pairs (the comparisons all
of them labelled; `--all-matched` scores each on all it labelled). q = P(human-chosen answer
better); accuracy (ties half), ECE over equal-width bins with each pair counted from both sides
(`calibration.pair_calibration`), mean confidence max(q, 1 - q) and overconfidence = mean
confidence - accuracy. Writes OUT/cot_clamp_calibration.json and OUT/cot_clamp_calibration.png
(the reliability curves overlaid) and prints the table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cai_jax.cai.feedback import read_feedback_file  # noqa: E402
from cai_jax.data import preferences as prefs  # noqa: E402
from cai_jax.data.jsonl import DataError, write_json_atomic  # noqa: E402
from cai_jax.data.sources import read_hh_comparisons  # noqa: E402
from cai_jax.eval import analysis  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--human-file", required=True, help="HH-RLHF chosen/rejected jsonl(.gz)")
  p.add_argument("--mc-labels", default="", help="feedback labels.jsonl, mode mc (no CoT)")
  p.add_argument("--cot-labels", default="", help="feedback labels.jsonl, mode cot")
  p.add_argument("--clamp", type=float, nargs=2, default=(0.4, 0.6), metavar=("LO", "HI"))
  p.add_argument("--num-bins", type=int, default=10)
  p.add_argument("--all-matched", action="store_true",
                 help="score each variant on every pair it labelled, not only the common ones")
  p.add_argument("--label", type=int, default=0, metavar="N",
                 help="label the first N comparisons with the feedback job (mc and cot) for "
                      "the label files not given")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override for the feedback runs of --label, e.g. "
                      "feedback.num_principles=2 (repeatable)")
  p.add_argument("--seed", type=int, default=0, help="sides of the pairs written by --label")
  p.add_argument("--out", default=os.path.join(ROOT, "runs", "cot_clamp_calibration"))
  return p.parse_args(argv)


def run_feedback(workdir: str, pairs: str, mode: str, overrides=()) -> str:
  """The feedback job on `pairs` in `mode` (through the command line); returns its labels."""
  args = [sys.executable, "-m", "cai_jax.main", "--config",
          os.path.join(ROOT, "configs", "feedback.py"), "--workdir", workdir,
          f"--config.feedback.pairs={pairs}", f"--config.feedback.mode={mode}",
          *[f"--config.{kv}" for kv in overrides]]
  print(f"feedback ({mode}): {' '.join(args[2:])}", flush=True)
  subprocess.run(args, cwd=ROOT, check=True)
  return os.path.join(workdir, "feedback", "labels.jsonl")


def load_labels(path: str, mode: str):
  """The labels of `path` (all in `mode`) and the clamp they were made with, checked."""
  labels = read_feedback_file(path)
  bad = next((x for x in labels if x.mode != mode), None)
  if bad is not None:
    raise DataError(f"{bad.where}: mode {bad.mode!r}, expected {mode!r} in this file")
  clamp = analysis.labelling_clamp(path)
  if clamp is not None:
    analysis.check_stored_labels(labels, *clamp)
  return labels, clamp


def main(argv=None) -> dict:
  args = parse_args(argv)
  lo, hi = args.clamp
  if not 0.0 <= lo <= hi <= 1.0:
    raise SystemExit(f"--clamp needs 0 <= LO <= HI <= 1, got {lo} {hi}")
  comparisons = read_hh_comparisons(args.human_file)
  mc_path, cot_path = args.mc_labels, args.cot_labels
  if args.label:
    os.makedirs(args.out, exist_ok=True)
    pairs = os.path.join(args.out, "pairs.jsonl")
    prefs.write_pairs_for_comparisons(comparisons[:args.label], pairs, args.seed)
    if not mc_path:
      mc_path = run_feedback(os.path.join(args.out, "mc"), pairs, "mc", args.set)
    if not cot_path:
      cot_path = run_feedback(os.path.join(args.out, "cot"), pairs, "cot", args.set)
  if not (mc_path or cot_path):
    raise SystemExit("nothing to compare: give --mc-labels and/or --cot-labels, or --label N")

  variants, names, inputs = {}, {}, {}
  if mc_path:
    labels, _ = load_labels(mc_path, "mc")
    variants["mc"], names["mc"] = labels, "no CoT (multiple choice)"
    inputs["mc"] = os.path.abspath(mc_path)
  cot_clamp = None
  if cot_path:
    labels, cot_clamp = load_labels(cot_path, "cot")
    variants["cot_unclamped"] = analysis.relabelled(labels, 0.0, 1.0)
    names["cot_unclamped"] = "CoT, unclamped"
    key = f"cot_clamped_{lo:g}_{hi:g}"
    variants[key] = analysis.relabelled(labels, lo, hi)
    names[key] = f"CoT, clamped to [{lo:g}, {hi:g}]"
    inputs["cot"] = os.path.abspath(cot_path)

  result = analysis.compare_calibration(variants, comparisons, args.num_bins,
                                        common_only=not args.all_matched)
  os.makedirs(args.out, exist_ok=True)
  png = analysis.plot_reliability_overlay(
      result["variants"], os.path.join(args.out, "cot_clamp_calibration.png"), labels=names,
      title=f"AI labels vs human choices ({os.path.basename(args.human_file)})")
  report = {"human_file": os.path.abspath(args.human_file), "inputs": inputs,
            "cot_labelled_with_clamp": list(cot_clamp) if cot_clamp else None,
            "clamp": [lo, hi], "num_bins": args.num_bins, "common_pairs": result["pairs"],
            "names": names, "variants": result["variants"], "png": png}
  path = os.path.join(args.out, "cot_clamp_calibration.json")
  write_json_atomic(path, report)
  print(f"{'variant':34s} {'n':>4s} {'accuracy':>9s} {'ECE':>7s} {'confidence':>11s} "
        f"{'overconf.':>10s}")
  for key, r in result["variants"].items():
    print(f"{names[key]:34s} {r['n']:4d} {r['accuracy']:9.3f} {r['ece']:7.4f} "
          f"{r['mean_confidence']:11.3f} {r['overconfidence']:10.3f}")
  print(f"wrote {path} and {png}")
  return report


if __name__ == "__main__":
  main()
