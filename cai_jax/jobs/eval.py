"""Job `eval`: the evaluation suite for a preference model, the AI labeller and MC files.

Sections (each runs when its config field is set; every input file is read and validated
before any model loads):
- `eval.comparisons` (chosen/rejected jsonl(.gz), HH-RLHF format): preference-model accuracy
  (r_chosen > r_rejected), mean BT loss, calibration of sigmoid(r_chosen - r_rejected) (ECE
  and a reliability diagram with counts per bin).
- `eval.hhh` (HHH-format MC files whose lines have `text_correct` / `text_incorrect`): the same
  with the correct transcript as the better one.
- `eval.feedback_labels` + `eval.human_file`: the AI labeller against human labels (accuracy:
  how often the label prefers the human-chosen answer; calibration of that probability).
- `eval.mc_files` (prompt / corrects / incorrects): multiple-choice accuracy of
  `config.model` (the eval_mc scorer).
The preference model is `eval.pm` (a folder written by pm_train; default WORKDIR/pm_train/pm).
Calibration (see `cai_jax.eval.calibration`): each pair counted from both sides, `num_bins`
equal-width bins over [0, 1].

Outputs under WORKDIR/eval/: report.json (every number), `<section>_<stem>.png` reliability
diagrams, and `pm_<stem>.json` per scored file (rewards per pair).
"""

from __future__ import annotations

import os

import jax

from cai_jax import parallel
from cai_jax.config_defaults import ConfigError
from cai_jax.data import preferences as prefs
from cai_jax.data.jsonl import write_json_atomic
from cai_jax.data.sources import read_hh_comparisons
from cai_jax.eval import pm_eval, plots
from cai_jax.eval.mc import MCScorer, read_mc_file
from cai_jax.jobs.common import load_model, progress
from cai_jax.model import heads
from cai_jax.train import pm as pm_lib


def _files(value: str) -> list[str]:
  return [f.strip() for f in (value or "").split(",") if f.strip()]


def _stem(path: str) -> str:
  name = os.path.basename(path)
  for suffix in (".gz", ".jsonl", ".json"):
    if name.endswith(suffix):
      name = name[:-len(suffix)]
  return name


def run(config, workdir: str) -> dict:
  e = config.eval
  comparisons, hhh, mc_files = _files(e.comparisons), _files(e.hhh), _files(e.mc_files)
  if bool(e.feedback_labels) != bool(e.human_file):
    raise ConfigError("labeller agreement needs both eval.feedback_labels and eval.human_file")
  if not (comparisons or hhh or mc_files or e.feedback_labels):
    raise ConfigError("nothing to evaluate: set eval.comparisons, eval.hhh, eval.mc_files "
                      "and/or eval.feedback_labels + eval.human_file")
  if e.num_bins < 1:
    raise ConfigError(f"eval.num_bins={e.num_bins} must be >= 1")
  out_dir = os.path.join(workdir, "eval")
  # Read and validate every input before loading a model.
  pm_sets = ([("comparisons", p, prefs.read_human_comparisons(p, 0, randomize_sides=False))
              for p in comparisons]
             + [("hhh", p, prefs.read_text_pairs(p)) for p in hhh])
  mc_sets = [(p, read_mc_file(p)) for p in mc_files]
  labeller = None
  if e.feedback_labels:
    from cai_jax.cai.feedback import read_feedback_file
    labeller = (read_feedback_file(e.feedback_labels), read_hh_comparisons(e.human_file))

  report: dict = {}
  main = jax.process_index() == 0
  if pm_sets:
    folder = e.pm or os.path.join(workdir, "pm_train", "pm")
    parallel.maybe_initialize_distributed(config.distributed)
    mesh = parallel.make_mesh(dict(config.mesh))
    m = config.model
    loaded = heads.load_pm(folder, param_dtype=m.param_dtype, dtype=m.dtype,
                           shardings_for=lambda cfg: pm_lib.param_shardings(cfg, mesh))
    scorer = pm_eval.PMScorer(loaded, mesh, batch_size=e.batch_size, max_length=e.max_length,
                              min_length=e.min_length)
    report["pm"] = {"folder": os.path.abspath(folder), "settings": loaded.settings,
                    "max_length": scorer.max_length, "append_eos": scorer.append_eos}
    for section, path, pairs in pm_sets:
      bar = progress(len(pairs), os.path.basename(path), "pair") if e.progress and main else None
      try:
        rewards, truncated = scorer.score(pairs, progress=bar)
      finally:
        if bar is not None:
          bar.close()
      result = {"file": os.path.abspath(path), "num_truncated": truncated,
                **pm_eval.pair_report(rewards[:, 0], rewards[:, 1], e.num_bins)}
      stem = _stem(path)
      if main:
        result["reliability_png"] = plots.reliability_diagram(
            result["calibration"], os.path.join(out_dir, f"{section}_{stem}.png"),
            title=f"preference model on {os.path.basename(path)}",
            xlabel="predicted P(answer preferred)", ylabel="observed frequency it is the better")
        write_json_atomic(os.path.join(out_dir, f"pm_{stem}.json"), {
            "file": os.path.abspath(path),
            "items": [{"id": x.id, "r_better": float(r[0]), "r_worse": float(r[1])}
                      for x, r in zip(pairs, rewards)]})
      report.setdefault(section, {})[path] = result
      print(f"{section} {path}: PM accuracy {result['accuracy']:.4f} over {result['n']} pairs, "
            f"ECE {result['ece']:.4f}", flush=True)

  if labeller is not None:
    labels, human = labeller
    result = {"labels": os.path.abspath(e.feedback_labels),
              "human_file": os.path.abspath(e.human_file),
              **pm_eval.labeller_agreement(labels, human, e.num_bins, where=e.feedback_labels)}
    if main:
      result["reliability_png"] = plots.reliability_diagram(
          result["calibration"], os.path.join(out_dir, f"labeller_{_stem(e.human_file)}.png"),
          title=f"AI labels vs human choices ({os.path.basename(e.human_file)})",
          xlabel="AI label P(answer better)", ylabel="observed frequency humans chose it")
    report["labeller"] = result
    print(f"labeller vs {e.human_file}: accuracy {result['accuracy']:.4f} over "
          f"{result['matched']} matched pairs, ECE {result['ece']:.4f}", flush=True)

  if mc_sets:
    model = load_model(config)
    mc = MCScorer(model.config, model.params, model.tokenizer, max_length=e.mc_max_length,
                  tokens_per_batch=e.mc_tokens_per_batch)
    for path, items in mc_sets:
      bar = progress(len(items), os.path.basename(path), "item") if e.progress and main else None
      try:
        r = mc.score(items, progress=bar)
      finally:
        if bar is not None:
          bar.close()
      report.setdefault("mc", {})[path] = {
          "file": os.path.abspath(path), "n": len(items), "accuracy": r.accuracy,
          "num_truncated": r.num_truncated, "checkpoint": config.model.checkpoint}
      print(f"mc {path}: accuracy {r.accuracy:.4f} over {len(items)} items", flush=True)

  if main:
    write_json_atomic(os.path.join(out_dir, "report.json"), report)
  return report
