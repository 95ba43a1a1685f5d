"""Fault injection: run a cai_jax command in a subprocess and kill it at a chosen moment.

A kill point is `module:Qualified.name:N[:when]`: the process sends itself the signal (SIGKILL
by default; SIGTERM for a preemption notice) at the N-th call of that function: `before` the
call runs (default), `after` it returned (e.g. an orbax save handed to its background commit),
or `cut` for `append_jsonl`-like functions `(path, records)`: half of the first record's line is
written, then the kill (a crash in the middle of a jsonl append). Every module-level binding of
the function in the loaded cai_jax modules is patched (`from m import f` included). Any function
on a job's path can be a kill point, so a test names the moment it means ("the third PPO
update", "the second checkpoint save", "a jsonl append") instead of racing a timer.

From the command line (the same as `python -m cai_jax.main ...`, killed at the point):

  python tests/fault_injection.py --kill-at cai_jax.rl.ppo_trainer:PPOTrainer.update:3 \\
      -- --config configs/rl_train.py --workdir /tmp/run --config.rl_train.iterations=4

In a test: `run_killed(point, cli_args)` returns the subprocess's exit status (-9 for SIGKILL).
`pipeline_differences(whole, killed)` lists how two pipeline workdirs' final artifacts differ
(records each once and the same, exports bitwise, eval numbers, the report's text), for the CI
test and for `experiments/kill_at_random.py` (the quickstart killed at random moments).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


WHEN = ("before", "after", "cut")


def parse_point(point: str) -> tuple[str, list[str], int, str]:
  """'pkg.module:Class.method:N[:when]' -> ('pkg.module', ['Class', 'method'], N, when)."""
  parts = point.split(":")
  try:
    module, qualname, n = parts[:3]
    when = parts[3] if len(parts) == 4 else "before"
    if len(parts) > 4 or when not in WHEN:
      raise ValueError
    return module, qualname.split("."), int(n), when
  except ValueError:
    raise SystemExit(f"bad kill point {point!r}: expected module:Qualified.name:N[:when], "
                     f"when one of {WHEN}") from None


def _die(signum: int) -> None:
  sys.stdout.flush()
  sys.stderr.flush()
  os.kill(os.getpid(), signum)


def _cut_append(path, records) -> None:
  import json
  line = json.dumps(list(records)[0], ensure_ascii=False) + "\n"
  with open(path, "a", encoding="utf-8") as f:
    f.write(line[:len(line) // 2])
    f.flush()
    os.fsync(f.fileno())


def install(point: str, signum: int = signal.SIGKILL) -> None:
  """Patches the function named by `point` (and every module-level name bound to it in the
  loaded cai_jax modules) to send `signum` to this process on its N-th call."""
  module_name, path, n, when = parse_point(point)
  owner = importlib.import_module(module_name)
  for name in path[:-1]:
    owner = getattr(owner, name)
  original = getattr(owner, path[-1])
  calls = [0]

  @functools.wraps(original)
  def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] != n:
      return original(*args, **kwargs)
    if when == "cut":
      _cut_append(*args[:2])
      _die(signum)
    if when == "before":
      _die(signum)
    out = original(*args, **kwargs)
    _die(signum)
    return out

  setattr(owner, path[-1], wrapper)
  if len(path) == 1:  # a module-level function: rebind the names other modules imported
    for name, module in list(sys.modules.items()):
      if name.startswith("cai_jax") and module is not None:
        for attr, value in list(vars(module).items()):
          if value is original:
            setattr(module, attr, wrapper)


def run_killed(point: str, cli_args: list[str], *, signum: int = signal.SIGKILL,
               timeout: float = 900) -> subprocess.CompletedProcess:
  """Runs `python -m cai_jax.main CLI_ARGS` in a subprocess (this environment, the repository
  root as working directory), killed at `point`; returns the completed process."""
  cmd = [sys.executable, os.path.join(HERE, "fault_injection.py"), "--kill-at", point,
         "--signal", signal.Signals(signum).name, "--", *cli_args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


# A pipeline workdir's final artifacts (files that exist in both workdirs are compared)
RECORD_FILES = ("sl_generate/records.jsonl", "sl_generate/sl_train.jsonl",
                "sl_generate/sl_eval.jsonl", "sl_generate/helpful.jsonl",
                "sample_pairs/pairs.jsonl", "feedback/labels.jsonl", "eval/answers/base.jsonl",
                "eval/answers/sl.jsonl", "eval/answers/rl.jsonl", "eval/judgements.jsonl",
                "rl_train/probe.jsonl")
EXPORTS = ("sl_train/export_hf/model.safetensors", "pm_train/pm/decoder/model.safetensors",
           "pm_train/pm/head.npz", "rl_train/export_hf/model.safetensors")


def _records(path, workdir) -> list[str]:
  """The lines of a records file, the workdir's path replaced, sorted (a rerun may write the
  records of one batch in another order only if it redid them: duplicates stay visible)."""
  with open(path, encoding="utf-8") as f:
    return sorted(line.replace(str(workdir), "WORKDIR") for line in f if line.strip())


def report_text(path, workdir) -> str:
  """report.md without what differs between runs by design: the workdir, the time it was
  written and the pipeline's timing table."""
  text = open(path, encoding="utf-8").read().replace(str(workdir), "WORKDIR")
  text = re.sub(r"report written [^.]*\.", "report written ...", text)
  return re.sub(r"## Pipeline\n.*?(?=\n## )", "## Pipeline (timings)\n", text, flags=re.S)


def pipeline_differences(whole, killed) -> list[str]:
  """How the final artifacts of two pipeline workdirs differ ([] = identical): every records
  file (the same records, none twice), the SL / PM / PPO exports (bytes), eval/report.json and
  pm_scores.json (values), report.md (text, timings aside). A file missing from one side is a
  difference; one missing from both is not checked."""
  whole, killed = str(whole), str(killed)
  found = []

  def both(name):
    a, b = os.path.exists(os.path.join(whole, name)), os.path.exists(os.path.join(killed, name))
    if a != b:
      found.append(f"{name}: only in {'the first' if a else 'the second'} workdir")
    return a and b

  for name in RECORD_FILES:
    if both(name):
      a = _records(os.path.join(whole, name), whole)
      b = _records(os.path.join(killed, name), killed)
      if len(b) != len(set(b)):
        found.append(f"{name}: {len(b) - len(set(b))} duplicated records")
      if a != b:
        found.append(f"{name}: records differ ({len(a)} vs {len(b)} lines)")
  for name in EXPORTS:
    if both(name):
      with open(os.path.join(whole, name), "rb") as fa, open(os.path.join(killed, name),
                                                              "rb") as fb:
        if fa.read() != fb.read():
          found.append(f"{name}: bytes differ")
  for name, drop in (("eval/report.json", ()), ("eval/pm_scores.json", ("pm_version",))):
    # (pm_version hashes the PM files' modification times: it tells a retrained PM apart)
    if both(name):
      a = json.loads(open(os.path.join(whole, name)).read().replace(whole, "WORKDIR"))
      b = json.loads(open(os.path.join(killed, name)).read().replace(killed, "WORKDIR"))
      if {k: v for k, v in a.items() if k not in drop} != {
          k: v for k, v in b.items() if k not in drop}:
        found.append(f"{name}: values differ")
  name = "report/report.md"
  if both(name) and report_text(os.path.join(whole, name), whole) != report_text(
      os.path.join(killed, name), killed):
    found.append(f"{name}: text differs")
  return found


def config_flags(settings: dict) -> list[str]:
  """Dotted-key config overrides (as tests pass to `load_config`) as CLI flags."""
  return [f"--config.{k}={v}" for k, v in settings.items()]


def _main(argv: list[str]) -> None:
  if "--" not in argv:
    raise SystemExit(__doc__)
  ours, theirs = argv[:argv.index("--")], argv[argv.index("--") + 1:]
  point = ours[ours.index("--kill-at") + 1]
  signum = signal.SIGKILL
  if "--signal" in ours:
    signum = getattr(signal, "SIG" + ours[ours.index("--signal") + 1].removeprefix("SIG"))
  sys.path.insert(0, REPO)
  import cai_jax.main  # noqa: F401  (the job modules the CLI imports, loaded before patching)
  install(point, signum)
  import runpy
  sys.argv = ["cai_jax.main", *theirs]
  runpy.run_module("cai_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  _main(sys.argv[1:])
