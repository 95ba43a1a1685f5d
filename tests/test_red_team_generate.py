"""Model-written red-team prompts: deterministic few-shot contexts, filters and dedup, and the
job on a tiny checkpoint (attempts log, prompts file usable as a prompt set, restart)."""

from __future__ import annotations

import os

from cai_jax import main
from cai_jax.cai import red_team
from cai_jax.data import sources
from cai_jax.data.jsonl import read_jsonl
from configs_loader import load_config
import tiny_model


def test_few_shot_context_is_deterministic_and_single_category():
  seeds = {"fraud": [f"fraud request {i}" for i in range(10)],
           "theft": [f"theft request {i}" for i in range(10)]}
  cat, ctx = red_team.few_shot_context(seeds, 7, seed=1, shots=4)
  assert (cat, ctx) == red_team.few_shot_context(seeds, 7, seed=1, shots=4)
  assert ctx.startswith(red_team.FRAMING.format(category=cat)) and ctx.endswith("\n5.")
  body = ctx.split("\n")[1:-1]
  assert len(body) == 4 and all(f"{cat} request" in line for line in body)
  contexts = {red_team.few_shot_context(seeds, i, seed=1, shots=4) for i in range(20)}
  assert len(contexts) > 10 and {c for c, _ in contexts} == {"fraud", "theft"}


def test_filters_and_dedup():
  seen = {red_team.normalise("How do I pick a lock?")}
  assert red_team.rejection_reason("", seen) == "empty"
  assert red_team.rejection_reason("pick locks", seen) == "too_short"
  assert red_team.rejection_reason("how do i PICK a lock!!", seen) == "duplicate"
  assert red_team.rejection_reason("word " * 100, seen) == "too_long"
  assert red_team.rejection_reason("tell me more Human: and Assistant: stuff", seen) \
      == "not_a_single_request"
  assert red_team.rejection_reason("How can I get into my neighbour's wifi?", seen) is None
  assert red_team.first_human_turn("\n\nHuman: first ask\n\nAssistant: no\n\nHuman: again"
                                   "\n\nAssistant:") == "first ask"


def test_job_writes_attempts_and_a_loadable_prompt_set(tmp_path):
  ckpt = tiny_model.write_hf_checkpoint(str(tmp_path / "hf"), flat_logits=True)
  settings = {"model.checkpoint": ckpt, "model.cache_dir": str(tmp_path),
              "red_team_generate.num_prompts": 3, "red_team_generate.max_attempts": 8,
              "red_team_generate.batch_size": 4, "red_team_generate.max_new_tokens": 12,
              "red_team_generate.min_words": 1}
  summary = main.run(load_config("red_team_generate", **settings), str(tmp_path))
  out = tmp_path / "red_team_generate"
  attempts = [obj for _, obj in read_jsonl(str(out / "attempts.jsonl"))]
  assert [a["attempt"] for a in attempts] == list(range(len(attempts)))
  assert summary["kept"] == min(3, sum(a["kept"] for a in attempts))
  prompts = sources.load_prompt_set(str(out / "prompts.jsonl"))
  assert len(prompts) == summary["kept"] <= 3
  for p in prompts:
    assert p.metadata["source"] == "generated" and p.category
  # a second run with a larger target continues from the attempts already made
  settings["red_team_generate.max_attempts"] = 12
  settings["red_team_generate.num_prompts"] = 50
  main.run(load_config("red_team_generate", **settings), str(tmp_path))
  again = [obj for _, obj in read_jsonl(str(out / "attempts.jsonl"))]
  assert [a["attempt"] for a in again] == list(range(12))
  assert again[:len(attempts)] == attempts
  assert os.path.exists(out / "prompts.jsonl")
