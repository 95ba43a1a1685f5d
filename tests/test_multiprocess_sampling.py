"""Sampling jobs over several JAX processes (two local processes, gloo collectives, as hosts of a
slice would run them): sl_generate, sample_pairs, feedback (chain of thought, so it samples) and
eval (answers and judge) write the records one process writes (texts byte for byte, scores
within float noise), also when a two-process run crashes mid-stage and is finished by one
process, and a one-process run that crashed (its last line cut off) by two: no record lost or
duplicated, none left in part files."""

from __future__ import annotations

import json
import os
import time

import pytest

import multiprocess_check
import tiny_model
from cai_jax.data.jsonl import read_jsonl
from cai_jax.jobs.record_split import CRASH_ENV, CRASH_EXIT_CODE, merge, owner, part_files

WORDS = ["apples", "rivers", "quiet", "music", "paper", "stone", "green", "light", "salt"]
JOBS = ["sl_generate", "sample_pairs", "feedback", "eval"]
# Every file the jobs write record by record, and the files made from them.
OUTPUTS = ["sl_generate/records.jsonl", "sl_generate/helpful.jsonl", "sl_generate/sl_train.jsonl",
           "sl_generate/sl_eval.jsonl", "sample_pairs/pairs.jsonl", "feedback/labels.jsonl",
           "eval/answers/base.jsonl", "eval/answers/other.jsonl", "eval/judgements.jsonl"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("multiprocess")
  tiny_model.write_hf_checkpoint(str(root / "hf"), flat_logits=True)
  tiny_model.write_hf_checkpoint(str(root / "hf_b"), seed=1, flat_logits=True)
  with open(root / "prompts.jsonl", "w") as f:  # 7 prompts in batches of 2
    for i in range(7):
      f.write(json.dumps({"id": f"red-{i}", "prompt": f"\n\nHuman: tell me about {WORDS[i]} and "
                                                   f"{WORDS[i + 1]}\n\nAssistant:"}) + "\n")
  with open(root / "helpful.jsonl", "w") as f:
    for i in range(4):
      f.write(json.dumps({"id": f"h{i}", "prompt": f"\n\nHuman: how do I cook {WORDS[i]}?"
                                                   "\n\nAssistant:"}) + "\n")
  with open(root / "pairs.jsonl", "w") as f:
    for i in range(4):
      f.write(json.dumps({"id": f"q{i}", "prompt": f"\n\nHuman: what is {WORDS[i]}?\n\nAssistant:",
                          "responses": [f" {WORDS[i + 1]} and {WORDS[i + 2]}.",
                                        f" no {WORDS[i + 3]}."]}) + "\n")
  tiny_model.write_short_constitution(root / "constitution.json")
  return root


def run(assets, workdir, jobs, processes: int, crash: str = "", timeout: int = 600):
  """Runs the jobs in `processes` processes; returns their exit codes and stderr tails. `crash`
  ("NAME:N", see record_split.CRASH_ENV) makes a process die mid-stage; the others are then
  killed (they would wait at the next barrier), as a slice's scheduler would."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  for k in ("CAI_JAX_COORDINATOR", "CAI_JAX_NUM_PROCESSES", "CAI_JAX_PROCESS_ID", CRASH_ENV):
    env.pop(k, None)
  if crash:
    env[CRASH_ENV] = crash
  procs = multiprocess_check.start(assets, workdir, jobs, processes, env)
  codes, logs = [None] * processes, [""] * processes
  deadline = time.monotonic() + timeout
  while any(c is None for c in codes) and time.monotonic() < deadline:
    for i, p in enumerate(procs):
      if codes[i] is None and p.poll() is not None:
        codes[i] = p.returncode
    if CRASH_EXIT_CODE in codes:
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.2)
  for i, p in enumerate(procs):
    if p.poll() is None:
      p.kill()
    _, err = p.communicate()
    codes[i] = p.returncode
    logs[i] = err[-3000:]
  if not crash:
    assert codes == [0] * processes, "\n".join(logs)
  return codes, logs


def _floats_close(a, b, where, tol):
  """a == b, except floats within `tol` (scores of other batch shapes: float noise)."""
  if isinstance(a, float) or isinstance(b, float):
    assert abs(a - b) <= tol, f"{where}: {a} vs {b}"
  elif isinstance(a, dict):
    assert isinstance(b, dict) and list(a) == list(b), where
    for k in a:
      _floats_close(a[k], b[k], f"{where}/{k}", tol)
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      _floats_close(x, y, f"{where}[{i}]", tol)
  else:
    assert a == b, f"{where}: {a!r} vs {b!r}"


def _read(workdir, rel) -> bytes:
  with open(os.path.join(workdir, rel), "rb") as f:
    return f.read()


# Feedback / judge probabilities from batches of other shapes: up to 8.8e-7 apart (measured).
SCORE_TOL = 2e-6


def same_records(workdir, reference, rel):
  """The file's records equal the reference's, in the same order: every text and id exactly,
  scores within SCORE_TOL; and no part file is left beside it."""
  path = os.path.join(workdir, rel)
  assert not part_files(path), rel
  a = [obj for _, obj in read_jsonl(path)]
  b = [obj for _, obj in read_jsonl(os.path.join(reference, rel))]
  assert [r.get("id") for r in a] == [r.get("id") for r in b], rel
  _floats_close(a, b, rel, SCORE_TOL)


@pytest.fixture(scope="module")
def one_process(assets):
  workdir = assets / "one"
  run(assets, workdir, JOBS, 1)
  return workdir


def test_two_processes_crash_resume_with_one_then_two(assets, one_process):
  """2 processes crash in sl_generate -> 1 process finishes sl_generate and crashes in
  sample_pairs (its last line cut off) -> 2 processes finish sample_pairs, feedback and eval.
  Every file equals one uninterrupted process's."""
  w = assets / "restarts"
  codes, logs = run(assets, w, ["sl_generate"], 2, crash="sl_generate/records:1")
  assert CRASH_EXIT_CODE in codes, logs
  records = os.path.join(w, "sl_generate", "records.jsonl")
  written = [obj["id"] for p in part_files(records) for _, obj in read_jsonl(p)]
  assert 2 <= len(written) < 7 and len(set(written)) == len(written), written  # mid-stage
  assert not os.path.exists(records)

  codes, logs = run(assets, w, ["sl_generate", "sample_pairs"], 1, crash="sample_pairs:2")
  assert codes == [CRASH_EXIT_CODE], logs
  for rel in OUTPUTS[:4]:
    same_records(w, one_process, rel)
  pairs = os.path.join(w, "sample_pairs", "pairs.jsonl")
  assert len(list(read_jsonl(pairs))) == 4  # two batches of two
  with open(pairs, "a") as f:  # and a line cut off by the crash
    f.write('{"id": "red-4", "prompt": "\\n\\nHuman: tell')

  run(assets, w, ["sample_pairs", "feedback", "eval"], 2)
  for rel in OUTPUTS:
    same_records(w, one_process, rel)
  # Both processes worked: the ids hash to both owners.
  assert {owner(f"red-{i}", 2) for i in range(7)} == {0, 1}
  # The records are the inputs', once each, in input order; samples vary between prompts.
  got = [obj for _, obj in read_jsonl(pairs)]
  assert [r["id"] for r in got] == [f"red-{i}" for i in range(7)]
  assert len({tuple(r["responses"]) for r in got}) == 7
  labels = [obj for _, obj in read_jsonl(os.path.join(w, "feedback", "labels.jsonl"))]
  assert [r["id"] for r in labels] == [f"q{i}" for i in range(4)]
  assert all(r["per_principle"][0]["reasoning"] for r in labels)
  # Byte-equal where no score is involved.
  for rel in ("sl_generate/records.jsonl", "sample_pairs/pairs.jsonl",
              "eval/answers/other.jsonl"):
    assert _read(w, rel) == _read(one_process, rel), rel


def test_merge_keeps_one_copy_in_input_order(tmp_path):
  """A crash between writing the merged file and removing the parts leaves records twice: the
  next merge keeps one copy of each; records not in the order (an input since shortened) stay,
  after the ordered ones; cut-off last lines are left out."""
  out = tmp_path / "out.jsonl"
  line = lambda i, v: json.dumps({"id": i, "v": v}) + "\n"  # noqa: E731
  out.write_text(line("b", 1) + line("z", 0) + '{"id": "c", "v"')
  (tmp_path / "out.jsonl.part1").write_text(line("a", 2) + line("b", 9))
  (tmp_path / "out.jsonl.part0").write_text(line("c", 3) + '{"id": "d"')
  (tmp_path / "out.jsonl.partial").write_text("not a part file\n")
  assert part_files(str(out)) == [str(tmp_path / "out.jsonl.part0"),
                                  str(tmp_path / "out.jsonl.part1")]
  assert merge(str(out), ["a", "b", "c", "d"]) == 4
  assert out.read_text() == line("a", 2) + line("b", 1) + line("c", 3) + line("z", 0)
  assert part_files(str(out)) == [] and (tmp_path / "out.jsonl.partial").exists()
