"""cai_jax command line; the job list below is filled in from `JOBS`."""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.config_defaults import ConfigError
from cai_jax.constitution.schema import ConstitutionError
from cai_jax.data.jsonl import DataError, StorageError, storage_error
from cai_jax.train.engine import NonFiniteLoss, Preempted

# job name -> (module with `run(config, workdir)`, one-line description)
JOBS: dict[str, tuple[str, str]] = {
    "eval_mc": ("cai_jax.jobs.eval_mc",
                "score multiple-choice jsonl files (prompt/corrects/incorrects) by summed "
                "option log-probabilities; writes WORKDIR/eval_mc/<stem>.json"),
    "generate": ("cai_jax.jobs.generate",
                 "sample completions for a prompts jsonl ({id, prompt}) with the KV-cache "
                 "sampler; appends to the output and skips ids already written"),
    "red_team_generate": ("cai_jax.jobs.red_team_generate",
                          "few-shot sample new red-team prompts from the seed set, "
                          "deduplicated and tagged as generated"),
    "sl_generate": ("cai_jax.jobs.sl_generate",
                    "SL-CAI data: answer red-team prompts, critique and revise them under the "
                    "constitution, write records and the SL training file"),
    "sample_pairs": ("cai_jax.jobs.sample_pairs",
                     "RLAIF pairs: two sampled answers per prompt from the policy (default the "
                     "SL-CAI export WORKDIR/sl_train/export_hf); flags empty/identical pairs"),
    "feedback": ("cai_jax.jobs.feedback",
                 "AI preference labels for answer pairs: multiple-choice or chain-of-thought "
                 "questions under sampled principles, both orders, position bias report"),
    "sl_train": ("cai_jax.jobs.sl_train",
                 "finetune config.model.checkpoint on an SL jsonl ({prompt, completion}) with "
                 "the sharded training engine; resumes from WORKDIR/sl_train/checkpoints"),
    "pm_train": ("cai_jax.jobs.pm_train",
                 "preference model: a decoder + scalar head trained with the soft-label "
                 "Bradley-Terry loss on AI labels mixed with human chosen/rejected pairs; "
                 "resumes from WORKDIR/pm_train/checkpoints, exports WORKDIR/pm_train/pm"),
    "rl_train": ("cai_jax.jobs.rl_train",
                 "RL-CAI: PPO on the policy (default WORKDIR/sl_train/export_hf) against the "
                 "preference model (default WORKDIR/pm_train/pm) with a KL penalty to the "
                 "initial policy; resumes from WORKDIR/rl_train/checkpoints"),
    "po_train": ("cai_jax.jobs.po_train",
                 "RL-CAI by preference optimisation: DPO / IPO on the feedback model's soft "
                 "labels (or the hard-label baseline) against a reference whose log-probs are "
                 "stored once; resumes from WORKDIR/po_train/checkpoints, exports "
                 "WORKDIR/po_train/export_hf"),
    "red_team_attack": ("cai_jax.jobs.red_team_attack",
                        "red teaming against the policy: proposed prompts (default "
                        "WORKDIR/red_team_generate/prompts.jsonl) answered by the policy, scored "
                        "by the PM; attack success rate, and the worst prompts appended to a "
                        "prompt set for the next RL stage"),
    "eval": ("cai_jax.jobs.eval",
             "evaluation: checkpoints against each other on held-out prompts (Elo and win "
             "rates by the AI judge with bootstrap CIs, PM scores, lengths), PM accuracy and "
             "calibration on chosen/rejected and HHH files, AI labeller vs human labels, MC "
             "accuracy; WORKDIR/eval/report.json"),
    "report": ("cai_jax.jobs.report",
               "the run report: WORKDIR/report/report.md and PNG plots (Elo, PM scores, PM "
               "calibration, PPO and training curves, example answers) from a workdir's "
               "outputs"),
    "pipeline": ("cai_jax.jobs.pipeline",
                 "the whole run in one workdir: sl_generate, sl_train, sample_pairs, feedback, "
                 "pm_train, rl_train, eval, report; skips stages whose finished output exists; "
                 "status in WORKDIR/pipeline/status.json"),
    "compile_check": ("cai_jax.jobs.compile_check",
                      "compile every program of a TPU hardware config for its topology without "
                      "a TPU (libtpu, the tpu-aot extra): bytes per device against HBM, FLOPs, "
                      "compile time; WORKDIR/compile_check/report.json"),
    "convert": ("cai_jax.jobs.convert",
                "export config.model.checkpoint as an HF folder and/or a cai_jax orbax "
                "checkpoint under WORKDIR/convert/"),
}

__doc__ = (
    "Constitutional AI in JAX.\n\n"
    "usage: python -m cai_jax.main --config configs/<job>.py [--config.a.b=value ...] "
    "--workdir DIR\n\n"
    "The config's `job` field picks what runs. Jobs:\n"
    + "".join(f"  {name:18s} {desc}\n" for name, (_, desc) in JOBS.items()))

def _define_flags():
  """The command-line flags, defined only when this module runs as the program: the pipeline
  job imports `cai_jax.main` (a second module object beside __main__) to run its stages, and a
  second definition would clash."""
  config = config_flags.DEFINE_config_file(
      "config", None, "ml_collections config file (configs/<job>.py); override fields with "
      "--config.a.b=value", lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "folder for this run's outputs")
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir


class UsageError(ValueError):
  """A config that names no known job."""


def job_module(config):
  job = config.get("job")
  if job not in JOBS:
    raise UsageError(f"unknown job {job!r} in the config; known jobs: {', '.join(JOBS)}")
  return importlib.import_module(JOBS[job][0])


def record_config(config, folder: str) -> None:
  """Every job leaves the exact config it ran with next to its outputs (the first write of a
  run: an unwritable workdir stops here, before any compute)."""
  path = os.path.join(folder, "config.json")
  try:
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
      json.dump(config.to_dict(), f, indent=2, default=str)
  except OSError as e:
    raise storage_error(path, e) from e


# errno values that mean "this storage cannot take the output" (exit status 4)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def storage_message(e: OSError) -> str:
  """StorageError's message; for another OSError of full or read-only storage, the same
  message naming the file the error carries."""
  if not isinstance(e, StorageError):
    e = storage_error(e.filename or "an output file", e)
  return e.strerror


def use_compilation_cache(folder: str, min_compile_seconds: float = 0.0,
                          max_bytes: int = 4 << 30) -> None:
  """Keeps compiled XLA programs in `folder` (JAX's persistent compilation cache) and loads
  them from there when the same program is compiled again, in this process or a later one;
  beyond `max_bytes` the least recently used entries go. The executables are the ones XLA
  would build, so results do not change."""
  if not folder:
    return
  import jax
  folder = os.path.abspath(os.path.expanduser(folder))
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_compilation_cache_max_size", max_bytes)


def run(config, workdir: str):
  module = job_module(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  record_config(config, os.path.join(workdir, config.job))
  return module.run(config, workdir)


class Terminated(Exception):
  """SIGTERM outside a trainer's loop (which saves a checkpoint first, `Preempted`)."""


def _terminate(signum, frame):
  raise Terminated("stopped by SIGTERM; the records written so far are kept (an append is "
                   "never cut by it): run the same command again to finish")


def main(argv, config_flag, workdir_flag):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:  # keep library INFO chatter (orbax) off the console
    logging.set_verbosity(logging.WARNING)
  # A preemption notice stops a sampling job with whole records (jsonl.append_jsonl writes
  # them in one call); a trainer's loop takes SIGTERM over to save a checkpoint first.
  signal.signal(signal.SIGTERM, _terminate)
  use_compilation_cache(config_flag.value.get("compilation_cache", ""))
  try:
    run(config_flag.value, workdir_flag.value)
  except (UsageError, ConfigError, DataError, CheckpointError, ConstitutionError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteLoss as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except OSError as e:
    if not isinstance(e, StorageError) and e.errno not in STORAGE_ERRNOS:
      raise
    print(f"error: {storage_message(e)}", file=sys.stderr)
    sys.exit(4)
  except (Preempted, Terminated) as e:
    print(str(e), file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM: schedulers read it as "stopped by signal", to be restarted


def print_help_and_exit() -> None:
  """absl exits 1 after --help; users and scripts expect the job list and a 0 exit status."""
  print(__doc__)
  print(flags.FLAGS.main_module_help())
  sys.exit(0)


if __name__ == "__main__":
  _config_flag, _workdir_flag = _define_flags()
  if any(arg in ("-h", "--help", "--helpshort") for arg in sys.argv[1:]):
    print_help_and_exit()
  app.run(lambda argv: main(argv, _config_flag, _workdir_flag))
