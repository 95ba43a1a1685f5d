"""experiments/quickstart.ipynb runs top to bottom: its code cells are executed in order, in one
namespace, with the parameters cell set to a tiny checkpoint and small counts (the pipeline
itself runs for real, as a subprocess, exactly as the notebook starts it)."""

from __future__ import annotations

import json
import os

import pytest

import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "quickstart.ipynb")


def _cells():
  with open(NOTEBOOK, encoding="utf-8") as f:
    nb = json.load(f)
  assert nb["nbformat"] == 4
  return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_has_one_parameters_cell_and_uses_the_readme_command():
  cells = _cells()
  tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(tagged) == 1
  source = "".join("".join(c["source"]) for c in cells)
  assert '"cai_jax.main", "--config", "configs/quickstart.py"' in source
  assert "[quickstart]" in source  # installs the way the README does


def test_notebook_runs_top_to_bottom_on_a_tiny_model(tmp_path, monkeypatch, capsys):
  pytest.importorskip("IPython")
  ckpt = tiny_model.write_hf_checkpoint(str(tmp_path / "hf"), flat_logits=True)
  flags = {
      "model.checkpoint": ckpt, "model.cache_dir": str(tmp_path / "cache"),
      "sl_generate.limit": 2, "sl_generate.batch_size": 2, "sl_generate.max_response_tokens": 4,
      "sl_generate.max_critique_tokens": 4, "sl_generate.max_revision_tokens": 4,
      "sl_generate.drop_flagged": False,
      "sl_train.steps": 1, "sl_train.batch_size": 2, "sl_train.max_length": 128,
      "sample_pairs.limit": 2, "sample_pairs.helpful_limit": 1, "sample_pairs.batch_size": 2, "sample_pairs.max_response_tokens": 4,
      "feedback.num_principles": 1, "feedback.batch_size": 2,
      "pm_train.steps": 1, "pm_train.batch_size": 2, "pm_train.max_length": 128,
      "rl_train.iterations": 1, "rl_train.batch_size": 2, "rl_train.minibatch_size": 2,
      "rl_train.sampler_batch": 2, "rl_train.max_new_tokens": 4, "rl_train.long_prompts": "skip",
      "eval.num_prompts": 2, "eval.answer_max_tokens": 4, "eval.answer_temperature": 1.0,
      "eval.answer_batch_size": 2, "eval.num_bootstrap": 20, "eval.mc_max_length": 1024,
  }
  workdir = str(tmp_path / "run")
  params = (f"REPO_URL = ''\nWORKDIR = {workdir!r}\nINSTALL = False\n"
            f"EXTRA_FLAGS = {[f'--config.{k}={v}' for k, v in flags.items()]!r}\n")
  monkeypatch.chdir(os.path.join(ROOT, "experiments"))
  namespace: dict = {}
  for cell in _cells():
    source = "".join(cell["source"])
    if "parameters" in cell.get("metadata", {}).get("tags", []):
      source = params
    exec(compile(source, f"{NOTEBOOK}:{cell['id']}", "exec"), namespace)  # noqa: S102
  out = capsys.readouterr().out
  assert namespace["ROOT"] == ROOT
  assert "pipeline: done" in out
  for name in ("elo", "pm_scores", "ppo_curves", "training_curves"):
    assert name in namespace["figures"] and os.path.exists(namespace["figures"][name])
  assert os.path.exists(os.path.join(workdir, "report", "report.md"))
  assert "RL-CAI:" in out
