"""Run as a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller): the sampling
and scoring jobs on a tiny checkpoint, once on one device (no mesh) and once per mesh given on
the command line (data,fsdp,tensor; with "+scan" appended, the decoder's layers scanned:
model.scan_layers), each in its own workdir; prints one JSON object {mesh: {job: outputs}} with
the outputs every job wrote (texts, token counts, scores)."""

from __future__ import annotations

import json
import os
import sys

import jax

from cai_jax import main as cli
from configs_loader import load_config


def jobs(ckpt: str, prompts: str, pairs: str, mc: str, constitution: str, cache: str):
  common = {"model.checkpoint": ckpt, "model.cache_dir": cache}
  small = {"constitution": constitution}  # short few-shot prefixes: a tiny model's contexts
  return {
      "generate": load_config("generate", **common, **{
          "generate.prompts": prompts, "generate.max_new_tokens": 6, "generate.batch_size": 3,
          "generate.temperature": 1.0}),
      "sl_generate": load_config("sl_generate", **common, **small, **{
          "sl_generate.prompts": prompts, "sl_generate.rounds": 1, "sl_generate.batch_size": 3,
          "sl_generate.max_response_tokens": 4, "sl_generate.max_critique_tokens": 4,
          "sl_generate.max_revision_tokens": 4, "sl_generate.report_examples": 0,
          "sl_generate.helpful_ratio": 0.0, "sl_generate.temperature": 1.0}),
      "sample_pairs": load_config("sample_pairs", **common, **small, **{
          "sample_pairs.prompts": prompts, "sample_pairs.helpful_prompts": "",
          "sample_pairs.batch_size": 3, "sample_pairs.max_response_tokens": 4,
          "sample_pairs.temperature": 1.0}),
      "feedback": load_config("feedback", **common, **small, **{
          "feedback.pairs": pairs, "feedback.num_principles": 2, "feedback.batch_size": 3}),
      "eval_mc": load_config("eval_mc", **common, **{"eval.files": mc}),
  }


def outputs(job: str, workdir: str) -> list:
  def lines(rel):
    with open(os.path.join(workdir, rel)) as f:
      return [json.loads(x) for x in f if x.strip()]
  if job == "generate":
    return [[r["id"], r["completion"], r["num_tokens"]] for r in lines("generate/completions.jsonl")]
  if job == "sl_generate":
    return [[r["id"], r["initial_response"], [[x["critique"], x["revision"]] for x in r["rounds"]]]
            for r in lines("sl_generate/records.jsonl")]
  if job == "sample_pairs":
    return [[r["id"], r["responses"]] for r in lines("sample_pairs/pairs.jsonl")]
  if job.startswith("feedback"):
    return [[r["id"], r["p_first_better"],
             [[p["p_a_orig"], p["p_a_swapped"], p.get("reasoning")] for p in r["per_principle"]]]
            for r in lines("feedback/labels.jsonl")]
  if job == "eval_mc":
    with open(os.path.join(workdir, "eval_mc", "items.json")) as f:
      return [it["scores"] for it in json.load(f)["items"]]
  raise ValueError(job)


def main():
  assert jax.device_count() in (4, 8), jax.devices()
  ckpt, prompts, pairs, mc, constitution, root = sys.argv[1:7]
  meshes = sys.argv[7:]
  out = {}
  for mesh in ["none"] + meshes:
    out[mesh] = {}
    for job, cfg in jobs(ckpt, prompts, pairs, mc, constitution, os.path.join(root, "cache")).items():
      shape, _, scan = mesh.partition("+")
      cfg.model.scan_layers = scan == "scan"
      if shape == "none":
        with cfg.unlocked():
          del cfg["mesh"]
      else:
        cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = map(int, shape.split(","))
      workdir = os.path.join(root, mesh.replace(",", "x").replace("+", "_"), job)
      cli.run(cfg, workdir)
      out[mesh][job] = outputs(job, workdir)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
