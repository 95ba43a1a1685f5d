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
"""

from __future__ import annotations

import functools
import importlib
import os
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
