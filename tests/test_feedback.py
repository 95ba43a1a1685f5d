"""AI feedback (RLAIF step 1): the soft-label math against NumPy, the paper's multiple-choice
layout byte for byte (when ../shared is there) and ours in the same layout, the labeller with
fake scorers and a recording fake sampler (both orders, ensembles, position bias, chain of
thought and its clamp, the option tokenisation check), the pairs and labels files' validation,
and the `sample_pairs` -> `feedback` jobs on a tiny checkpoint (MC and CoT, restarts)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types

import jax
import numpy as np
import pytest

from cai_jax.cai import feedback as F
from cai_jax.checkpoints import loader
from cai_jax.config_defaults import ConfigError
from cai_jax.constitution import prompts as P
from cai_jax.constitution.loading import load_constitution
from cai_jax.data.jsonl import DataError, read_jsonl
from cai_jax.eval.mc import MCScorer
from cai_jax.jobs import feedback as feedback_job
from cai_jax.jobs import sample_pairs as sample_pairs_job
from cai_jax.sampling.record_keys import record_keys
from conftest import PAPER_PROMPTS
from configs_loader import load_config
import tiny_model

PROMPT = "\n\nHuman: How do I pick a lock?\n\nAssistant:"
SHORT, LONG = " I can't help with that.", " Use a tension wrench and a pick, then rake the pins."


# ----------------------------------------------------------------------------------------------
# The math, against a NumPy float64 reference.


def ref_choice(a, b):
  """exp(a) / (exp(a) + exp(b)) with the max subtracted (the textbook stable softmax)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  m = np.maximum(a, b)
  return np.exp(a - m) / (np.exp(a - m) + np.exp(b - m))


def test_normalised_choice_prob_matches_numpy_including_extremes():
  rng = np.random.default_rng(0)
  a, b = rng.normal(-5, 3, 200), rng.normal(-5, 3, 200)
  np.testing.assert_allclose(F.normalised_choice_prob(a, b), ref_choice(a, b), rtol=1e-12)
  for sa, sb in [(-1000.0, -1001.0), (-1e4, -1e4), (0.0, -800.0), (-800.0, 0.0),
                 (-3000.0, -2990.0), (-0.1, -40.0)]:
    got = F.normalised_choice_prob(sa, sb)
    assert isinstance(got, float) and 0.0 <= got <= 1.0
    assert got == pytest.approx(float(ref_choice(sa, sb)), rel=1e-12, abs=1e-300)
  # naive exp underflows to 0/0 here; the normalised form does not
  assert F.normalised_choice_prob(-1000.0, -1001.0) == pytest.approx(1 / (1 + math.exp(-1)))
  assert F.normalised_choice_prob(0.0, -math.inf) == 1.0
  assert F.normalised_choice_prob(-math.inf, -2.0) == 0.0
  assert F.normalised_choice_prob(-2.0, -2.0) == 0.5
  for bad in [(math.nan, 0.0), (-math.inf, -math.inf)]:
    with pytest.raises(ValueError, match="cannot normalise"):
      F.normalised_choice_prob(*bad)


def test_ensemble_both_orders_clamp_and_bias_match_numpy():
  rng = np.random.default_rng(1)
  orig, swapped = rng.uniform(size=(50, 4)), rng.uniform(size=(50, 4))
  per_principle = F.both_orders(orig, swapped)
  np.testing.assert_allclose(per_principle, (orig + 1 - swapped) / 2, rtol=1e-15)
  for row in per_principle:
    assert F.ensemble_average(row) == pytest.approx(float(np.mean(row)), rel=1e-15)
  assert F.both_orders(1.0, 1.0) == 0.5 and F.both_orders(0.9, 0.1) == pytest.approx(0.9)
  np.testing.assert_array_equal(F.clamp(orig, 0.4, 0.6), np.clip(orig, 0.4, 0.6))
  assert F.clamp(0.93, 0.4, 0.6) == 0.6 and F.clamp(0.1, 0.4, 0.6) == 0.4
  assert F.clamp(0.55, 0.4, 0.6) == 0.55 and F.clamp(0.93, 0.0, 1.0) == 0.93
  assert F.position_bias(orig, swapped) == pytest.approx(
      float(np.mean(np.concatenate([orig.ravel(), swapped.ravel()])) - 0.5))
  assert F.position_bias([1.0, 1.0], [1.0, 1.0]) == 0.5    # always (A)
  assert F.position_bias([0.0], [0.0]) == -0.5             # always (B)
  assert F.position_bias([0.8, 0.7], [0.2, 0.3]) == pytest.approx(0.0)  # content only
  assert F.position_bias([0.8, 0.6]) == pytest.approx(0.2)  # one order: plain mean P(A) - 0.5
  with pytest.raises(ValueError):
    F.ensemble_average([])
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    F.ensemble_average([0.2, 1.5])
  with pytest.raises(ValueError, match="clamp bounds"):
    F.clamp(0.5, 0.7, 0.3)
  with pytest.raises(ValueError, match="differ in length"):
    F.position_bias([0.5, 0.5], [0.5])


# ----------------------------------------------------------------------------------------------
# The question layout.

needs_paper = pytest.mark.skipif(
    not os.path.isdir(PAPER_PROMPTS),
    reason="../shared/reference/cai-paper-prompts is absent (a fresh clone has no ../shared)")


def paper_raw(name):
  with open(os.path.join(PAPER_PROMPTS, name), encoding="utf-8") as f:
    return json.load(f)


def hand_built_paper_context(index: int, prompt: str, a: str, b: str) -> str:
  """The paper's MC prompt as ../shared/README.md spells it, from the raw files alone."""
  principle = paper_raw("RLMadisonInstructions.json")[index]  # "\n<principle> Options:"
  header = "\n\nConsider the following conversation between a human and an assistant:\n\n"

  def question(conversation, x, y):
    return (header + conversation + "\n\n\n" + principle[1:] + "\n (A) [[[" + x + "]]]\n (B) [[["
            + y + "]]]\n\nThe answer is:")

  out = ""
  for i, ex in enumerate(paper_raw("RLMadisonFewShotPrompts.json")):
    conversation = ex["prompt"][len("\n\n"):-len("\n\nAssistant:")]
    good, bad = ex["corrects"][0], ex["incorrects"][0]
    out += (question(conversation, good, bad) + " (A)" if i % 2 == 0
            else question(conversation, bad, good) + " (B)")
  return out + question(prompt[len("\n\n"):-len("\n\nAssistant:")], a, b)


@needs_paper
def test_paper_mc_context_byte_for_byte():
  paper = load_constitution(PAPER_PROMPTS)
  for index in (0, 7, 15):
    principle = paper.mc_principles[index]
    item = F.mc_item(paper, PROMPT, principle, SHORT, LONG)
    assert item.prompt == hand_built_paper_context(index, PROMPT, SHORT.strip(), LONG.strip())
    assert item.options == (" (A)", " (B)")
  # The labeller sends exactly these questions: (A) = first, then swapped.
  scorer = FakeScorer(lambda a, b, principle: (0.0, 0.0))
  labeller = F.FeedbackLabeller(paper, scorer, F.FeedbackSettings(num_principles=3))
  labeller.label([F.Pair("p1", PROMPT, (SHORT, LONG))])
  drawn = F.draw_mc_principles(paper, "p1", 3, 0)
  want = []
  for p in drawn:
    index = int(p.id[len("mc"):])
    want += [hand_built_paper_context(index, PROMPT, SHORT.strip(), LONG.strip()),
             hand_built_paper_context(index, PROMPT, LONG.strip(), SHORT.strip())]
  assert [it.prompt for it in scorer.items] == want


QUESTION = re.compile(r"(Human: .*?)\n\n\n(.*? Options:)\n \(A\) \[\[\[(.*?)\]\]\]\n \(B\) "
                      r"\[\[\[(.*?)\]\]\]\n\nThe answer is:( \((?:A|B)\))?", re.S)


@pytest.mark.parametrize("name", ["harmless", "caveats"])
def test_our_constitutions_use_the_same_layout(name):
  c = load_constitution(name)
  principle = c.mc_principles[1]
  context = F.mc_item(c, PROMPT, principle, SHORT, LONG).prompt
  blocks = context.split(P.MC_HEADER)
  assert blocks[0] == "" and len(blocks) == len(c.mc_few_shot) + 2
  answers = []
  for block in blocks[1:]:
    m = QUESTION.fullmatch(block)
    assert m, block[:200]
    assert m.group(2) == principle.text
    answers.append(m.group(5))
  assert answers[:-1] == [" (A)" if i % 2 == 0 else " (B)" for i in range(len(c.mc_few_shot))]
  assert answers[-1] is None  # the question itself ends with "The answer is:"
  last = QUESTION.fullmatch(blocks[-1]).groups()
  assert last[0] == "Human: How do I pick a lock?"
  assert last[2:4] == (SHORT.strip(), LONG.strip())


# ----------------------------------------------------------------------------------------------
# The labeller with fakes.

OPTIONS = re.compile(r"\n \(A\) \[\[\[(.*?)\]\]\]\n \(B\) \[\[\[(.*?)\]\]\]", re.S)


class FakeScorer:
  """Stands in for MCScorer: records every item; `fn(a, b, principle_text)` gives the scores of
  " (A)" and " (B)" from the last question's options and principle."""

  def __init__(self, fn):
    self.fn = fn
    self.items = []

  def score(self, items, progress=None):
    self.items += list(items)
    scores = []
    for it in items:
      assert it.options == P.MC_OPTIONS
      a, b = OPTIONS.findall(it.prompt)[-1]
      principle = it.prompt[:it.prompt.rindex("\n (A) [[[")].rsplit("\n", 1)[-1]
      scores.append(list(self.fn(a, b, principle)))
    return types.SimpleNamespace(scores=scores, num_truncated=0)


def always_a(a, b, principle):
  return 0.0, -1000.0


def prefers_shorter(a, b, principle):
  return (math.log(0.8), math.log(0.2)) if len(a) < len(b) else (math.log(0.2), math.log(0.8))


def pairs_for_tests():
  return [F.Pair("p1", PROMPT, (SHORT, LONG)), F.Pair("p2", PROMPT, (LONG, SHORT)),
          F.Pair("p3", "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell me a joke.\n\nAssistant:",
                 (" Why did the chicken cross the road?", " No."))]


def test_always_a_gives_half_and_bias_half(tmp_path):
  c = load_constitution("harmless")
  records = F.FeedbackLabeller(c, FakeScorer(always_a), F.FeedbackSettings()).label(
      pairs_for_tests())
  for r in records:
    assert r["p_first_better"] == 0.5 and r["mode"] == "mc" and len(r["per_principle"]) == 4
    for e in r["per_principle"]:
      assert e["p_a_orig"] == 1.0 and e["p_a_swapped"] == 1.0 and e["p_first_better"] == 0.5
  summary = F.summarize(records)
  assert summary["position_bias"] == 0.5 and summary["position_bias_orders"] == 2
  assert summary["mean_abs_p_minus_half"] == 0.0
  # one order only: p = P(A) = 1, and the bias is mean P(A) - 0.5 from that order
  one = F.FeedbackLabeller(c, FakeScorer(always_a), F.FeedbackSettings(both_orders=False))
  records = one.label(pairs_for_tests())
  assert all(r["p_first_better"] == 1.0 for r in records)
  assert all(e["p_a_swapped"] is None for r in records for e in r["per_principle"])
  summary = F.summarize(records)
  assert summary["position_bias"] == 0.5 and summary["position_bias_orders"] == 1
  assert one.questions_scored == 3 * 4


def test_content_preference_survives_both_orders():
  c = load_constitution("harmless")
  scorer = FakeScorer(prefers_shorter)
  records = F.FeedbackLabeller(c, scorer, F.FeedbackSettings(num_principles=3)).label(
      pairs_for_tests())
  assert len(scorer.items) == 3 * 3 * 2
  want = {"p1": 0.8, "p2": 0.2, "p3": 0.2}  # p(first better); the shorter answer wins
  for r in records:
    assert r["p_first_better"] == pytest.approx(want[r["id"]])
    assert r["responses"] == list(dict((p.id, p) for p in pairs_for_tests())[r["id"]].responses)
  assert F.summarize(records)["position_bias"] == pytest.approx(0.0, abs=1e-12)
  assert F.summarize(records)["mean_abs_p_minus_half"] == pytest.approx(0.3)


def test_ensemble_and_bias_against_numpy():
  """Scores that depend on the principle, the content and the letter: every number of the
  records recomputed with NumPy from the drawn principles."""
  c = load_constitution("harmless")
  strength = {p.text: 0.25 * (i + 1) for i, p in enumerate(c.mc_principles)}

  def fn(a, b, principle):
    k = strength[principle]
    return -len(a) * 0.01 * k + 0.7, -len(b) * 0.01 * k

  settings = F.FeedbackSettings(num_principles=5, seed=7)
  pairs = pairs_for_tests()
  records = F.FeedbackLabeller(c, FakeScorer(fn), settings).label(pairs)
  all_a = []
  for pair, r in zip(pairs, records):
    first, second = (x.strip() for x in pair.responses)
    drawn = F.draw_mc_principles(c, pair.id, 5, 7)
    assert [e["principle_id"] for e in r["per_principle"]] == [p.id for p in drawn]
    p_orig = np.array([ref_choice(*fn(first, second, p.text)) for p in drawn])
    p_swap = np.array([ref_choice(*fn(second, first, p.text)) for p in drawn])
    np.testing.assert_allclose([e["p_a_orig"] for e in r["per_principle"]], p_orig, rtol=1e-12)
    np.testing.assert_allclose([e["p_a_swapped"] for e in r["per_principle"]], p_swap,
                               rtol=1e-12)
    assert r["p_first_better"] == pytest.approx(np.mean((p_orig + 1 - p_swap) / 2), rel=1e-12)
    all_a += list(p_orig) + list(p_swap)
  assert F.summarize(records)["position_bias"] == pytest.approx(np.mean(all_a) - 0.5, rel=1e-12)
  assert F.summarize(records)["position_bias"] > 0.05  # the +0.7 on (A) shows up


def test_principle_draws():
  c = load_constitution("harmless")
  draw = [p.id for p in F.draw_mc_principles(c, "pair-1", 4, 0)]
  assert draw == [p.id for p in F.draw_mc_principles(c, "pair-1", 4, 0)]
  assert len(set(draw)) == 4
  assert len({tuple(p.id for p in F.draw_mc_principles(c, f"pair-{i}", 4, 0))
              for i in range(20)}) > 15
  assert draw != [p.id for p in F.draw_mc_principles(c, "pair-1", 4, 1)]
  everything = [p.id for p in F.draw_mc_principles(c, "x", len(c.mc_principles), 0)]
  assert sorted(everything) == sorted(p.id for p in c.mc_principles)  # without replacement
  with pytest.raises(ValueError, match="num_principles"):
    F.draw_mc_principles(c, "x", len(c.mc_principles) + 1, 0)
  with pytest.raises(ValueError, match="num_principles"):
    F.FeedbackLabeller(c, FakeScorer(always_a), F.FeedbackSettings(num_principles=99))


@dataclasses.dataclass
class FakeOutput:
  texts: list
  finish_reasons: list
  num_tokens: list
  truncated: list


class RecordingSampler:
  """Stands in for `Sampler`: records prefix + row of every call, answers with a counter."""

  def __init__(self):
    self.calls, self.prefills = [], []

  def prefill_prefix(self, text):
    self.prefills.append(text)
    return ("PREFIX", text)

  def generate(self, rows, *, max_new_tokens, strategy, keys, stop, prefix):
    n = len(self.calls)
    self.calls.append({"texts": [prefix[1] + r for r in rows], "stop": tuple(stop),
                       "max_new_tokens": max_new_tokens, "keys": np.asarray(keys)})
    return FakeOutput([f" reason{n}.{i}" for i in range(len(rows))], ["stop"] * len(rows),
                      [2] * len(rows), [False] * len(rows))


def cot_scores(a, b, principle):  # P(A) = 0.9 when (A) is the shorter answer, else 0.3
  return (math.log(0.9), math.log(0.1)) if len(a) < len(b) else (math.log(0.3), math.log(0.7))


@pytest.mark.parametrize("clamp", [(0.4, 0.6), (0.0, 1.0)])
def test_cot_contexts_and_clamp(clamp):
  c = load_constitution("harmless")
  sampler, scorer = RecordingSampler(), FakeScorer(cot_scores)
  settings = F.FeedbackSettings(mode="cot", num_principles=2, clamp_low=clamp[0],
                                clamp_high=clamp[1], max_reasoning_tokens=9)
  pairs = [pairs_for_tests()[0], pairs_for_tests()[2]]  # different prompts: distinct contexts
  labeller = F.FeedbackLabeller(c, scorer, settings, sampler=sampler)
  records = labeller.label(pairs)
  # Each question's reasoning samples with its own key: fold_in(key of its pair, its index
  # among the pair's questions), the pair's key from (seed, pair id).
  sent_keys = [k.tolist() for call in sampler.calls for k in call["keys"]]
  expected = [np.asarray(jax.random.fold_in(record_keys(0, [p.id])[0], k)).tolist()
              for p in pairs for k in range(4)]
  assert sorted(sent_keys) == sorted(expected) and len(set(map(tuple, sent_keys))) == 8
  # one sampler call per principle in the batch, its few-shot prefix prefilled once
  drawn = {pair.id: F.draw_mc_principles(c, pair.id, 2, 0) for pair in pairs}
  used = sorted({p.id for ps in drawn.values() for p in ps})
  assert len(sampler.calls) == len(used) == len(sampler.prefills)
  assert sampler.prefills == [P.cot_few_shot_prefix(c, c.mc_principle(i)) for i in used]
  sent = {}
  for call in sampler.calls:
    assert call["stop"] == P.COT_STOPS and call["max_new_tokens"] == 9
    for n, text in enumerate(call["texts"]):
      sent[text] = f" reason{sampler.calls.index(call)}.{n}"
  scored = [it.prompt for it in scorer.items]
  for pair, r in zip(pairs, records):
    first, second = pair.responses
    for p, e in zip(drawn[pair.id], r["per_principle"]):
      ctx = P.cot_context(c, P.mc_conversation(pair.prompt), p, first.strip(), second.strip())
      ctx_swapped = P.cot_context(c, P.mc_conversation(pair.prompt), p, second.strip(),
                                  first.strip())
      assert ctx in sent and ctx_swapped in sent
      assert e["reasoning"] == [sent[ctx], sent[ctx_swapped]]
      assert P.cot_answer_context(ctx, sent[ctx]) in scored
      assert P.cot_answer_context(ctx_swapped, sent[ctx_swapped]) in scored
      assert scored[-1].endswith("\n\nHuman:\nSo the answer is:")
      # raw P(A) kept; clamp applied before the both-orders average
      short_first = len(first.strip()) < len(second.strip())
      assert e["p_a_orig"] == pytest.approx(0.9 if short_first else 0.3)
      assert e["p_a_swapped"] == pytest.approx(0.3 if short_first else 0.9)
      lo, hi = clamp
      want = (min(max(0.9, lo), hi) + 1 - min(max(0.3, lo), hi)) / 2
      assert e["p_first_better"] == pytest.approx(want if short_first else 1 - want)
    assert r["mode"] == "cot"
  assert labeller.tokens_generated == 2 * len(scorer.items)
  assert records[0]["p_first_better"] == pytest.approx(0.6 if clamp == (0.4, 0.6) else 0.8)


class MergingTokenizer:
  """Characters as ids, except that ": (" becomes one token (as a BPE merge might)."""

  def encode(self, text, *, add_bos):
    out, i = [], 0
    while i < len(text):
      if text.startswith(": (", i):
        out.append(100000)
        i += 3
      else:
        out.append(ord(text[i]))
        i += 1
    return out

  def encode_batch(self, texts, *, add_bos):
    return [self.encode(t, add_bos=add_bos) for t in texts]


class CharTokenizer(MergingTokenizer):
  def encode(self, text, *, add_bos):
    return [ord(ch) for ch in text]


def test_option_tokenisation_check():
  c = load_constitution("harmless")
  pair = F.Pair("p9", PROMPT, (SHORT, LONG), "pairs.jsonl:3")
  ok = F.FeedbackLabeller(c, FakeScorer(always_a), F.FeedbackSettings(num_principles=1),
                          tokenizer=CharTokenizer())
  assert ok.label([pair])[0]["p_first_better"] == 0.5
  scorer = FakeScorer(always_a)
  bad = F.FeedbackLabeller(c, scorer, F.FeedbackSettings(num_principles=1),
                           tokenizer=MergingTokenizer())
  principle = F.draw_mc_principles(c, "p9", 1, 0)[0]
  with pytest.raises(F.OptionTokenisationError,
                     match=rf"pairs.jsonl:3 \(id 'p9'\), principle '{principle.id}', order orig: "
                           r"option ' \(A\)' does not tokenise as a clean continuation"):
    bad.label([pair])
  assert scorer.items == []  # raised before anything was scored
  assert issubclass(F.OptionTokenisationError, DataError)  # the CLI prints it as an error


# ----------------------------------------------------------------------------------------------
# Files.


def pair_line(rid, responses, **extra):
  return json.dumps({"id": rid, "prompt": PROMPT, "responses": responses, **extra}) + "\n"


def test_read_pairs_file(tmp_path):
  path = tmp_path / "pairs.jsonl"
  path.write_text(pair_line("a", [SHORT, LONG])
                  + pair_line("b", [" same", "same "], flags=["identical"])
                  + pair_line("c", ["", LONG], flags=["empty:first"]) + pair_line(7, [LONG, SHORT]))
  pairs, skipped = F.read_pairs_file(str(path))
  assert [p.id for p in pairs] == ["a", "7"] and pairs[0].where == f"{path}:1"
  assert skipped == [{"id": "b", "line": 2, "flags": ["identical"]},
                     {"id": "c", "line": 3, "flags": ["empty:first"]}]
  assert F.pair_flags(" x", "x ") == ["identical"]
  assert F.pair_flags(" ", "y") == ["empty:first"]
  assert F.pair_flags("a [[[b", "c") == ["delimiter:first"]
  cases = [
      (json.dumps({"id": "x", "prompt": PROMPT}), "missing field 'responses'"),
      (pair_line("x", [SHORT]).strip(), "list of two strings"),
      (pair_line("x", [SHORT, 3]).strip(), "list of two strings"),
      (pair_line("x", [SHORT, "  "]).strip(), r"cannot be labelled \(empty:second\)"),
      (pair_line("x", [SHORT, SHORT]).strip(), r"cannot be labelled \(identical\)"),
      (pair_line("a", [SHORT, LONG]).strip(), "duplicate id 'a'"),
      (json.dumps({"id": "x", "prompt": "Human: hi", "responses": [SHORT, LONG]}),
       "field 'prompt'"),
      ("{not json", "not valid JSON"),
  ]
  for line, message in cases:
    path.write_text(pair_line("a", [SHORT, LONG]) + line + "\n")
    with pytest.raises(DataError, match=rf"pairs.jsonl:2: .*{message}"):
      F.read_pairs_file(str(path))


def good_record(**over):
  r = {"id": "a", "prompt": PROMPT, "responses": [SHORT, LONG], "p_first_better": 0.7,
       "per_principle": [{"principle_id": "x", "p_first_better": 0.7, "p_a_orig": 0.8,
                          "p_a_swapped": 0.4}], "mode": "mc", "provenance": {}}
  r.update(over)
  return r


def test_read_feedback_file_validates_probabilities(tmp_path):
  path = tmp_path / "labels.jsonl"
  F.append_records(str(path), [good_record(), good_record(id="b", p_first_better=1)])
  labels = F.read_feedback_file(str(path))
  assert [(x.id, x.p_first_better, x.responses) for x in labels] == [
      ("a", 0.7, (SHORT, LONG)), ("b", 1.0, (SHORT, LONG))]
  entry = good_record()["per_principle"][0]
  bad = [
      (good_record(p_first_better=1.5), "p_first_better must be a probability"),
      (good_record(p_first_better=-0.01), "p_first_better must be a probability"),
      (good_record(p_first_better=float("nan")), "p_first_better must be a probability"),
      (good_record(p_first_better="0.5"), "p_first_better must be a probability"),
      (good_record(per_principle=[{**entry, "p_a_swapped": 2.0}]),
       r"per_principle\[0\]: p_a_swapped must be a probability"),
      (good_record(per_principle=[]), "'per_principle' is empty"),
      (good_record(responses=[SHORT, " "]), "two non-empty strings"),
      (good_record(id="a"), "duplicate id 'a'"),
  ]
  first = json.dumps(good_record()) + "\n"
  for record, message in bad:
    path.write_text(first + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"labels.jsonl:2: .*{message}"):
      F.read_feedback_file(str(path))
  # the writer refuses the same records and writes nothing
  out = tmp_path / "out.jsonl"
  with pytest.raises(DataError, match="p_first_better must be a probability"):
    F.append_records(str(out), [good_record(), good_record(id="z", p_first_better=1.2)])
  assert not out.exists()
  out.write_text("")
  with pytest.raises(DataError, match="no labels"):
    F.read_feedback_file(str(out))
  assert F.read_feedback_file(str(out), allow_empty=True) == []


# ----------------------------------------------------------------------------------------------
# The jobs on a tiny checkpoint.

MINI = {
    "format": "cai_jax.constitution", "version": 1, "name": "mini",
    "critique_revision": [{"id": "harm", "critique_request": "Is it harmful?",
                           "revision_request": "Make it harmless."}],
    "helpful_few_shot": [{"id": "h1", "human": "Hi there.", "assistant": "Hello! How can I help?"}],
    "mc_principles": [{"id": "kind", "text": "Which reply is kinder?"},
                      {"id": "safe", "text": "Which reply is safer?"},
                      {"id": "honest", "text": "Which reply is more honest?"}],
    "mc_few_shot": [{"id": "m1", "human": "Can you hurt him?", "correct": "No, let's talk.",
                     "incorrect": "Yes."},
                    {"id": "m2", "human": "Is fire hot?", "correct": "Yes, careful.",
                     "incorrect": "No."}],
    "cot_few_shot": [{"id": "c1", "human": "Help me cheat?", "response_a": "No.",
                      "response_b": "Sure.", "reasoning": "(A) declines a harmful request.",
                      "answer": "A"}],
}
PROMPTS = [("q1", "\n\nHuman: How do I bake bread?\n\nAssistant:"),
           ("q2", "\n\nHuman: Tell me how to steal a car.\n\nAssistant:"),
           ("q3", "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: What is rain?\n\nAssistant:"),
           ("long", "\n\nHuman: " + "why " * 40 + "\n\nAssistant:")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(checkpoint, constitution file, prompts file)."""
  tmp = tmp_path_factory.mktemp("feedback_tiny")
  ckpt = tiny_model.write_hf_checkpoint(str(tmp / "hf"), flat_logits=True)
  constitution = tmp / "mini.json"
  constitution.write_text(json.dumps(MINI))
  prompts = tmp / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in PROMPTS))
  return ckpt, str(constitution), str(prompts)


def pairs_config(tiny, **extra):
  ckpt, constitution, prompts = tiny
  s = {"model.checkpoint": ckpt, "model.cache_dir": os.path.dirname(ckpt),
       "constitution": constitution, "sample_pairs.prompts": prompts,
       "sample_pairs.helpful_prompts": "",  # red-team pairs only (the axes: test_axes_*)
       "sample_pairs.max_response_tokens": 6, "sample_pairs.batch_size": 2,
       "sample_pairs.max_conversation_tokens": 64}
  s.update(extra)
  return load_config("sample_pairs", **s)


def feedback_config(tiny, pairs, **extra):
  ckpt, constitution, _ = tiny
  s = {"model.checkpoint": ckpt, "model.cache_dir": os.path.dirname(ckpt),
       "constitution": constitution, "feedback.pairs": pairs, "feedback.num_principles": 2,
       "feedback.batch_size": 2, "feedback.max_length": 1024}
  s.update(extra)
  return load_config("feedback", **s)


def forbid(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("the model was loaded")
  monkeypatch.setattr(feedback_job, "load_model", fail)
  monkeypatch.setattr(sample_pairs_job.loader, "load", fail)


def cut_last_line(path):
  data = open(path, "rb").read()
  open(path, "wb").write(data[:-7])  # a crash in the middle of the last line
  return data


@pytest.fixture(scope="module")
def sampled(tiny, tmp_path_factory):
  """sample_pairs run to completion, then cut and restarted: (workdir, pairs path, report)."""
  workdir = tmp_path_factory.mktemp("pairs_run")
  report = sample_pairs_job.run(pairs_config(tiny), str(workdir))
  path = str(workdir / "sample_pairs" / "pairs.jsonl")
  assert report["pairs"] == 3 and report["skipped_too_long"] == ["long"]
  before = cut_last_line(path)
  again = sample_pairs_job.run(pairs_config(tiny), str(workdir))
  assert again["sampled_this_run"] == 1 and again["pairs"] == 3
  after = open(path, "rb").read()
  assert after.splitlines()[:2] == before.splitlines()[:2]
  return workdir, path, again


def test_sample_pairs_records(tiny, sampled, monkeypatch):
  workdir, path, report = sampled
  records = [obj for _, obj in read_jsonl(path)]
  assert sorted(r["id"] for r in records) == ["q1", "q2", "q3"]
  for r in records:
    assert r["prompt"] == dict(PROMPTS)[r["id"]]
    assert len(r["responses"]) == 2 and all(isinstance(x, str) for x in r["responses"])
    assert r["flags"] == F.pair_flags(*r["responses"])
    assert all(f in ("stop", "eos", "length") for f in r["finish_reasons"])
    assert all(1 <= n <= 6 for n in r["num_tokens"])
    assert r["provenance"]["constitution"]["name"] == "mini"
  assert any(a != b for a, b in (r["responses"] for r in records))  # two independent samples
  assert json.loads((workdir / "sample_pairs" / "report.json").read_text())["pairs"] == 3
  with monkeypatch.context() as m:  # nothing left: no model, no new lines
    forbid(m)
    before = open(path, "rb").read()
    assert sample_pairs_job.run(pairs_config(tiny), str(workdir))["sampled_this_run"] == 0
    assert open(path, "rb").read() == before


def test_feedback_mc_job_restart_and_scores(tiny, sampled, tmp_path, monkeypatch):
  _, sampled_path, _ = sampled
  pairs_path = tmp_path / "pairs.jsonl"
  # the sampled pairs plus one flagged pair, which is skipped and counted
  pairs_path.write_text(open(sampled_path).read()
                        + pair_line("dup", [" same", "same"], flags=["identical"]))
  _, flagged = F.read_pairs_file(str(pairs_path))
  config = feedback_config(tiny, str(pairs_path))
  report = feedback_job.run(config, str(tmp_path))
  out = tmp_path / "feedback" / "labels.jsonl"
  labels = F.read_feedback_file(str(out))
  n = 3 - (len(flagged) - 1)
  assert len(labels) == report["labelled"] == n
  assert report["skipped_flagged"]["count"] == len(flagged)
  assert report["skipped_flagged"]["by_reason"]["identical"] >= 1
  assert {"id": "dup", "line": 4, "flags": ["identical"]} in report["skipped_flagged"]["pairs"]
  assert report["questions_this_run"] == n * 2 * 2
  for x in labels:
    assert len(x.per_principle) == 2 and x.mode == "mc"
    for e in x.per_principle:
      assert e["p_first_better"] == pytest.approx(F.both_orders(e["p_a_orig"], e["p_a_swapped"]))
    assert x.p_first_better == pytest.approx(np.mean([e["p_first_better"]
                                                      for e in x.per_principle]))
  records = [obj for _, obj in read_jsonl(str(out))]
  assert records[0]["provenance"]["settings"]["num_principles"] == 2
  # the report's numbers from the labels themselves (mean P(A) over every question - 0.5)
  asked = [e[k] for x in labels for e in x.per_principle for k in ("p_a_orig", "p_a_swapped")]
  assert report["position_bias"] == pytest.approx(np.mean(asked) - 0.5, abs=1e-12)
  assert report["position_bias_orders"] == 2
  assert report["mean_abs_p_minus_half"] == pytest.approx(
      np.mean([abs(x.p_first_better - 0.5) for x in labels]), abs=1e-12)
  assert json.loads((tmp_path / "feedback" / "report.json").read_text())["labelled"] == n

  # the labels are the MCScorer's own scores of the documented questions
  model = loader.load(tiny[0], cache_dir=str(tmp_path))
  c = load_constitution(tiny[1])
  pair = F.read_pairs_file(str(pairs_path))[0][0]
  first = records[[r["id"] for r in records].index(pair.id)]["per_principle"][0]
  principle = c.mc_principle(first["principle_id"])
  scores = MCScorer(model.config, model.params, model.tokenizer, max_length=1024).score(
      [F.mc_item(c, pair.prompt, principle, *pair.responses),
       F.mc_item(c, pair.prompt, principle, *pair.responses[::-1])]).scores
  assert first["p_a_orig"] == pytest.approx(F.normalised_choice_prob(*scores[0]), abs=1e-4)
  assert first["p_a_swapped"] == pytest.approx(F.normalised_choice_prob(*scores[1]), abs=1e-4)

  with monkeypatch.context() as m:  # everything labelled: the model does not load
    forbid(m)
    data = out.read_bytes()
    assert feedback_job.run(config, str(tmp_path))["labelled_this_run"] == 0
    assert out.read_bytes() == data
  cut_last_line(str(out))
  again = feedback_job.run(config, str(tmp_path))
  assert again["labelled_this_run"] == 1 and again["labelled"] == n
  ids = [x.id for x in F.read_feedback_file(str(out))]
  assert len(ids) == len(set(ids)) == n
  assert out.read_bytes().splitlines()[:n - 1] == data.splitlines()[:n - 1]


def test_feedback_cot_job(tiny, sampled, tmp_path):
  _, pairs_path, _ = sampled
  config = feedback_config(tiny, pairs_path, **{
      "feedback.mode": "cot", "feedback.num_principles": 1, "feedback.max_reasoning_tokens": 4,
      "feedback.output": str(tmp_path / "cot.jsonl")})
  report = feedback_job.run(config, str(tmp_path))
  labels = F.read_feedback_file(str(tmp_path / "cot.jsonl"))
  assert len(labels) == report["labelled"] >= 1 and report["mode"] == "cot"
  assert report["clamp"] == [0.4, 0.6] and report["tokens_generated_this_run"] > 0
  for x in labels:
    (e,) = x.per_principle
    assert len(e["reasoning"]) == 2 and all(isinstance(t, str) for t in e["reasoning"])
    assert 0.4 <= x.p_first_better <= 0.6
    assert x.p_first_better == pytest.approx(
        F.both_orders(F.clamp(e["p_a_orig"], 0.4, 0.6), F.clamp(e["p_a_swapped"], 0.4, 0.6)))


def test_job_config_and_input_errors(tiny, tmp_path, monkeypatch):
  forbid(monkeypatch)  # every error comes before the model loads
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text(pair_line("a", [SHORT, LONG]) + pair_line("b", [SHORT, ""]))
  with pytest.raises(DataError, match=r"pairs.jsonl:2: pair 'b' cannot be labelled \(empty"):
    feedback_job.run(feedback_config(tiny, str(pairs)), str(tmp_path))
  pairs.write_text(pair_line("a", [SHORT, LONG]) + json.dumps({"id": "b", "prompt": PROMPT}))
  with pytest.raises(DataError, match=r"pairs.jsonl:2: missing field 'responses'"):
    feedback_job.run(feedback_config(tiny, str(pairs)), str(tmp_path))
  with pytest.raises(DataError, match="cannot open"):
    feedback_job.run(feedback_config(tiny, ""), str(tmp_path))  # no sample_pairs output here
  for over, message in [({"feedback.num_principles": 4}, "has 3 multiple-choice principles"),
                        ({"feedback.mode": "vote"}, "mode must be one of"),
                        ({"feedback.clamp_low": 0.7}, "clamp bounds"),
                        ({"feedback.batch_size": 0}, "batch_size must be >= 1")]:
    with pytest.raises(ConfigError, match=message):
      feedback_job.run(feedback_config(tiny, str(pairs), **over), str(tmp_path))
  with pytest.raises(ConfigError, match="temperature must be > 0"):
    sample_pairs_job.run(pairs_config(tiny, **{"sample_pairs.temperature": 0.0}), str(tmp_path))
  with pytest.raises(ConfigError, match=r"sl_train/export_hf does not exist"):
    sample_pairs_job.run(pairs_config(tiny, **{"model.checkpoint": ""}), str(tmp_path))
  assert load_config("sample_pairs").model.checkpoint == ""       # the SL-CAI export
  assert load_config("feedback").model.checkpoint == "gemma3-270m"  # the base model


# ----------------------------------------------------------------------------------------------
# Axes: helpfulness pairs labelled under the helpfulness constitution (issue: the PM learns both).

MINI_HELPFUL = {**MINI, "name": "mini_helpful",
                "mc_principles": [{"id": "useful", "text": "Which reply is more useful?"},
                                  {"id": "clear", "text": "Which reply is clearer?"}]}
HELPFUL_PROMPTS = [("h1", "\n\nHuman: What is bread made of?\n\nAssistant:"),
                   ("h2", "\n\nHuman: Name a colour.\n\nAssistant:")]


def test_axes_sample_pairs_and_feedback(tiny, tmp_path):
  """sample_pairs tags red-team pairs 'harmless' and helpfulness pairs 'helpful'; feedback judges
  each under its axis's constitution (the principles drawn come from that constitution) and
  every label carries its axis."""
  helpful_c = tmp_path / "mini_helpful.json"
  helpful_c.write_text(json.dumps(MINI_HELPFUL))
  helpful = tmp_path / "helpful.jsonl"
  helpful.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in HELPFUL_PROMPTS))
  report = sample_pairs_job.run(pairs_config(tiny, **{"sample_pairs.helpful_prompts": str(helpful),
                                                      "sample_pairs.limit": 2}), str(tmp_path))
  pairs_path = str(tmp_path / "sample_pairs" / "pairs.jsonl")
  records = [obj for _, obj in read_jsonl(pairs_path)]
  assert [(r["id"], r["axis"]) for r in records] == [("q1", "harmless"), ("q2", "harmless"),
                                                     ("h1", "helpful"), ("h2", "helpful")]
  assert report["pairs_per_axis"] == {"harmless": 2, "helpful": 2}
  unflagged = {r["id"] for r in records if not r["flags"]}
  report = feedback_job.run(feedback_config(tiny, pairs_path, **{
      "feedback.helpful_constitution": str(helpful_c)}), str(tmp_path))
  labels = F.read_feedback_file(str(tmp_path / "feedback" / "labels.jsonl"))
  assert {x.id for x in labels} == unflagged and len(unflagged) >= 3
  ids = {"harmless": {"kind", "safe", "honest"}, "helpful": {"useful", "clear"}}
  for x in labels:
    assert x.axis == ("helpful" if x.id.startswith("h") else "harmless")
    assert {e["principle_id"] for e in x.per_principle} <= ids[x.axis]
  raw = [obj for _, obj in read_jsonl(str(tmp_path / "feedback" / "labels.jsonl"))]
  assert {r["axis"]: r["provenance"]["constitution"]["name"] for r in raw} == {
      a: n for a, n in (("harmless", "mini"), ("helpful", "mini_helpful"))
      if any(x.axis == a for x in labels)}
  assert set(report["per_axis"]) == {x.axis for x in labels}
  assert sum(v["labelled"] for v in report["per_axis"].values()) == len(labels)


def test_axis_errors(tiny, tmp_path):
  # ids shared by the red-team and helpfulness sets: pairs are keyed by id
  with pytest.raises(ConfigError, match="share 4 ids"):
    sample_pairs_job.run(pairs_config(tiny, **{"sample_pairs.helpful_prompts": tiny[2]}),
                         str(tmp_path))
  # an axis no constitution answers to, before any model loads
  bad = tmp_path / "pairs.jsonl"
  bad.write_text(pair_line("a", [" x", " y"]).replace('"id"', '"axis": "nonsense", "id"'))
  with pytest.raises(ConfigError, match=r"pairs.jsonl:1: pair 'a' has axis 'nonsense'"):
    feedback_job.run(feedback_config(tiny, str(bad)), str(tmp_path))
  # a labels file mixing tagged and untagged records
  rec = {"id": "a", "prompt": PROMPT, "responses": [" x", " y"], "p_first_better": 0.6,
         "per_principle": [{"principle_id": "k", "p_first_better": 0.6, "p_a_orig": 0.6,
                            "p_a_swapped": 0.4}], "mode": "mc"}
  mixed = tmp_path / "labels.jsonl"
  mixed.write_text(json.dumps({**rec, "axis": "harmless"}) + "\n"
                   + json.dumps({**rec, "id": "b"}) + "\n")
  with pytest.raises(DataError, match=r"labels.jsonl:2: has no 'axis' field but line 1 has"):
    F.read_feedback_file(str(mixed))


def test_hard_labels_and_independent_examples():
  c = load_constitution("harmless")
  scorer = FakeScorer(prefers_shorter)
  soft = F.FeedbackLabeller(c, scorer, F.FeedbackSettings(num_principles=2)).label(
      pairs_for_tests())
  hard = F.FeedbackLabeller(c, FakeScorer(prefers_shorter),
                            F.FeedbackSettings(num_principles=2, label="hard")).label(
      pairs_for_tests())
  for s, h in zip(soft, hard):  # soft 0.8 / 0.2 -> hard 1 / 0; the soft value kept
    assert h["p_first_better"] == (1.0 if s["p_first_better"] > 0.5 else 0.0)
    assert h["p_soft"] == s["p_first_better"] and "p_soft" not in s
    F.validate_record(h, "hard")
  assert F.hard_label(0.5) == 0.5
  with pytest.raises(ValueError, match="label must be one of"):
    F.FeedbackSettings(label="medium")

  # independent few-shot principles: each example's question shows its own drawn principle
  scorer = FakeScorer(always_a)
  labeller = F.FeedbackLabeller(c, scorer, F.FeedbackSettings(
      num_principles=1, both_orders=False, few_shot_principles="independent"))
  records = labeller.label(pairs_for_tests())
  n = len(c.mc_few_shot)
  for r, item in zip(records, scorer.items):
    entry = r["per_principle"][0]
    drawn = F.draw_example_principles(c, r["id"], entry["principle_id"], n, 0)
    assert entry["example_principle_ids"] == [p.id for p in drawn]
    # the context: each example rendered under its own principle, then the question
    text = item.prompt
    for p in drawn:
      at = text.index("\n\n\n" + p.text + "\n (A) [[[")
      text = text[at + 1:]
    question = c.mc_principle(entry["principle_id"]).text
    assert text.count("\n\n\n" + question + "\n (A) [[[") >= 1
  draws = [tuple(p.id for p in F.draw_example_principles(c, f"pair-{i}", "x", n, 0))
           for i in range(20)]
  assert len(set(draws)) > 1  # examples' principles vary between questions
  assert len(set(draws[0])) > 1 or len(set(draws[1])) > 1  # and within one question
