"""PPO really learns: the `rl_train` job on the tiny preset against a known programmatic reward,
twice, with a small and a large KL coefficient.

python experiments/ppo_learns.py [--iterations 30] [--workdir runs/ppo_learns]
The policy is a tiny Gemma (tests/tiny_model.py, flattened output distribution so that samples
are diverse) with a 360-piece byte-fallback vocabulary. The reward of a response is the fraction
of its generated tokens equal to the piece 'a' (`rl_train.reward='target_token'`): about 1/360
at the start. Everything else is the job as it ships (sampler at temperature 1, scoring on the
training graph, k1 KL in the reward, GAE, whitened advantages, clipped losses, AdamW), with the
value model initialised from the policy (zero head) and the missing-end penalty off (random
text seldom ends). Run 1: kl_coef = --small-kl; run 2: the same seed and settings with kl_coef
= --large-kl. Prints per-iteration reward (score) and KL (mean per-sequence sum of log p -
log p_ref over the rollout's tokens) for both, then one JSON summary line. About 3 CPU-minutes
on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402

from cai_jax.metrics import read_metrics  # noqa: E402
from configs_loader import load_config  # noqa: E402
import tiny_model  # noqa: E402

TOPICS = ["cats", "dogs", "the sea", "the sun", "trees", "the moon", "rain", "stones", "bread",
          "music", "rivers", "snow", "birds", "books", "clocks", "gardens"]


def run_job(config, workdir: str) -> dict:
  from cai_jax import main
  if config.job in main.JOBS:
    return main.run(config, workdir)
  from cai_jax.jobs import rl_train  # not yet listed in main.JOBS: call the job directly
  main.record_config(config, os.path.join(os.path.abspath(workdir), "rl_train"))
  return rl_train.run(config, os.path.abspath(workdir))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "ppo_learns"))
  p.add_argument("--iterations", type=int, default=25)
  p.add_argument("--small-kl", type=float, default=0.01)
  p.add_argument("--large-kl", type=float, default=0.1)
  p.add_argument("--kl-ceiling", type=float, default=30.0)
  p.add_argument("--learning-rate", type=float, default=1e-2)
  p.add_argument("--target", default=".", help="the rewarded piece (one character)")
  p.add_argument("--ppo-epochs", type=int, default=4)
  args = p.parse_args()

  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  ckpt = tiny_model.write_hf_checkpoint(os.path.join(args.workdir, "tiny_hf"), flat_logits=True)
  tok = tiny_model.small_tokenizer()
  target = tok.piece_to_id(args.target)
  assert target != tok.unk_id and tok.encode(args.target, add_bos=False) == [target]
  prompts = os.path.join(args.workdir, "prompts.jsonl")
  with open(prompts, "w") as f:
    for i, t in enumerate(TOPICS):
      f.write(json.dumps({"id": f"p{i}", "prompt": f"\n\nHuman: tell me about {t}\n\nAssistant:"})
              + "\n")

  settings = {
      "model.checkpoint": ckpt, "model.cache_dir": args.workdir,
      "rl_train.reward": "target_token", "rl_train.target_token_id": target,
      "rl_train.value_init": "policy", "rl_train.prompts": prompts, "rl_train.helpful_prompts": "",
      "rl_train.iterations": args.iterations, "rl_train.batch_size": 32,
      "rl_train.minibatch_size": 16, "rl_train.ppo_epochs": args.ppo_epochs,
      "rl_train.max_prompt_tokens": 48, "rl_train.max_new_tokens": 16,
      "rl_train.sampler_batch": 32, "rl_train.missing_end_penalty": 0.0,
      "rl_train.kl_ceiling": args.kl_ceiling, "rl_train.vf_coef": 0.5,
      "rl_train.checkpoint_every": 0, "rl_train.sample_every": 0, "rl_train.progress": False,
      "rl_train.export_hf": False, "rl_train.probe_count": 0,
      "optim.learning_rate": args.learning_rate,
  }
  runs = {}
  for name, kl_coef in (("small_kl", args.small_kl), ("large_kl", args.large_kl)):
    t0 = time.perf_counter()
    config = load_config("rl_train", **settings, **{"rl_train.kl_coef": kl_coef})
    run_job(config, os.path.join(args.workdir, name))
    wall = time.perf_counter() - t0
    records = read_metrics(os.path.join(args.workdir, name, "rl_train", "metrics.jsonl"))
    runs[name] = {"kl_coef": kl_coef, "wall_s": wall, "records": records}

  print(f"\nreward = fraction of {args.target!r} (id {target}) in the response; kl = mean "
        "per-sequence sum of log p - log p_ref (k1), nats")
  print(f"{'iter':>4} | {'small_kl reward':>15} {'kl':>7} | {'large_kl reward':>15} {'kl':>7}")
  a, b = runs["small_kl"]["records"], runs["large_kl"]["records"]
  for ra, rb in zip(a, b):
    print(f"{ra['step']:>4} | {ra['score']:>15.4f} {ra['kl']:>7.3f} | {rb['score']:>15.4f} "
          f"{rb['kl']:>7.3f}")

  def tail(records, key, n=5):
    return float(np.mean([r[key] for r in records[-n:]]))

  summary = {"target_token_id": target, "iterations": args.iterations,
             "kl_ceiling": args.kl_ceiling}
  for name, r in runs.items():
    recs = r["records"]
    summary[name] = {
        "kl_coef": r["kl_coef"], "wall_s": round(r["wall_s"], 1),
        "reward_first": round(recs[0]["score"], 4), "reward_last5": round(tail(recs, "score"), 4),
        "kl_last5": round(tail(recs, "kl"), 3), "kl_max": round(max(x["kl"] for x in recs), 3),
        "kl_k3_last5": round(tail(recs, "kl_k3"), 3),
        "entropy_last5": round(tail(recs, "entropy"), 3),
    }
  s, l = summary["small_kl"], summary["large_kl"]
  summary["reward_rose"] = s["reward_last5"] > 5 * max(s["reward_first"], 1e-3)
  summary["kl_below_ceiling"] = s["kl_max"] < args.kl_ceiling and l["kl_max"] < args.kl_ceiling
  summary["large_kl_closer_to_reference"] = l["kl_last5"] < s["kl_last5"]
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
