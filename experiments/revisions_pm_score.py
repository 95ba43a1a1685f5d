"""Preference-model score against the number of revisions (the paper's figure on SL-CAI: the
harmlessness PM score of the initial answer and after revision 1, 2, ... rises).

python experiments/revisions_pm_score.py --records WORKDIR/sl_generate/records.jsonl \
    --pm WORKDIR/pm_train/pm [--out runs/revisions_pm_score] [--drop-flagged] [--limit N]
e.g. on the CPU-sized runs of the README:
python experiments/revisions_pm_score.py --records runs/sl_cai_270m/sl_generate/records.jsonl \
    --pm runs/pm_270m/pm_train/pm

Every record of `sl_generate` keeps its initial answer and each round's revision; the PM scores
each of them after the record's prompt, built as in training (`PMScorer.score_responses`: BOS +
prompt + response + EOS, left-truncated to the PM's max_length, counted). Writes
OUT/revisions_pm_score.json ({"per_revision": [{"revision", "n", "mean", "std", "se",
"delta_vs_initial": {...}}], "items": per-record scores, ...}) and OUT/revisions_pm_score.png
(mean +- standard error per revision number), and prints the table. `--drop-flagged` leaves
out records with any degenerate-output flag (empty, repetitive, cut at the token budget); by
default all are scored and the flagged ones counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cai_jax.data.jsonl import write_json_atomic  # noqa: E402
from cai_jax.eval import analysis  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--records", required=True, help="sl_generate records.jsonl")
  p.add_argument("--pm", required=True, help="preference-model folder written by pm_train")
  p.add_argument("--out", default=os.path.join(ROOT, "runs", "revisions_pm_score"))
  p.add_argument("--drop-flagged", action="store_true",
                 help="leave out records with any degenerate-output flag")
  p.add_argument("--limit", type=int, default=0, help="first N records only (0 = all)")
  p.add_argument("--batch-size", type=int, default=8, help="pairs per PM batch")
  p.add_argument("--max-length", type=int, default=0,
                 help="tokens per sequence (0 = the PM's training max_length)")
  p.add_argument("--dtype", default="float32", help="param and compute dtype")
  p.add_argument("--title", default="")
  return p.parse_args(argv)


def fmt(v) -> str:
  return f"{'-':>8s}" if v is None else f"{v:8.4f}"


def main(argv=None) -> dict:
  args = parse_args(argv)
  # Read and validate the records before any model loads.
  records, dropped = analysis.read_sl_records(args.records, drop_flagged=args.drop_flagged)
  if args.limit:
    records = records[:args.limit]
  items, sizes = analysis.flatten_transcripts(records)

  from cai_jax import parallel
  from cai_jax.eval import pm_eval
  from cai_jax.model import heads
  from cai_jax.train import pm as pm_lib

  t0 = time.perf_counter()
  mesh = parallel.make_mesh({"data": -1})
  loaded = heads.load_pm(args.pm, param_dtype=args.dtype, dtype=args.dtype,
                         shardings_for=lambda cfg: pm_lib.param_shardings(cfg, mesh))
  scorer = pm_eval.PMScorer(loaded, mesh, batch_size=args.batch_size, max_length=args.max_length)
  rewards, truncated = scorer.score_responses(items)
  wall = time.perf_counter() - t0
  scores = analysis.split_scores(rewards, sizes)
  table = analysis.revision_score_table(scores)

  os.makedirs(args.out, exist_ok=True)
  pm_name = os.path.join(*os.path.normpath(os.path.abspath(args.pm)).split(os.sep)[-2:])
  title = args.title or f"PM score vs number of revisions\n({len(records)} records, PM {pm_name})"
  png = analysis.plot_revision_scores(table, os.path.join(args.out, "revisions_pm_score.png"),
                                      title=title)
  result = {
      "records_file": os.path.abspath(args.records), "pm": os.path.abspath(args.pm),
      "pm_settings": loaded.settings, "max_length": scorer.max_length,
      "append_eos": scorer.append_eos, "records": len(records),
      "flagged_records": sum(1 for r in records if r.get("flags")),
      "dropped_flagged": dropped, "truncated_rows": int(truncated),
      "transcripts_scored": sum(len(s) for s in scores), "wall_s": round(wall, 2),
      "per_revision": table,
      "items": [{"id": r["id"], "flags": r.get("flags", []),
                 "principles": [x.get("principle_id") for x in r["rounds"]], "scores": s}
                for r, s in zip(records, scores)],
      "png": png,
  }
  write_json_atomic(os.path.join(args.out, "revisions_pm_score.json"), result)
  print(f"{len(records)} records ({result['flagged_records']} flagged, {len(dropped)} dropped), "
        f"{result['transcripts_scored']} transcripts scored in {wall:.1f} s, "
        f"{truncated} PM rows truncated (prompt cut on the left)")
  print("revision      n     mean       se   mean(score - initial)     se")
  for row in table:
    d = row["delta_vs_initial"]
    print(f"{row['revision']:8d} {row['n']:6d} {fmt(row['mean'])} {fmt(row['se'])} "
          f"{fmt(d['mean']):>22s} {fmt(d['se'])}")
  print(f"wrote {os.path.join(args.out, 'revisions_pm_score.json')} and {png}")
  return result


if __name__ == "__main__":
  main()
