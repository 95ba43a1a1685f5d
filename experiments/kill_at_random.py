"""Kill a pipeline run at random moments, rerun it until it finishes, compare with a whole run.

  python experiments/kill_at_random.py --reference runs/quick --workdir runs/quick_killed \\
      --kills 5 --seed 0 --duration 900 -- --config configs/quickstart.py

The moments are `kills` times drawn uniformly from (0, duration) seconds (seeded) and sorted; the
command (`python -m cai_jax.main ARGS --workdir WORKDIR`) is started, SIGKILLed when the gap to
the next moment has passed (measured from that process's start, so each rerun's startup counts
against its own gap), and started again; after the last kill it runs to the end. Printed per
kill: the delay, the stage it landed in (the last stage the pipeline had started, from its
output) and the exit status; then `tests/fault_injection.pipeline_differences(reference,
workdir)`: records, exports (bytes), eval numbers and the report's text against the reference
(an uninterrupted run of the same command). The last line is one JSON object; the exit status is
1 when anything differs. docs/correctness.md gives the Gemma 3 270M quickstart measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import fault_injection  # noqa: E402  (tests/, for the comparison the CI test uses)


def _run(cmd: list[str], delay: float | None, log) -> tuple[int, str, float]:
  """Runs cmd, SIGKILLed after `delay` seconds (None: to the end); returns (exit status, the
  last stage it started, seconds)."""
  start = time.time()
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", bufsize=1)
  stage = [""]

  def read():
    for line in proc.stdout:
      log.write(line)
      m = re.search(r"pipeline: ---- (\S+)", line)
      if m:
        stage[0] = m.group(1)

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  try:
    proc.wait(timeout=delay)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  reader.join(timeout=30)
  return proc.returncode, stage[0], time.time() - start


def main(argv: list[str]) -> int:
  if "--" not in argv:
    raise SystemExit(__doc__)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference", required=True, help="workdir of an uninterrupted run")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--kills", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--duration", type=float, required=True,
                      help="seconds the uninterrupted run took (the moments fall within it)")
  parser.add_argument("--log", default="", help="the runs' output (default WORKDIR.log)")
  ours = parser.parse_args(argv[:argv.index("--")])
  cli = [sys.executable, "-m", "cai_jax.main", *argv[argv.index("--") + 1:],
         "--workdir", ours.workdir]
  rng = random.Random(ours.seed)
  moments = sorted(rng.uniform(0, ours.duration) for _ in range(ours.kills))
  delays = [b - a for a, b in zip([0.0] + moments, moments)]
  runs = []
  with open(ours.log or ours.workdir.rstrip("/") + ".log", "a", encoding="utf-8",
            buffering=1) as log:
    for delay in delays + [None]:
      status, stage, seconds = _run(cli, delay, log)
      runs.append({"delay_s": None if delay is None else round(delay, 1), "stage": stage,
                   "status": status, "seconds": round(seconds, 1)})
      print(f"{'to the end' if delay is None else f'kill after {delay:6.1f} s'}: "
            f"status {status}, in {stage or '(before the first stage)'}", flush=True)
  differences = fault_injection.pipeline_differences(ours.reference, ours.workdir)
  for line in differences:
    print("DIFFERENT:", line)
  killed = sum(r["status"] == -signal.SIGKILL for r in runs)
  ok = not differences and runs[-1]["status"] == 0
  print(json.dumps({"moments_s": [round(m, 1) for m in moments], "runs": runs,
                    "killed": killed, "differences": differences, "identical": ok,
                    "total_s": round(sum(r["seconds"] for r in runs), 1)}))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
