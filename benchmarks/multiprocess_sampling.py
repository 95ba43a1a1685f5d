"""The sampling stages at 1 and at 2 JAX processes on this machine (gloo collectives), on the tiny
test checkpoint: wall time per stage (model load and compilation included) and records per
second, and whether the two runs wrote the same records.

python benchmarks/multiprocess_sampling.py [--prompts 24]

On a 2-core CPU two processes share the same two cores, so this measures that the split works
and what it costs here, not the speed-up of a slice (where each process has its own chips).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
sys.path.insert(0, TESTS)

import multiprocess_check  # noqa: E402
import tiny_model  # noqa: E402

JOBS = ["sl_generate", "sample_pairs", "feedback", "eval"]
WORDS = ["apples", "rivers", "quiet", "music", "paper", "stone", "green", "light", "salt",
         "bread", "winter", "glass"]


def assets(root: str, n: int) -> None:
  tiny_model.write_hf_checkpoint(os.path.join(root, "hf"), flat_logits=True)
  tiny_model.write_hf_checkpoint(os.path.join(root, "hf_b"), seed=1, flat_logits=True)
  w = lambda i: WORDS[i % len(WORDS)]  # noqa: E731
  with open(os.path.join(root, "prompts.jsonl"), "w") as f:
    for i in range(n):
      f.write(json.dumps({"id": f"red-{i}", "prompt": f"\n\nHuman: tell me about {w(i)} and "
                                                      f"{w(i + 5)}\n\nAssistant:"}) + "\n")
  with open(os.path.join(root, "helpful.jsonl"), "w") as f:
    for i in range(n):
      f.write(json.dumps({"id": f"h{i}", "prompt": f"\n\nHuman: how do I cook {w(i)}?"
                                                   "\n\nAssistant:"}) + "\n")
  with open(os.path.join(root, "pairs.jsonl"), "w") as f:
    for i in range(n):
      f.write(json.dumps({"id": f"q{i}", "prompt": f"\n\nHuman: what is {w(i)}?\n\nAssistant:",
                          "responses": [f" {w(i + 1)} and {w(i + 2)}.", f" no {w(i + 3)}."]})
              + "\n")
  with open(os.path.join(root, "overrides.json"), "w") as f:
    json.dump({"eval": {"eval.num_prompts": n // 2}}, f)
  tiny_model.write_short_constitution(os.path.join(root, "constitution.json"))


def run(root: str, workdir: str, processes: int) -> dict:
  """{job: wall seconds of the slowest process}."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  procs = multiprocess_check.start(root, workdir, JOBS, processes, env)
  seconds = {}
  for p in procs:
    out, err = p.communicate()
    if p.returncode:
      raise SystemExit(err[-3000:])
    for job, s in json.loads(out.strip().splitlines()[-1]).items():
      seconds[job] = max(seconds.get(job, 0.0), s)
  return seconds


def count(path: str) -> int:
  with open(path) as f:
    return sum(1 for line in f if line.strip())


OUTPUTS = {"sl_generate": ["sl_generate/records.jsonl", "sl_generate/helpful.jsonl"],
           "sample_pairs": ["sample_pairs/pairs.jsonl"], "feedback": ["feedback/labels.jsonl"],
           "eval": ["eval/answers/base.jsonl", "eval/answers/other.jsonl",
                    "eval/judgements.jsonl"]}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--prompts", type=int, default=24)
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="cai_jax_mp_")
  assets(root, args.prompts)
  results = {}
  for n in (1, 2):
    results[n] = run(root, os.path.join(root, f"p{n}"), n)
  rows = []
  for job in JOBS:
    records = sum(count(os.path.join(root, "p1", rel)) for rel in OUTPUTS[job])
    same_ids = all(
        [json.loads(x)["id"] for x in open(os.path.join(root, "p1", rel))]
        == [json.loads(x)["id"] for x in open(os.path.join(root, "p2", rel))]
        for rel in OUTPUTS[job])
    rows.append({"job": job, "records": records,
                 "s_1_process": round(results[1][job], 1), "s_2_processes": round(results[2][job], 1),
                 "records_per_s_1": round(records / results[1][job], 2),
                 "records_per_s_2": round(records / results[2][job], 2),
                 "same_record_ids": same_ids})
  print("| stage | records | 1 process (s) | 2 processes (s) | records/s 1 | records/s 2 | same records |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['job']} | {r['records']} | {r['s_1_process']} | {r['s_2_processes']} | "
          f"{r['records_per_s_1']} | {r['records_per_s_2']} | {r['same_record_ids']} |")
  print(json.dumps({"prompts": args.prompts, "cpu_count": os.cpu_count(), "stages": rows}))


if __name__ == "__main__":
  main()
