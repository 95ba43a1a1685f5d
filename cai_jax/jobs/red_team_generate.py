"""Job `red_team_generate`: few-shot sample new red-team requests (see cai_jax.cai.red_team).

attempts.jsonl: {"id": "gen-000017", "attempt": 17, "category", "text", "kept", "reason"}, one
per attempt, appended batch by batch; a restart skips finished attempts (a cut-off last line is
redone). prompts.jsonl is rebuilt from the attempts at the end: {"id", "prompt", "category",
"source": "generated", "attempt"} for every kept attempt, in attempt order.
"""

from __future__ import annotations

import json
import os

import jax

from cai_jax.cai import red_team
from cai_jax.config_defaults import ConfigError
from cai_jax.data import sources
from cai_jax.data.jsonl import finished_ids, read_jsonl, write_jsonl_atomic
from cai_jax.jobs.common import (load_model, progress, sampling_mesh,
                                sampling_strategy)
from cai_jax.sampling.sampler import Sampler


def run(config, workdir: str) -> dict:
  g = config.red_team_generate
  for field in ("num_prompts", "shots", "max_new_tokens", "batch_size", "min_words"):
    if g[field] <= 0:
      raise ConfigError(f"red_team_generate.{field} must be > 0, got {g[field]}")
  strategy = sampling_strategy(g, "red_team_generate", top_k=None)
  seeds = sources.load_prompt_set(g.seeds)
  by_category: dict[str, list[str]] = {}
  for r in seeds:
    by_category.setdefault(r.category or "uncategorised", []).append(
        red_team.first_human_turn(r.prompt))
  out_dir = os.path.join(workdir, "red_team_generate")
  os.makedirs(out_dir, exist_ok=True)
  attempts_path = os.path.join(out_dir, "attempts.jsonl")
  finished_ids(attempts_path)  # repairs a cut-off last line
  attempts = [obj for _, obj in read_jsonl(attempts_path)] if os.path.exists(attempts_path) else []
  seen = {red_team.normalise(t) for texts in by_category.values() for t in texts}
  seen |= {red_team.normalise(a["text"]) for a in attempts if a["kept"]}
  kept = sum(a["kept"] for a in attempts)
  next_index = max((a["attempt"] for a in attempts), default=-1) + 1
  max_attempts = g.max_attempts or 4 * g.num_prompts

  if kept < g.num_prompts and next_index < max_attempts:
    mesh = sampling_mesh(config)
    model = load_model(config, mesh)
    sampler = Sampler(model.config, model.params, model.tokenizer,
                      max_batch=g.batch_size, mesh=mesh)
    key = jax.random.PRNGKey(config.seed)
    with progress(g.num_prompts, "red_team_generate", "prompt") as bar, \
        open(attempts_path, "a", encoding="utf-8") as out:
      bar.update(kept)
      while kept < g.num_prompts and next_index < max_attempts:
        indices = list(range(next_index, min(next_index + g.batch_size, max_attempts)))
        contexts = [red_team.few_shot_context(by_category, i, config.seed, g.shots)
                    for i in indices]
        result = sampler.generate([c for _, c in contexts], max_new_tokens=g.max_new_tokens,
                                  strategy=strategy, key=jax.random.fold_in(key, indices[0]),
                                  stop=("\n",))
        for i, (category, _), text in zip(indices, contexts, result.texts):
          text = text.strip()
          reason = red_team.rejection_reason(text, seen, min_words=g.min_words,
                                             max_words=g.max_words)
          if reason is None:
            seen.add(red_team.normalise(text))
            kept += 1
            bar.update(1)
          out.write(json.dumps({"id": f"gen-{i:06d}", "attempt": i, "category": category,
                                "text": text, "kept": reason is None, "reason": reason},
                               ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())
        next_index = indices[-1] + 1
    attempts = [obj for _, obj in read_jsonl(attempts_path)]

  prompts_path = os.path.join(out_dir, "prompts.jsonl")
  rows = [{"id": a["id"], "prompt": red_team.as_prompt(a["text"]), "category": a["category"],
           "source": "generated", "attempt": a["attempt"]} for a in attempts if a["kept"]]
  write_jsonl_atomic(prompts_path, rows[:g.num_prompts])
  reasons: dict[str, int] = {}
  for a in attempts:
    if not a["kept"]:
      reasons[a["reason"]] = reasons.get(a["reason"], 0) + 1
  summary = {"attempts": len(attempts), "kept": min(len(rows), g.num_prompts),
             "rejected": reasons, "prompts": prompts_path}
  print(json.dumps(summary), flush=True)
  return summary
