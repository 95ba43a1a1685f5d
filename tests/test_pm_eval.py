"""Evaluation: calibration bins and ECE against hand computation, the reliability PNG with counts,
the AI labeller's agreement with human labels (either order, unmatched labels), the saved
preference model round trip, and the `eval` job end to end on a tiny PM (comparisons, HHH
text_correct/text_incorrect, labeller, MC files) with bad inputs failing before any model
loads."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cai_jax import parallel
from cai_jax.cai.feedback import FeedbackLabel
from cai_jax.checkpoints import loader
from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.config_defaults import ConfigError
from cai_jax.data import preferences as prefs
from cai_jax.data.jsonl import DataError
from cai_jax.data.sources import Comparison, read_hh_comparisons
from cai_jax.eval import calibration, plots, pm_eval
from cai_jax.jobs import eval as eval_job
from cai_jax.model import heads
from cai_jax.train import pm
from configs_loader import load_config
import tiny_model


def test_bins_and_ece_by_hand():
  pred = [0.0, 0.05, 0.1, 0.15, 0.95, 1.0, 0.5]
  outcome = [0, 1, 0, 0, 1, 1, 1]
  rel = calibration.reliability(pred, outcome, num_bins=10)
  counts = [b["count"] for b in rel["bins"]]
  assert counts == [2, 2, 0, 0, 0, 1, 0, 0, 0, 2]  # 0.1 opens bin 1; 1.0 closes the last bin
  assert rel["bins"][0]["mean_predicted"] == pytest.approx(0.025)
  assert rel["bins"][0]["observed"] == 0.5
  assert rel["bins"][2]["observed"] is None
  expected = (2 * abs(0.5 - 0.025) + 2 * abs(0.0 - 0.125) + 1 * abs(1 - 0.5)
              + 2 * abs(1 - 0.975)) / 7
  assert rel["ece"] == pytest.approx(expected)
  assert calibration.expected_calibration_error(pred, outcome, 10) == pytest.approx(expected)
  # rounding errors do not move a value across an edge: 1 - 0.7 = 0.30000000000000004
  assert calibration.bin_index(np.asarray([0.3, 1 - 0.7, 0.6, 1 - (1 - 0.6), 1.0]), 10).tolist() \
      == [3, 3, 6, 6, 9]
  # a perfectly calibrated predictor: ECE 0
  rng = np.random.default_rng(0)
  q = np.repeat([0.05, 0.35, 0.75], 1000)
  assert calibration.reliability(q, rng.random(q.size) < q)["ece"] < 0.03
  with pytest.raises(ValueError, match="probabilities in"):
    calibration.reliability([1.2], [1])


def test_symmetric_points_and_folded_equivalence():
  q = np.asarray([0.9, 0.8, 0.3, 0.55, 0.5])
  pred, out = calibration.symmetric_points(q)
  np.testing.assert_allclose(pred, [0.9, 0.8, 0.3, 0.55, 0.5, 0.1, 0.2, 0.7, 0.45, 0.5])
  assert out.tolist() == [1] * 5 + [0] * 5
  rel = calibration.pair_calibration(q, 10)
  assert rel["n"] == 10 and sum(b["count"] for b in rel["bins"]) == 10
  # the doubled ECE equals the ECE of (max(q, 1 - q), favoured side is the better) on [0.5, 1]
  q2 = np.random.default_rng(1).random(500)
  folded = np.maximum(q2, 1 - q2)
  right = (q2 > 0.5).astype(float)
  assert calibration.pair_calibration(q2, 10)["ece"] == pytest.approx(
      calibration.reliability(folded, right, 10)["ece"], abs=1e-12)
  assert calibration.accuracy([0.9, 0.2, 0.5, 0.7]) == (pytest.approx(0.625), 1)


def test_mc_calibration_by_hand():
  """Each option is a point (softmax of its item's summed log-probs, correct or not); P(correct)
  sums an item's correct options. Expected values from the formula, written out with numpy."""
  scores = [[-1.0, -2.0],                  # 2 options, the first correct
            [-3.0, -0.5, -4.0],            # 3 options, the first correct
            [-2.0, -1.0, -1.5, -6.0]]      # 4 options, the first two correct
  flags = [[True, False], [True, False, False], [True, True, False, False]]
  p1 = np.exp([-1.0, -2.0]) / np.exp([-1.0, -2.0]).sum()          # [0.731, 0.269]
  p2 = np.exp([-3.0, -0.5, -4.0]) / np.exp([-3.0, -0.5, -4.0]).sum()  # [0.074, 0.899, 0.027]
  e3 = np.exp([-2.0, -1.0, -1.5, -6.0])
  p3 = e3 / e3.sum()                                              # [0.186, 0.505, 0.306, 0.003]
  prob, outcome, p_correct = calibration.mc_option_points(scores, flags)
  np.testing.assert_allclose(prob, np.concatenate([p1, p2, p3]), rtol=1e-12)
  assert outcome.tolist() == [1, 0, 1, 0, 0, 1, 1, 0, 0]
  np.testing.assert_allclose(p_correct, [p1[0], p2[0], p3[0] + p3[1]], rtol=1e-12)
  # 10 bins: 0.731 -> 7, 0.269 -> 2, 0.074 -> 0, 0.899 -> 8, 0.027 -> 0, 0.186 -> 1,
  # 0.505 -> 5, 0.306 -> 3, 0.003 -> 0
  bins = {0: ([p2[0], p2[2], p3[3]], [1, 0, 0]), 1: ([p3[0]], [1]), 2: ([p1[1]], [0]),
          3: ([p3[2]], [0]), 5: ([p3[1]], [1]), 7: ([p1[0]], [1]), 8: ([p2[1]], [0])}
  ece = sum(len(ps) / 9 * abs(np.mean(os_) - np.mean(ps)) for ps, os_ in bins.values())
  out = calibration.mc_calibration(scores, flags, num_bins=10)
  assert out["n_options"] == 9 and out["ece"] == pytest.approx(ece, abs=1e-12)
  assert out["mean_p_correct"] == pytest.approx((p1[0] + p2[0] + p3[0] + p3[1]) / 3)
  assert [b["count"] for b in out["calibration"]["bins"]] == [3, 1, 1, 1, 0, 1, 0, 1, 1, 0]
  assert out["calibration"]["bins"][0]["observed"] == pytest.approx(1 / 3)
  # two options, one correct: the same points as the pair convention's symmetric_points
  two = calibration.mc_option_points([[-1.0, -2.0], [0.0, 3.0]], [[True, False], [True, False]])
  q = np.asarray([p1[0], 1 / (1 + np.exp(3.0))])
  ref = calibration.symmetric_points(q)
  np.testing.assert_allclose(np.sort(two[0]), np.sort(ref[0]), rtol=1e-12)
  assert calibration.reliability(two[0], two[1])["ece"] == pytest.approx(
      calibration.pair_calibration(q)["ece"], abs=1e-12)
  with pytest.raises(ValueError, match="item 0: 2 option scores but 3 correct flags"):
    calibration.mc_option_points([[0.0, 1.0]], [[True, False, False]])


def test_reliability_png_has_counts(tmp_path):
  rel = calibration.pair_calibration([0.9, 0.8, 0.3, 0.65, 0.99], 10)
  path = plots.reliability_diagram(rel, str(tmp_path / "sub" / "rel.png"), title="t")
  data = open(path, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def label(i, prompt, a, b, p):
  return FeedbackLabel(f"l{i}", prompt, (a, b), p, "mc", (), f"labels.jsonl:{i + 1}")


def test_labeller_agreement_either_order():
  comps = [Comparison(f"c{i}", f"\n\nHuman: q{i}\n\nAssistant:", f" good{i}", f" bad{i}")
           for i in range(4)]
  labels = [label(0, comps[0].prompt, " good0", " bad0", 0.9),   # chosen first: q = 0.9
            label(1, comps[1].prompt, " bad1", " good1", 0.8),   # chosen second: q = 0.2
            label(2, comps[2].prompt, " bad2", " good2", 0.3),   # q = 0.7
            label(3, comps[3].prompt, " other", " bad3", 0.5)]   # no such pair
  result = pm_eval.labeller_agreement(labels, comps, num_bins=10)
  assert result["matched"] == 3 and result["unmatched_labels"] == 1
  assert result["unmatched_label_ids"] == ["l3"] and result["unlabelled_pairs"] == 1
  assert result["accuracy"] == pytest.approx(2 / 3) and result["ties"] == 0
  assert result["mean_p_chosen"] == pytest.approx((0.9 + 0.2 + 0.7) / 3)
  expected = calibration.pair_calibration([0.9, 0.2, 0.7], 10)["ece"]
  assert result["ece"] == pytest.approx(expected)
  with pytest.raises(DataError, match="no feedback label matches"):
    pm_eval.labeller_agreement(labels[3:], comps, where="x.jsonl")


# ------------------------------------------------------------------------------ the eval job

WORDS = ["cat", "dog", "sea", "sun", "tree", "moon"]


@pytest.fixture(scope="module")
def saved_pm(tmp_path_factory):
  folder = tmp_path_factory.mktemp("pm_eval")
  ckpt = tiny_model.write_hf_checkpoint(str(folder / "hf"))
  model = loader.load(ckpt, cache_dir=str(folder))
  params = tiny_model.write_random_pm(str(folder / "pm"), model, seed=3)
  return str(folder / "pm"), ckpt, params, model


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("eval_data")
  rng = np.random.default_rng(0)

  def sentence():
    return " ".join(rng.choice(WORDS, rng.integers(2, 6)))

  comps = folder / "human.jsonl"
  with open(comps, "w") as f:
    for i in range(10):
      p = f"\n\nHuman: {sentence()}?\n\nAssistant:"
      f.write(json.dumps({"chosen": p + " " + sentence(), "rejected": p + " " + sentence()}) + "\n")
  hhh = folder / "hhh.jsonl"
  with open(hhh, "w") as f:
    for i in range(5):
      p = f"\n\nHuman: {sentence()}?\n\nAssistant:"
      f.write(json.dumps({"prompt": "q", "corrects": [" (A)"], "incorrects": [" (B)"],
                          "text_correct": p + " " + sentence(),
                          "text_incorrect": p + " " + sentence()}) + "\n")
  mc = folder / "mc.jsonl"
  mc.write_text("".join(json.dumps({"prompt": f"Q{i}: {sentence()}?", "corrects": [" yes"],
                                    "incorrects": [" no"]}) + "\n" for i in range(3)))
  # AI labels made on the human file's pairs (sides as write_pairs_for_comparisons draws them)
  human = read_hh_comparisons(str(comps))
  prefs.write_pairs_for_comparisons(human, str(folder / "pairs.jsonl"), seed=0)
  labels = folder / "labels.jsonl"
  q_chosen = [0.9, 0.8, 0.3, 0.6, 0.5, 0.95, 0.1, 0.7, 0.85, 0.65]
  with open(folder / "pairs.jsonl") as src, open(labels, "w") as f:
    for line, comp, q in zip(src, human, q_chosen):
      pair = json.loads(line)
      p_first = q if pair["responses"][0] == comp.chosen else 1 - q
      f.write(json.dumps({"id": pair["id"], "prompt": pair["prompt"],
                          "responses": pair["responses"], "p_first_better": p_first,
                          "mode": "mc", "per_principle": [{"principle_id": "p", "p_first_better":
                                                           p_first, "p_a_orig": p_first,
                                                           "p_a_swapped": 1 - p_first}]}) + "\n")
  return {"comparisons": str(comps), "hhh": str(hhh), "mc": str(mc), "labels": str(labels),
          "q_chosen": q_chosen}


def test_saved_pm_round_trip_scores_like_the_params(saved_pm, eval_files):
  folder, _, params, model = saved_pm
  loaded = heads.load_pm(folder)
  np.testing.assert_array_equal(loaded.params["head"]["kernel"], params["head"]["kernel"])
  mesh = parallel.make_mesh({"data": -1})
  scorer = pm_eval.PMScorer(loaded, mesh, batch_size=4, min_length=16)
  assert scorer.max_length == 128 and scorer.append_eos
  pairs = prefs.read_human_comparisons(eval_files["comparisons"], 0, randomize_sides=False)
  rewards, truncated = scorer.score(pairs)
  examples = prefs.tokenize(pairs, model.tokenizer, max_length=128, append_eos=True)
  direct = np.asarray(pm.pair_rewards(model.config, params, prefs.make_batch(examples, 128)))
  np.testing.assert_allclose(rewards, direct, rtol=1e-4, atol=1e-5)
  assert truncated == 0
  with pytest.raises(CheckpointError, match="not a preference-model folder"):
    heads.load_pm(os.path.dirname(folder))


def test_eval_job_end_to_end(saved_pm, eval_files, tmp_path):
  folder, ckpt, _, _ = saved_pm
  config = load_config("eval", **{
      "eval.pm": folder, "eval.comparisons": eval_files["comparisons"],
      "eval.hhh": eval_files["hhh"], "eval.feedback_labels": eval_files["labels"],
      "eval.human_file": eval_files["comparisons"], "eval.mc_files": eval_files["mc"],
      "eval.batch_size": 4, "eval.progress": False, "model.checkpoint": ckpt,
      "model.cache_dir": str(tmp_path)})
  report = eval_job.run(config, str(tmp_path))
  assert json.loads((tmp_path / "eval" / "report.json").read_text()) == json.loads(
      json.dumps(report))
  for section, path, n in (("comparisons", eval_files["comparisons"], 10),
                           ("hhh", eval_files["hhh"], 5)):
    r = report[section][path]
    assert r["n"] == n and r["num_truncated"] == 0  # accuracy and ECE: from the gaps below
    assert sum(b["count"] for b in r["calibration"]["bins"]) == 2 * n
    assert os.path.isfile(r["reliability_png"])
    items = json.loads((tmp_path / "eval" / f"pm_{os.path.basename(path)[:-6]}.json")
                       .read_text())["items"]
    gap = np.asarray([x["r_better"] - x["r_worse"] for x in items])
    q = 1 / (1 + np.exp(-gap))
    assert r["accuracy"] == pytest.approx(np.mean(q > 0.5))
    assert r["ece"] == pytest.approx(calibration.pair_calibration(q, 10)["ece"])
  lab = report["labeller"]
  q = eval_files["q_chosen"]
  assert lab["matched"] == 10 and lab["unmatched_labels"] == 0 and lab["ties"] == 1
  assert lab["accuracy"] == pytest.approx((7 + 0.5) / 10)
  assert lab["ece"] == pytest.approx(calibration.pair_calibration(q, 10)["ece"])
  assert os.path.isfile(lab["reliability_png"])
  mc = report["mc"][eval_files["mc"]]
  # The expected values from one plain forward pass per option (BOS + prompt + option, the
  # option's tokens' log-probs summed), NumPy softmax over each item's two options, NumPy bins.
  model = loader.load(ckpt, cache_dir=str(tmp_path))
  p_yes = []
  for line in open(eval_files["mc"]):
    item = json.loads(line)
    summed = []
    for option in (" yes", " no"):
      prompt = model.tokenizer.encode(item["prompt"], add_bos=True)
      ids = prompt + model.tokenizer.encode(option, add_bos=False)
      logp = forward_logprobs(model, ids)
      summed.append(sum(logp[t - 1, ids[t]] for t in range(len(prompt), len(ids))))
    p_yes.append(1 / (1 + np.exp(summed[1] - summed[0])))
  p_yes = np.asarray(p_yes)
  assert mc["n"] == 3 and mc["n_options"] == 6 and mc["calibration"]["n"] == 6
  assert mc["accuracy"] == pytest.approx(np.mean(p_yes > 0.5))
  assert mc["mean_p_correct"] == pytest.approx(p_yes.mean(), abs=1e-5)
  # 6 points: each item's p (correct) and 1 - p (incorrect), in 10 equal bins
  points, outcomes = np.concatenate([p_yes, 1 - p_yes]), np.r_[np.ones(3), np.zeros(3)]
  bins = np.minimum((points * 10).astype(int), 9)
  ece = sum(np.sum(bins == b) / 6 * abs(outcomes[bins == b].mean() - points[bins == b].mean())
            for b in range(10) if np.any(bins == b))
  assert mc["ece"] == mc["calibration"]["ece"] == pytest.approx(ece, abs=1e-5)
  assert mc["reliability_png"] == str(tmp_path / "eval" / "mc_mc.png")
  assert open(mc["reliability_png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def forward_logprobs(model, ids) -> np.ndarray:
  """log_softmax of one uncached forward pass over `ids`: [len(ids), vocab] (float64)."""
  from cai_jax.model import decoder
  tokens = np.asarray([ids], np.int32)
  positions, mask = decoder.sequence_inputs(np.ones_like(tokens, bool))
  logits, _ = decoder.Decoder(model.config).apply({"params": model.params}, tokens, positions,
                                                  mask)
  logits = np.asarray(logits[0], np.float64)
  return logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                keepdims=True)) - logits.max(-1, keepdims=True)


def test_eval_bad_inputs_fail_before_loading(eval_files, tmp_path):
  def run(**extra):
    return eval_job.run(load_config("eval", **{"eval.progress": False, **extra}),
                        str(tmp_path))
  with pytest.raises(ConfigError, match="nothing to evaluate"):
    run()
  with pytest.raises(ConfigError, match="needs both eval.feedback_labels and eval.human_file"):
    run(**{"eval.feedback_labels": eval_files["labels"]})
  bad = tmp_path / "bad_labels.jsonl"
  rec = json.loads(open(eval_files["labels"]).readline())
  rec["p_first_better"] = -0.5
  bad.write_text(json.dumps(rec) + "\n")
  with pytest.raises(DataError, match=r"bad_labels.jsonl:1: p_first_better must be a "
                                      r"probability in \[0, 1\], got -0.5"):
    run(**{"eval.feedback_labels": str(bad), "eval.human_file": eval_files["comparisons"]})
  hhh = tmp_path / "hhh_bad.jsonl"
  hhh.write_text(json.dumps({"text_correct": "\n\nHuman: a\n\nAssistant: b"}) + "\n")
  with pytest.raises(DataError, match="hhh_bad.jsonl:1: missing field 'text_incorrect'"):
    run(**{"eval.hhh": str(hhh), "eval.pm": str(tmp_path / "no_pm")})
  with pytest.raises(CheckpointError, match="not a preference-model folder"):
    run(**{"eval.comparisons": eval_files["comparisons"], "eval.pm": str(tmp_path)})
