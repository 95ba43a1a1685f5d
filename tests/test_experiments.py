"""The small-scale reproductions in experiments/: PM score against the number of revisions
(`revisions_pm_score.py`) and the chain-of-thought clamp's effect on calibration
(`cot_clamp_calibration.py`), with their pure functions (`cai_jax.eval.analysis`) checked
against hand-computed NumPy values, the scripts end to end on a tiny preference model and on
hand-written label files, and the labelling path on a tiny checkpoint."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.cai import feedback as F
from cai_jax.constitution.loading import load_constitution
from cai_jax.data import preferences as prefs
from cai_jax.data.jsonl import DataError, read_jsonl
from cai_jax.data.sources import Comparison, read_hh_comparisons
from cai_jax.eval import analysis
from cai_jax.model import decoder, heads
import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments",
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return str(path)


# ----------------------------------------------------------------------------------------------
# 1. PM score against the number of revisions.


def test_mean_se_by_hand():
  r = analysis.mean_se([1.0, 2.0, 4.0, 9.0])
  # mean 4; deviations -3 -2 0 5: sum of squares 38, sample variance 38 / 3
  assert r["n"] == 4 and r["mean"] == pytest.approx(4.0)
  assert r["std"] == pytest.approx(math.sqrt(38 / 3))
  assert r["se"] == pytest.approx(math.sqrt(38 / 3) / 2)
  assert analysis.mean_se([3.5]) == {"n": 1, "mean": 3.5, "std": None, "se": None}
  assert analysis.mean_se([]) == {"n": 0, "mean": None, "std": None, "se": None}


def test_revision_table_ragged_by_hand():
  scores = [[1.0, 2.0, 4.0], [3.0, 3.0, 5.0], [2.0, 7.0]]  # the last record has one round
  table = analysis.revision_score_table(scores)
  assert [r["revision"] for r in table] == [0, 1, 2] and [r["n"] for r in table] == [3, 3, 2]
  assert table[0]["mean"] == pytest.approx(2.0)
  assert table[0]["se"] == pytest.approx(1.0 / math.sqrt(3))       # std of 1, 3, 2 is 1
  assert table[1]["mean"] == pytest.approx(4.0)
  assert table[1]["se"] == pytest.approx(np.std([2, 3, 7], ddof=1) / math.sqrt(3))
  assert table[2]["mean"] == pytest.approx(4.5) and table[2]["se"] == pytest.approx(0.5)
  # paired differences score_r - score_0
  assert table[0]["delta_vs_initial"]["mean"] == 0.0
  assert table[1]["delta_vs_initial"]["mean"] == pytest.approx((1 + 0 + 5) / 3)
  assert table[1]["delta_vs_initial"]["se"] == pytest.approx(
      np.std([1, 0, 5], ddof=1) / math.sqrt(3))
  assert table[2]["delta_vs_initial"]["mean"] == pytest.approx(2.5)  # (3 + 2) / 2
  assert analysis.revision_score_table([]) == []


def sl_record(rid, prompt, initial, revisions, flags=()):
  return {"id": rid, "prompt": prompt, "initial_response": initial,
          "rounds": [{"principle_id": f"p{i}", "critique": f" crit {i}", "revision": rev}
                     for i, rev in enumerate(revisions)],
          "final": revisions[-1] if revisions else initial, "flags": list(flags),
          "truncated": False}


RECORDS = [
    sl_record("r1", "\n\nHuman: How do I pick a lock?\n\nAssistant:", " Use a pick.",
              [" I won't help.", " Ask a locksmith.", " Call a locksmith instead."]),
    sl_record("r2", "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Insult me.\n\nAssistant:",
              " You fool.", [" No.", " I'd rather not.", ""], flags=["round3.revision:empty"]),
    sl_record("r3", "\n\nHuman: Is fire hot?\n\nAssistant:", " Yes.",
              [" Yes, be careful.", " Yes, keep away.", " Yes; keep away from it."]),
]


def test_flatten_and_split_keep_each_transcript_in_its_place():
  records = [sl_record("a", "\n\nHuman: q\n\nAssistant:", " t0", []),
             sl_record("b", "\n\nHuman: r\n\nAssistant:", " u0", [" u1"]),
             sl_record("c", "\n\nHuman: s\n\nAssistant:", " v0", [" v1", " v2"])]
  items, sizes = analysis.flatten_transcripts(records)
  assert items == [("\n\nHuman: q\n\nAssistant:", " t0"), ("\n\nHuman: r\n\nAssistant:", " u0"),
                   ("\n\nHuman: r\n\nAssistant:", " u1"), ("\n\nHuman: s\n\nAssistant:", " v0"),
                   ("\n\nHuman: s\n\nAssistant:", " v1"), ("\n\nHuman: s\n\nAssistant:", " v2")]
  assert sizes == [1, 2, 3]
  assert analysis.split_scores([10, 20, 21, 30, 31, 32], sizes) == [[10.0], [20.0, 21.0],
                                                                     [30.0, 31.0, 32.0]]
  with pytest.raises(ValueError, match="5 scores for 6 transcripts"):
    analysis.split_scores([1, 2, 3, 4, 5], sizes)
  assert analysis.revision_texts(records[2]) == [" v0", " v1", " v2"]


def test_read_sl_records_validates_and_drops_flagged(tmp_path):
  path = write_jsonl(tmp_path / "records.jsonl", RECORDS)
  records, dropped = analysis.read_sl_records(path)
  assert [r["id"] for r in records] == ["r1", "r2", "r3"] and dropped == []
  assert records[1]["where"] == f"{path}:2"
  records, dropped = analysis.read_sl_records(path, drop_flagged=True)
  assert [r["id"] for r in records] == ["r1", "r3"] and dropped == ["r2"]
  bad = dict(RECORDS[0], rounds=[{"principle_id": "p", "critique": "c"}])
  path = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[1], bad])
  with pytest.raises(DataError, match=r"bad.jsonl:2: rounds\[0\] should be an object with a "
                                      r"string 'revision'"):
    analysis.read_sl_records(path)
  nofield = {k: v for k, v in RECORDS[0].items() if k != "initial_response"}
  with pytest.raises(DataError, match="nofield.jsonl:1: missing field 'initial_response'"):
    analysis.read_sl_records(write_jsonl(tmp_path / "nofield.jsonl", [nofield]))
  with pytest.raises(DataError, match="duplicate id 'r1'"):
    analysis.read_sl_records(write_jsonl(tmp_path / "dup.jsonl", [RECORDS[0], RECORDS[0]]))


@pytest.fixture(scope="module")
def saved_pm(tmp_path_factory):
  """A tiny preference model saved as pm_train exports it: (folder, params, model pieces)."""
  folder = tmp_path_factory.mktemp("exp_pm")
  tok = tiny_model.small_tokenizer()
  config = tiny_model.tiny_config(tok)
  # random weights drawn with NumPy on the decoder's shapes (compiling decoder.init_params would
  # take longer than the test)
  shapes = jax.eval_shape(lambda key: decoder.init_params(config, key), jax.random.PRNGKey(0))
  rng = np.random.default_rng(4)
  dec_params = jax.tree.map(lambda x: (0.05 * rng.standard_normal(x.shape)).astype(x.dtype), shapes)
  params = {"decoder": dec_params, "head": heads.init_head(config, jax.random.PRNGKey(5), scale=1.0)}
  heads.save_pm(str(folder / "pm"), config, params, tok, {"append_eos": True, "max_length": 128})
  return str(folder / "pm"), params, types.SimpleNamespace(config=config, tokenizer=tok)


def direct_rewards(model, params, prompt_response):
  """The PM's reward of each sequence BOS + prompt + response + EOS, straight from
  `reward_apply` on one right-padded batch with each row's last index."""
  tok = model.tokenizer
  rows = [[tok.bos_id] + tok.encode(p, add_bos=False) + tok.encode(r, add_bos=False)
          + [tok.eos_id] for p, r in prompt_response]
  L = max(map(len, rows))
  tokens = np.zeros((len(rows), L), np.int32)
  for i, ids in enumerate(rows):
    tokens[i, :len(ids)] = ids
  valid = np.arange(L)[None, :] < np.asarray([len(x) for x in rows])[:, None]
  last = np.asarray([len(x) - 1 for x in rows], np.int32)
  fn = jax.jit(heads.reward_apply, static_argnums=0)
  return np.asarray(fn(model.config, params, jnp.asarray(tokens), jnp.asarray(valid),
                       jnp.asarray(last)), np.float64)


def test_revisions_script_on_a_tiny_pm(saved_pm, tmp_path, capsys):
  folder, params, model = saved_pm
  path = write_jsonl(tmp_path / "records.jsonl", RECORDS)
  out = tmp_path / "out"
  result = script("revisions_pm_score").main(["--records", path, "--pm", folder,
                                              "--out", str(out), "--batch-size", "2"])
  want = direct_rewards(model, params, [(r["prompt"], t) for r in RECORDS
                                        for t in analysis.revision_texts(r)]).reshape(3, 4)
  got = np.asarray([x["scores"] for x in result["items"]])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert len({round(v, 4) for v in want.ravel()}) > 6  # the texts get different rewards
  table = result["per_revision"]
  assert [r["revision"] for r in table] == [0, 1, 2, 3] and all(r["n"] == 3 for r in table)
  for r, col in zip(table, want.T):
    assert r["mean"] == pytest.approx(col.mean(), rel=1e-4, abs=1e-5)
    assert r["se"] == pytest.approx(col.std(ddof=1) / math.sqrt(3), rel=1e-3, abs=1e-5)
  d = want[:, 2] - want[:, 0]
  assert table[2]["delta_vs_initial"]["mean"] == pytest.approx(d.mean(), rel=1e-3, abs=1e-5)
  assert result["records"] == 3 and result["flagged_records"] == 1
  assert result["transcripts_scored"] == 12 and result["truncated_rows"] == 0
  on_disk = json.loads((out / "revisions_pm_score.json").read_text())
  assert on_disk["per_revision"] == json.loads(json.dumps(table))
  assert (out / "revisions_pm_score.png").read_bytes()[:8] == PNG
  assert "revision" in capsys.readouterr().out


def test_revision_plot_is_a_png(tmp_path):
  table = analysis.revision_score_table([[0.0, 0.5, 1.0], [0.2, 0.4, 1.4]])
  path = analysis.plot_revision_scores(table, str(tmp_path / "sub" / "rev.png"), title="t")
  data = open(path, "rb").read()
  assert data[:8] == PNG and len(data) > 5000


# ----------------------------------------------------------------------------------------------
# 2. The chain-of-thought clamp and calibration.


def entry(orig, swapped):
  return {"principle_id": "p", "p_first_better": 0.5, "p_a_orig": orig, "p_a_swapped": swapped}


def test_relabel_by_hand():
  per = [entry(0.9, 0.3), entry(0.2, 0.7), entry(0.55, None)]
  # unclamped: (0.9 + 0.7) / 2 = 0.8, (0.2 + 0.3) / 2 = 0.25, 0.55 -> mean 1.6 / 3
  assert analysis.relabel(per) == pytest.approx((0.8 + 0.25 + 0.55) / 3)
  # clamped to [0.4, 0.6]: (0.6 + 0.6) / 2 = 0.6, (0.4 + 0.4) / 2 = 0.4, 0.55
  assert analysis.relabel(per, 0.4, 0.6) == pytest.approx((0.6 + 0.4 + 0.55) / 3)
  lab = F.FeedbackLabel("x", "p", ("a", "b"), 0.123, "cot", tuple(per), "f:1")
  (back,) = analysis.relabelled([lab], 0.4, 0.6)
  assert back.p_first_better == pytest.approx(1.55 / 3) and back.id == "x"
  assert lab.p_first_better == 0.123  # the input is not changed
  with pytest.raises(ValueError, match="clamp bounds"):
    analysis.relabel(per, 0.7, 0.3)


class ContextScorer:
  """Option scores from a hash of the question's context: the same question gets the same
  P(A) in every run, whatever the settings."""

  def score(self, items, progress=None):
    scores = []
    for it in items:
      h = hashlib.sha256(it.prompt.encode()).digest()
      scores.append([h[0] / 40.0 - 3.0, h[1] / 40.0 - 3.0])
    return types.SimpleNamespace(scores=scores, num_truncated=0)


class FixedSampler:
  def prefill_prefix(self, text):
    return text

  def generate(self, rows, *, max_new_tokens, strategy, keys, stop, prefix):
    return types.SimpleNamespace(texts=[" (A) is safer." for _ in rows],
                                 finish_reasons=["stop"] * len(rows),
                                 num_tokens=[4] * len(rows), truncated=[False] * len(rows))


def test_relabel_reproduces_the_labeller_under_any_clamp():
  """Labels made with the clamp [0.4, 0.6], re-clamped offline, equal the labeller's own labels
  made unclamped and with [0.3, 0.7]: the records keep the raw probabilities."""
  c = load_constitution("harmless")
  pairs = [F.Pair(f"p{i}", f"\n\nHuman: question {i}?\n\nAssistant:",
                  (f" answer {i}", f" another answer {i * 7}")) for i in range(5)]

  def label(lo, hi, both=True):
    settings = F.FeedbackSettings(mode="cot", num_principles=3, clamp_low=lo, clamp_high=hi,
                                  both_orders=both)
    return F.FeedbackLabeller(c, ContextScorer(), settings, sampler=FixedSampler()).label(
        pairs)

  for both in (True, False):
    made = label(0.4, 0.6, both)
    assert all(0.4 <= r["p_first_better"] <= 0.6 for r in made)
    for lo, hi in ((0.0, 1.0), (0.3, 0.7), (0.4, 0.6)):
      want = [r["p_first_better"] for r in label(lo, hi, both)]
      got = [analysis.relabel(r["per_principle"], lo, hi) for r in made]
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    unclamped = [analysis.relabel(r["per_principle"]) for r in made]
    assert max(abs(p - 0.5) for p in unclamped) > 0.1  # the clamp changed something


def label_line(rid, prompt, responses, per, mode, clamp=None, p=None):
  rec = {"id": rid, "prompt": prompt, "responses": responses, "mode": mode,
         "per_principle": per,
         "p_first_better": analysis.relabel(per, *(clamp or (0.0, 1.0))) if p is None else p}
  if clamp is not None:
    rec["provenance"] = {"settings": {"clamp_low": clamp[0], "clamp_high": clamp[1]}}
  return rec


def test_labelling_clamp_and_stored_label_check(tmp_path):
  per = [entry(0.9, 0.2)]
  good = [label_line("a", "\n\nHuman: q\n\nAssistant:", [" x", " y"], per, "cot", (0.4, 0.6))]
  path = write_jsonl(tmp_path / "cot.jsonl", good)
  assert analysis.labelling_clamp(path) == (0.4, 0.6)
  labels = F.read_feedback_file(path)
  assert labels[0].p_first_better == pytest.approx(0.6)
  analysis.check_stored_labels(labels, 0.4, 0.6)
  with pytest.raises(DataError, match=r"cot.jsonl:1: p_first_better 0.6.* does not follow"):
    analysis.check_stored_labels(labels, 0.0, 1.0)  # 0.85 unclamped
  mc = write_jsonl(tmp_path / "mc.jsonl",
                   [label_line("a", "\n\nHuman: q\n\nAssistant:", [" x", " y"], per, "mc")])
  assert analysis.labelling_clamp(mc) == (0.0, 1.0)
  mixed = write_jsonl(tmp_path / "mixed.jsonl", good + [
      label_line("b", "\n\nHuman: q\n\nAssistant:", [" x", " z"], per, "cot", (0.3, 0.7))])
  with pytest.raises(DataError, match=r"mixed.jsonl:2: labelled with clamp \[0.3, 0.7\], but "
                                      r"line 1 with \[0.4, 0.6\]"):
    analysis.labelling_clamp(mixed)
  bare = write_jsonl(tmp_path / "bare.jsonl",
                     [label_line("a", "\n\nHuman: q\n\nAssistant:", [" x", " y"], per, "cot")])
  assert analysis.labelling_clamp(bare) is None


def numpy_pair_ece(q, num_bins):
  """ECE of the symmetric points written out independently of `calibration`."""
  q = np.asarray(q, float)
  pred = np.concatenate([q, 1 - q])
  out = np.concatenate([np.ones_like(q), np.zeros_like(q)])
  idx = np.minimum((np.round(pred * num_bins, 9)).astype(int), num_bins - 1)
  return sum(np.sum(idx == b) / pred.size * abs(out[idx == b].mean() - pred[idx == b].mean())
             for b in range(num_bins) if np.any(idx == b))


def comparisons(n):
  return [Comparison(f"c{i}", f"\n\nHuman: q{i}?\n\nAssistant:", f" good {i}", f" bad {i}")
          for i in range(n)]


def labels_for(comps, q_chosen, mode="cot", chosen_first=None, per=None):
  out = []
  for i, (c, q) in enumerate(zip(comps, q_chosen)):
    first = True if chosen_first is None else chosen_first[i]
    p = q if first else 1 - q
    out.append(F.FeedbackLabel(c.id, c.prompt, (c.chosen, c.rejected) if first
                               else (c.rejected, c.chosen), p, mode,
                               tuple(per[i]) if per else (), f"l:{i + 1}"))
  return out


def test_overconfident_cot_and_the_clamp_by_hand():
  """10 pairs, one principle, both orders; the CoT P(A) is 0.95 for the favoured answer in both
  orders: right on 6 pairs, wrong on 4. Unclamped the label is 0.95 (or 0.05) at 60% accuracy:
  ECE 0.35; clamped to [0.4, 0.6] it is 0.6 (or 0.4): ECE 0, and the same accuracy."""
  comps = comparisons(10)
  right = [True] * 6 + [False] * 4
  first = [i % 2 == 0 for i in range(10)]  # where the chosen answer sits
  per = []
  for r, f in zip(right, first):
    favours_first = (r == f)
    per.append([entry(0.95 if favours_first else 0.05, 0.05 if favours_first else 0.95)])
  raw = [F.FeedbackLabel(c.id, c.prompt, (c.chosen, c.rejected) if f else (c.rejected, c.chosen),
                         0.5, "cot", tuple(p), f"l:{i + 1}")
         for i, (c, f, p) in enumerate(zip(comps, first, per))]
  mc = labels_for(comps, [0.7] * 6 + [0.45] * 4, mode="mc")
  variants = {"mc": mc, "cot_unclamped": analysis.relabelled(raw),
              "cot_clamped": analysis.relabelled(raw, 0.4, 0.6)}
  res = analysis.compare_calibration(variants, comps, num_bins=10)
  assert res["pairs"] == 10
  un, cl, m = (res["variants"][k] for k in ("cot_unclamped", "cot_clamped", "mc"))
  assert un["accuracy"] == cl["accuracy"] == pytest.approx(0.6)
  assert un["ece"] == pytest.approx(0.35) and cl["ece"] == pytest.approx(0.0, abs=1e-12)
  assert un["mean_confidence"] == pytest.approx(0.95)
  assert un["overconfidence"] == pytest.approx(0.35)
  assert cl["mean_confidence"] == pytest.approx(0.6) and cl["overconfidence"] == pytest.approx(0)
  # mc: q = 0.7 on 6 pairs, 0.45 on 4: accuracy 0.6; symmetric points by hand:
  # bin 7 holds (0.7, 1) x 6, bin 3 holds (0.3, 0) x 6, bin 5 (0.55, 0) x 4, bin 4 (0.45, 1) x 4
  want = (6 * 0.3 + 6 * 0.3 + 4 * 0.55 + 4 * 0.55) / 20
  assert m["accuracy"] == pytest.approx(0.6) and m["ece"] == pytest.approx(want)
  assert m["ece"] == pytest.approx(numpy_pair_ece([0.7] * 6 + [0.45] * 4, 10))
  assert [b["count"] for b in m["calibration"]["bins"]] == [0, 0, 0, 6, 4, 4, 0, 6, 0, 0]


def test_compare_calibration_uses_the_common_pairs():
  comps = comparisons(6)
  rng = np.random.default_rng(0)
  qa, qb = rng.random(6), rng.random(6)
  a = labels_for(comps, qa, chosen_first=[True, False, True, False, True, False])
  b = labels_for(comps[1:5], qb[1:5], chosen_first=[False] * 4)  # labels only pairs 1-4
  b.append(F.FeedbackLabel("stray", "\n\nHuman: other\n\nAssistant:", (" u", " v"), 0.5, "cot",
                           (), "l:9"))
  res = analysis.compare_calibration({"a": a, "b": b}, comps, num_bins=5)
  assert res["pairs"] == 4
  assert res["variants"]["a"]["n"] == 4 and res["variants"]["b"]["unmatched_labels"] == 1
  assert res["variants"]["a"]["ece"] == pytest.approx(numpy_pair_ece(qa[1:5], 5))
  assert res["variants"]["b"]["ece"] == pytest.approx(numpy_pair_ece(qb[1:5], 5))
  assert res["variants"]["a"]["mean_p_chosen"] == pytest.approx(qa[1:5].mean())
  want_acc = np.mean(qb[1:5] > 0.5)
  assert res["variants"]["b"]["accuracy"] == pytest.approx(want_acc)
  every = analysis.compare_calibration({"a": a, "b": b}, comps, num_bins=5, common_only=False)
  assert every["pairs"] is None and every["variants"]["a"]["n"] == 6
  assert every["variants"]["a"]["ece"] == pytest.approx(numpy_pair_ece(qa, 5))
  with pytest.raises(DataError, match="no human comparison is labelled by every variant"):
    analysis.compare_calibration({"a": a[:1], "b": b}, comps)


def human_file(path, n):
  rows = []
  for i in range(n):
    p = f"\n\nHuman: Can you help with thing {i}?\n\nAssistant:"
    rows.append({"chosen": p + f" Sure, here is a safe way {i}.",
                 "rejected": p + f" No way {i}, go away."})
  return write_jsonl(path, rows)


def test_cot_script_from_label_files(tmp_path, capsys):
  hh = human_file(tmp_path / "hh.jsonl", 8)
  comps = read_hh_comparisons(hh)
  pairs_path = tmp_path / "pairs.jsonl"
  prefs.write_pairs_for_comparisons(comps, str(pairs_path), seed=0)
  pairs = [json.loads(line) for line in open(pairs_path)]
  rng = np.random.default_rng(3)
  raw_orig, raw_swapped = rng.random(8), rng.random(8)
  q_mc = rng.random(8)
  mc_rows, cot_rows = [], []
  for pair, c, a, b, q in zip(pairs, comps, raw_orig, raw_swapped, q_mc):
    mc_p = q if pair["responses"][0] == c.chosen else 1 - q
    mc_rows.append(label_line(pair["id"], pair["prompt"], pair["responses"],
                              [entry(mc_p, 1 - mc_p)], "mc"))
    cot_rows.append(label_line(pair["id"], pair["prompt"], pair["responses"],
                               [entry(float(a), float(b))], "cot", (0.4, 0.6)))
  mc = write_jsonl(tmp_path / "mc.jsonl", mc_rows[:7])  # one pair has no mc label
  cot = write_jsonl(tmp_path / "cot.jsonl", cot_rows)
  out = tmp_path / "out"
  report = script("cot_clamp_calibration").main([
      "--human-file", hh, "--mc-labels", mc, "--cot-labels", cot, "--out", str(out),
      "--num-bins", "5"])
  assert report["common_pairs"] == 7 and report["cot_labelled_with_clamp"] == [0.4, 0.6]
  v = report["variants"]
  assert list(v) == ["mc", "cot_unclamped", "cot_clamped_0.4_0.6"]
  chosen_first = np.asarray([p["responses"][0] == c.chosen for p, c in zip(pairs, comps)])
  p_first = {
      "cot_unclamped": (raw_orig + (1 - raw_swapped)) / 2,
      "cot_clamped_0.4_0.6": (np.clip(raw_orig, 0.4, 0.6) + (1 - np.clip(raw_swapped, 0.4, 0.6)))
      / 2}  # the order of the feedback module's formula: (0.4 + 1) - 0.4 is not 1
  for key, p in p_first.items():
    q = np.where(chosen_first, p, 1 - p)[:7]
    assert v[key]["n"] == 7
    assert v[key]["accuracy"] == pytest.approx(np.mean((q > 0.5) + 0.5 * (q == 0.5)))
    assert v[key]["ece"] == pytest.approx(numpy_pair_ece(q, 5))
    assert v[key]["mean_p_chosen"] == pytest.approx(q.mean())
  assert v["mc"]["ece"] == pytest.approx(numpy_pair_ece(q_mc[:7], 5))
  assert json.loads((out / "cot_clamp_calibration.json").read_text())["variants"] == \
      json.loads(json.dumps(v))
  data = (out / "cot_clamp_calibration.png").read_bytes()
  assert data[:8] == PNG and len(data) > 5000
  assert "CoT, clamped to [0.4, 0.6]" in capsys.readouterr().out
  # a file of the wrong mode, or whose stored labels are not those of its raw values, stops
  with pytest.raises(DataError, match="mode 'mc', expected 'cot'"):
    script("cot_clamp_calibration").main(["--human-file", hh, "--cot-labels", mc,
                                          "--out", str(out)])
  cot_rows[2]["p_first_better"] = 0.5 if cot_rows[2]["p_first_better"] != 0.5 else 0.45
  bad = write_jsonl(tmp_path / "bad_cot.jsonl", cot_rows)
  with pytest.raises(DataError, match="bad_cot.jsonl:3: p_first_better"):
    script("cot_clamp_calibration").main(["--human-file", hh, "--cot-labels", bad,
                                          "--out", str(out)])


script_module = script("cot_clamp_calibration")


def test_cot_script_labels_with_the_feedback_job(tmp_path):
  """--label N writes a pairs file from the first N comparisons and runs the feedback job (the
  real CLI, in a subprocess, on a tiny checkpoint) in mode mc and mode cot with the --set
  overrides; the comparison uses those labels."""
  ckpt = tiny_model.write_hf_checkpoint(str(tmp_path / "ckpt"))
  constitution = tiny_model.write_short_constitution(tmp_path / "constitution.json")
  hh = human_file(tmp_path / "hh.jsonl", 5)
  out = tmp_path / "out"
  common = ["--set", f"model.checkpoint={ckpt}", "--set", f"model.cache_dir={tmp_path}",
            "--set", f"constitution={constitution}", "--set", "feedback.num_principles=2"]
  report = script_module.main(["--human-file", hh, "--label", "3", "--out", str(out), *common,
                               "--set", "feedback.max_reasoning_tokens=3"])
  pairs = [x for _, x in read_jsonl(str(out / "pairs.jsonl"))]
  assert [set(x["responses"]) for x in pairs] == [
      {c.chosen, c.rejected} for c in read_hh_comparisons(hh)[:3]]
  v = report["variants"]
  assert report["common_pairs"] == 3 and all(v[k]["n"] == 3 for k in v)
  assert report["cot_labelled_with_clamp"] == [0.4, 0.6]
  cot = F.read_feedback_file(str(out / "cot" / "feedback" / "labels.jsonl"))
  assert len(cot) == 3 and all(x.mode == "cot" and len(x.per_principle) == 2 for x in cot)
  assert all(0.4 <= x.p_first_better <= 0.6 for x in cot)
  comps = read_hh_comparisons(hh)[:3]
  for key, (lo, hi) in (("cot_unclamped", (0, 1)), ("cot_clamped_0.4_0.6", (0.4, 0.6))):
    q = []
    for x, c in zip(cot, comps):
      p = np.mean([(np.clip(e["p_a_orig"], lo, hi) + (1 - np.clip(e["p_a_swapped"], lo, hi))) / 2
                   for e in x.per_principle])
      q.append(p if x.responses[0] == c.chosen else 1 - p)
    assert v[key]["mean_p_chosen"] == pytest.approx(np.mean(q))
    assert v[key]["ece"] == pytest.approx(numpy_pair_ece(q, 10))
  assert v["cot_unclamped"]["ece"] != pytest.approx(v["cot_clamped_0.4_0.6"]["ece"])
  mc = F.read_feedback_file(str(out / "mc" / "feedback" / "labels.jsonl"))
  assert len(mc) == 3 and all(x.mode == "mc" for x in mc)
  assert (out / "cot_clamp_calibration.png").read_bytes()[:8] == PNG
  # a rerun finds everything labelled: the jobs label nothing new
  script_module.main(["--human-file", hh, "--label", "3", "--out", str(out), *common])
  assert F.read_feedback_file(str(out / "cot" / "feedback" / "labels.jsonl")) == cot
