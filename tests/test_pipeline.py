"""The `pipeline` job on a tiny checkpoint: every stage runs in order and leaves its outputs; a
second run skips every stage; a missing finished output reruns only that stage;
pipeline.rerun_from reruns a stage and every later one."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from cai_jax import main
from cai_jax.data import sources
from cai_jax.config_defaults import ConfigError
from cai_jax.jobs import pipeline
from cai_jax.metrics import read_metrics
from configs_loader import load_config
import tiny_model


STAGES = list(pipeline.STAGES)
# The default RL-CAI algorithm is PPO (rl_train); po_train runs when pipeline.rl.algorithm
# names dpo or ipo.
NOT_RUN = {"po_train": "not_selected"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  folder = tmp_path_factory.mktemp("pipeline_assets")
  ckpt = tiny_model.write_hf_checkpoint(str(folder / "hf"), flat_logits=True)
  return {"folder": str(folder), "ckpt": ckpt, **tiny_model.write_pipeline_data(folder)}


def settings(assets, **extra):
  s = {"model.checkpoint": assets["ckpt"], "model.cache_dir": assets["folder"],
       "sl_generate.limit": 4, "sl_generate.rounds": 1, "sl_generate.batch_size": 4,
       "sl_generate.max_response_tokens": 4, "sl_generate.max_critique_tokens": 4,
       "sl_generate.max_revision_tokens": 4, "sl_generate.report_examples": 0,
       "sl_generate.drop_flagged": False, "sl_generate.helpful_ratio": 0.5,
       "sl_train.batch_size": 2, "sl_train.steps": 2, "sl_train.max_length": 128,
       "sl_train.progress": False, "sl_train.async_checkpoints": False,
       "optim.sl_train.warmup_steps": 1,
       "sample_pairs.limit": 4, "sample_pairs.helpful_prompts": assets["helpful"], "sample_pairs.temperature": 1.0, "sample_pairs.batch_size": 4,
       "sample_pairs.max_response_tokens": 4,
       "feedback.num_principles": 1, "feedback.batch_size": 4,
       "pm_train.human_comparisons": assets["comparisons"], "pm_train.batch_size": 4,
       "pm_train.steps": 2, "pm_train.max_length": 128, "pm_train.progress": False,
       "pm_train.async_checkpoints": False, "optim.pm_train.warmup_steps": 1,
       "rl_train.prompts": assets["prompts"], "rl_train.helpful_prompts": assets["helpful"],
       "rl_train.iterations": 1,
       "rl_train.batch_size": 4, "rl_train.minibatch_size": 2, "rl_train.ppo_epochs": 1,
       "rl_train.max_prompt_tokens": 48, "rl_train.max_new_tokens": 4,
       "rl_train.sample_every": 0, "rl_train.progress": False,
       "rl_train.probe_prompts": assets["probes"], "rl_train.probe_count": 2,
       "rl_train.async_checkpoints": False,
       "po_train.batch_size": 2, "po_train.steps": 2, "po_train.max_length": 128,
       "po_train.eval_batch_size": 2, "po_train.kl_prompts": 1, "po_train.kl_max_new_tokens": 4,
       "po_train.progress": False, "po_train.async_checkpoints": False,
       "optim.po_train.warmup_steps": 1,
       "eval.comparisons": assets["comparisons"], "eval.batch_size": 2, "eval.progress": False,
       "eval.num_prompts": 2, "eval.answer_max_tokens": 4,
       "eval.answer_temperature": 1.0, "eval.answer_batch_size": 4, "eval.judge_principles": 1,
       "eval.num_bootstrap": 20, "eval.mc_max_length": 1024}
  s.update(extra)
  return s


def run(assets, workdir, **extra):
  return main.run(load_config("pipeline", **settings(assets, **extra)), str(workdir))


def states(status):
  return {s: status["stages"][s]["status"] for s in STAGES}


def test_stage_configs_match_the_stage_config_files(tmp_path):
  config = load_config("pipeline")
  for stage in STAGES:
    own = load_config(stage)
    if stage == "pm_train":  # needs labels or comparisons to build
      config.pm_train.human_comparisons = "h.jsonl"
    built = pipeline.stage_config(config, stage, str(tmp_path))
    assert set(built.keys()) == set(own.keys()), stage
    assert set(built[stage].keys()) == set(own[stage].keys()), stage
    assert built.job == stage
  w = str(tmp_path)
  assert pipeline.stage_config(config, "sl_train", w).sl_train.data == os.path.join(
      w, "sl_generate", "sl_train.jsonl")
  rl = pipeline.stage_config(config, "rl_train", w)
  assert rl.model.checkpoint == os.path.join(w, "sl_train", "export_hf")
  assert rl.rl_train.pm == os.path.join(w, "pm_train", "pm")
  assert rl.optim.learning_rate == 1e-6 and rl.optim.end_factor == 1.0
  assert pipeline.stage_config(config, "feedback", w).model.checkpoint == "gemma3-270m"
  config.pm_train.human_comparisons = ""
  with pytest.raises(ConfigError, match="no AI labels"):
    pipeline.stage_config(config, "pm_train", w)
  with pytest.raises(ConfigError, match="unknown stage"):
    pipeline.selected_stages(load_config("pipeline", **{"pipeline.stages": "sl_gen"}).pipeline)
  assert pipeline.selected_stages(load_config("pipeline", **{
      "pipeline.stages": "eval,sl_train,feedback", "pipeline.stop_after": "feedback"}
  ).pipeline) == ["sl_train", "feedback"]
  # pipeline.rl.algorithm picks the RL-CAI stage(s) and po_train's loss
  select = lambda **kw: pipeline.selected_stages(load_config("pipeline", **kw).pipeline)  # noqa: E731
  assert "po_train" not in select() and "rl_train" in select()
  assert {"po_train", "rl_train"} & set(select(**{"pipeline.rl.algorithm": "ipo"})) == {"po_train"}
  assert {"po_train", "rl_train"} <= set(select(**{"pipeline.rl.algorithm": "ppo,dpo"}))
  with pytest.raises(ConfigError, match="pipeline.stages lists po_train but pipeline.rl.algorithm"):
    select(**{"pipeline.stages": "po_train"})
  for bad in ("trpo", "dpo,ipo", ""):
    with pytest.raises(ConfigError, match="pipeline.rl.algorithm"):
      select(**{"pipeline.rl.algorithm": bad})
  # sampling weights this backend cannot use: refused before the first stage runs
  for dtype, why in (("float16", "float16 are not supported on cpu"), ("int4", "must be ''")):
    with pytest.raises(ConfigError, match=f"pipeline.sampling_param_dtype.*{why}"):
      pipeline.run(load_config("pipeline", **{"pipeline.sampling_param_dtype": dtype}),
                   str(tmp_path / "dtype"))
    assert not (tmp_path / "dtype" / "pipeline").exists()
  ipo = load_config("pipeline", **{"pipeline.rl.algorithm": "ipo"})
  built = pipeline.stage_config(ipo, "po_train", w)
  assert built.po_train.loss == "ipo" and built.po_train.labels == os.path.join(
      w, "feedback", "labels.jsonl")
  assert built.model.checkpoint == os.path.join(w, "sl_train", "export_hf")
  hard = load_config("pipeline", **{"pipeline.rl.algorithm": "dpo", "po_train.loss": "hard"})
  assert pipeline.stage_config(hard, "po_train", w).po_train.loss == "hard"
  with pytest.raises(ConfigError, match="contradicts pipeline.rl.algorithm"):
    pipeline.stage_config(load_config("pipeline", **{"pipeline.rl.algorithm": "ipo",
                                                     "po_train.loss": "hard"}), "po_train", w)


def test_red_team_rounds_plan_and_configs(tmp_path):
  """pipeline.red_team.attacks: the red-team stages run in rounds 2..N between the PM and PPO,
  with their config files' layout, wired to the previous policy, the round's PM and PPO's
  prompts; contradictory settings stop at once."""
  w = str(tmp_path)
  config = load_config("pipeline", **{"pipeline.rounds": 3, "pipeline.red_team.attacks": 5,
                                      "pipeline.red_team.keep": 2})
  steps = [name for name, _, _ in pipeline.plan(config, w)]
  for r in (2, 3):
    at = steps.index(f"round_{r}/pm_train")
    assert steps[at + 1:at + 4] == [f"round_{r}/red_team_generate", f"round_{r}/red_team_attack",
                                    f"round_{r}/rl_train"]
  assert not any("red_team" in n for n in steps if not n.startswith("round_"))
  for stage in ("red_team_generate", "red_team_attack"):
    own = load_config(stage)
    built = pipeline.stage_config(config, stage, w, 3)
    assert set(built.keys()) == set(own.keys()), stage
    assert set(built[stage].keys()) == set(own[stage].keys()), stage
    assert built.job == stage
  gen = pipeline.stage_config(config, "red_team_generate", w, 3)
  assert gen.red_team_generate.num_prompts == 5 and gen.model.checkpoint == "gemma3-270m"
  r2, r3 = os.path.join(w, "round_2"), os.path.join(w, "round_3")
  attack = pipeline.stage_config(config, "red_team_attack", w, 3).red_team_attack
  assert attack.pm == os.path.join(r3, "pm_train", "pm") and attack.keep == 2
  assert attack.candidates == os.path.join(r3, "red_team_generate", "prompts.jsonl")
  assert attack.base_prompts == os.path.join(r2, "red_team_attack", "prompts.jsonl")
  assert attack.id_prefix == "attack-r3-"
  assert pipeline.stage_config(config, "red_team_attack", w, 2).red_team_attack.base_prompts \
      == "red_team:train"  # round 2 starts from PPO's own prompts
  assert pipeline.stage_config(config, "red_team_attack", w, 3).model.checkpoint == \
      os.path.join(r2, "rl_train", "export_hf")
  assert pipeline.stage_config(config, "rl_train", w, 3).rl_train.prompts == os.path.join(
      r3, "red_team_attack", "prompts.jsonl")
  with pytest.raises(ConfigError, match="set pipeline.rounds >= 2"):
    pipeline.plan(load_config("pipeline", **{"pipeline.red_team.attacks": 5}), w)
  with pytest.raises(ConfigError, match="feeds the attacks to PPO"):
    pipeline.plan(load_config("pipeline", **{"pipeline.red_team.attacks": 5,
                                             "pipeline.rounds": 2,
                                             "pipeline.rl.algorithm": "dpo"}), w)


def test_whole_pipeline_then_skip_then_partial_rerun(assets, tmp_path, monkeypatch):
  status = run(assets, tmp_path)
  assert states(status) == {**{s: "ran" for s in STAGES}, **NOT_RUN}
  w = tmp_path
  for rel in ("sl_generate/records.jsonl", "sl_generate/sl_train.jsonl",
              "sl_generate/report.json", "sl_train/summary.json", "sl_train/export_hf",
              "sample_pairs/pairs.jsonl", "sample_pairs/report.json", "feedback/report.json",
              "pm_train/pm/pm.json", "pm_train/summary.json", "rl_train/summary.json",
              "rl_train/export_hf", "eval/report.json", "pipeline/config.json",
              "eval/answers/base.jsonl", "eval/answers/sl.jsonl", "eval/answers/rl.jsonl",
              "eval/judgements.jsonl", "report/report.md", "report/elo.png",
              "report/ppo_curves.png", "report/training_curves.png"):
    assert (w / rel).exists(), rel
  compared = json.loads((w / "eval/report.json").read_text())["stages"]
  assert [s["name"] for s in compared["stages"]] == ["base", "sl", "rl"]
  assert compared["stages"][2]["checkpoint"] == str(w / "rl_train" / "export_hf")
  assert set(compared["elo"]) == {"harmless", "helpful"} and compared["num_judgements"] == 12
  for stage in set(STAGES) - set(NOT_RUN):  # every stage's config recorded next to its output
    recorded = json.loads((w / stage / "config.json").read_text())
    assert recorded["job"] == stage
  assert json.loads((w / "sl_train/config.json").read_text())["sl_train"]["data"] == str(
      w / "sl_generate" / "sl_train.jsonl")
  # held-out data of the run's own making, wired by the pipeline (heldout_fraction 0.1 each):
  # one of the 4 revisions, evaluated by sl_train before and after
  held_out = [json.loads(x) for x in (w / "sl_generate/sl_eval.jsonl").read_text().splitlines()]
  trained = [json.loads(x) for x in (w / "sl_generate/sl_train.jsonl").read_text().splitlines()]
  assert len(held_out) == 1 and held_out[0]["id"] not in {r["id"] for r in trained}
  assert json.loads((w / "sl_train/config.json").read_text())["sl_train"]["eval_data"] == str(
      w / "sl_generate" / "sl_eval.jsonl")
  sl_summary = json.loads((w / "sl_train/summary.json").read_text())
  assert sl_summary["held_out_examples"] == 1
  assert set(sl_summary["initial_eval"]) >= {"eval_loss"} and "eval_loss" in sl_summary["final"]
  report = (w / "report/report.md").read_text()
  assert "loss on 1 held-out revisions (NLL per token)" in report
  assert "**Probe** (greedy answers to the same held-out prompts" in report
  assert json.loads((w / "rl_train/config.json").read_text())["model"]["checkpoint"] == str(
      w / "sl_train" / "export_hf")
  on_disk = json.loads((w / "pipeline" / "status.json").read_text())
  assert states(on_disk) == {**{s: "ran" for s in STAGES}, **NOT_RUN}
  assert "pm" in on_disk["stages"]["pm_train"]["outputs"]

  # Second run: every stage skipped without running any job (so no model is loaded).
  calls = []
  real_run = main.run

  def recording_run(config, workdir):
    if config.job != "pipeline":
      calls.append(config.job)
    return real_run(config, workdir)

  monkeypatch.setattr(main, "run", recording_run)
  status = run(assets, tmp_path)
  assert states(status) == {**{s: "skipped" for s in STAGES}, **NOT_RUN} and calls == []

  # A missing finished output: only that stage runs (later ones are not invalidated).
  shutil.rmtree(w / "pm_train" / "pm")
  status = run(assets, tmp_path)
  assert states(status) == {**{s: "skipped" for s in STAGES}, **NOT_RUN, "pm_train": "ran"}
  assert calls == ["pm_train"] and (w / "pm_train/pm/pm.json").exists()

  # rerun_from: that stage and every later one run again, earlier ones are skipped.
  calls.clear()
  stamp = (w / "rl_train/summary.json").stat().st_mtime_ns
  status = run(assets, tmp_path, **{"pipeline.rerun_from": "rl_train"})
  assert states(status) == {**{s: "skipped" for s in STAGES}, **NOT_RUN, "rl_train": "ran",
                            "eval": "ran", "report": "ran"}
  assert calls == ["rl_train", "eval", "report"]
  assert (w / "rl_train/summary.json").stat().st_mtime_ns != stamp

  # pipeline.rl.algorithm='ppo,dpo': DPO on the feedback labels beside PPO, from the SL-CAI
  # policy; eval compares all four policies and the report shows them
  calls.clear()
  status = run(assets, tmp_path, **{"pipeline.rl.algorithm": "ppo,dpo",
                                    "pipeline.rerun_from": "po_train"})
  assert states(status) == {**{s: "skipped" for s in STAGES}, "po_train": "ran", "eval": "ran",
                            "report": "ran"}
  assert calls == ["po_train", "eval", "report"]
  po = json.loads((w / "po_train/config.json").read_text())
  assert po["po_train"]["labels"] == str(w / "feedback" / "labels.jsonl")
  assert po["po_train"]["loss"] == "dpo"
  assert po["model"]["checkpoint"] == str(w / "sl_train" / "export_hf")
  assert [r["step"] for r in read_metrics(w / "po_train/metrics.jsonl") if "loss" in r] == [1, 2]
  compared = json.loads((w / "eval/report.json").read_text())["stages"]
  assert [s["name"] for s in compared["stages"]] == ["base", "sl", "rl", "dpo"]
  assert compared["stages"][3]["checkpoint"] == str(w / "po_train" / "export_hf")
  assert "dpo" in (w / "report/report.md").read_text()

  # stages / stop_after select a subset; the rest is listed as not selected.
  status = run(assets, tmp_path, **{"pipeline.stages": "sl_train,pm_train,eval",
                                    "pipeline.stop_after": "pm_train"})
  assert states(status) == {**{s: "not_selected" for s in STAGES}, "sl_train": "skipped",
                            "pm_train": "skipped"}


  # pipeline.rounds=2 (iterated online RLAIF): round 2 samples pairs from round 1's PPO policy,
  # labels them, continues round 1's PM and runs PPO from that policy, in WORKDIR/round_2;
  # eval compares both rounds' policies with round 2's PM
  calls.clear()
  status = run(assets, tmp_path, **{"pipeline.rounds": 2, "pipeline.rerun_from": "eval"})
  round2 = ["round_2/sample_pairs", "round_2/feedback", "round_2/pm_train", "round_2/rl_train"]
  assert status["steps"][-6:] == round2 + ["eval", "report"]
  assert calls == ["sample_pairs", "feedback", "pm_train", "rl_train", "eval", "report"]
  assert all(status["stages"][s]["status"] == "ran" for s in round2 + ["eval", "report"])
  r2 = w / "round_2"
  assert json.loads((r2 / "sample_pairs/config.json").read_text())["model"]["checkpoint"] == \
      str(w / "rl_train" / "export_hf")
  pm2 = json.loads((r2 / "pm_train/config.json").read_text())
  assert pm2["model"]["checkpoint"] == str(w / "pm_train" / "pm")  # continued, head included
  assert pm2["pm_train"]["ai_labels"] == str(r2 / "feedback" / "labels.jsonl")
  assert pm2["seed"] == json.loads((w / "pm_train/config.json").read_text())["seed"] + 1
  rl2 = json.loads((r2 / "rl_train/config.json").read_text())
  assert rl2["model"]["checkpoint"] == str(w / "rl_train" / "export_hf")
  assert rl2["rl_train"]["pm"] == str(r2 / "pm_train" / "pm")
  round1_pairs = {x["id"]: x["responses"] for x in map(
      json.loads, (w / "sample_pairs/pairs.jsonl").read_text().splitlines())}
  round2_pairs = {x["id"]: x["responses"] for x in map(
      json.loads, (r2 / "sample_pairs/pairs.jsonl").read_text().splitlines())}
  assert set(round2_pairs) == set(round1_pairs) and round2_pairs != round1_pairs
  compared = json.loads((w / "eval/report.json").read_text())["stages"]
  # (the DPO policy of the earlier run is still in the workdir, compared under its loss)
  assert [s["name"] for s in compared["stages"]] == ["base", "sl", "rl", "dpo", "rl_2"]
  assert compared["stages"][4]["checkpoint"] == str(r2 / "rl_train" / "export_hf")
  assert json.loads((w / "eval/config.json").read_text())["eval"]["pm"] == str(
      r2 / "pm_train" / "pm")
  assert "rl_2" in (w / "report/report.md").read_text()
  # a run asking for fewer rounds than the workdir holds is refused, nothing removed
  with pytest.raises(ConfigError, match=r"pipeline.rounds=1 but .*round_2 exists"):
    run(assets, tmp_path, **{"pipeline.rerun_from": "eval"})
  assert (w / "eval/report.json").exists() and (r2 / "rl_train/export_hf").exists()

  # red teaming against the policy in a third round: round 2's policy answers proposed prompts,
  # round 3's PM scores them, the worst join PPO's prompts for round 3
  calls.clear()
  rt = {"pipeline.rounds": 3, "pipeline.red_team.attacks": 3, "pipeline.red_team.keep": 2,
        "pipeline.stop_after": "rl_train", "red_team_generate.max_attempts": 12,
        "red_team_generate.batch_size": 4, "red_team_generate.max_new_tokens": 8,
        "red_team_generate.min_words": 1, "red_team_attack.reference": assets["probes"],
        "red_team_attack.reference_count": 2, "red_team_attack.max_new_tokens": 4,
        "red_team_attack.batch_size": 4, "red_team_attack.max_prompt_length": 48,
        "red_team_attack.pm_batch_size": 2}
  status = run(assets, tmp_path, **rt)
  r3 = w / "round_3"
  assert calls[-3:] == ["red_team_generate", "red_team_attack", "rl_train"]
  assert status["stages"]["round_3/red_team_attack"]["status"] == "ran"
  report = json.loads((r3 / "red_team_attack/report.json").read_text())
  proposed = sources.load_prompt_set(str(r3 / "red_team_generate/prompts.jsonl"))
  assert report["candidates"] == len(proposed) > 0
  assert report["policy"] == str(r2 / "rl_train" / "export_hf")
  kept = [k["id"] for k in report["kept"]]
  assert len(kept) == min(2, len(proposed)) and all(k.startswith("attack-r3-") for k in kept)
  rl3 = json.loads((r3 / "rl_train/config.json").read_text())["rl_train"]
  assert rl3["prompts"] == str(r3 / "red_team_attack" / "prompts.jsonl")
  trained_on = [p.id for p in sources.load_prompt_set(rl3["prompts"])]
  # round 2 ran its red-team stages too (its PPO had already finished: skipped), and round 3's
  # prompts are round 2's file (PPO's prompts and its attacks) plus round 3's attacks
  base = [p.id for p in sources.load_prompt_set(str(r2 / "red_team_attack" / "prompts.jsonl"))]
  assert trained_on == base + kept
  assert base[:len(sources.load_prompt_set(assets["prompts"]))] == [
      p.id for p in sources.load_prompt_set(assets["prompts"])]
  rerun = run(assets, tmp_path, **rt)  # finished: every step skipped
  assert {v["status"] for k, v in rerun["stages"].items() if k.startswith("round_3/")} == \
      {"skipped"}
