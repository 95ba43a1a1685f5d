"""The glue every training job shares around `engine.train_loop`: global batches from each
process's rows, host metrics (tokens/s, MFU, memory), the metrics writer, the progress bar,
checkpoint hooks, and gathering parameters for export. Jobs keep only what is theirs: data,
objective, evaluation and export format."""

from __future__ import annotations

import json
import os
import resource
from typing import Callable, Iterator

import jax
import numpy as np

from cai_jax import parallel
from cai_jax.config_defaults import ConfigError
from cai_jax.data.jsonl import write_text_atomic
from cai_jax.metrics import MetricsWriter, read_metrics
from cai_jax.progress import progress
from cai_jax.train import engine, flops
from cai_jax.train.checkpointing import TrainCheckpoints


def check_batching(c, mesh, section: str, positive: tuple[str, ...] = ()) -> None:
  """ConfigError unless a trainer's batch settings fit the mesh and the processes: the sizes
  are positive, batch_size splits into micro_batches, and each micro-batch and eval batch
  divides over the data axes."""
  for field in ("batch_size", "micro_batches", "max_length", "min_length", "eval_batch_size",
                *positive):
    if c[field] <= 0:
      raise ConfigError(f"{section}.{field} must be > 0, got {c[field]}")
  if c.batch_size % c.micro_batches:
    raise ConfigError(f"{section}.batch_size={c.batch_size} is not divisible by "
                      f"micro_batches={c.micro_batches}")
  parallel.check_batch(c.batch_size // c.micro_batches, mesh,
                       f"{section}.batch_size / micro_batches")
  parallel.check_batch(c.eval_batch_size, mesh, f"{section}.eval_batch_size")
  parallel.process_rows(c.batch_size)


def resume_or_start(name: str, ckpts: TrainCheckpoints, abstract, meta: dict, batches,
                    start: Callable[[], engine.TrainState]) -> engine.TrainState:
  """The latest checkpoint (its data position restored into `batches`), or `start()` for a
  fresh run. A caller resuming drops its own initial parameters first, so the two copies never
  coexist."""
  if ckpts.latest_step() is None:
    return start()
  state, position, step = ckpts.restore(abstract, meta)
  batches.restore(position)
  print(f"{name}: resuming from step {step} (data position {position})", flush=True)
  return state


def eval_sums(eval_fn, params, local_batches, mesh) -> dict[str, float]:
  """The sums an eval step returns, added over every batch (each this process's rows)."""
  total: dict[str, float] = {}
  for local in local_batches:
    for k, v in jax.device_get(eval_fn(params, parallel.global_batch(local, mesh))).items():
      total[k] = total.get(k, 0.0) + float(v)
  return total


def memory_metrics() -> dict:
  out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_gb"] = stats["peak_bytes_in_use"] / 2**30
  return out


def gather_params(params):
  """Full parameters as host arrays on every process (for export)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(params, tiled=True)
  return jax.tree.map(np.asarray, jax.device_get(params))


def run_loop(*, name: str, out_dir: str, state: engine.TrainState, mesh, steps: int,
             ckpts: TrainCheckpoints, meta: dict, model_config, peak_flops: float = 0.0,
             step_fn=None, local_batches: Iterator[tuple[dict, dict]] | None = None,
             stepper: engine.Stepper | None = None, start_step: int | None = None,
             lm_head: bool = True,
             show_progress: bool = True, extra_metrics: Callable[[dict], dict] | None = None,
             evaluate: Callable | None = None, eval_every: int = 0,
             evaluate_at_start: bool = False, evaluate_at_end: bool = False,
             length_of: Callable[[dict], int] = lambda b: b["tokens"].shape[-1],
             postfix: Callable[[dict], dict] | None = None, unit: str = "step",
             ) -> tuple[engine.TrainState, dict, int]:
  """Trains until `steps`; returns (state, the last logged metrics, the step it started from).

  A supervised trainer passes `step_fn` and `local_batches` (this process's rows, data position
  after them); an on-policy trainer passes its own `stepper` (global batches are its business)
  and `start_step` when its steps are not the optimizer's. When the step's metrics include
  `tokens` (real tokens) the loop adds tokens/s and MFU: `peak_flops` = 0 measures a float32
  matmul at start; `lm_head` says whether the objective projects onto the vocabulary (see
  `flops.train_flops_per_token`). A resumed run first drops the records metrics.jsonl holds
  beyond the step it resumes from (`drop_metrics_after`). `evaluate_at_start` evaluates a run
  that starts at step 0 before its first step and logs it as step 0 (`initial_metrics` reads it
  back);
  `evaluate_at_end` evaluates the final step when `eval_every` did not (the returned metrics
  hold the last evaluation); a final step whose evaluation a crash prevented (killed between
  the last checkpoint and it) is evaluated by the rerun, which trains nothing."""
  if (stepper is None) == (step_fn is None or local_batches is None):
    raise TypeError("run_loop needs either stepper or both step_fn and local_batches")
  if stepper is None and not peak_flops:  # measured before the first step, not timed within it
    peak_flops = flops.measure_matmul_peak() * jax.device_count()
  start_step = int(jax.device_get(state.step)) if start_step is None else int(start_step)
  metrics_path = os.path.join(out_dir, "metrics.jsonl")
  if jax.process_index() == 0:
    drop_metrics_after(metrics_path, start_step)
  writer = MetricsWriter(out_dir)
  bar = progress(steps, name, unit) if show_progress and jax.process_index() == 0 else None
  if bar is not None:
    bar.update(start_step)
  length = [1]
  logged: dict = {}

  def global_batches():
    for local, position in local_batches:
      length[0] = length_of(local)  # the MFU's attention term needs the padded length
      yield parallel.global_batch(local, mesh), position

  def host_metrics(metrics, seconds):
    out = {}
    if "tokens" in metrics:
      tokens = metrics["tokens"]
      out["tokens_per_s"] = tokens / seconds
      if peak_flops:
        per_token = flops.train_flops_per_token(model_config, length[0], lm_head=lm_head)
        out["mfu"] = tokens * per_token / seconds / peak_flops
    if extra_metrics is not None:
      out.update(extra_metrics(metrics))
    out.update(memory_metrics())
    return out

  def log(step, metrics):
    logged.update(metrics)
    writer.write(step, metrics)

  evaluated: set[int] = set()

  def evaluate_step(step, st):
    evaluated.add(step)
    return evaluate(step, st)

  hooks = engine.LoopHooks(
      save=lambda step, st, pos, force: ckpts.save(step, st, pos, meta, force=force),
      should_save=ckpts.should_save, reached_preemption=ckpts.reached_preemption,
      log=log, evaluate=evaluate_step if evaluate is not None else None, eval_every=eval_every,
      progress=bar)
  if postfix is not None:
    hooks.postfix = postfix
  if stepper is None:
    stepper = engine.batch_stepper(step_fn, global_batches())
  try:
    if evaluate is not None and evaluate_at_start and start_step == 0:
      log(0, evaluate(0, state))
    state = engine.train_loop(state, stepper, steps, hooks, start=start_step,
                              host_metrics=host_metrics)
    # The final evaluation, also when a crash came between the last checkpoint and it (a rerun
    # then resumes a finished run whose final state was never evaluated).
    if (evaluate is not None and steps > 0
        and (evaluate_at_end or (eval_every and steps % eval_every == 0))
        and steps not in evaluated and not _has_evaluation(metrics_path, steps)):
      log(steps, evaluate(steps, state))
  finally:
    if bar is not None:
      bar.close()
    ckpts.close()
    writer.close()
  if start_step >= steps:  # a finished run resumed: its last recorded metrics, then any new
    logged = {**_last_training_metrics(metrics_path), **logged}
  return state, logged, start_step


def export_hf(params, out_dir: str, model_config, tokenizer) -> str | None:
  """A trained decoder as an HF folder OUT_DIR/export_hf (gathered from every process, written
  by the first); its path there, None on the others."""
  from cai_jax.checkpoints import hf
  params = gather_params(params)
  if jax.process_index() != 0:
    return None
  export = os.path.join(out_dir, "export_hf")
  hf.save_hf_folder(export, model_config.replace(remat=False), params, tokenizer)
  return export


def initial_metrics(out_dir: str) -> dict:
  """The step-0 record of OUT_DIR/metrics.jsonl (the evaluation before training), or {}."""
  path = os.path.join(out_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  for record in read_metrics(path):
    if record.get("step") == 0:
      return {k: v for k, v in record.items() if k not in ("step", "time")}
  return {}


def drop_metrics_after(path: str, step: int, key: str = "step") -> int:
  """Removes the records of PATH (a metrics.jsonl, or any JSONL whose records carry `key`) beyond
  `step`, the step a run resumes from (all of them when it starts afresh at 0): a crash loses the
  steps after the last checkpoint, which the resumed run redoes and logs again, once; a last
  line cut off mid-write goes too. Rewritten atomically; returns how many were dropped."""
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [line for line in f if line.strip()]
  if lines and not lines[-1].endswith("\n"):  # a line cut off by a crash mid-write
    lines[-1] = ""
  keep = [line for line in lines if line and step > 0 and json.loads(line).get(key, 0) <= step]
  if len(keep) < len(lines):
    write_text_atomic(path, "".join(keep))
  return len(lines) - len(keep)


def _has_evaluation(path: str, step: int) -> bool:
  """Whether PATH holds an evaluation (a record with `eval_*` values) of `step`."""
  if not os.path.exists(path):
    return False
  return any(r.get("step") == step and any(k.startswith("eval_") for k in r)
             for r in read_metrics(path))


def _last_training_metrics(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  last: dict = {}
  for record in read_metrics(path):
    last.update({k: v for k, v in record.items() if k not in ("step", "time")})
  return last
