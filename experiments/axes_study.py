"""Many behavioural axes (the paper's section 6): the same answer pairs labelled under several
constitutions, a preference model per constitution, and how those PMs agree on one set of
answers.

For every axis (a constitution name such as harmless, helpful, caveats, or a constitution .json
file): the pairs, untagged so that every one is judged under that constitution, are labelled by
the `feedback` job and a PM is trained on the labels by `pm_train` (each in OUT/<axis>/, with the
quickstart's settings unless --set says otherwise). Then every PM scores the same answers (both
answers of every pair, plus the answers files' completions, e.g. the eval job's
answers/<stage>.jsonl), and the study reports the PMs' correlation matrix (Pearson and Spearman;
OUT/axes_correlation.png), the labels' correlation across axes on the same pairs
(OUT/axes_label_correlation.png), and for each two axes the answers they disagree on most.

python experiments/axes_study.py --pairs runs/quick/sample_pairs/pairs.jsonl \
    --answers runs/quick/eval/answers/sl.jsonl,runs/quick/eval/answers/rl.jsonl \
    --axes harmless,helpful,caveats --out runs/axes [--model gemma3-270m] [--set pm_train.steps=12]
Writes OUT/axes_study.json and prints the tables; resumable (a finished job is skipped, scores
are kept per axis in OUT/scores.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cai_jax.data.jsonl import read_jsonl, write_json_atomic  # noqa: E402
from cai_jax.eval import axes as A  # noqa: E402

FEEDBACK_SETTINGS = ["feedback.num_principles=1", "feedback.batch_size=8"]
PM_SETTINGS = ["pm_train.steps=12", "pm_train.batch_size=4", "pm_train.max_length=256",
               "pm_train.eval_every=3", "pm_train.heldout_fraction=0.25",
               "pm_train.async_checkpoints=False", "pm_train.keep_checkpoints=1",
               "optim.learning_rate=1e-4", "optim.warmup_steps=1"]


def axis_name(axis: str) -> str:
  return os.path.splitext(os.path.basename(axis))[0] if axis.endswith(".json") else axis


def cli(job: str, workdir: str, settings: list[str]) -> None:
  cmd = [sys.executable, "-m", "cai_jax.main", "--config", os.path.join(ROOT, "configs",
                                                                        f"{job}.py"),
         "--workdir", workdir] + [f"--config.{s}" for s in settings]
  print("$", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)


def untagged_pairs(src: str, dst: str) -> int:
  """The pairs file without 'axis' (so the feedback job judges every pair under the run's
  constitution); returns the pair count."""
  rows = [{k: v for k, v in obj.items() if k != "axis"} for _, obj in read_jsonl(src)]
  tmp = dst + ".tmp"
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  with open(tmp, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, dst)
  return len(rows)


def answers_to_score(pairs_path: str, answer_files: list[str]) -> list[dict]:
  out = []
  for _, obj in read_jsonl(pairs_path):
    for s, text in enumerate(obj["responses"]):
      out.append({"id": f"pair:{obj['id']}:{s}", "prompt": obj["prompt"], "answer": text})
  for path in answer_files:
    stem = os.path.splitext(os.path.basename(path))[0]
    for _, obj in read_jsonl(path):
      out.append({"id": f"{stem}:{obj['id']}", "prompt": obj["prompt"],
                  "answer": obj["completion"]})
  return out


def score_with(pm_folder: str, items: list[dict], batch_size: int) -> list[float]:
  from cai_jax import parallel
  from cai_jax.eval.pm_eval import PMScorer
  from cai_jax.model import heads
  from cai_jax.train import pm as pm_lib
  mesh = parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  loaded = heads.load_pm(pm_folder, shardings_for=lambda cfg: pm_lib.param_shardings(cfg, mesh))
  rewards, _ = PMScorer(loaded, mesh, batch_size=batch_size).score_responses(
      [(x["prompt"], x["answer"]) for x in items])
  return [float(r) for r in rewards]


def label_table(out: str, names: list[str]) -> dict[str, dict[str, float]]:
  """{axis: {pair id: p_first_better}} from each axis's labels."""
  return {n: {obj["id"]: float(obj["p_first_better"])
              for _, obj in read_jsonl(os.path.join(out, n, "feedback", "labels.jsonl"))}
          for n in names}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--pairs", required=True)
  ap.add_argument("--answers", default="", help="comma-separated jsonl files with prompt and "
                                                 "completion (e.g. eval answers)")
  ap.add_argument("--axes", default="harmless,helpful,caveats")
  ap.add_argument("--model", default="gemma3-270m", help="the feedback model and the PMs' start")
  ap.add_argument("--out", default="runs/axes")
  ap.add_argument("--batch-size", type=int, default=8, help="PM scoring rows")
  ap.add_argument("--examples", type=int, default=3, help="disagreements shown per axis pair")
  ap.add_argument("--set", action="append", default=[],
                  help="feedback.* / pm_train.* / optim.* / model.* overrides, repeatable")
  args = ap.parse_args(argv)
  axes = [a.strip() for a in args.axes.split(",") if a.strip()]
  names = [axis_name(a) for a in axes]
  if len(set(names)) != len(names) or len(names) < 2:
    sys.exit(f"--axes: at least two distinct axes, got {names}")
  out = os.path.abspath(args.out)
  extra = {p: [s for s in args.set if s.split(".")[0] in ("model", *p.split(","))]
           for p in ("feedback", "pm_train,optim")}
  for axis, name in zip(axes, names):
    folder = os.path.join(out, name)
    pairs = os.path.join(folder, "pairs.jsonl")
    if not os.path.exists(os.path.join(folder, "feedback", "report.json")):
      untagged_pairs(args.pairs, pairs)
      cli("feedback", folder, [f"constitution={axis}", f"feedback.pairs={pairs}",
                               f"model.checkpoint={args.model}"] + FEEDBACK_SETTINGS
          + extra["feedback"])
    if not os.path.exists(os.path.join(folder, "pm_train", "pm", "pm.json")):
      labels = os.path.join(folder, "feedback", "labels.jsonl")
      cli("pm_train", folder, [f"pm_train.ai_labels={labels}", f"model.checkpoint={args.model}"]
          + PM_SETTINGS + extra["pm_train,optim"])

  items = answers_to_score(args.pairs, [p for p in args.answers.split(",") if p])
  scores_path = os.path.join(out, "scores.json")
  ids = [x["id"] for x in items]
  saved = {}
  if os.path.exists(scores_path):
    with open(scores_path) as f:
      saved = json.load(f)
    if saved.get("ids") != ids:
      saved = {}
  scores = saved.get("scores", {})
  for name in names:
    if name not in scores:
      scores[name] = score_with(os.path.join(out, name, "pm_train", "pm"), items,
                                args.batch_size)
      write_json_atomic(scores_path, {"ids": ids, "scores": scores})
  scores = {n: scores[n] for n in names}

  result = {"axes": names, "answers": len(items), "pairs_file": os.path.abspath(args.pairs)}
  for method in ("pearson", "spearman"):
    _, m = A.correlation_matrix(scores, method=method)
    result[f"pm_{method}"] = m.tolist()
  labels = label_table(out, names)
  common = sorted(set.intersection(*(set(v) for v in labels.values())))
  _, lm = A.correlation_matrix({n: [labels[n][i] for i in common] for n in names})
  result["label_pearson"], result["labelled_pairs"] = lm.tolist(), len(common)
  result["label_mean_abs_p_minus_half"] = {
      n: sum(abs(labels[n][i] - 0.5) for i in common) / max(len(common), 1) for n in names}
  result["pm_correlation_png"] = A.heatmap(
      names, np.asarray(result["pm_pearson"]),
      os.path.join(out, "axes_correlation.png"),
      title=f"PM scores, Pearson, {len(items)} answers")
  result["label_correlation_png"] = A.heatmap(
      names, lm, os.path.join(out, "axes_label_correlation.png"),
      title=f"AI labels p(first better), Pearson, {len(common)} pairs")
  result["disagreements"] = {}
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      rows = A.disagreements(scores, a, b, k=args.examples)
      for r in rows:
        r.update({k: items[r["index"]][k] for k in ("id", "prompt", "answer")})
      result["disagreements"][f"{a}|{b}"] = rows
  write_json_atomic(os.path.join(out, "axes_study.json"), result)

  width = max(len(n) for n in names) + 2
  for key, title in (("pm_pearson", f"PM scores on {len(items)} answers, Pearson"),
                     ("pm_spearman", "PM scores, Spearman"),
                     ("label_pearson", f"labels on {len(common)} pairs, Pearson")):
    print(f"\n{title}\n" + " " * width + "".join(f"{n:>{width}}" for n in names))
    for n, row in zip(names, result[key]):
      print(f"{n:<{width}}" + "".join(f"{v:>{width}.2f}" for v in row))
  for pair, rows in result["disagreements"].items():
    a, b = pair.split("|")
    print(f"\nmost disagreed ({a} vs {b}):")
    for r in rows:
      print(f"  gap {r['gap']:+.2f}  {r['id']}: {r['answer'][:100]!r}")
  print(f"\n{os.path.join(out, 'axes_study.json')}")
  return result


if __name__ == "__main__":
  main()
