"""Many behavioural axes (`cai_jax.eval.axes`, experiments/axes_study.py): correlation matrices
against scipy, the disagreement finder and the heatmap; and the study end to end on the tiny
preset (two constitutions label the same pairs through the feedback job, a PM each through
pm_train, every PM scores the same answers), its matrix recomputed from the saved scores."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from scipy import stats

from cai_jax.eval import axes as A
import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def test_correlations_match_scipy():
  rng = np.random.default_rng(0)
  base = rng.normal(size=40)
  scores = {"harmless": base + 0.3 * rng.normal(size=40),
            "helpful": -base + 0.8 * rng.normal(size=40),
            "caveats": np.round(rng.normal(size=40), 1)}  # ties for the rank version
  names, pearson = A.correlation_matrix(scores)
  _, spearman = A.correlation_matrix(scores, method="spearman")
  assert names == ["harmless", "helpful", "caveats"]
  for i, a in enumerate(names):
    for j, b in enumerate(names):
      assert pearson[i, j] == pytest.approx(stats.pearsonr(scores[a], scores[b])[0], abs=1e-12)
      assert spearman[i, j] == pytest.approx(stats.spearmanr(scores[a], scores[b])[0], abs=1e-12)
  assert pearson[0, 1] < -0.5 < 0.5 < pearson[0, 0]
  # a PM's offset and scale do not matter
  shifted = {**scores, "helpful": 7.0 * np.asarray(scores["helpful"]) - 3.0}
  np.testing.assert_allclose(A.correlation_matrix(shifted)[1], pearson, atol=1e-12)
  # a constant axis has no correlation
  _, m = A.correlation_matrix({"a": [1.0, 1.0, 1.0], "b": [1.0, 2.0, 4.0]})
  assert np.isnan(m[0, 1]) and m[1, 1] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="same answers"):
    A.correlation_matrix({"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]})


def test_disagreements_by_hand(tmp_path):
  scores = {"a": [0.0, 1.0, 2.0, 3.0], "b": [0.0, 1.0, 3.0, 2.0]}
  za = (np.asarray(scores["a"]) - 1.5) / np.std(scores["a"])
  rows = A.disagreements(scores, "a", "b", k=2)
  # answers 2 and 3 swap places: gaps of -1 and +1 standard units x 1/std (std = 1.118)
  assert [r["index"] for r in rows] == [2, 3]
  assert rows[0]["gap"] == pytest.approx(-1 / np.std(scores["a"]))
  assert rows[1]["z_a"] == pytest.approx(za[3])
  path = A.heatmap(["a", "b"], np.asarray([[1.0, 0.8], [0.8, 1.0]]), str(tmp_path / "m.png"))
  assert open(path, "rb").read(8) == PNG


def short_constitution(path, name, principle):
  """The short test constitution under another name, with its feedback principles replaced."""
  tiny_model.write_short_constitution(path)
  c = json.loads(open(path).read())
  c["name"] = name
  c["mc_principles"] = [{"id": f"{name}-{i}", "text": f"{principle} ({i})"} for i in range(2)]
  with open(path, "w") as f:
    json.dump(c, f)
  return str(path)


def test_axes_study_end_to_end_on_the_tiny_preset(tmp_path):
  spec = importlib.util.spec_from_file_location("axes_study",
                                                os.path.join(ROOT, "experiments",
                                                             "axes_study.py"))
  study = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(study)
  ckpt = tiny_model.write_hf_checkpoint(str(tmp_path / "ckpt"), flat_logits=True)
  kind = short_constitution(tmp_path / "kind.json", "kind", "Which reply is kinder?")
  brief = short_constitution(tmp_path / "brief.json", "brief", "Which reply is shorter?")
  pairs = tmp_path / "pairs.jsonl"
  with open(pairs, "w") as f:
    for i in range(8):
      f.write(json.dumps({"id": f"x{i}", "axis": "harmless",
                          "prompt": f"\n\nHuman: what about thing {i}?\n\nAssistant:",
                          "responses": [f" fine {i}.", f" no {'way ' * (i % 3)}{i}!"]}) + "\n")
  answers = tmp_path / "sl.jsonl"
  with open(answers, "w") as f:
    for i in range(3):
      f.write(json.dumps({"id": f"a{i}", "prompt": f"\n\nHuman: hi {i}\n\nAssistant:",
                          "completion": f" hello {'there ' * i}"}) + "\n")
  out = tmp_path / "out"
  argv = ["--pairs", str(pairs), "--answers", str(answers), "--axes", f"{kind},{brief}",
          "--model", ckpt, "--out", str(out), "--batch-size", "4", "--examples", "2",
          "--set", f"model.cache_dir={tmp_path}", "--set", "pm_train.steps=3",
          "--set", "pm_train.batch_size=2", "--set", "pm_train.max_length=128",
          "--set", "pm_train.progress=False", "--set", "feedback.batch_size=4"]
  result = study.main(argv)
  assert result["axes"] == ["kind", "brief"] and result["answers"] == 8 * 2 + 3
  for name in ("kind", "brief"):
    labels = [json.loads(x) for x in open(out / name / "feedback" / "labels.jsonl")]
    assert len(labels) == 8 and {x["axis"] for x in labels} == {name}
    assert all(x["per_principle"][0]["principle_id"].startswith(name) for x in labels)
    assert (out / name / "pm_train" / "pm" / "pm.json").exists()
  saved = json.loads((out / "scores.json").read_text())
  k, b = (np.asarray(saved["scores"][n]) for n in ("kind", "brief"))
  assert np.std(k) > 0 and np.std(b) > 0
  assert result["pm_pearson"][0][1] == pytest.approx(np.corrcoef(k, b)[0, 1], abs=1e-9)
  assert result["pm_pearson"][0][0] == pytest.approx(1.0)
  assert result["labelled_pairs"] == 8
  assert len(result["disagreements"]["kind|brief"]) == 2
  assert (out / "axes_correlation.png").read_bytes()[:8] == PNG
  assert (out / "axes_label_correlation.png").read_bytes()[:8] == PNG
  # a rerun runs no job and keeps the scores
  stamp = (out / "kind" / "pm_train" / "pm" / "pm.json").stat().st_mtime_ns
  again = study.main(argv)
  assert again["pm_pearson"] == result["pm_pearson"]
  assert (out / "kind" / "pm_train" / "pm" / "pm.json").stat().st_mtime_ns == stamp
