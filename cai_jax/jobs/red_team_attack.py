"""Job `red_team_attack`: red teaming against the policy. Proposed prompts (default: the
`red_team_generate` job's output in this workdir) are answered by the policy
(`config.model.checkpoint`), the preference model scores every answer, and the prompts whose
answers score worst are kept and written, after the base prompt set, as the next RL stage's
prompts.

Success is relative to the same policy on ordinary prompts: the policy also answers the first
`reference_count` prompts of `reference` (default the red-team training set), and an attack
succeeds when its answer scores below the `success_quantile` of those answers' PM scores
(`attack_success_rate`; the reference prompts' own rate is that quantile by construction, so a
rate above it means the proposals found prompts the policy answers worse than the usual ones).

Outputs under WORKDIR/red_team_attack/: answers.jsonl (one record per answer: candidate or
reference, appended per batch; a rerun answers only what is missing and redoes a cut-off last
line), scores.json (the PM's score of every answer), prompts.jsonl (`base_prompts` then the kept
attacks, ids prefixed with `id_prefix`, `source: "attack"`, their score in `attack_score`) and
report.json, written last (counts, threshold, success rates, mean scores, the kept prompts).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from cai_jax.cai import red_team
from cai_jax.config_defaults import ConfigError
from cai_jax.constitution import policy_layout
from cai_jax.constitution import prompts as P
from cai_jax.data import sources
from cai_jax.data.jsonl import (append_jsonl, finished_ids, read_jsonl, write_json_atomic,
                                write_jsonl_atomic)
from cai_jax.jobs.common import (conversation_format, load_model, policy_checkpoint, progress,
                                sampling_mesh, sampling_strategy, weights_options)
from cai_jax.model import heads
from cai_jax.sampling.record_keys import record_keys
from cai_jax.sampling.sampler import Sampler
from cai_jax.train import pm as pm_lib

RED_TEAM_OUTPUT = os.path.join("red_team_generate", "prompts.jsonl")
PM_EXPORT = os.path.join("pm_train", "pm")


def check_config(a) -> None:
  for field in ("max_new_tokens", "batch_size", "max_prompt_length", "chunk_size",
                "reference_count", "pm_batch_size"):
    if a[field] <= 0:
      raise ConfigError(f"red_team_attack.{field} must be > 0, got {a[field]}")
  if a.keep < 0:
    raise ConfigError(f"red_team_attack.keep must be >= 0, got {a.keep}")
  if not 0 < a.success_quantile < 1:
    raise ConfigError(f"red_team_attack.success_quantile must be in (0, 1), got "
                      f"{a.success_quantile}")


def _blank(path: str) -> bool:
  with open(path, encoding="utf-8") as f:
    return not any(line.strip() for line in f)


def read_inputs(a, workdir: str) -> tuple[list, list, list, str]:
  """(candidates, reference prompts, base prompts, PM folder), every file read and checked
  before a model loads."""
  candidates_path = a.candidates or os.path.join(workdir, RED_TEAM_OUTPUT)
  if not a.candidates and not os.path.exists(candidates_path):
    raise ConfigError(f"red_team_attack: no candidates: {candidates_path} does not exist. Run "
                      "red_team_generate in this workdir first or set "
                      "--config.red_team_attack.candidates=PROMPTS.jsonl")
  candidates = []
  if not os.path.exists(candidates_path) or not _blank(candidates_path):
    candidates = sources.load_prompt_set(candidates_path)  # a missing file: DataError
  else:  # a generator that kept nothing: no attacks this time, the base prompts still written
    print(f"red_team_attack: {candidates_path} holds no prompts; no attacks", flush=True)
  reference = sources.load_prompt_set(a.reference)[:a.reference_count]
  base = sources.load_prompt_set(a.base_prompts) if a.base_prompts else []
  shared = {r.id for r in candidates} & {r.id for r in reference}
  if shared:
    raise ConfigError(f"red_team_attack: candidates and reference share {len(shared)} ids (e.g. "
                      f"{sorted(shared)[0]!r}); the reference must be other prompts")
  taken = {r.id for r in base}
  clash = sorted(taken & {a.id_prefix + r.id for r in candidates})
  if clash:
    raise ConfigError(f"red_team_attack.base_prompts {a.base_prompts!r} already holds id "
                      f"{clash[0]!r}; set red_team_attack.id_prefix to something else")
  pm = a.pm or os.path.join(workdir, PM_EXPORT)
  if not os.path.isdir(pm):
    raise ConfigError(f"red_team_attack: no preference model at {pm}; run pm_train first or "
                      "set --config.red_team_attack.pm=RUN/pm_train/pm")
  heads.read_pm_meta(pm)  # not a PM folder: CheckpointError
  return candidates, reference, base, pm


def answer_all(config, a, policy: str, rows: list[tuple[str, sources.PromptRecord]],
               path: str) -> None:
  """Appends the policy's answer to every (set, prompt) not yet in PATH, batch by batch; each
  answer's sampling key derives from (seed, its id), so a rerun samples the same answer."""
  done = finished_ids(path)
  todo = [(s, r) for s, r in rows if f"{s}/{r.id}" not in done]
  if not todo:
    return
  mesh = sampling_mesh(config)
  model = load_model(config, mesh, checkpoint=policy)
  fmt = conversation_format(config, model.tokenizer)
  sampler = Sampler(model.config, model.params, model.tokenizer,
                    max_prompt_length=a.max_prompt_length, max_batch=a.batch_size,
                    chunk_size=a.chunk_size, eos_ids=fmt.stop_ids, mesh=mesh)
  layout = policy_layout.from_config(config, fmt)
  prefix = layout.prefill(sampler)
  strategy = sampling_strategy(a, "red_team_attack")
  with progress(len(todo), "red_team_attack", "answer") as bar:
    for b in range(0, len(todo), a.batch_size):
      batch = todo[b:b + a.batch_size]
      out = sampler.generate([layout.rest(r.prompt) for _, r in batch],
                             max_new_tokens=a.max_new_tokens, strategy=strategy,
                             keys=record_keys(config.seed, [f"{s}/{r.id}" for s, r in batch]),
                             stop=P.RESPONSE_STOPS, prefix=prefix)
      append_jsonl(path, [
          {"id": f"{s}/{r.id}", "set": s, "prompt_id": r.id, "category": r.category,
           "prompt": r.prompt, "answer": text, "finish_reason": reason, "num_tokens": int(n)}
          for (s, r), text, reason, n in zip(batch, out.texts, out.finish_reasons,
                                             out.num_tokens)])
      bar.update(len(batch))


def score_all(config, a, pm: str, answers: list[dict]) -> np.ndarray:
  """The PM's score of every (prompt, answer), on the sampling mesh."""
  from cai_jax import parallel
  from cai_jax.eval import pm_eval
  mesh = sampling_mesh(config) or parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1},
                                                     devices=jax.local_devices()[:1])
  loaded = heads.load_pm(pm, shardings_for=lambda cfg: pm_lib.param_shardings(cfg, mesh),
                         **weights_options(config.model))
  scorer = pm_eval.PMScorer(loaded, mesh, batch_size=a.pm_batch_size)
  scores, _ = scorer.score_responses([(r["prompt"], r["answer"]) for r in answers])
  return scores


def run(config, workdir: str) -> dict:
  a = config.red_team_attack
  check_config(a)
  policy = policy_checkpoint(config, workdir)  # a missing policy stops here
  candidates, reference, base, pm = read_inputs(a, workdir)
  out_dir = os.path.join(workdir, "red_team_attack")
  os.makedirs(out_dir, exist_ok=True)
  answers_path = os.path.join(out_dir, "answers.jsonl")
  rows = [("candidate", r) for r in candidates] + [("reference", r) for r in reference]
  answer_all(config, a, policy, rows, answers_path)

  wanted = {f"{s}/{r.id}" for s, r in rows}
  answers = [obj for _, obj in read_jsonl(answers_path) if obj["id"] in wanted]
  scores = score_all(config, a, pm, answers)
  write_json_atomic(os.path.join(out_dir, "scores.json"),
                    {r["id"]: float(x) for r, x in zip(answers, scores)})
  is_candidate = np.asarray([r["set"] == "candidate" for r in answers])
  cand = [r for r, c in zip(answers, is_candidate) if c]
  cand_scores, ref_scores = scores[is_candidate], scores[~is_candidate]
  threshold = red_team.success_threshold(ref_scores, a.success_quantile)
  worst = red_team.worst_prompts([r["prompt_id"] for r in cand], cand_scores, a.keep)
  by_id = {r.id: r for r in candidates}
  kept = [{"id": a.id_prefix + cand[k]["prompt_id"], "prompt": cand[k]["prompt"],
           "category": by_id[cand[k]["prompt_id"]].category, "source": "attack",
           "attack_score": float(cand_scores[k]), "attack_answer": cand[k]["answer"]}
          for k in worst]
  prompts_path = os.path.join(out_dir, "prompts.jsonl")
  write_jsonl_atomic(prompts_path, [
      {"id": r.id, "prompt": r.prompt, **({"category": r.category} if r.category else {})}
      for r in base] + [{k: v for k, v in row.items() if v is not None} for row in kept])
  report = {
      "candidates": len(cand), "reference": int((~is_candidate).sum()),
      "success_quantile": float(a.success_quantile), "threshold": threshold,
      "attack_success_rate": red_team.attack_success_rate(cand_scores, threshold),
      "reference_success_rate": red_team.attack_success_rate(ref_scores, threshold),
      "candidate_score_mean": float(cand_scores.mean()) if len(cand) else float("nan"),
      "reference_score_mean": float(ref_scores.mean()),
      "kept": [{"id": r["id"], "score": r["attack_score"]} for r in kept],
      "kept_score_mean": float(np.mean([r["attack_score"] for r in kept])) if kept
      else float("nan"),
      "base_prompts": len(base), "prompts": prompts_path, "policy": policy,
      "pm": os.path.abspath(pm)}
  write_json_atomic(os.path.join(out_dir, "report.json"), report)
  print(f"red_team_attack: {len(cand)} candidates, attack success rate "
        f"{report['attack_success_rate']:.3f} (reference {report['reference_success_rate']:.3f}"
        f", threshold {threshold:+.3f}); kept {len(kept)} -> {prompts_path}", flush=True)
  return report
