"""Run as a subprocess (one per JAX process; tests/test_multiprocess_sampling.py starts them):
the sampling jobs named on the command line, in order, on a tiny checkpoint, in one workdir.
With CAI_JAX_COORDINATOR / CAI_JAX_NUM_PROCESSES / CAI_JAX_PROCESS_ID in the environment the
jobs run as one process of several (gloo collectives); without, as a single process.
ASSETS/overrides.json, when present, changes config fields ({job: {"section.field": value}}).
Prints one JSON line {job: wall seconds}."""

from __future__ import annotations

import json
import os
import sys
import time

from cai_jax import main as cli
from configs_loader import load_config


def start(assets: str, workdir: str, jobs, processes: int, env: dict) -> list:
  """Starts this script as `processes` JAX processes (gloo on a free 127.0.0.1 port when more
  than one) running `jobs` in `workdir`; returns the Popen objects (stdout/stderr piped)."""
  import socket
  import subprocess
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  here = os.path.dirname(os.path.abspath(__file__))
  procs = []
  for i in range(processes):
    e = dict(env)
    if processes > 1:
      e.update(CAI_JAX_COORDINATOR=f"127.0.0.1:{port}", CAI_JAX_NUM_PROCESSES=str(processes),
               CAI_JAX_PROCESS_ID=str(i), CAI_JAX_CPU_COLLECTIVES="gloo")
    procs.append(subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(assets), str(workdir), *jobs],
        env=e, cwd=here, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def configs(assets: str) -> dict:
  common = {"model.checkpoint": os.path.join(assets, "hf"),
            "model.cache_dir": os.path.join(assets, "cache")}
  small = {"constitution": os.path.join(assets, "constitution.json")}
  prompts = os.path.join(assets, "prompts.jsonl")
  return {
      "sl_generate": load_config("sl_generate", **common, **small, **{
          "sl_generate.prompts": prompts, "sl_generate.rounds": 1, "sl_generate.batch_size": 2,
          "sl_generate.block_size": 2,  # a block per append: crashes land between blocks
          "sl_generate.max_response_tokens": 4, "sl_generate.max_critique_tokens": 4,
          "sl_generate.max_revision_tokens": 4, "sl_generate.report_examples": 0,
          "sl_generate.helpful_prompts": os.path.join(assets, "helpful.jsonl"),
          "sl_generate.helpful_ratio": 0.5, "sl_generate.temperature": 1.0}),
      "sample_pairs": load_config("sample_pairs", **common, **small, **{
          "sample_pairs.prompts": prompts, "sample_pairs.helpful_prompts": "",
          "sample_pairs.batch_size": 2, "sample_pairs.block_size": 2,
          "sample_pairs.max_response_tokens": 4, "sample_pairs.temperature": 1.0}),
      "feedback": load_config("feedback", **common, **small, **{
          "feedback.pairs": os.path.join(assets, "pairs.jsonl"), "feedback.mode": "cot",
          "feedback.max_reasoning_tokens": 4, "feedback.num_principles": 2,
          "feedback.batch_size": 2, "feedback.cot_temperature": 1.0}),
      "eval": load_config("eval", **common, **{
          "eval.stages": f"base={common['model.checkpoint']},other={assets}/hf_b",
          "eval.red_team_prompts": prompts, "eval.helpful_prompts":
          os.path.join(assets, "helpful.jsonl"), "eval.num_prompts": 3,
          "eval.answer_max_tokens": 4,
          "eval.answer_temperature": 1.0, "eval.answer_batch_size": 2, "eval.answer_block_size": 2,
          "eval.harmless_constitution": small["constitution"],
          "eval.helpful_constitution": small["constitution"], "eval.judge_principles": 2,
          "eval.judge_batch_size": 2, "eval.num_bootstrap": 20, "eval.progress": False,
          "eval.mc_max_length": 512, "eval.mc_tokens_per_batch": 2048,
          "eval.pm": os.path.join(assets, "no_pm")}),
  }


def main():
  assets, workdir, *jobs = sys.argv[1:]
  made = configs(assets)
  overrides = os.path.join(assets, "overrides.json")  # {job: {"section.field": value}}
  if os.path.exists(overrides):
    with open(overrides) as f:
      for job, fields in json.load(f).items():
        for name, value in fields.items():
          section, field = name.split(".")
          made[job][section][field] = value
  seconds = {}
  for job in jobs:
    start = time.perf_counter()
    cli.run(made[job], workdir)
    seconds[job] = time.perf_counter() - start
  print(json.dumps(seconds), flush=True)


if __name__ == "__main__":
  main()
