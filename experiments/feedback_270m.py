"""AI feedback with Gemma 3 270M on CPU: label answer pairs with an ensemble of 4 principles in
both orders, and measure the labeller against human harmlessness labels.

python experiments/feedback_270m.py --sl-records runs/sl_cai_270m/sl_generate/records.jsonl \
    [--hh ../shared/reference/hh-rlhf/harmless-base-test-first200.jsonl] [--human-pairs 32]
1. 32 pairs from sl_generate's records: (initial answer, round-1 revision) and (initial answer,
   final revision) per record, the order of each pair shuffled with a fixed seed.
2. The first --human-pairs comparisons of the HH file as pairs (chosen and rejected in a
   shuffled order); agreement = how often the AI label puts p(chosen better) above 0.5.
Both through the `feedback` job (mode mc, num_principles 4, both_orders). No prompt was tuned on
the HH file. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cai_jax.data.sources import read_hh_comparisons  # noqa: E402


def write_pairs(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def feedback(workdir, pairs, extra=()):
  args = [sys.executable, "-m", "cai_jax.main", "--config", os.path.join(ROOT, "configs/feedback.py"),
          "--workdir", workdir, f"--config.feedback.pairs={pairs}",
          "--config.feedback.num_principles=4", "--config.feedback.both_orders=True", *extra]
  t0 = time.perf_counter()
  subprocess.run(args, cwd=ROOT, check=True)
  wall = time.perf_counter() - t0
  with open(os.path.join(workdir, "feedback", "report.json")) as f:
    report = json.load(f)
  with open(os.path.join(workdir, "feedback", "labels.jsonl")) as f:
    labels = {r["id"]: r for r in map(json.loads, f)}
  return wall, report, labels


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sl-records", required=True)
  p.add_argument("--hh", default=os.path.join(ROOT, "..", "shared", "reference", "hh-rlhf",
                                              "harmless-base-test-first200.jsonl"))
  p.add_argument("--human-pairs", type=int, default=32)
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "feedback_270m"))
  args = p.parse_args()
  rnd = random.Random(0)

  with open(args.sl_records) as f:
    records = [json.loads(line) for line in f if line.strip()]
  pairs = []
  for r in records:
    for name, other in (("round1", r["rounds"][0]["revision"]), ("final", r["final"])):
      a, b = r["initial_response"], other
      swapped = rnd.random() < 0.5
      pairs.append({"id": f"{r['id']}-{name}", "prompt": r["prompt"],
                    "responses": [b, a] if swapped else [a, b],
                    "revision_first": swapped})
  pairs = [x for x in pairs if x["responses"][0].strip() and x["responses"][1].strip()
           and x["responses"][0].strip() != x["responses"][1].strip()]
  sl_pairs = os.path.join(args.workdir, "sl", "pairs.jsonl")
  write_pairs(sl_pairs, pairs)
  sl_wall, sl_report, sl_labels = feedback(os.path.join(args.workdir, "sl"), sl_pairs)
  prefer_revision = [sl_labels[x["id"]]["p_first_better"] if x["revision_first"]
                     else 1 - sl_labels[x["id"]]["p_first_better"] for x in pairs]

  human = read_hh_comparisons(args.hh)[:args.human_pairs]
  hpairs = []
  for c in human:
    swapped = rnd.random() < 0.5
    hpairs.append({"id": c.id, "prompt": c.prompt,
                   "responses": [c.rejected, c.chosen] if swapped else [c.chosen, c.rejected],
                   "chosen_first": not swapped})
  hpairs = [x for x in hpairs if x["responses"][0].strip() and x["responses"][1].strip()
            and x["responses"][0].strip() != x["responses"][1].strip()]
  hh_file = os.path.join(args.workdir, "hh", "pairs.jsonl")
  write_pairs(hh_file, hpairs)
  hh_wall, hh_report, hh_labels = feedback(os.path.join(args.workdir, "hh"), hh_file)
  p_chosen = [hh_labels[x["id"]]["p_first_better"] if x["chosen_first"]
              else 1 - hh_labels[x["id"]]["p_first_better"] for x in hpairs]
  agree = sum(p > 0.5 for p in p_chosen) / len(p_chosen)

  print(json.dumps({
      "sl_pairs": len(pairs), "sl_wall_s": round(sl_wall, 1),
      "sl_position_bias": sl_report.get("position_bias"),
      "sl_mean_p_revision_better": sum(prefer_revision) / len(prefer_revision),
      "sl_report": {k: sl_report[k] for k in sl_report if k not in ("skipped_flagged",)},
      "human_pairs": len(hpairs), "human_wall_s": round(hh_wall, 1),
      "human_agreement": agree, "human_mean_p_chosen": sum(p_chosen) / len(p_chosen),
      "human_position_bias": hh_report.get("position_bias"),
  }, default=str))


if __name__ == "__main__":
  main()
