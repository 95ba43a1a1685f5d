"""Job `sample_pairs`: two answers per prompt from the policy, the input of AI feedback (RLAIF).

For each red-team prompt (`prompts`) and each helpfulness prompt (`helpful_prompts`; prompt sets
as in `sources.load_prompt_set`) the policy (`config.model.checkpoint`; by default the SL-CAI
model that `sl_train` exported in the same workdir, WORKDIR/sl_train/export_hf) samples two
answers at `temperature`, reading what `conversation.policy_prefix` puts before a prompt (the
layout every policy-facing stage shares, `policy_layout`; a prefix is prefilled once and
reused), stopped at `prompts.RESPONSE_STOPS`. Each record carries its `axis`: 'harmless' for
red-team prompts, 'helpful' for helpfulness prompts; `feedback` labels each pair under the
constitution of its axis, so the preference model learns both (the paper's PM saw harmlessness
and helpfulness comparisons, which keeps RL-CAI from turning evasive). Both answers come from one
sampler call, each with its own key derived from (seed, prompt id, answer 0 or 1), so a pair does
not depend on the batch or process that sampled it: several processes (`distributed`) split the
prompts and process 0 merges their records (`record_split`) into the file one process would
write.

Writes WORKDIR/sample_pairs/pairs.jsonl (or `output`), one line per prompt:
  {"id", "prompt", "category", "axis", "responses": [a, b], "finish_reasons": [ra, rb],
   "num_tokens": [na, nb], "flags": [...], "truncated", "provenance"}
Responses are kept as sampled (leading space included). `flags` (`feedback.pair_flags`) says why
a pair cannot be labelled: `empty:first|second` (blank answer), `delimiter:first|second` (holds
"[[[" or "]]]", which delimit the feedback question's options), `identical` (equal after strip).
Flagged pairs are written, never dropped: they are counted in report.json and the `feedback` job
skips and counts them. Prompts longer than `max_conversation_tokens` are skipped and listed in
the report (never sent cut). A restart skips ids already written (a line cut off by a crash is
redone), so a killed run loses and duplicates nothing.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from cai_jax import parallel
from cai_jax.cai.feedback import pair_flags
from cai_jax.checkpoints import loader
from cai_jax.config_defaults import ConfigError
from cai_jax.constitution import policy_layout
from cai_jax.constitution import prompts as P
from cai_jax.constitution.loading import load_constitution
from cai_jax.data import sources
from cai_jax.data.jsonl import read_jsonl, write_json_atomic
from cai_jax.jobs.common import (conversation_format, load_model, policy_checkpoint, progress,
                                sampling_mesh, sampling_strategy)
from cai_jax.jobs.record_split import SplitOutput, barrier
from cai_jax.sampling.record_keys import record_keys
from cai_jax.sampling.sampler import Sampler



def check(g) -> None:
  for field in ("max_response_tokens", "max_conversation_tokens", "max_prompt_length",
                "batch_size", "block_size", "chunk_size"):
    if g[field] < 1:
      raise ConfigError(f"sample_pairs.{field} must be >= 1, got {g[field]}")
  if g.limit < 0 or g.helpful_limit < 0:
    raise ConfigError(f"sample_pairs.limit and helpful_limit must be >= 0, got {g.limit} and "
                      f"{g.helpful_limit}")
  if g.temperature <= 0:
    raise ConfigError(f"sample_pairs.temperature must be > 0, got {g.temperature} (greedy "
                      "decoding would give two identical answers)")


AXES = ("harmless", "helpful")  # red-team prompts, helpfulness prompts


def load_prompts(g) -> tuple[list, dict[str, str]]:
  """(the prompts to sample, in order: red-team then helpfulness; prompt id -> axis). Ids must
  be unique across the two sets (ConfigError naming both), as pairs are keyed by id."""
  red = sources.load_prompt_set(g.prompts) if g.prompts else []
  red = red[:g.limit] if g.limit else red
  helpful = sources.load_prompt_set(g.helpful_prompts) if g.helpful_prompts else []
  helpful = helpful[:g.helpful_limit] if g.helpful_limit else helpful
  if not red and not helpful:
    raise ConfigError("sample_pairs: no prompts (sample_pairs.prompts and helpful_prompts are "
                      "both empty)")
  shared = {r.id for r in red} & {r.id for r in helpful}
  if shared:
    raise ConfigError(f"sample_pairs.prompts {g.prompts!r} and helpful_prompts "
                      f"{g.helpful_prompts!r} share {len(shared)} ids (e.g. {sorted(shared)[0]!r});"
                      " pairs are keyed by prompt id, so the two sets need distinct ids")
  axis_of = {**{r.id: "harmless" for r in red}, **{r.id: "helpful" for r in helpful}}
  return red + helpful, axis_of


def run(config, workdir: str) -> dict:
  g = config.sample_pairs
  check(g)
  parallel.maybe_initialize_distributed(config.get("distributed"))  # before anything uses JAX
  strategy = sampling_strategy(g, "sample_pairs")
  constitution = load_constitution(config.constitution)
  prompts, axis_of = load_prompts(g)
  out_dir = os.path.join(workdir, "sample_pairs")
  os.makedirs(out_dir, exist_ok=True)
  output = g.output or os.path.join(out_dir, "pairs.jsonl")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  checkpoint = policy_checkpoint(config, workdir)
  split = SplitOutput(output, "sample_pairs")
  done = split.finished_ids()
  todo = [r for r in prompts if r.id not in done]
  cache_dir = os.path.expanduser(config.model.cache_dir)
  skipped = []
  if todo:  # the tokenizer alone says which prompts are too long; the model loads only if needed
    folder = loader.resolve(checkpoint, cache_dir)
    tokenizer = loader.read_tokenizer(folder)
    fmt = conversation_format(config, tokenizer)
    layout = policy_layout.from_config(config, fmt, constitution)
    lengths = tokenizer.encode_batch([fmt.context(r.prompt) for r in todo], add_bos=False)
    skipped = [r.id for r, ids in zip(todo, lengths) if len(ids) > g.max_conversation_tokens]
    todo = [r for r, ids in zip(todo, lengths) if len(ids) <= g.max_conversation_tokens]
  todo = split.mine(todo)  # after the length check: every process reports every skipped prompt
  where = f" by process {split.index} of {split.count}" if split.count > 1 else ""
  axes = {a: sum(x == a for x in axis_of.values()) for a in AXES}
  print(f"{len(prompts)} prompts ({', '.join(f'{n} {a}' for a, n in axes.items() if n)}; "
        f"{len(done)} done, {len(skipped)} too long, {len(todo)} to "
        f"sample{where}); policy {checkpoint}; constitution {constitution.name!r}", flush=True)
  provenance = {"model": checkpoint, "constitution": {"name": constitution.name,
                                                      "version": constitution.version,
                                                      "source": constitution.source},
                "prompts": g.prompts, "helpful_prompts": g.helpful_prompts, "seed": config.seed,
                "conversation_format": config.conversation.format,
                "policy_prefix": policy_layout.prefix_name(config),
                "sampling": {"temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p,
                             "max_response_tokens": g.max_response_tokens}}
  start, tokens = time.perf_counter(), 0
  if todo:
    mesh = sampling_mesh(config)
    model = load_model(config, mesh, checkpoint=checkpoint)
    provenance["model_source"] = model.source
    sampler = Sampler(model.config, model.params, model.tokenizer,
                      max_prompt_length=g.max_prompt_length,
                      max_batch=2 * g.batch_size, chunk_size=g.chunk_size,
                      eos_ids=fmt.stop_ids, mesh=mesh)
    prefix = layout.prefill(sampler)
    with progress(len(todo), "sample_pairs", "prompt") as bar:
      for b in range(0, len(todo), g.block_size):
        batch = todo[b:b + g.block_size]
        rows = [layout.rest(r.prompt) for r in batch for _ in range(2)]  # each prompt twice, a key per answer
        keys = np.stack([record_keys(config.seed, [r.id for r in batch], i) for i in (0, 1)],
                        axis=1).reshape(-1, 2)
        out = sampler.generate(rows, max_new_tokens=g.max_response_tokens, strategy=strategy,
                               keys=keys, stop=P.RESPONSE_STOPS, prefix=prefix)
        records = []
        for i, r in enumerate(batch):
          a, b_ = out.texts[2 * i], out.texts[2 * i + 1]
          records.append({
              "id": r.id, "prompt": r.prompt, "category": r.category, "axis": axis_of[r.id],
              "responses": [a, b_],
              "finish_reasons": out.finish_reasons[2 * i:2 * i + 2],
              "num_tokens": [int(n) for n in out.num_tokens[2 * i:2 * i + 2]],
              "flags": pair_flags(a, b_),
              "truncated": bool(out.truncated[2 * i] or out.truncated[2 * i + 1]),
              "provenance": provenance})
        split.append(records)
        tokens += int(sum(out.num_tokens))
        bar.update(len(batch))
        bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.1f}")
  wall = time.perf_counter() - start
  split.finish([r.id for r in prompts])
  if not split.is_main:  # process 0 writes the report
    barrier("sample_pairs/report")
    return {}

  wanted = {r.id for r in prompts}
  records = [obj for _, obj in read_jsonl(output) if obj["id"] in wanted] \
      if os.path.exists(output) else []
  by_flag: dict[str, int] = {}
  for r in records:
    for f in r["flags"]:
      by_flag[f] = by_flag.get(f, 0) + 1
  report = {
      "pairs": len(records),
      "pairs_per_axis": {a: sum(r.get("axis") == a for r in records) for a in AXES},
      "flagged_pairs": sum(bool(r["flags"]) for r in records),
      "flags": by_flag, "truncated": sum(bool(r["truncated"]) for r in records),
      "skipped_too_long": skipped,
      "missing": sorted(wanted - {r["id"] for r in records} - set(skipped)),
      "sampled_this_run": len(todo), "wall_s_this_run": wall,
      "tokens_generated_this_run": tokens,
      "tokens_per_s_this_run": tokens / wall if wall > 0 and tokens else 0.0,
      "output": output,
  }
  write_json_atomic(os.path.join(out_dir, "report.json"), report)
  print(json.dumps({k: v for k, v in report.items() if k != "output"}, indent=1), flush=True)
  print(f"wrote {output}", flush=True)
  barrier("sample_pairs/report")
  return report
