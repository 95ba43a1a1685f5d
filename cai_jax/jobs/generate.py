"""Job `generate`: prompts jsonl -> completions jsonl, appended as it goes and resumable.

Records: {"id", "prompt", "completion", "finish_reason", "num_tokens", "truncated"}. On restart,
ids already in the output are skipped; a last line cut off by a crash is dropped first, so no
record is lost or written twice. Each row samples with a key from (seed, id), so a restart or
another batch size gives it the same completion; several processes (`distributed`) split the rows
and process 0 merges their records (`record_split`). Prompts are encoded as given (special-token text such as
`<|im_start|>` becomes its single id), BOS first where the checkpoint's tokenizer adds one.
"""

from __future__ import annotations

import os
import time

from cai_jax import parallel
from cai_jax.config_defaults import ConfigError
from cai_jax.data.jsonl import DataError, read_jsonl, require
from cai_jax.jobs.common import load_model, progress, sampling_mesh, sampling_strategy
from cai_jax.jobs.record_split import SplitOutput
from cai_jax.sampling.record_keys import record_keys
from cai_jax.sampling.sampler import Sampler


def read_prompts(path: str) -> list[tuple[str, str]]:
  rows, seen = [], set()
  for lineno, obj in read_jsonl(path):
    rid = require(obj, "id", (str, int), path, lineno)
    prompt = require(obj, "prompt", str, path, lineno)
    if not prompt:
      raise DataError(f"{path}:{lineno}: empty prompt")
    if str(rid) in seen:
      raise DataError(f"{path}:{lineno}: duplicate id {rid!r}")
    seen.add(str(rid))
    rows.append((str(rid), prompt))
  if not rows:
    raise DataError(f"{path}: no prompts")
  return rows


def run(config, workdir: str) -> str:
  g = config.generate
  if not g.prompts:
    raise DataError("no prompts: set --config.generate.prompts=IN.jsonl")
  strategy = sampling_strategy(g, "generate")
  for field in ("max_new_tokens", "batch_size", "write_every", "chunk_size", "max_prompt_length"):
    if g[field] <= 0:
      raise ConfigError(f"generate.{field} must be > 0, got {g[field]}")
  stop = (g.stop,) if isinstance(g.stop, str) else tuple(g.stop)
  if any(not isinstance(s, str) or not s for s in stop):
    raise ConfigError(f"generate.stop: stop strings must be non-empty strings, got {stop!r}")
  rows = read_prompts(g.prompts)
  parallel.maybe_initialize_distributed(config.get("distributed"))  # before anything uses JAX
  output = g.output or os.path.join(workdir, "generate", "completions.jsonl")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  split = SplitOutput(output, "generate")
  done = split.finished_ids()
  todo = [r for r in rows if r[0] not in done]
  print(f"{len(rows)} prompts, {len(done)} already done, {len(todo)} to generate", flush=True)
  todo = split.mine(todo, id_of=lambda r: r[0])
  if not todo:
    split.finish([rid for rid, _ in rows])
    return output

  mesh = sampling_mesh(config)
  model = load_model(config, mesh)
  sampler = Sampler(model.config, model.params, model.tokenizer,
                    max_prompt_length=g.max_prompt_length,
                    max_batch=g.batch_size, chunk_size=g.chunk_size,
                    mesh=mesh)
  prefix = sampler.prefill_prefix(g.prefix) if g.prefix else None
  tokens, start = 0, time.perf_counter()
  with progress(len(todo), "generate", "row") as bar:
    for block_start in range(0, len(todo), g.write_every):
      block = todo[block_start:block_start + g.write_every]
      result = sampler.generate([p for _, p in block], max_new_tokens=g.max_new_tokens,
                                strategy=strategy, keys=record_keys(config.seed,
                                                                    [rid for rid, _ in block]),
                                stop=stop, prefix=prefix, progress=bar)
      split.append([{"id": rid, "prompt": prompt, "completion": text, "finish_reason": reason,
                     "num_tokens": n, "truncated": trunc}
                    for (rid, prompt), text, reason, n, trunc in zip(
                        block, result.texts, result.finish_reasons, result.num_tokens,
                        result.truncated)])
      tokens += sum(result.num_tokens)
      bar.set_postfix(tok_per_s=f"{tokens / (time.perf_counter() - start):.1f}")
  split.finish([rid for rid, _ in rows])
  print(f"wrote {output}", flush=True)
  return output
