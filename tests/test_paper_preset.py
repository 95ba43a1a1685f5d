"""configs/paper.py: a pipeline config whose every stage builds and passes its job's own checks,
holding the paper's method settings, and the docs table that documents it (docs/paper_settings.md) (every field the
table names exists, and its preset and default columns are the configs' values)."""

from __future__ import annotations

import ast
import json
import os
import re

import pytest

from configs_loader import load_config

from cai_jax.pipeline import stages

SETTINGS_DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "paper_settings.md")
SECTION = "## The paper's settings (`configs/paper.py`)"


def lookup(config, dotted: str):
  node = config
  for key in dotted.split("."):
    if key not in node:
      raise KeyError(dotted)
    node = node[key]
  return node


def table_rows() -> list[list[str]]:
  """The cells of every row of the docs section's table (header and separator left out)."""
  with open(SETTINGS_DOC, encoding="utf-8") as f:
    text = f.read()
  assert text.count(SECTION) == 1, f"docs/paper_settings.md should have one section {SECTION!r}"
  body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
  lines = [ln.strip() for ln in body.splitlines() if ln.strip().startswith("|")]
  assert len(lines) > 2, "the section has no table"
  # "|" inside a cell only appears in backticks here; split on the column bars.
  rows = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]
  for row in rows:
    assert len(row) == 5, f"row should have 5 cells: {row}"
  return rows


def literal(cell: str):
  m = re.fullmatch(r"`([^`]*)`", cell)
  assert m, f"expected one backticked Python literal, got {cell!r}"
  return ast.literal_eval(m.group(1))


@pytest.fixture(scope="module")
def paper():
  return load_config("paper")


def test_is_a_pipeline_config(paper):
  assert paper.job == "pipeline"
  for stage in stages.STAGES:
    assert stage in paper, stage


def test_every_stage_config_builds_and_passes_its_checks(paper, tmp_path):
  # pm_train needs AI labels in the workdir (stage_config raises ConfigError without them).
  labels = tmp_path / "feedback" / "labels.jsonl"
  labels.parent.mkdir()
  labels.write_text(json.dumps({"id": "p0", "prompt": "\n\nHuman: Hi\n\nAssistant:",
                                "responses": ["Hello.", "Hi."], "p_first_better": 0.5}) + "\n")
  built = {s: stages.stage_config(paper, s, str(tmp_path)) for s in stages.STAGES}
  for stage, c in built.items():
    assert c.job == stage
    assert c.conversation.to_dict() == paper.conversation.to_dict()
    if stage != "report":
      own = paper[stage].to_dict()
      got = c[stage].to_dict()
      for field in ("pairs", "data", "eval_data", "ai_labels", "labels", "pm", "stages"):  # wired
        own.pop(field, None)
        got.pop(field, None)
      assert got == own, stage
  assert built["pm_train"].pm_train.ai_labels == str(labels)
  assert built["sl_train"].optim.to_dict() == paper.optim.sl_train.to_dict()

  # The jobs' own validation, without a model: the preset's values are ones they accept.
  from cai_jax.jobs import feedback, pm_train, rl_train, sample_pairs, sl_generate, sl_train
  from cai_jax.train import memory
  sl_generate.check(built["sl_generate"].sl_generate)
  sample_pairs.check(built["sample_pairs"].sample_pairs)
  settings = feedback.settings_from_config(built["feedback"])
  assert (settings.num_principles, settings.few_shot_principles) == (1, "independent")
  for stage, job in (("sl_train", sl_train), ("pm_train", pm_train), ("rl_train", rl_train)):
    job.check_config(built[stage][stage], memory.mesh_for(built[stage], 1))


def test_the_papers_values(paper):
  g = paper.sl_generate
  assert (g.rounds, g.targets, g.skip_critique, g.continue_transcript) == (
      4, "all_revisions", False, True)
  assert g.temperature == 1.0 and g.helpful_prompts
  assert g.helpful_ratio == pytest.approx(2 * 135_296 / 182_831, abs=0.005)
  assert paper.sl_train.epochs == 1 and paper.sl_train.steps == 0
  assert (paper.optim.sl_train.end_factor, paper.optim.sl_train.warmup_steps) == (1.0, 0)
  f = paper.feedback
  assert (f.mode, f.num_principles, f.few_shot_principles, f.label) == (
      "mc", 1, "independent", "soft")
  assert (f.clamp_low, f.clamp_high) == (0.4, 0.6)
  assert paper.pm_train.epochs == 1 and paper.pm_train.append_eos
  rl = paper.rl_train
  assert (rl.kl_coef, rl.adaptive_kl, rl.clip_eps, rl.gamma, rl.ent_coef) == (
      0.001, False, 0.2, 1.0, 0.0)
  assert rl.max_new_tokens == 128 and not rl.normalize_reward
  assert paper.conversation.to_dict() == {"format": "hh", "policy_prefix": "none"}
  # Fields newer than some configs/rl_train.py: set wherever the pipeline has them.
  if "helpful_fraction" in load_config("pipeline").rl_train:
    assert rl.helpful_prompts == "helpful:train"
    assert rl.helpful_fraction == pytest.approx(
        (135_296 + 474_300) / (182_831 + 491_142 + 135_296 + 474_300), abs=0.0005)


def test_cot_mode_keeps_the_papers_clamp(paper):
  """RL-CAI w/ CoT is one flag away: --config.feedback.mode=cot, clamped to 40-60%."""
  from cai_jax.jobs import feedback
  c = paper.copy_and_resolve_references()
  c.feedback.mode = "cot"
  s = feedback.settings_from_config(c)
  assert (s.mode, s.clamp_low, s.clamp_high, s.label) == ("cot", 0.4, 0.6, "soft")


def test_scale_is_the_pipelines(paper):
  """The preset sets the method, not the size of a run."""
  base = load_config("pipeline")
  assert paper.model.to_dict() == base.model.to_dict()
  for stage, fields in (("sl_generate", ("limit", "batch_size")),
                        ("sample_pairs", ("limit", "helpful_limit", "batch_size")),
                        ("sl_train", ("batch_size", "max_length")),
                        ("pm_train", ("batch_size", "max_length")),
                        ("rl_train", ("iterations", "batch_size", "minibatch_size"))):
    for field in fields:
      assert paper[stage][field] == base[stage][field], f"{stage}.{field}"
  for trainer in ("sl_train", "pm_train", "rl_train"):
    assert paper.optim[trainer].learning_rate == base.optim[trainer].learning_rate


def test_readme_table_matches_the_configs(paper):
  base = load_config("pipeline")
  rows = table_rows()
  named = []
  for setting, _, preset, default, _ in rows:
    fields = re.findall(r"`([^`]+)`", setting)
    assert len(fields) == 1, f"one config field per row: {setting!r}"
    field = fields[0]
    named.append(field)
    try:
      value = lookup(paper, field)
    except KeyError:
      pytest.fail(f"docs/paper_settings.md names {field!r}, which configs/paper.py does not have")
    assert literal(preset) == value, f"{field}: table says preset {preset}, config has {value!r}"
    assert literal(default) == lookup(base, field), \
        f"{field}: table says default {default}, configs/pipeline.py has {lookup(base, field)!r}"
  assert len(set(named)) == len(named), "a field listed twice"
  for must in ("sl_generate.rounds", "sl_generate.targets", "sl_generate.helpful_ratio",
               "feedback.mode", "feedback.num_principles", "feedback.clamp_low",
               "feedback.label", "pm_train.human_comparisons", "rl_train.kl_coef",
               "rl_train.prompts"):
    assert must in named, must


def test_the_preset_runs_as_a_pipeline(tmp_path):
  """configs/paper.py runs end to end as the pipeline job (tiny checkpoint, tiny counts; every
  method setting of the preset kept: 4 critique/revision rounds, all revisions, independent
  few-shot principles, one principle per label, both prompt sets in RL at 0.475, KL 0.001)."""
  import tiny_model
  from cai_jax import main
  ckpt = tiny_model.write_hf_checkpoint(str(tmp_path / "hf"), flat_logits=True)
  data = tiny_model.write_pipeline_data(tmp_path)
  small = {
      "model.checkpoint": ckpt, "model.cache_dir": str(tmp_path / "cache"),
      "constitution": tiny_model.write_short_constitution(str(tmp_path / "short.json")),
      "sl_generate.prompts": data["prompts"], "sl_generate.helpful_prompts": data["helpful"],
      "sl_generate.batch_size": 4, "sl_generate.max_response_tokens": 4,
      "sl_generate.max_critique_tokens": 4, "sl_generate.max_revision_tokens": 4,
      "sl_generate.drop_flagged": False, "sl_generate.report_examples": 0,
      "sl_train.batch_size": 2, "sl_train.steps": 1, "sl_train.max_length": 128,
      "sl_train.progress": False, "sl_train.async_checkpoints": False,
      "sample_pairs.prompts": data["prompts"], "sample_pairs.helpful_prompts": data["helpful"],
      "sample_pairs.batch_size": 4, "sample_pairs.max_response_tokens": 4,
      "feedback.batch_size": 4, "feedback.max_length": 2048,
      "feedback.helpful_constitution": tiny_model.write_short_constitution(
          str(tmp_path / "short_helpful.json")),
      "pm_train.batch_size": 4, "pm_train.steps": 1, "pm_train.max_length": 128,
      "pm_train.progress": False, "pm_train.async_checkpoints": False,
      "optim.pm_train.warmup_steps": 0,
      "rl_train.prompts": data["prompts"], "rl_train.helpful_prompts": data["helpful"],
      "rl_train.iterations": 1, "rl_train.batch_size": 4, "rl_train.minibatch_size": 2,
      "rl_train.ppo_epochs": 1, "rl_train.max_prompt_tokens": 48, "rl_train.max_new_tokens": 4,
      "rl_train.sample_every": 0, "rl_train.progress": False, "rl_train.probe_count": 0,
      "rl_train.async_checkpoints": False,
      "eval.red_team_prompts": data["probes"], "eval.helpful_prompts": data["helpful"],
      "eval.num_prompts": 1, "eval.answer_max_tokens": 4, "eval.judge_principles": 1,
      "eval.num_bootstrap": 10, "eval.progress": False}
  config = load_config("paper", **small)
  assert config.sl_generate.rounds == 4 and config.feedback.few_shot_principles == "independent"
  status = main.run(config, str(tmp_path / "run"))
  assert {k: s["status"] for k, s in status["stages"].items()} == {
      **{k: "ran" for k in stages.STAGES}, "po_train": "not_selected"}, status  # PPO: the paper's
  labels = [json.loads(x) for x in open(tmp_path / "run" / "feedback" / "labels.jsonl")]
  assert labels and all("axis" in x for x in labels)
  assert all(len(e["example_principle_ids"]) == 1 for x in labels for e in x["per_principle"])
  rl = [json.loads(x) for x in open(tmp_path / "run" / "rl_train" / "metrics.jsonl")]
  assert rl[-1]["kl_coef"] == 0.001 and rl[-1]["rows_helpful"] == 2  # round(4 x 0.475)
