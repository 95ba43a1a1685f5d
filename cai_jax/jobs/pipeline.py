"""The whole Constitutional AI run in one workdir (configs/pipeline.py):

  sl_generate -> sl_train -> sample_pairs -> feedback -> pm_train -> rl_train -> eval -> report

Each stage runs as its own job through `cai_jax.main.run` with a config built by
`stage_configs` (so WORKDIR/<stage>/config.json records exactly what it ran with, and any stage
can be rerun alone with that config), and is skipped when its finished output exists (`DONE`).
A stage whose output is partial simply runs again: the appending stages skip the ids already
written and the trainers resume from their checkpoints.

Finished stages are not invalidated when an earlier stage reruns or the config changes: only
stages whose finished output is missing run. `pipeline.rerun_from=<stage>` deletes the folders
WORKDIR/<stage> of that stage and every later one first, so they run again from scratch.

Wiring (an explicitly set path wins):
  sl_generate   base model
  sl_train      base model, data WORKDIR/sl_generate/sl_train.jsonl, held-out revisions
                WORKDIR/sl_generate/sl_eval.jsonl (when it holds any)
  sample_pairs  policy WORKDIR/sl_train/export_hf
  feedback      base model (the feedback model), pairs WORKDIR/sample_pairs/pairs.jsonl
  pm_train      decoder pipeline.pm_init or the base model, AI labels WORKDIR/feedback/labels.jsonl
                (left out when feedback labelled nothing and human comparisons are given)
  rl_train      policy WORKDIR/sl_train/export_hf, PM WORKDIR/pm_train/pm
  eval          PM WORKDIR/pm_train/pm, base model as judge and for eval.mc_files; unless
                eval.stages is set, the stages compared are base (the base model),
                sl (WORKDIR/sl_train/export_hf) and rl (WORKDIR/rl_train/export_hf), those
                whose export exists (pipeline.compare_stages=False turns this off); skipped
                when eval has nothing to evaluate
  report        WORKDIR/report/report.md and figures from everything above
Status: one line per stage on stdout and WORKDIR/pipeline/status.json.
"""

from __future__ import annotations

import os
import shutil
import time

import ml_collections

from cai_jax import config_defaults
from cai_jax.config_defaults import ConfigError
from cai_jax.data.jsonl import write_json_atomic

STAGES = ("sl_generate", "sl_train", "sample_pairs", "feedback", "pm_train", "rl_train", "eval",
          "report")

# Top-level fields of each stage's own config (configs/<stage>.py) besides job, seed, model and
# the stage's section; tests/test_pipeline.py checks they match the config files.
SHARED_FIELDS = {
    "sl_generate": ("constitution",),
    "sl_train": ("mesh", "distributed", "optim"),
    "sample_pairs": ("constitution",),
    "feedback": ("constitution",),
    "pm_train": ("mesh", "distributed", "optim"),
    "rl_train": ("mesh", "distributed", "optim"),
    "eval": ("mesh", "distributed"),
    "report": (),
}


# Stages that only sample and score (no optimizer): `pipeline.sampling_param_dtype` stores
# their weights in a narrower dtype than the trainers' float32 master weights.
SAMPLING_STAGES = ("sl_generate", "sample_pairs", "feedback", "eval")


def _exists(workdir: str, *paths: str) -> bool:
  return all(os.path.exists(os.path.join(workdir, p)) for p in paths)


# Finished-output checks (files every stage writes last, after its main outputs).
DONE = {
    "sl_generate": ("sl_generate/report.json", "sl_generate/sl_train.jsonl"),
    "sl_train": ("sl_train/summary.json", "sl_train/export_hf"),
    "sample_pairs": ("sample_pairs/report.json",),
    "feedback": ("feedback/report.json",),
    "pm_train": ("pm_train/pm/pm.json",),
    "rl_train": ("rl_train/summary.json", "rl_train/export_hf"),
    "eval": ("eval/report.json",),
    "report": ("report/report.md",),
}


def done(stage: str, workdir: str) -> bool:
  return _exists(workdir, *DONE[stage])


def _has_records(path: str) -> bool:
  if not os.path.exists(path):
    return False
  with open(path, encoding="utf-8", errors="replace") as f:
    return any(line.strip() for line in f)


def compared_stages(config, workdir: str) -> str:
  """eval.stages for the pipeline: base, sl, rl (those whose checkpoint exists), or ''."""
  if config.eval.stages or not config.pipeline.compare_stages:
    return config.eval.stages
  found = [("base", config.model.checkpoint)] + [
      (name, os.path.join(workdir, stage, "export_hf"))
      for name, stage in (("sl", "sl_train"), ("rl", "rl_train"))
      if os.path.isdir(os.path.join(workdir, stage, "export_hf"))]
  return ",".join(f"{n}={c}" for n, c in found) if len(found) > 1 else ""


def _eval_has_work(config, workdir: str) -> bool:
  e = config.eval
  return bool(e.comparisons or e.hhh or e.mc_files or e.feedback_labels
              or compared_stages(config, workdir))


def _copy(value):
  return value.copy_and_resolve_references() if isinstance(value, ml_collections.ConfigDict) \
      else value


def stage_config(config, stage: str, workdir: str) -> ml_collections.ConfigDict:
  """The config `stage` runs with: configs/<stage>.py's layout, the pipeline's shared fields
  (seed, base model, constitution, mesh, distributed), the pipeline's section for the stage
  (config.<stage>) and optimizer (config.optim.<stage>), and the paths between stages."""
  c = config_defaults.base_config(stage)
  c.seed = config.seed
  c.model = config.model.copy_and_resolve_references()
  for field in SHARED_FIELDS[stage]:
    value = config.optim[stage] if field == "optim" else config[field]
    c[field] = _copy(value)
  c[stage] = _copy(config[stage])
  if stage in SAMPLING_STAGES and config.pipeline.sampling_param_dtype:
    c.model.param_dtype = config.pipeline.sampling_param_dtype
  s = c[stage]
  path = lambda *p: os.path.join(workdir, *p)  # noqa: E731
  sl_export = path("sl_train", "export_hf")
  if stage == "sl_train":
    s.data = s.data or path("sl_generate", "sl_train.jsonl")
    held_out = path("sl_generate", "sl_eval.jsonl")
    if not s.eval_data and _has_records(held_out):
      s.eval_data = held_out
  elif stage == "sample_pairs":
    c.model.checkpoint = sl_export
  elif stage == "feedback":
    s.pairs = s.pairs or config.sample_pairs.output or path("sample_pairs", "pairs.jsonl")
  elif stage == "pm_train":
    c.model.checkpoint = config.pipeline.pm_init or config.model.checkpoint
    if not s.ai_labels:
      labels = config.feedback.output or path("feedback", "labels.jsonl")
      if _has_records(labels):
        s.ai_labels = labels
      elif s.human_comparisons:
        print(f"pipeline: {labels} holds no AI labels (every pair flagged?); pm_train trains on "
              "pm_train.human_comparisons only", flush=True)
      else:
        raise ConfigError(f"pm_train has no data: {labels} holds no AI labels (feedback skips "
                          "flagged pairs) and pm_train.human_comparisons is not set")
  elif stage == "rl_train":
    c.model.checkpoint = sl_export
    s.pm = s.pm or path("pm_train", "pm")
  elif stage == "eval":
    s.pm = s.pm or path("pm_train", "pm")
    s.stages = compared_stages(config, workdir)
  return c


def selected_stages(p) -> list[str]:
  def check(name, field):
    if name not in STAGES:
      raise ConfigError(f"pipeline.{field}: unknown stage {name!r}; stages: {', '.join(STAGES)}")
  names = [s.strip() for s in p.stages.split(",") if s.strip()] if p.stages else list(STAGES)
  for n in names:
    check(n, "stages")
  for field in ("stop_after", "rerun_from"):
    if p[field]:
      check(p[field], field)
  out = [s for s in STAGES if s in names]
  if p.stop_after:
    out = [s for s in out if STAGES.index(s) <= STAGES.index(p.stop_after)]
  return out


def _release_memory() -> None:
  """Between stages: drop compiled programs and collect the finished stage's arrays, so the
  next stage starts from the memory a run of it alone would use."""
  import ctypes
  import gc

  import jax
  gc.collect()
  jax.clear_caches()
  gc.collect()
  try:  # glibc keeps freed heap pages; hand them back so the next stage has the room
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _sync(name: str) -> None:
  """A barrier across processes (multi-host runs); nothing on one process."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def run(config, workdir: str) -> dict:
  import jax

  from cai_jax import main  # the CLI module runs each stage (and records its config)
  from cai_jax import parallel
  parallel.maybe_initialize_distributed(config.distributed)  # before anything touches JAX
  first_process = jax.process_index() == 0  # shared files are written (and removed) by one
  p = config.pipeline
  stages = selected_stages(p)
  out_dir = os.path.join(workdir, "pipeline")
  os.makedirs(out_dir, exist_ok=True)
  status_path = os.path.join(out_dir, "status.json")
  forced = set(STAGES[STAGES.index(p.rerun_from):]) & set(stages) if p.rerun_from else set()
  status = {"stages": {}, "order": list(STAGES), "selected": stages,
            "rerun_from": p.rerun_from or None}
  for stage in STAGES:
    if stage not in stages:
      status["stages"][stage] = {"status": "not_selected", "seconds": 0.0,
                                 "folder": os.path.join(workdir, stage), "outputs": []}
  total = time.perf_counter()
  for stage in stages:
    folder = os.path.join(workdir, stage)
    start = time.perf_counter()
    if stage in forced:
      if first_process and os.path.exists(folder):
        shutil.rmtree(folder)
        print(f"pipeline: rerun_from={p.rerun_from}: removed {folder}", flush=True)
      _sync(f"pipeline_rerun_{stage}")  # no host starts the stage before the folder is gone
    if done(stage, workdir):
      state = "skipped"
    elif stage == "eval" and not _eval_has_work(config, workdir):
      state = "not_configured"
    else:
      print(f"pipeline: ---- {stage}", flush=True)
      main.run(stage_config(config, stage, workdir), workdir)
      _release_memory()
      if not done(stage, workdir):
        raise RuntimeError(f"pipeline: {stage} returned without its finished output "
                           f"({', '.join(DONE[stage])} in {workdir})")
      state = "ran"
    seconds = time.perf_counter() - start
    status["stages"][stage] = {
        "status": state, "seconds": round(seconds, 3), "folder": folder,
        "outputs": sorted(os.listdir(folder)) if os.path.isdir(folder) else []}
    if first_process:
      write_json_atomic(status_path, status)
    note = {"skipped": "finished output exists", "not_configured":
            "nothing to evaluate: set eval.stages/comparisons/hhh/mc_files/feedback_labels"}.get(state, "")
    print(f"pipeline: {stage:13s} {state:14s} {seconds:8.1f}s  {note}".rstrip(), flush=True)
  status["seconds"] = round(time.perf_counter() - total, 3)
  if first_process:
    write_json_atomic(status_path, status)
  print(f"pipeline: done in {status['seconds']:.1f}s; status in {status_path}", flush=True)
  return status
