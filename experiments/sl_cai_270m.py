"""SL-CAI on Gemma 3 270M, CPU-sized: sl_generate over 16 red-team prompts x 2 rounds, killed
with SIGKILL after its first batch and restarted, then sl_train for a few steps on its SL file.

python experiments/sl_cai_270m.py [--workdir runs/sl_cai_270m] [--prompts 16] [--rounds 2]
Prints one JSON object last: wall times, tokens/s, record counts, the id check after the
restart, flags, and the sl_train losses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(config, workdir, overrides, **kw):
  args = [sys.executable, "-m", "cai_jax.main", "--config", os.path.join(ROOT, "configs", config),
          "--workdir", workdir] + [f"--config.{k}={v}" for k, v in overrides.items()]
  return subprocess.Popen(args, cwd=ROOT, **kw)


def ids(path):
  with open(path) as f:
    return [json.loads(line)["id"] for line in f if line.strip()]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "sl_cai_270m"))
  p.add_argument("--prompts", type=int, default=16)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--train-steps", type=int, default=6)
  args = p.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  gen = {"sl_generate.limit": args.prompts, "sl_generate.rounds": args.rounds,
         "sl_generate.batch_size": 8, "sl_generate.helpful_ratio": 0.5}
  records = os.path.join(args.workdir, "sl_generate", "records.jsonl")

  t0 = time.perf_counter()
  proc = cli("sl_generate.py", args.workdir, gen)
  while not (os.path.exists(records) and len(ids(records)) >= 8):
    if proc.poll() is not None:
      raise SystemExit(f"sl_generate ended before the kill (status {proc.returncode})")
    time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_after = time.perf_counter() - t0
  before = ids(records)

  t1 = time.perf_counter()
  rc = cli("sl_generate.py", args.workdir, gen).wait()
  restart_s = time.perf_counter() - t1
  if rc:
    raise SystemExit(f"restarted sl_generate failed with status {rc}")
  after = ids(records)
  with open(os.path.join(args.workdir, "sl_generate", "report.json")) as f:
    report = json.load(f)

  sl_file = report["outputs"]["sl_train"]
  t2 = time.perf_counter()
  rc = cli("sl_train.py", args.workdir, {
      "sl_train.data": sl_file, "sl_train.steps": args.train_steps, "sl_train.batch_size": 4,
      "sl_train.max_length": 512, "sl_train.checkpoint_every": 1000,
      "optim.warmup_steps": 1, "optim.learning_rate": 1e-5}).wait()
  train_s = time.perf_counter() - t2
  if rc:
    raise SystemExit(f"sl_train failed with status {rc}")
  with open(os.path.join(args.workdir, "sl_train", "metrics.jsonl")) as f:
    losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]

  print(json.dumps({
      "prompts": args.prompts, "rounds": args.rounds,
      "killed_after_s": round(killed_after, 1), "records_before_kill": len(before),
      "restart_s": round(restart_s, 1), "records_after": len(after),
      "unique_ids_after": len(set(after)), "kept_finished_records": after[:len(before)] == before,
      "restart_tokens_per_s": report["tokens_per_s_this_run"],
      "restart_tokens": report["tokens_generated_this_run"], "flags": report["flags"],
      "flagged_records": report["flagged_records"], "sl_examples": report["sl_examples"],
      "rounds_mean_tokens": report["rounds"],
      "sl_train_s": round(train_s, 1), "sl_train_losses": losses}))


if __name__ == "__main__":
  main()
