"""The whole Constitutional AI run in one workdir (configs/pipeline.py):

  sl_generate -> sl_train -> sample_pairs -> feedback -> pm_train -> rl_train / po_train -> eval
  -> report

The RL-CAI stage is chosen by `pipeline.rl.algorithm`: 'ppo' (rl_train, the default), 'dpo' or
'ipo' (po_train on the feedback labels), or 'ppo,dpo' to run both and compare them.

Iterated online RLAIF, `pipeline.rounds=N`: after those stages, rounds 2..N each run
sample_pairs (from the previous round's policy), feedback, pm_train (continuing the previous
round's PM on the new labels) and the RL stage (from the previous round's policy, which is also
its KL reference) in WORKDIR/round_<r>/, with seed + r - 1; eval then compares every round's
policy (rl, rl_2, ...; dpo, dpo_2, ...) with the last round's PM. Steps are named
round_<r>/<stage> in status.json. A workdir holding more rounds than pipeline.rounds is refused.

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
  po_train      policy (and reference) WORKDIR/sl_train/export_hf, labels
                WORKDIR/feedback/labels.jsonl, loss from pipeline.rl.algorithm
  eval          PM WORKDIR/pm_train/pm, base model as judge and for eval.mc_files; unless
                eval.stages is set, the stages compared are base (the base model),
                sl (WORKDIR/sl_train/export_hf), rl (WORKDIR/rl_train/export_hf) and dpo / ipo
                (WORKDIR/po_train/export_hf), those whose export exists (pipeline.compare_stages=False turns this off); skipped
                when eval has nothing to evaluate
  report        WORKDIR/report/report.md and figures from everything above
Status: one line per stage on stdout and WORKDIR/pipeline/status.json.
"""

from __future__ import annotations

import os
import shutil
import time

from cai_jax.data.jsonl import write_json_atomic
# The stages and their wiring are library code (cai_jax/pipeline/stages.py, shared with the
# memory planner); their names are also importable from here, where users look for them.
from cai_jax.pipeline.stages import (DONE, SAMPLING_STAGES, STAGES,  # noqa: F401
                                     _eval_has_work, check_rounds, done, plan, round_dir,
                                     selected_stages, stage_config)


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
  from cai_jax.jobs import common
  parallel.maybe_initialize_distributed(config.distributed)  # before anything touches JAX
  first_process = jax.process_index() == 0  # shared files are written (and removed) by one
  p = config.pipeline
  stages = selected_stages(p)
  steps = plan(config, workdir)
  check_rounds(p, workdir)  # before anything is removed or run
  common.check_sampling_dtype("pipeline.sampling_param_dtype", p.sampling_param_dtype)
  out_dir = os.path.join(workdir, "pipeline")
  os.makedirs(out_dir, exist_ok=True)
  status_path = os.path.join(out_dir, "status.json")
  names = [name for name, _, _ in steps]
  # rerun_from names a stage: it (in the first round) and every later step run again
  forced = set()
  if p.rerun_from:
    at = STAGES.index(p.rerun_from)
    starts = [i for i, (_, stage, r) in enumerate(steps)
              if (STAGES.index(stage) >= at if r == 1 else p.rerun_from not in ("eval", "report"))]
    forced = set(names[starts[0]:]) if starts else set()
  status = {"stages": {}, "order": list(STAGES), "selected": stages, "steps": names,
            "rounds": int(p.rounds), "rerun_from": p.rerun_from or None}
  for stage in STAGES:
    if stage not in stages:
      status["stages"][stage] = {"status": "not_selected", "seconds": 0.0,
                                 "folder": os.path.join(workdir, stage), "outputs": []}
  total = time.perf_counter()
  for name, stage, r in steps:
    here = round_dir(workdir, r)
    folder = os.path.join(here, stage)
    start = time.perf_counter()
    if name in forced:
      if first_process and os.path.exists(folder):
        shutil.rmtree(folder)
        print(f"pipeline: rerun_from={p.rerun_from}: removed {folder}", flush=True)
      _sync(f"pipeline_rerun_{name}")  # no host starts the stage before the folder is gone
    if done(stage, here):
      state = "skipped"
    elif stage == "eval" and not _eval_has_work(config, workdir):
      state = "not_configured"
    else:
      print(f"pipeline: ---- {name}", flush=True)
      main.run(stage_config(config, stage, workdir, r), here)
      _release_memory()
      if not done(stage, here):
        raise RuntimeError(f"pipeline: {name} returned without its finished output "
                           f"({', '.join(DONE[stage])} in {here})")
      state = "ran"
    seconds = time.perf_counter() - start
    stage = name
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
