"""Kill the whole pipeline anywhere, get the same result (tests/fault_injection.py).

The tiny pipeline runs once uninterrupted; a second workdir runs the same command as a
subprocess that is SIGKILLed eight times, once inside every stage: mid-line in a jsonl append
(sl_generate, feedback), right after a checkpoint save returned (sl_train; pm_train with
asynchronous saves, so the kill lands while orbax commits in the background), before a records
append (sample_pairs, eval), inside a PPO iteration (rl_train) and after a report figure was
written. Each kill is checked to have landed in its stage (the earlier stages finished, this
one not). The last run finishes in-process; then every artifact is compared with the
uninterrupted run's: records, pairs, labels, answers and judgements (the same records, each
once), the SL, PM and PPO exports (bitwise), eval's numbers and the report's text (the
pipeline's own timing table aside)."""

from __future__ import annotations

import json
import os
import re

import pytest

import fault_injection
from cai_jax import main
from cai_jax.pipeline.stages import done
from configs_loader import load_config
from test_pipeline import settings
import tiny_model

# (kill point, the stage it must land in), run one after the other in the same workdir
KILLS = [
    ("cai_jax.data.jsonl:append_jsonl:2:cut", "sl_generate"),
    ("cai_jax.train.checkpointing:TrainCheckpoints.save:2:after", "sl_train"),
    ("cai_jax.jobs.record_split:SplitOutput.append:1", "sample_pairs"),
    ("cai_jax.data.jsonl:append_jsonl:3:cut", "feedback"),
    ("cai_jax.train.checkpointing:TrainCheckpoints.save:1:after", "pm_train"),
    ("cai_jax.rl.ppo_trainer:PPOTrainer.update:2", "rl_train"),
    ("cai_jax.jobs.record_split:SplitOutput.append:3", "eval"),
    ("cai_jax.eval.plots:curves:1:after", "report"),
]
ORDER = ["sl_generate", "sl_train", "sample_pairs", "feedback", "pm_train", "rl_train", "eval",
         "report"]
RECORD_FILES = ["sl_generate/records.jsonl", "sl_generate/sl_train.jsonl",
                "sl_generate/sl_eval.jsonl", "sl_generate/helpful.jsonl",
                "sample_pairs/pairs.jsonl", "feedback/labels.jsonl", "eval/answers/base.jsonl",
                "eval/answers/sl.jsonl", "eval/answers/rl.jsonl", "eval/judgements.jsonl",
                "rl_train/probe.jsonl"]
EXPORTS = ["sl_train/export_hf/model.safetensors", "pm_train/pm/decoder/model.safetensors",
           "pm_train/pm/head.npz", "rl_train/export_hf/model.safetensors"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  folder = tmp_path_factory.mktemp("fault_assets")
  ckpt = tiny_model.write_hf_checkpoint(str(folder / "hf"), flat_logits=True)
  return {"folder": str(folder), "ckpt": ckpt, **tiny_model.write_pipeline_data(folder)}


def run_settings(assets) -> dict:
  return settings(assets, **{"sl_train.checkpoint_every": 1, "pm_train.checkpoint_every": 1,
                             "pm_train.async_checkpoints": True, "rl_train.iterations": 2,
                             "rl_train.checkpoint_every": 1})


def _records(path, workdir) -> list[str]:
  """The lines of a records file, the workdir's path replaced, sorted (a rerun may write the
  records of one batch in another order only if it redid them: duplicates stay visible)."""
  with open(path, encoding="utf-8") as f:
    return sorted(line.replace(str(workdir), "WORKDIR") for line in f if line.strip())


def _report_text(path, workdir) -> str:
  text = open(path, encoding="utf-8").read().replace(str(workdir), "WORKDIR")
  text = re.sub(r"report written [^.]*\.", "report written ...", text)
  return re.sub(r"## Pipeline\n.*?(?=\n## )", "## Pipeline (timings)\n", text, flags=re.S)


def test_killed_in_every_stage_finishes_with_the_same_artifacts(assets, tmp_path):
  s = run_settings(assets)
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  main.run(load_config("pipeline", **s), str(whole))

  cli = ["--config", "configs/pipeline.py", "--workdir", str(killed),
         *fault_injection.config_flags(s)]
  for point, stage in KILLS:
    proc = fault_injection.run_killed(point, cli)
    assert proc.returncode == -9, (point, proc.stderr[-3000:])
    before = ORDER[:ORDER.index(stage)]
    assert all(done(st, str(killed)) for st in before), (point, stage)
    assert not done(stage, str(killed)) and os.path.isdir(killed / stage), (point, stage)
  main.run(load_config("pipeline", **s), str(killed))

  for name in RECORD_FILES:
    a, b = _records(whole / name, whole), _records(killed / name, killed)
    assert len(b) == len(set(b)), f"{name}: duplicated records"
    assert a == b, name
  for name in EXPORTS:
    assert (whole / name).read_bytes() == (killed / name).read_bytes(), name
  for name, drop in (("eval/report.json", ()), ("eval/pm_scores.json", ("pm_version",))):
    # (pm_version hashes the PM files' modification times: it tells a retrained PM apart)
    a = json.loads((whole / name).read_text().replace(str(whole), "WORKDIR"))
    b = json.loads((killed / name).read_text().replace(str(killed), "WORKDIR"))
    assert {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop}, name
  assert _report_text(whole / "report/report.md", whole) == _report_text(
      killed / "report/report.md", killed)
