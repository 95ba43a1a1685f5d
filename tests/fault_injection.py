"""Fault injection: run a cai_jax command in a subprocess and kill it at a chosen moment.

A kill point is `module:Qualified.name:N`: the process sends itself the signal (SIGKILL by
default; SIGTERM for a preemption notice) when that function is called for the N-th time,
before the call runs. Any function on a job's path can be a kill point, so a test names the
moment it means ("the third PPO update", "the second checkpoint save", "a jsonl append")
instead of racing a timer.

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


def parse_point(point: str) -> tuple[str, list[str], int]:
  """'pkg.module:Class.method:N' -> ('pkg.module', ['Class', 'method'], N)."""
  try:
    module, qualname, n = point.split(":")
    return module, qualname.split("."), int(n)
  except ValueError:
    raise SystemExit(f"bad kill point {point!r}: expected module:Qualified.name:N") from None


def install(point: str, signum: int = signal.SIGKILL) -> None:
  """Patches the function named by `point` to send `signum` to this process on its N-th call."""
  module_name, path, n = parse_point(point)
  owner = importlib.import_module(module_name)
  for name in path[:-1]:
    owner = getattr(owner, name)
  original = getattr(owner, path[-1])
  calls = [0]

  @functools.wraps(original)
  def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] == n:
      sys.stdout.flush()
      sys.stderr.flush()
      os.kill(os.getpid(), signum)
    return original(*args, **kwargs)

  setattr(owner, path[-1], wrapper)


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
  install(point, signum)
  import runpy
  sys.argv = ["cai_jax.main", *theirs]
  runpy.run_module("cai_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  _main(sys.argv[1:])
