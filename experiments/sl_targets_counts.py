"""How much SL-CAI data each target choice gives, on the same records: `final` (the last round's
revision per prompt) against `all_revisions` (every round's revision paired with the prompt, the
paper's section 3.1), with the same flags (only the text trained on is judged).

python experiments/sl_targets_counts.py [--workdir runs/sl_targets] [--limit 8] [--rounds 4] \
    [--set sl_generate.max_revision_tokens=64 ...]
Runs `sl_generate` on Gemma 3 270M (resumable; skipped when its records exist), then writes the
SL file both ways from its records.jsonl (`write_sl_file`, no held-out split) and prints the
row counts per round; WORKDIR/sl_targets_counts.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cai_jax.data.jsonl import read_jsonl, write_json_atomic  # noqa: E402
from cai_jax.jobs.sl_generate import write_sl_file  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", default="runs/sl_targets")
  ap.add_argument("--limit", type=int, default=8)
  ap.add_argument("--rounds", type=int, default=4)
  ap.add_argument("--set", action="append", default=[], help="extra sl_generate override")
  args = ap.parse_args()
  w = os.path.abspath(args.workdir)
  records_path = os.path.join(w, "sl_generate", "records.jsonl")
  if not os.path.exists(os.path.join(w, "sl_generate", "report.json")):
    flags = [f"sl_generate.limit={args.limit}", f"sl_generate.rounds={args.rounds}",
             "sl_generate.helpful_ratio=0", "sl_generate.batch_size=8",
             "sl_generate.max_response_tokens=48", "sl_generate.max_critique_tokens=48",
             "sl_generate.max_revision_tokens=64", "sl_generate.report_examples=0"] + args.set
    cmd = [sys.executable, "-m", "cai_jax.main", "--config",
           os.path.join(ROOT, "configs", "sl_generate.py"), "--workdir", w] + \
        [f"--config.{f}" for f in flags]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
  records = [obj for _, obj in read_jsonl(records_path)]
  out = {"records": len(records), "rounds": args.rounds, "targets": {}}
  for targets in ("final", "all_revisions"):
    path = os.path.join(w, f"sl_{targets}.jsonl")
    sl = write_sl_file(path, records, [], True, 0, targets=targets)
    out["targets"][targets] = {"rows": sl.train, "per_round": sl.train_per_round}
    print(f"{targets:14} {sl.train:3d} SL rows from {len(records)} records; per round "
          f"{sl.train_per_round}", flush=True)
  write_json_atomic(os.path.join(w, "sl_targets_counts.json"), out)


if __name__ == "__main__":
  main()
