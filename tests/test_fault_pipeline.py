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


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  folder = tmp_path_factory.mktemp("fault_assets")
  ckpt = tiny_model.write_hf_checkpoint(str(folder / "hf"), flat_logits=True)
  return {"folder": str(folder), "ckpt": ckpt, **tiny_model.write_pipeline_data(folder)}


def run_settings(assets) -> dict:
  return settings(assets, **{"sl_train.checkpoint_every": 1, "pm_train.checkpoint_every": 1,
                             "pm_train.async_checkpoints": True, "rl_train.iterations": 2,
                             "rl_train.checkpoint_every": 1})


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

  assert fault_injection.pipeline_differences(whole, killed) == []
  for name in fault_injection.RECORD_FILES + fault_injection.EXPORTS + (
      "eval/report.json", "eval/pm_scores.json", "report/report.md"):
    assert (whole / name).exists(), name  # every artifact was compared


def test_pipeline_differences_sees_each_kind_of_difference(tmp_path):
  """The comparison the kill tests rely on reports a duplicated or changed record, a changed
  export byte, a changed eval number, changed report text and a file on one side only, and
  nothing for two copies that differ only in their workdir path and timing table."""
  def write(root, dup=False, record="a", byte=b"\x00", acc=0.5, text="x", extra=False):
    (root / "sample_pairs").mkdir(parents=True)
    lines = [f'{{"id": "1", "path": "{root}/f", "v": "{record}"}}', '{"id": "2"}']
    (root / "sample_pairs/pairs.jsonl").write_text("\n".join(lines + lines[:1] * dup) + "\n")
    (root / "pm_train/pm").mkdir(parents=True)
    (root / "pm_train/pm/head.npz").write_bytes(b"head" + byte)
    (root / "eval").mkdir()
    (root / "eval/report.json").write_text(json.dumps({"acc": acc, "dir": str(root)}))
    (root / "report").mkdir()
    (root / "report/report.md").write_text(
        f"# r\n## Pipeline\n| sl | {len(str(root))} s |\n## Elo\n{text}\n")
    if extra:
      (root / "feedback").mkdir()
      (root / "feedback/labels.jsonl").write_text("{}\n")

  cases = {"same": {}, "dup": {"dup": True}, "record": {"record": "b"},
           "byte": {"byte": b"\x01"}, "acc": {"acc": 0.75}, "text": {"text": "y"},
           "extra": {"extra": True}}
  found = {}
  write(tmp_path / "whole")
  for name, change in cases.items():
    write(tmp_path / f"other_{name}", **change)
    found[name] = fault_injection.pipeline_differences(tmp_path / "whole",
                                                       tmp_path / f"other_{name}")
  assert found["same"] == []
  assert found["dup"] == ["sample_pairs/pairs.jsonl: 1 duplicated records",
                          "sample_pairs/pairs.jsonl: records differ (2 vs 3 lines)"]
  assert found["record"] == ["sample_pairs/pairs.jsonl: records differ (2 vs 2 lines)"]
  assert found["byte"] == ["pm_train/pm/head.npz: bytes differ"]
  assert found["acc"] == ["eval/report.json: values differ"]
  assert found["text"] == ["report/report.md: text differs"]
  assert found["extra"] == ["feedback/labels.jsonl: only in the second workdir"]
