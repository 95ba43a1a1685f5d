"""Job `eval_mc`: multiple-choice accuracy of config.model on jsonl files."""

from __future__ import annotations

import os

from cai_jax.data.jsonl import DataError, write_json_atomic
from cai_jax.eval.mc import MCScorer, read_mc_file
from cai_jax.jobs.common import load_model, progress, sampling_mesh


def run(config, workdir: str) -> dict[str, float]:
  files = [f for f in config.eval.files.split(",") if f.strip()]
  if not files:
    raise DataError("no input files: set --config.eval.files=a.jsonl[,b.jsonl]")
  # Read and validate every file before spending time on the model.
  datasets = [(path, read_mc_file(path)) for path in files]
  mesh = sampling_mesh(config)
  model = load_model(config, mesh)
  scorer = MCScorer(model.config, model.params, model.tokenizer,
                    max_length=config.eval.max_length,
                    tokens_per_batch=config.eval.tokens_per_batch, mesh=mesh)
  accuracies = {}
  for path, items in datasets:
    with progress(len(items), os.path.basename(path), "item") as bar:
      result = scorer.score(items, progress=bar)
    stem = os.path.splitext(os.path.basename(path))[0]
    write_json_atomic(os.path.join(workdir, "eval_mc", f"{stem}.json"), {
        "file": os.path.abspath(path),
        "n": len(items),
        "accuracy": result.accuracy,
        "num_truncated": result.num_truncated,
        "checkpoint": config.model.checkpoint,
        "items": [{"scores": s, "correct": c} for s, c in zip(result.scores, result.correct)],
    })
    print(f"{path}: accuracy {result.accuracy:.4f} over {len(items)} items "
          f"({result.num_truncated} truncated)", flush=True)
    accuracies[path] = result.accuracy
  return accuracies
