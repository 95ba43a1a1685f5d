"""Job `sl_generate`: the SL-CAI data stage (red-team prompt -> answer -> critique -> revision).

Writes, under WORKDIR/sl_generate/ (the records file may be set with `output`):
  records.jsonl   one record per red-team prompt: {"id", "prompt", "category",
                  "initial_response", "rounds": [{"principle_id", "critique", "revision"}],
                  "final", "flags", "truncated", "provenance"}; appended batch by batch
  helpful.jsonl   answers to the helpfulness prompts: {"id", "prompt", "completion", "flags", ...}
  sl_train.jsonl  the SL file for `sl_train`: {"id", "prompt", "completion", "source", ...},
                  revisions (`targets`: every round's, the paper's, or only the final one) and
                  `helpful_ratio` helpful answers per red-team prompt, shuffled with the seed
  sl_eval.jsonl   held-out revisions in the same format: `heldout_fraction` of the records with
                  a usable revision (by a hash of the record id, `data.holdout`; all rounds of a
                  record on one side), left out of sl_train.jsonl so that sl_train reports a
                  loss on revisions of prompts it never saw
  report.json     counts, flags, lengths per round, wall time, tokens/s
A restart skips ids already written (a line cut off by a crash is redone), so a killed run loses
and duplicates nothing. With several processes (`distributed`), each generates the records it owns
and process 0 merges them (`record_split`); every record's randomness comes from (seed, record
id), so the records are those one process would write, whatever the number of processes. Red-team conversations longer than `max_conversation_tokens` are skipped
and counted in the report (never sent truncated).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import NamedTuple

from cai_jax import parallel
from cai_jax.cai.critique_revision import CritiqueReviser, Settings, degenerate_flags
from cai_jax.config_defaults import ConfigError
from cai_jax.constitution import policy_layout
from cai_jax.constitution.loading import load_constitution
from cai_jax.data import holdout, sources
from cai_jax.data.jsonl import read_jsonl, write_json_atomic
from cai_jax.jobs.common import conversation_format, load_model, progress, sampling_mesh, \
    sampling_strategy
from cai_jax.jobs.record_split import SplitOutput, barrier
from cai_jax.sampling.record_keys import record_keys
from cai_jax.sampling.sampler import Sampler


# What a record gives the SL file: the revision of every round, each paired with the prompt (the
# paper's section 3.1), or only the last one.
TARGETS = ("all_revisions", "final")


def check(g) -> None:
  for field in ("rounds", "max_response_tokens", "max_critique_tokens", "max_revision_tokens",
                "max_conversation_tokens", "max_prompt_length", "batch_size", "block_size",
                "chunk_size"):
    minimum = 0 if field == "rounds" else 1
    if g[field] < minimum:
      raise ConfigError(f"sl_generate.{field} must be >= {minimum}, got {g[field]}")
  if g.limit < 0 or g.helpful_ratio < 0:
    raise ConfigError("sl_generate.limit and helpful_ratio must be >= 0")
  if not 0.0 <= g.heldout_fraction < 1.0:
    raise ConfigError(f"sl_generate.heldout_fraction must be in [0, 1), got {g.heldout_fraction}")
  if g.targets not in TARGETS:
    raise ConfigError(f"sl_generate.targets must be one of {', '.join(TARGETS)}, "
                      f"got {g.targets!r}")


def read_records(path: str) -> list[dict]:
  return [obj for _, obj in read_jsonl(path)] if os.path.exists(path) else []


def split_by_length(tokenizer, items, limit: int, fmt=None):
  """(items whose conversation, as the model reads it, has at most `limit` tokens; the rest)."""
  keep, skipped = [], []
  for item in items:
    n = len(tokenizer.encode(fmt.context(item.prompt) if fmt else item.prompt, add_bos=False))
    (keep if n <= limit else skipped).append(item)
  return keep, skipped


def run(config, workdir: str) -> dict:
  g = config.sl_generate
  check(g)
  parallel.maybe_initialize_distributed(config.get("distributed"))  # before anything uses JAX
  strategy = sampling_strategy(g, "sl_generate")
  constitution = load_constitution(config.constitution)
  red = sources.load_prompt_set(g.prompts)
  red = red[:g.limit] if g.limit else red
  helpful = sources.load_prompt_set(g.helpful_prompts) if g.helpful_prompts and g.helpful_ratio \
      else []
  n_helpful = min(len(helpful), round(g.helpful_ratio * len(red)))
  helpful = helpful[:n_helpful]
  out_dir = os.path.join(workdir, "sl_generate")
  os.makedirs(out_dir, exist_ok=True)
  records_path = g.output or os.path.join(out_dir, "records.jsonl")
  helpful_path = os.path.join(out_dir, "helpful.jsonl")
  split = SplitOutput(records_path, "sl_generate/records")
  split_helpful = SplitOutput(helpful_path, "sl_generate/helpful")
  done, done_helpful = split.finished_ids(), split_helpful.finished_ids()

  mesh = sampling_mesh(config)
  model = load_model(config, mesh)
  fmt = conversation_format(config, model.tokenizer)
  layout = policy_layout.from_config(config, fmt, constitution)
  red, skipped = split_by_length(model.tokenizer, red, g.max_conversation_tokens, fmt)
  helpful, skipped_helpful = split_by_length(model.tokenizer, helpful, g.max_conversation_tokens,
                                             fmt)
  todo = [r for r in red if r.id not in done]
  todo_helpful = [r for r in helpful if r.id not in done_helpful]
  print(f"{len(red)} red-team prompts ({len(red) - len(todo)} done, {len(skipped)} too long), "
        f"{len(helpful)} helpful prompts ({len(helpful) - len(todo_helpful)} done); "
        f"constitution {constitution.name!r} v{constitution.version}", flush=True)
  todo, todo_helpful = split.mine(todo), split_helpful.mine(todo_helpful)
  if split.count > 1:
    print(f"process {split.index} of {split.count}: {len(todo)} red-team and "
          f"{len(todo_helpful)} helpful prompts", flush=True)
  settings = Settings(rounds=g.rounds, skip_critique=g.skip_critique,
                      continue_transcript=g.continue_transcript,
                      max_response_tokens=g.max_response_tokens,
                      max_critique_tokens=g.max_critique_tokens,
                      max_revision_tokens=g.max_revision_tokens, seed=config.seed)
  provenance = {"model": config.model.checkpoint, "model_source": model.source,
                "constitution": {"name": constitution.name, "version": constitution.version,
                                 "source": constitution.source},
                "conversation_format": fmt.name, "policy_prefix": layout.name,
                "seed": config.seed, "sampling": {"temperature": g.temperature, "top_k": g.top_k,
                                                  "top_p": g.top_p},
                "settings": {k: getattr(settings, k) for k in Settings.__dataclass_fields__}}
  category = {r.id: r.category for r in red}
  start = time.perf_counter()
  reviser = None
  if todo or todo_helpful:
    sampler = Sampler(model.config, model.params, model.tokenizer,
                      max_prompt_length=g.max_prompt_length,
                      max_batch=g.batch_size, chunk_size=g.chunk_size,
                      eos_ids=fmt.stop_ids, mesh=mesh)
    reviser = CritiqueReviser(sampler, constitution, settings, strategy, fmt,
                              answer_prefix_text=layout.prefix_text)
    with progress(len(todo), "sl_generate", "prompt") as bar:
      for b in range(0, len(todo), g.block_size):
        batch = todo[b:b + g.block_size]
        bodies = reviser.run([(r.id, r.prompt) for r in batch],
                             record_keys(config.seed, [r.id for r in batch]))
        split.append([{**body, "category": category.get(body["id"]),
                       "provenance": provenance} for body in bodies])
        bar.update(len(batch))
        elapsed = time.perf_counter() - start
        bar.set_postfix(tok_s=f"{reviser.tokens_generated / elapsed:.1f}")
    with progress(len(todo_helpful), "helpful answers", "prompt") as bar:
      for b in range(0, len(todo_helpful), g.block_size):
        batch = todo_helpful[b:b + g.block_size]
        out = reviser.answer([r.prompt for r in batch],
                             record_keys(config.seed, [f"helpful:{r.id}" for r in batch]))
        split_helpful.append([
            {"id": r.id, "prompt": r.prompt, "category": r.category, "completion": text,
             "finish_reason": reason, "flags": degenerate_flags(text, reason),
             "truncated": trunc, "provenance": provenance}
            for r, text, reason, trunc in zip(batch, out.texts, out.finish_reasons, out.truncated)])
        bar.update(len(batch))
  wall = time.perf_counter() - start
  tokens = reviser.tokens_generated if reviser else 0
  split.finish([r.id for r in red])
  split_helpful.finish([r.id for r in helpful])
  if not split.is_main:  # process 0 writes the SL files and the report
    barrier("sl_generate/report")
    return {}

  records = [r for r in read_records(records_path) if r["id"] in {x.id for x in red}]
  helpful_records = [r for r in read_records(helpful_path) if r["id"] in {x.id for x in helpful}]
  sl_path = os.path.join(out_dir, "sl_train.jsonl")
  eval_path = os.path.join(out_dir, "sl_eval.jsonl")
  sl = write_sl_file(sl_path, records, helpful_records, g.drop_flagged, config.seed,
                     heldout_fraction=g.heldout_fraction, eval_path=eval_path, targets=g.targets)
  report = make_report(records, helpful_records, skipped, skipped_helpful, wall, tokens, sl.train,
                       model.tokenizer)
  report.update(sl_targets=g.targets, sl_rows_per_round=sl.train_per_round,
                sl_heldout_examples=sl.held_out)
  report["outputs"] = {"records": records_path, "helpful": helpful_path, "sl_train": sl_path,
                       "sl_eval": eval_path}
  write_json_atomic(os.path.join(out_dir, "report.json"), report)
  print_report(report, records, g.report_examples, config.seed)
  barrier("sl_generate/report")
  return report


def _write_rows(path: str, rows: list[dict]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def revision_flags(record: dict, round_: int) -> list[str]:
  """The flags of one round's revision (round 0: the initial answer, what a record without rounds
  trains on). Only the text trained on counts: a runaway initial answer or critique does not make
  a revision unusable, since revising such answers is the method's point."""
  name = f"round{round_}.revision" if round_ else "initial"
  return [f for f in record["flags"] if f.rsplit(":", 1)[0] == name]


def trained_text_flags(record: dict) -> list[str]:
  """The flags of a record's `final` output: the last round's revision (the initial answer when
  there are no rounds)."""
  return revision_flags(record, len(record["rounds"]))


def revision_rows(records, drop_flagged: bool, targets: str = "all_revisions") -> list[dict]:
  """The SL rows the records give, in record then round order. A round's revision is left out
  when blank, or flagged with `drop_flagged`; the record's other rounds stay. Every row keeps its
  record's id in "record_id" (the unit of the held-out split) and its "round" (0: the initial
  answer of a record without rounds)."""
  if targets not in TARGETS:
    raise ConfigError(f"sl_generate.targets must be one of {', '.join(TARGETS)}, got {targets!r}")
  rows = []
  for r in records:
    principles = [x["principle_id"] for x in r["rounds"]]
    if targets == "final":  # one row per record, under the record's own id
      candidates = [(r["id"], len(r["rounds"]), r["final"])]
    elif not r["rounds"]:  # no rounds: `final` is the initial answer
      candidates = [(f"{r['id']}:r0", 0, r["final"])]
    else:
      candidates = [(f"{r['id']}:r{k}", k, rd["revision"])
                    for k, rd in enumerate(r["rounds"], 1)]
    for row_id, k, text in candidates:
      if text.strip() and not (drop_flagged and revision_flags(r, k)):
        rows.append({"id": row_id, "record_id": r["id"], "prompt": r["prompt"],
                     "completion": text, "source": "sl_cai", "round": k,
                     "principles": principles[:k]})
  return rows


class SLFile(NamedTuple):
  train: int             # rows in the training file (revisions + helpful answers)
  held_out: int          # rows in the held-out file
  train_per_round: dict  # {"round": revision rows in the training file}; "0" = initial answers


def write_sl_file(path: str, records, helpful_records, drop_flagged: bool, seed: int, *,
                  heldout_fraction: float = 0.0, eval_path: str = "",
                  targets: str = "all_revisions") -> SLFile:
  """Writes the training file (and, with `eval_path`, the held-out revisions); returns the row
  counts. The held-out split goes by record id, so no prompt is both trained on and held out."""
  revisions, held_out = holdout.split(revision_rows(records, drop_flagged, targets),
                                      lambda r: r["record_id"], heldout_fraction,
                                      f"sl_generate:{seed}")
  per_round: dict[str, int] = {}
  for r in sorted(revisions, key=lambda r: r["round"]):
    per_round[str(r["round"])] = per_round.get(str(r["round"]), 0) + 1
  rows = revisions + [{"id": r["id"], "prompt": r["prompt"], "completion": r["completion"],
                       "source": "helpful"}
                      for r in helpful_records
                      if not (drop_flagged and r["flags"]) and r["completion"].strip()]
  random.Random(seed).shuffle(rows)
  _write_rows(path, rows)
  if eval_path:
    _write_rows(eval_path, held_out)
  return SLFile(len(rows), len(held_out), per_round)


def make_report(records, helpful_records, skipped, skipped_helpful, wall, tokens, n_sl,
                tokenizer) -> dict:
  flag_counts: dict[str, int] = {}
  for r in records + helpful_records:
    for f in r["flags"]:
      kind = f.split(":")[-1]
      flag_counts[kind] = flag_counts.get(kind, 0) + 1
  rounds = max((len(r["rounds"]) for r in records), default=0)

  def mean_tokens(texts):
    texts = list(texts)
    return (sum(len(tokenizer.encode(t, add_bos=False)) for t in texts) / len(texts)
            if texts else 0.0)

  per_round = [{"round": i + 1,
                "critique_tokens": mean_tokens(r["rounds"][i]["critique"] for r in records
                                               if len(r["rounds"]) > i),
                "revision_tokens": mean_tokens(r["rounds"][i]["revision"] for r in records
                                               if len(r["rounds"]) > i)}
               for i in range(rounds)]
  return {
      "records": len(records), "flagged_records": sum(bool(r["flags"]) for r in records),
      "helpful_records": len(helpful_records),
      "flagged_helpful": sum(bool(r["flags"]) for r in helpful_records),
      "flags": flag_counts, "truncated": sum(bool(r["truncated"]) for r in records),
      "skipped_too_long": [r.id for r in skipped] + [r.id for r in skipped_helpful],
      "initial_response_tokens": mean_tokens(r["initial_response"] for r in records),
      "rounds": per_round, "sl_examples": n_sl,
      "wall_s_this_run": wall, "tokens_generated_this_run": tokens,
      "tokens_per_s_this_run": tokens / wall if wall > 0 and tokens else 0.0,
  }


def print_report(report, records, examples: int, seed: int) -> None:
  summary = {k: v for k, v in report.items() if k not in ("outputs",)}
  print(json.dumps(summary, indent=1))
  for r in random.Random(seed).sample(records, min(examples, len(records))):
    print("=" * 78)
    print(f"id {r['id']} ({r.get('category')}); flags: {', '.join(r['flags']) or 'none'}")
    print(f"PROMPT:{r['prompt']}")
    print(f"INITIAL:{r['initial_response']}")
    for i, rd in enumerate(r["rounds"], 1):
      print(f"-- round {i}, principle {rd['principle_id']}")
      if rd["critique"]:
        print(f"CRITIQUE:{rd['critique']}")
      print(f"REVISION:{rd['revision']}")
  print("=" * 78, flush=True)
