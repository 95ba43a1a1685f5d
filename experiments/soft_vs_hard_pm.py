"""Soft versus hard AI labels for the preference model (the paper's ablation, section 4.3).

Two preference models are trained on the same AI-labelled pairs with the same settings: one on
the soft labels (the feedback model's normalised probability, what cai_jax uses), one on the
hard labels (each rounded to 1 / 0, 0.5 kept: `feedback.hard_label`, exactly what
`--config.feedback.label=hard` writes, so one feedback run serves both). Both are then scored on
held-out human comparisons: accuracy (the human-chosen answer scored higher) and calibration
(ECE of sigmoid(r_chosen - r_rejected), each pair from both sides), with the `eval` job.

python experiments/soft_vs_hard_pm.py --labels runs/quick/feedback/labels.jsonl \
    --human-file ../shared/reference/hh-rlhf/harmless-base-test-first200.jsonl \
    [--out runs/soft_vs_hard] [--set pm_train.steps=12 ...]
The defaults train as the quickstart's pm_train does (12 steps of 4 pairs, learning rate 1e-4,
max_length 256, 25% held out). Writes OUT/soft_vs_hard.json and prints the table; resumable
(each stage of each run is skipped when its output exists).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cai_jax.cai import feedback as F  # noqa: E402
from cai_jax.data.jsonl import read_jsonl, write_json_atomic  # noqa: E402

PM_SETTINGS = ["pm_train.steps=12", "pm_train.batch_size=4", "pm_train.max_length=256",
               "pm_train.eval_every=3", "pm_train.heldout_fraction=0.25",
               "pm_train.async_checkpoints=False", "pm_train.keep_checkpoints=1",
               "optim.learning_rate=1e-4", "optim.warmup_steps=1"]


def write_hard(soft_path: str, hard_path: str) -> int:
  """The labels file with every p_first_better rounded (p_soft kept); returns the label count."""
  rows = []
  for _, obj in read_jsonl(soft_path):
    soft = float(obj["p_first_better"])
    rows.append({**obj, "p_first_better": F.hard_label(soft), "p_soft": soft})
  tmp = hard_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in rows:
      F.validate_record(r, f"{hard_path} (id {r['id']})")
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, hard_path)
  return len(rows)


def job(config: str, workdir: str, flags: list[str]) -> None:
  cmd = [sys.executable, "-m", "cai_jax.main", "--config", os.path.join(ROOT, "configs", config),
         "--workdir", workdir] + [f"--config.{f}" for f in flags]
  print("+", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--labels", required=True, help="feedback labels.jsonl (soft labels)")
  ap.add_argument("--human-file", required=True, help="held-out HH chosen/rejected jsonl")
  ap.add_argument("--out", default="runs/soft_vs_hard")
  ap.add_argument("--set", action="append", default=[], help="extra pm_train override")
  args = ap.parse_args()
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  labels = {"soft": os.path.abspath(args.labels), "hard": os.path.join(out, "hard_labels.jsonl")}
  n = write_hard(labels["soft"], labels["hard"])
  human = os.path.abspath(args.human_file)
  results = {"labels": labels["soft"], "human_file": human, "num_labels": n, "runs": {}}
  for kind in ("soft", "hard"):
    w = os.path.join(out, kind)
    if not os.path.exists(os.path.join(w, "pm_train", "pm", "pm.json")):
      job("pm_train.py", w, [f"pm_train.ai_labels={labels[kind]}"] + PM_SETTINGS + args.set)
    if not os.path.exists(os.path.join(w, "eval", "report.json")):
      job("eval.py", w, [f"eval.comparisons={human}", "eval.batch_size=4", "eval.max_length=256"])
    report = json.load(open(os.path.join(w, "eval", "report.json")))
    result = report["comparisons"][human]
    summary = json.load(open(os.path.join(w, "pm_train", "summary.json")))
    results["runs"][kind] = {
        "human_accuracy": result["accuracy"], "human_ece": result["ece"], "n": result["n"],
        "held_out_ai_accuracy": summary["final"].get("eval_ai_accuracy"),
        "held_out_ai_loss": summary["final"].get("eval_ai_loss"),
        "held_out_ai_ece": summary.get("calibration", {}).get("ai", {}).get("ece"),
        "reliability_png": result.get("reliability_png")}
  write_json_atomic(os.path.join(out, "soft_vs_hard.json"), results)
  print(f"{'labels':6} {'human acc':>9} {'human ECE':>9} {'AI held-out acc':>15} "
        f"{'AI held-out loss':>16}")
  for kind, r in results["runs"].items():
    print(f"{kind:6} {r['human_accuracy']:9.3f} {r['human_ece']:9.4f} "
          f"{r['held_out_ai_accuracy'] or float('nan'):15.3f} "
          f"{r['held_out_ai_loss'] or float('nan'):16.5f}")
  print(f"wrote {os.path.join(out, 'soft_vs_hard.json')}")


if __name__ == "__main__":
  main()
