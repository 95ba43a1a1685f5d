"""Job `feedback`: AI preference labels for answer pairs (RLAIF), see `cai_jax.cai.feedback`.

Reads the pairs jsonl of `sample_pairs` (default WORKDIR/sample_pairs/pairs.jsonl) and labels
each pair under the constitution of its `axis` (`axis_constitutions`: 'harmless' pairs, from
red-team prompts, under `config.constitution`; 'helpful' pairs under
`feedback.helpful_constitution`; any other axis under the constitution of that name; untagged
pairs under `config.constitution`, tagged with its name). For each pair it asks the
feedback model (`config.model.checkpoint`, default the base model 'gemma3-270m') the paper's
multiple-choice question under `num_principles` principles per pair, in both orders unless
`both_orders=False`, directly (`mode='mc'`) or after its own chain of thought (`mode='cot'`,
probabilities clamped to [clamp_low, clamp_high]), and writes under WORKDIR/feedback/:
  labels.jsonl  (or `output`) one record per pair: {"id", "prompt", "responses", "axis",
                "p_first_better", "per_principle": [{"principle_id", "p_first_better",
                "p_a_orig", "p_a_swapped", ("reasoning")}], "mode", "provenance"};
                appended batch by batch, read back with `feedback.read_feedback_file`
  report.json   pairs labelled (also per axis), flagged pairs skipped (ids and reasons), position bias,
                mean |p - 0.5|, wall time, pairs/s and questions/s
Every pairs line is validated before the model loads (DataError file:line); flagged pairs are
skipped and counted, never dropped silently. A restart skips ids already labelled (a line cut
off by a crash is redone); when nothing is left to label the model is not loaded. With several
processes (`distributed`) each labels the pairs it owns and process 0 merges the labels
(`record_split`) into the file one process would write (CoT reasoning samples with keys from
(seed, pair id)).
"""

from __future__ import annotations

import json
import os
import time

from cai_jax import parallel
from cai_jax.cai import feedback as F
from cai_jax.config_defaults import ConfigError
from cai_jax.constitution.loading import load_constitution
from cai_jax.constitution.schema import ConstitutionError
from cai_jax.data.jsonl import write_json_atomic
from cai_jax.eval.mc import MCScorer
from cai_jax.jobs.common import (conversation_format, load_model, progress, sampling_mesh,
                                sampling_strategy)
from cai_jax.jobs.record_split import SplitOutput, barrier
from cai_jax.sampling.record_keys import record_keys
from cai_jax.sampling.sampler import Sampler


def settings_from_config(config) -> F.FeedbackSettings:
  f = config.feedback
  for field in ("batch_size", "max_length", "tokens_per_batch", "max_prompt_length",
                "chunk_size", "sampler_batch"):
    if f[field] < 1:
      raise ConfigError(f"feedback.{field} must be >= 1, got {f[field]}")
  if f.limit < 0:
    raise ConfigError(f"feedback.limit must be >= 0, got {f.limit}")
  try:
    return F.FeedbackSettings(
        mode=f.mode, num_principles=f.num_principles, both_orders=bool(f.both_orders),
        clamp_low=float(f.clamp_low), clamp_high=float(f.clamp_high),
        max_reasoning_tokens=f.max_reasoning_tokens, seed=config.seed, label=f.label,
        few_shot_principles=f.few_shot_principles)
  except ValueError as e:
    raise ConfigError(f"feedback: {e}") from None


def check_principles(settings, constitution, axis: str = "") -> None:
  if settings.num_principles > len(constitution.mc_principles):
    raise ConfigError(f"feedback.num_principles={settings.num_principles}, but constitution "
                      f"{constitution.name!r}" + (f" (axis {axis!r})" if axis else "")
                      + f" has {len(constitution.mc_principles)} multiple-choice principles")


def label_axis(pair, default) -> str:
  """The axis a pair's label carries: its own tag, or for an untagged pair the name of the
  constitution it is judged under (`default`, config.constitution)."""
  return pair.axis or default.name


def axis_constitutions(config, pairs, pairs_path: str, default) -> dict:
  """label axis (`label_axis`) -> Constitution for every axis among `pairs`, loaded before any
  model: untagged and 'harmless' pairs use `default` (config.constitution), 'helpful'
  feedback.helpful_constitution, any other axis the constitution of that name (ConfigError
  naming the first pair of an axis no constitution answers to)."""
  out = {}
  for p in pairs:
    axis = label_axis(p, default)
    if axis in out:
      continue
    if p.axis in ("", "harmless"):
      out[axis] = default
      continue
    name = config.feedback.helpful_constitution if p.axis == "helpful" else p.axis
    try:
      out[axis] = load_constitution(name)
    except (OSError, ValueError, ConstitutionError) as e:
      raise ConfigError(f"{p.where or pairs_path}: pair {p.id!r} has axis {p.axis!r}, and no "
                        f"constitution answers to it ({name!r}: {e}); set "
                        "feedback.helpful_constitution or use a constitution's name as the axis"
                        ) from None
  return out


def run(config, workdir: str) -> dict:
  f = config.feedback
  settings = settings_from_config(config)
  parallel.maybe_initialize_distributed(config.get("distributed"))  # before anything uses JAX
  strategy = None
  if settings.mode == "cot":
    strategy = sampling_strategy(f, "feedback", "cot_temperature", "cot_top_k", "cot_top_p")
  constitution = load_constitution(config.constitution)
  check_principles(settings, constitution)  # before the pairs are read
  pairs_path = f.pairs or os.path.join(workdir, "sample_pairs", "pairs.jsonl")
  pairs, skipped = F.read_pairs_file(pairs_path)  # validated before the model loads
  if f.limit:
    pairs = pairs[:f.limit]
  constitutions = axis_constitutions(config, pairs, pairs_path, constitution)
  for axis, c in constitutions.items():
    check_principles(settings, c, axis)
  out_dir = os.path.join(workdir, "feedback")
  os.makedirs(out_dir, exist_ok=True)
  output = f.output or os.path.join(out_dir, "labels.jsonl")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  split = SplitOutput(output, "feedback")
  done = split.finished_ids()
  todo = [p for p in pairs if p.id not in done]
  print(f"{len(pairs)} pairs ({len(pairs) - len(todo)} labelled, {len(todo)} to label), "
        f"{len(skipped)} flagged and skipped; mode {settings.mode}, {settings.num_principles} "
        f"principles, both_orders={settings.both_orders}; constitutions "
        + ", ".join(f"{a}: {c.name!r}" for a, c in sorted(constitutions.items())),
        flush=True)
  todo = split.mine(todo)
  if split.count > 1:
    print(f"process {split.index} of {split.count}: {len(todo)} pairs to label", flush=True)

  start = time.perf_counter()
  labellers: dict[str, F.FeedbackLabeller] = {}
  if todo:
    mesh = sampling_mesh(config)
    model = load_model(config, mesh)
    fmt = conversation_format(config, model.tokenizer)
    scorer = MCScorer(model.config, model.params, model.tokenizer, max_length=f.max_length,
                      tokens_per_batch=f.tokens_per_batch, mesh=mesh)
    sampler = None
    if settings.mode == "cot":
      sampler = Sampler(model.config, model.params, model.tokenizer,
                        max_prompt_length=f.max_prompt_length,
                        max_batch=f.sampler_batch, chunk_size=f.chunk_size,
                        eos_ids=fmt.stop_ids, mesh=mesh)
    labellers = {axis: F.FeedbackLabeller(c, scorer, settings, tokenizer=model.tokenizer,
                                          sampler=sampler, strategy=strategy, fmt=fmt)
                 for axis, c in constitutions.items()}
    provenance = {
        axis: {
            "model": config.model.checkpoint, "model_source": model.source, "pairs": pairs_path,
            "constitution": {"name": c.name, "version": c.version, "source": c.source,
                             "digest": c.digest()},
            "seed": config.seed, "conversation_format": fmt.name,
            "settings": {k: getattr(settings, k)
                         for k in F.FeedbackSettings.__dataclass_fields__}}
        for axis, c in constitutions.items()}
    if settings.mode == "cot":
      for p in provenance.values():
        p["cot_sampling"] = {"temperature": f.cot_temperature, "top_k": f.cot_top_k,
                             "top_p": f.cot_top_p}
    with progress(len(todo), "feedback", "pair") as bar:
      for b in range(0, len(todo), f.batch_size):
        batch = todo[b:b + f.batch_size]
        records, groups = {}, {}
        for p in batch:
          groups.setdefault(label_axis(p, constitution), []).append(p)
        for axis, group in sorted(groups.items()):
          for r in labellers[axis].label(group, record_keys(config.seed, [p.id for p in group])):
            records[r["id"]] = {**r, "axis": axis, "provenance": provenance[axis]}
        records = [records[p.id] for p in batch]  # the pairs' order, whatever their axes
        for r in records:  # probabilities in [0, 1], as `F.append_records` checks
          F.validate_record(r, f"{split.path}: record for pair {r.get('id')!r} (not written)")
        split.append(records)
        bar.update(len(batch))
        questions = sum(x.questions_scored for x in labellers.values())
        bar.set_postfix(q_s=f"{questions / (time.perf_counter() - start):.2f}")
  wall = time.perf_counter() - start
  split.finish([p.id for p in pairs])
  if not split.is_main:  # process 0 writes the report
    barrier("feedback/report")
    return {}

  wanted = {p.id for p in pairs}
  labels = [x for x in F.read_feedback_file(output, allow_empty=True) if x.id in wanted] \
      if os.path.exists(output) else []
  reasons: dict[str, int] = {}
  for s in skipped:
    for flag in s["flags"]:
      reasons[flag] = reasons.get(flag, 0) + 1
  questions = sum(x.questions_scored for x in labellers.values())
  report = {
      "pairs_file": pairs_path, "output": output, "mode": settings.mode,
      "num_principles": settings.num_principles, "both_orders": settings.both_orders,
      "clamp": [settings.clamp_low, settings.clamp_high] if settings.mode == "cot" else None,
      **F.summarize(labels),
      "constitutions": {a: c.name for a, c in sorted(constitutions.items())},
      "per_axis": {a: F.summarize([x for x in labels if x.axis == a])
                   for a in sorted({x.axis for x in labels})},
      "skipped_flagged": {"count": len(skipped), "by_reason": reasons,
                          "pairs": [{"id": s["id"], "line": s["line"], "flags": s["flags"]}
                                    for s in skipped]},
      "labelled_this_run": len(todo), "questions_this_run": questions,
      "truncated_contexts_this_run": sum(x.num_truncated for x in labellers.values()),
      "cot_truncated_this_run": sum(x.cot_truncated for x in labellers.values()),
      "tokens_generated_this_run": sum(x.tokens_generated for x in labellers.values()),
      "wall_s_this_run": wall,
      "pairs_per_s_this_run": len(todo) / wall if todo and wall > 0 else 0.0,
      "questions_per_s_this_run": questions / wall if questions and wall > 0 else 0.0,
  }
  write_json_atomic(os.path.join(out_dir, "report.json"), report)
  summary = {k: v for k, v in report.items()
             if k not in ("skipped_flagged", "pairs_file", "output")}
  summary["skipped_flagged"] = {"count": len(skipped), "by_reason": reasons}
  print(json.dumps(summary, indent=1), flush=True)
  print(f"wrote {output}", flush=True)
  barrier("feedback/report")
  return report
