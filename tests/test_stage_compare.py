"""Comparing checkpoints on held-out prompts (cai_jax.eval.stage_compare, job eval with
eval.stages) and the run report (cai_jax.eval.report, job report)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cai_jax import main, parallel
from cai_jax.checkpoints import loader
from cai_jax.config_defaults import ConfigError
from cai_jax.data import sources
from cai_jax.data.jsonl import read_jsonl
from cai_jax.eval import pm_eval, stage_compare as SC
from cai_jax.data import preferences as prefs
from cai_jax.model import heads
from cai_jax.train import pm as pm_lib
from configs_loader import load_config
import tiny_model


def test_parse_stages():
  stages = SC.parse_stages(" base=gemma3-270m, sl=runs/a/sl_train/export_hf ,rl=x=y")
  assert [(s.name, s.checkpoint) for s in stages] == [
      ("base", "gemma3-270m"), ("sl", "runs/a/sl_train/export_hf"), ("rl", "x=y")]
  for bad, msg in (("base=a", "at least two"), ("base=a,sl", "NAME=CHECKPOINT"),
                   ("base=a,base=b", "given twice"), ("b a=x,c=y", "may hold only")):
    with pytest.raises(ConfigError, match=msg):
      SC.parse_stages(bad)


def test_held_out_split_and_category_interleaving():
  test = sources.load_prompt_set("red_team:test")
  train = sources.load_prompt_set("red_team:train")
  every = sources.load_prompt_set("red_team")
  assert {r.id for r in test}.isdisjoint({r.id for r in train})
  assert len(test) + len(train) == len(every) and 10 <= len(test) <= 35
  assert all(sources.split_for(r.id) == "test" for r in test)
  mixed = SC.interleave_categories(test)
  cats = [r.category for r in mixed]
  n = len(set(cats))
  assert len(set(cats[:n])) == n  # the first n prompts cover every category once
  assert sorted(r.id for r in mixed) == sorted(r.id for r in test)
  assert SC.eval_prompts("helpful:test", 5) == SC.interleave_categories(
      sources.load_prompt_set("helpful:test"))[:5]


def _prompt(i):
  return sources.PromptRecord(f"p{i}", f"\n\nHuman: q{i}?\n\nAssistant:", "c")


def test_judgement_pairs_ties_and_delimiters():
  prompts = [_prompt(0), _prompt(1)]
  answers = {"base": {"harmless:p0": " same", "harmless:p1": " a [[[b]]]"},
             "sl": {"harmless:p0": "same ", "harmless:p1": " other"},
             "rl": {"harmless:p0": " x", "harmless:p1": " y"}}
  ask, ties = SC.judgement_pairs("harmless", ["base", "sl", "rl"], prompts, answers)
  assert [t["id"] for t in ties] == ["harmless:base|sl:p0"] and ties[0]["p_a_better"] == 0.5
  assert [p.id for p in ask] == ["harmless:base|sl:p1", "harmless:base|rl:p0",
                                 "harmless:base|rl:p1", "harmless:sl|rl:p0", "harmless:sl|rl:p1"]
  assert all("[[[" not in r and "]]]" not in r for p in ask for r in p.responses)
  rec = SC.judgement_record("harmless", {"id": "harmless:sl|rl:p1", "p_first_better": 0.7,
                                         "per_principle": []})
  assert (rec["a"], rec["b"], rec["prompt_id"], rec["p_a_better"]) == ("sl", "rl", "p1", 0.7)


def test_summarize_against_hand_computation():
  stages = ["base", "sl"]
  answers = {st: [{"id": f"{s}:p{i}", "set": s, "completion": "a b c"[: 1 + 2 * i],
                   "num_tokens": 3 + i, "finish_reason": "stop"}
                  for s in SC.SETS for i in range(3)] for st in stages}
  judgements = [{"id": f"{s}:base|sl:p{i}", "set": s, "a": "base", "b": "sl",
                 "prompt_id": f"p{i}", "p_a_better": q}
                for s in SC.SETS for i, q in enumerate((0.2, 0.4, 0.5))]
  pm_scores = {"base": {f"{s}:p{i}": float(i) for s in SC.SETS for i in range(3)},
               "sl": {f"{s}:p{i}": float(2 - i) for s in SC.SETS for i in range(3)}}
  out = SC.summarize(stages, answers, judgements, pm_scores, num_bootstrap=0, confidence=0.9,
                     seed=0, num_bins=10)
  # Bradley-Terry with soft outcomes for two players, by bisection: x = theta_base - theta_sl
  # (ratings summing to zero) solves sum(sigmoid(x) - s) + ridge * x / 2 = 0 (ridge 1e-3, the
  # fit's documented prior); sl's Elo over base is -x * 400 / ln 10.
  s = np.array([0.2, 0.4, 0.5])
  lo, hi = -10.0, 10.0
  for _ in range(200):
    mid = (lo + hi) / 2
    if np.sum(1 / (1 + np.exp(-mid)) - s) + 1e-3 * mid / 2 > 0:
      hi = mid
    else:
      lo = mid
  assert out["elo"]["harmless"]["elo"]["sl"] == pytest.approx(-lo * 400 / np.log(10), rel=1e-9)
  assert out["win_rates"]["helpful"][0]["win_rate_a"] == pytest.approx((0.2 + 0.4 + 0.5) / 3)
  assert out["pm_score"]["harmless"]["base"]["mean"] == pytest.approx(1.0)
  assert out["pm_score"]["harmless"]["sl"]["se"] == pytest.approx(np.std([2, 1, 0], ddof=1)
                                                                  / np.sqrt(3))
  assert out["lengths"]["helpful"]["sl"]["tokens"]["mean"] == pytest.approx(4.0)
  assert out["lengths"]["helpful"]["sl"]["finish_reasons"] == {"stop": 3}
  # PM vs judge: PM gaps base - sl = -2, 0, 2 -> P = sigmoid; judge 0.2, 0.4, 0.5
  pvj = out["pm_vs_judge"]
  p = 1 / (1 + np.exp(-np.array([-2.0, 0.0, 2.0] * 2)))
  q = np.array([0.2, 0.4, 0.5] * 2)
  decided = q != 0.5
  assert pvj["n"] == 6
  assert pvj["agreement"] == pytest.approx(np.mean((p[decided] > 0.5) == (q[decided] > 0.5)))
  pts_p, pts_q = np.concatenate([p, 1 - p]), np.concatenate([q, 1 - q])
  bins = np.clip(np.floor(np.round(pts_p * 10, 9)).astype(int), 0, 9)
  ece = sum(np.sum(bins == b) / len(pts_p) * abs(pts_q[bins == b].mean() - pts_p[bins == b].mean())
            for b in range(10) if np.any(bins == b))
  assert pvj["ece"] == pytest.approx(ece)


# ------------------------------------------------------------------------------ the jobs


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  folder = tmp_path_factory.mktemp("stage_compare")
  a = tiny_model.write_hf_checkpoint(str(folder / "a"), seed=0, flat_logits=True)
  b = tiny_model.write_hf_checkpoint(str(folder / "b"), seed=1, flat_logits=True)
  model = loader.load(a, cache_dir=str(folder))
  tiny_model.write_random_pm(str(folder / "pm"), model, seed=3)
  return {"a": a, "b": b, "pm": str(folder / "pm"), "cache": str(folder)}


def test_score_responses_equals_pair_scoring(assets):
  mesh = parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  loaded = heads.load_pm(assets["pm"], shardings_for=lambda c: pm_lib.param_shardings(c, mesh))
  scorer = pm_eval.PMScorer(loaded, mesh, batch_size=2)
  p1, p2 = "\n\nHuman: hi?\n\nAssistant:", "\n\nHuman: and you?\n\nAssistant:"
  items = [(p1, " one"), (p2, " two"), (p1, " three"), (p1, " four five")]
  got, _ = scorer.score_responses(items)
  want, _ = scorer.score([prefs.Preference("x", p1, (" one", " three"), 0.5),
                          prefs.Preference("y", p1, (" four five", " two"), 0.5)])
  ref, _ = scorer.score([prefs.Preference("z", p2, (" two", " two"), 0.5)])
  np.testing.assert_allclose(got, [want[0, 0], ref[0, 0], want[0, 1], want[1, 0]], rtol=1e-5)


def _eval_config(assets, **extra):
  s = {"model.checkpoint": assets["a"], "model.cache_dir": assets["cache"],
       "eval.stages": f"first={assets['a']},second={assets['b']}", "eval.pm": assets["pm"],
       "eval.num_prompts": 3, "eval.answer_max_tokens": 4,
       "eval.answer_temperature": 1.0,
       "eval.answer_batch_size": 4, "eval.judge_principles": 2, "eval.judge_batch_size": 2,
       "eval.num_bootstrap": 50, "eval.batch_size": 2, "eval.progress": False,
       "eval.mc_max_length": 512, "eval.mc_tokens_per_batch": 2048}
  s.update(extra)
  return load_config("eval", **s)


def test_eval_stages_then_resume_then_report(assets, tmp_path, monkeypatch):
  w = tmp_path
  report = main.run(_eval_config(assets), str(w))["stages"]
  answers = {n: [o for _, o in read_jsonl(str(w / "eval" / "answers" / f"{n}.jsonl"))]
             for n in ("first", "second")}
  assert all(len(v) == 6 for v in answers.values())  # 3 harmless + 3 helpful prompts
  assert {a["set"] for a in answers["first"]} == set(SC.SETS)
  held_out = {r.id for r in sources.load_prompt_set("red_team:test")}
  assert {a["prompt_id"] for a in answers["first"] if a["set"] == "harmless"} <= held_out
  judged = [o for _, o in read_jsonl(str(w / "eval" / "judgements.jsonl"))]
  assert len(judged) == 6 and len({j["id"] for j in judged}) == 6
  for j in judged:  # the judge's label: the mean of its principles' both-orders probabilities
    assert "tie" in j or len(j["per_principle"]) == 2
    want = np.mean([e["p_first_better"] for e in j["per_principle"]]) if "tie" not in j else 0.5
    assert j["p_a_better"] == pytest.approx(want, abs=1e-12)
  assert set(report["elo"]) == set(SC.SETS)
  assert report["elo"]["harmless"]["elo"]["first"] == 0.0
  assert report["num_judgements"] == 6 and report["pm"] is not None
  scores = json.loads((w / "eval" / "pm_scores.json").read_text())["scores"]
  assert len(scores["first"]) == len(scores["second"]) == 6
  assert os.path.exists(report["pm_vs_judge"]["reliability_png"])

  # A rerun loads no model at all (answers, judgements and PM scores are on disk).
  loads, pm_loads = [], []
  real, real_pm = loader.load, heads.load_pm

  def counting_load(path, *a, **k):
    if not path.startswith(assets["pm"]):
      loads.append(path)
    return real(path, *a, **k)

  def counting_pm_load(folder, *a, **k):
    pm_loads.append(folder)
    return real_pm(folder, *a, **k)

  monkeypatch.setattr(loader, "load", counting_load)
  monkeypatch.setattr(heads, "load_pm", counting_pm_load)
  again = main.run(_eval_config(assets), str(w))["stages"]
  assert loads == [] and pm_loads == [] and again["elo"] == report["elo"]
  assert json.loads((w / "eval" / "pm_scores.json").read_text())["scores"] == scores
  assert again["pm_vs_judge"] == report["pm_vs_judge"]
  # A crash that lost the last judgements and an answer: only those are redone, no duplicates.
  lines = (w / "eval" / "judgements.jsonl").read_text().splitlines(keepends=True)
  (w / "eval" / "judgements.jsonl").write_text("".join(lines[:-2]))
  ans = (w / "eval" / "answers" / "second.jsonl").read_text().splitlines(keepends=True)
  (w / "eval" / "answers" / "second.jsonl").write_text("".join(ans[:-1]))
  main.run(_eval_config(assets), str(w))
  assert sorted(loads) == sorted([assets["b"], assets["a"]])  # one stage resampled, the judge
  judged2 = [o for _, o in read_jsonl(str(w / "eval" / "judgements.jsonl"))]
  assert len(judged2) == 6 and len({j["id"] for j in judged2}) == 6
  assert len([1 for _ in read_jsonl(str(w / "eval" / "answers" / "second.jsonl"))]) == 6

  # The report job turns it into report.md and figures.
  result = main.run(load_config("report", **{"report.examples": 2}), str(w))
  md = (w / "report" / "report.md").read_text()
  for name in ("elo", "pm_scores", "pm_calibration"):
    assert os.path.getsize(result["figures"][name]) > 10_000
    assert f"({name}.png)" in md
  assert "| `second` |" in md and "Win rates" in md and "**harmless 1**" in md
  assert "## RL-CAI (PPO against the preference model)\n\nNot run." in md


def test_eval_stages_bad_config(assets, tmp_path):
  with pytest.raises(ConfigError, match="at least two"):
    main.run(_eval_config(assets, **{"eval.stages": "only=x"}), str(tmp_path))
  with pytest.raises(ConfigError, match="judge_principles=9"):
    main.run(_eval_config(assets, **{"eval.judge_principles": 9}), str(tmp_path))
  with pytest.raises(ConfigError, match="policy_prefix must be one of"):
    main.run(_eval_config(assets, **{"conversation.policy_prefix": "some"}), str(tmp_path))
  # The stage settings are checked before the other sections load a model: with a PM
  # comparison file whose PM folder does not exist, the stage error still comes first.
  hhh = tmp_path / "hhh.jsonl"
  hhh.write_text(json.dumps({"text_correct": "\n\nHuman: hi\n\nAssistant: hello",
                             "text_incorrect": "\n\nHuman: hi\n\nAssistant: go away"}) + "\n")
  with pytest.raises(ConfigError, match="judge_principles=9"):
    main.run(_eval_config(assets, **{"eval.judge_principles": 9, "eval.hhh": str(hhh),
                                     "eval.pm": str(tmp_path / "no_pm")}), str(tmp_path))


def test_report_of_an_empty_workdir(tmp_path):
  result = main.run(load_config("report"), str(tmp_path))
  md = open(result["markdown"]).read()
  assert result["figures"] == {} and "Not run" in md
