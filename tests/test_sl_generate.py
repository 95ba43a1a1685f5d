"""The SL-CAI stage: the exact texts the loop sends to the sampler (with a recording fake
sampler), deterministic principle draws, degenerate-output flags, and the `sl_generate` job on
a tiny checkpoint: records, SL file, report, restart after SIGKILL without loss or duplicates,
then `sl_train` on its output."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cai_jax import main
from cai_jax.cai.critique_revision import CritiqueReviser, Settings, degenerate_flags, \
    draw_principles
from cai_jax.constitution import prompts as P
from cai_jax.constitution.loading import load_constitution
from cai_jax.constitution.schema import ConstitutionError
from cai_jax.data.jsonl import DataError, read_jsonl
from cai_jax.sampling.record_keys import record_keys
from cai_jax.sampling.strategies import Greedy
from configs_loader import load_config
import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class FakeOutput:
  texts: list
  finish_reasons: list
  num_tokens: list
  truncated: list


class RecordingSampler:
  """Stands in for `Sampler`: records prefix + row text of every call, answers by a counter."""

  def __init__(self):
    self.calls = []

  def prefill_prefix(self, text):
    return ("PREFIX", text)

  def generate(self, rows, *, max_new_tokens, strategy, keys, stop, prefix):
    n = len(self.calls)
    self.calls.append({"texts": [prefix[1] + r for r in rows], "stop": tuple(stop),
                       "max_new_tokens": max_new_tokens, "keys": np.asarray(keys)})
    texts = [f" out{n}.{i}" for i in range(len(rows))]
    return FakeOutput(texts, ["stop"] * len(rows), [3] * len(rows), [False] * len(rows))


@pytest.fixture(scope="module")
def harmless():
  return load_constitution("harmless")


def test_loop_sends_the_documented_contexts(harmless):
  fake = RecordingSampler()
  settings = Settings(rounds=2, max_response_tokens=5, max_critique_tokens=6,
                      max_revision_tokens=7, seed=3)
  items = [("a", "\n\nHuman: q1\n\nAssistant:"), ("b", "\n\nHuman: q2\n\nAssistant:")]
  keys = record_keys(3, ["a", "b"])
  records = CritiqueReviser(fake, harmless, settings, Greedy()).run(items, keys)
  assert len(fake.calls) == 1 + 2 * 2
  for n, call in enumerate(fake.calls):  # each step of a record: its own fold of its key
    for i in range(2):
      np.testing.assert_array_equal(call["keys"][i], jax.random.fold_in(keys[i], n))
  answer, crit1, rev1, crit2, rev2 = fake.calls
  assert answer["texts"][0] == P.initial_context(harmless, items[0][1])
  assert answer["stop"] == P.RESPONSE_STOPS and answer["max_new_tokens"] == 5
  pa = draw_principles(harmless, "a", 2, 3)
  assert crit1["texts"][0] == P.critique_context(harmless, items[0][1], " out0.0", pa[0])
  assert crit1["stop"] == P.CRITIQUE_STOPS and crit1["max_new_tokens"] == 6
  assert rev1["texts"][0] == P.revision_context(harmless, items[0][1], " out0.0", pa[0], " out1.0")
  assert rev1["stop"] == P.REVISION_STOPS and rev1["max_new_tokens"] == 7
  # round 2 continues the transcript: previous revision context + revision + next request
  assert crit2["texts"][0] == rev1["texts"][0] + " out2.0" + pa[1].critique_prompt
  assert rev2["texts"][0] == crit2["texts"][0] + " out3.0" + pa[1].revision_prompt
  rec = records[0]
  assert rec["initial_response"] == " out0.0" and rec["final"] == " out4.0"
  assert rec["rounds"] == [
      {"principle_id": pa[0].id, "critique": " out1.0", "revision": " out2.0"},
      {"principle_id": pa[1].id, "critique": " out3.0", "revision": " out4.0"}]
  assert rec["flags"] == []


def test_fresh_context_and_skip_critique(harmless):
  fake = RecordingSampler()
  settings = Settings(rounds=2, continue_transcript=False, skip_critique=True, seed=1)
  items = [("x", "\n\nHuman: hello\n\nAssistant:")]
  CritiqueReviser(fake, harmless, settings, Greedy()).run(items, record_keys(1, ["x"]))
  assert len(fake.calls) == 3  # answer, revision, revision
  p = draw_principles(harmless, "x", 2, 1)
  prefix = P.critique_revision_prefix(harmless)
  assert fake.calls[1]["texts"][0] == prefix + items[0][1] + " out0.0" + p[0].revision_prompt
  assert fake.calls[2]["texts"][0] == prefix + items[0][1] + " out1.0" + p[1].revision_prompt


def test_principle_draws_are_seeded_per_record_with_replacement(harmless):
  a = [p.id for p in draw_principles(harmless, "rt-1", 200, 0)]
  assert a == [p.id for p in draw_principles(harmless, "rt-1", 200, 0)]
  assert a != [p.id for p in draw_principles(harmless, "rt-2", 200, 0)]
  assert a != [p.id for p in draw_principles(harmless, "rt-1", 200, 1)]
  assert len(set(a)) == len(harmless.critique_revision)  # all 16 appear in 200 draws
  assert any(x == y for x, y in zip(a, a[1:]))  # with replacement


def test_degenerate_flags():
  assert degenerate_flags(" A fine, short answer.", "stop") == []
  assert degenerate_flags("  \n ", "eos") == ["empty"]
  assert "repeated_lines" in degenerate_flags("same\nsame\nsame\nsame\nother", "stop")
  assert "repetitive" in degenerate_flags(" ".join(["I am sorry about that"] * 8), "stop")
  assert degenerate_flags(" cut off in the", "length") == ["runaway_length"]


def job_settings(ckpt, **extra):
  s = {"model.checkpoint": ckpt, "model.cache_dir": os.path.dirname(ckpt),
       "sl_generate.limit": 6, "sl_generate.rounds": 2, "sl_generate.batch_size": 2,
       "sl_generate.block_size": 2,  # a block per append, so a kill lands between blocks
       "sl_generate.max_response_tokens": 6, "sl_generate.max_critique_tokens": 6,
       "sl_generate.max_revision_tokens": 6, "sl_generate.report_examples": 1,
       "sl_generate.drop_flagged": False, "sl_generate.helpful_ratio": 0.5}
  s.update(extra)
  return s


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  return tiny_model.write_hf_checkpoint(str(tmp_path_factory.mktemp("slg_tiny") / "hf"),
                                        flat_logits=True)


def ids_in(path):
  return [obj["id"] for _, obj in read_jsonl(path)]


def test_job_writes_records_sl_file_and_report_then_sl_train_runs(tiny_ckpt, tmp_path):
  report = main.run(load_config("sl_generate", **job_settings(tiny_ckpt)), str(tmp_path))
  out = tmp_path / "sl_generate"
  records = [obj for _, obj in read_jsonl(str(out / "records.jsonl"))]
  assert [r["id"] for r in records] == [f"rt-{i:04d}" for i in range(1, 7)]
  for r in records:
    assert set(r) >= {"id", "prompt", "category", "initial_response", "rounds", "final", "flags",
                      "truncated", "provenance"}
    assert len(r["rounds"]) == 2 and r["final"] == r["rounds"][-1]["revision"]
    assert r["provenance"]["constitution"]["name"] == "harmless"
    assert r["provenance"]["settings"]["rounds"] == 2
  assert len(ids_in(str(out / "helpful.jsonl"))) == 3
  sl_rows = [obj for _, obj in read_jsonl(str(out / "sl_train.jsonl"))]
  # targets="all_revisions" (the default): both rounds' revisions of each of the 6 records
  assert sorted(r["source"] for r in sl_rows) == ["helpful"] * 3 + ["sl_cai"] * 12
  assert sorted(r["id"] for r in sl_rows if r["source"] == "sl_cai") == sorted(
      f"{r['id']}:r{k}" for r in records for k in (1, 2))
  assert report["records"] == 6 and report["sl_examples"] == 15
  assert report["sl_targets"] == "all_revisions"
  assert report["sl_rows_per_round"] == {"1": 6, "2": 6}
  assert len(report["rounds"]) == 2 and report["tokens_generated_this_run"] > 0
  assert json.loads((out / "report.json").read_text())["records"] == 6
  summary = main.run(load_config("sl_train", **{
      "model.checkpoint": tiny_ckpt, "model.cache_dir": os.path.dirname(tiny_ckpt),
      "sl_train.data": str(out / "sl_train.jsonl"), "sl_train.batch_size": 2,
      "sl_train.steps": 3, "sl_train.max_length": 128, "sl_train.progress": False,
      "optim.warmup_steps": 1}), str(tmp_path))
  assert summary["steps"] == 3 and os.path.isdir(summary["export_hf"])


def test_sigkill_and_restart_lose_and_duplicate_nothing(tiny_ckpt, tmp_path):
  settings = job_settings(tiny_ckpt, **{"sl_generate.limit": 8})
  args = [sys.executable, "-m", "cai_jax.main", "--config",
          os.path.join(ROOT, "configs/sl_generate.py"), "--workdir", str(tmp_path)]
  args += [f"--config.{k}={v}" for k, v in settings.items()]
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  records = tmp_path / "sl_generate" / "records.jsonl"
  deadline = time.time() + 300
  while not (records.exists() and records.read_text().count("\n") >= 2):
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  before = ids_in(str(records))
  assert 2 <= len(before) < 8
  with open(records, "a") as f:
    f.write('{"id": "rt-half-writ')  # a crash in the middle of a line
  main.run(load_config("sl_generate", **settings), str(tmp_path))
  after = ids_in(str(records))
  assert len(after) == len(set(after)) == 8
  assert after[:len(before)] == before  # finished records were not rewritten


def test_bad_inputs(tiny_ckpt, tmp_path):
  bad = tmp_path / "constitution.json"
  bad.write_text(json.dumps({"format": "cai_jax.constitution", "version": 1}))
  with pytest.raises(ConstitutionError, match="constitution.json"):
    main.run(load_config("sl_generate", **job_settings(
        tiny_ckpt, **{"constitution": str(bad)})), str(tmp_path))
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"id": "p1", "prompt": "\\n\\nHuman: hi\\n\\nAssistant:"}\n{"id": "p2"}\n')
  with pytest.raises(DataError, match="prompts.jsonl:2"):
    main.run(load_config("sl_generate", **job_settings(
        tiny_ckpt, **{"sl_generate.prompts": str(prompts)})), str(tmp_path))
  long_prompts = tmp_path / "long.jsonl"
  long_prompts.write_text(
      json.dumps({"id": "short", "prompt": "\n\nHuman: hi\n\nAssistant:"}) + "\n"
      + json.dumps({"id": "long", "prompt": "\n\nHuman: " + "why " * 300 + "\n\nAssistant:"}) + "\n")
  report = main.run(load_config("sl_generate", **job_settings(
      tiny_ckpt, **{"sl_generate.prompts": str(long_prompts), "sl_generate.helpful_ratio": 0.0,
                    "sl_generate.max_conversation_tokens": 64})), str(tmp_path / "long"))
  assert report["skipped_too_long"] == ["long"] and report["records"] == 1


def test_sl_file_drops_only_flagged_training_text_and_holds_out_revisions(tmp_path):
  """targets="final": drop_flagged looks at the text trained on (the final revision), not at the
  initial answer or the critique; heldout_fraction moves whole records to sl_eval.jsonl, never
  into both."""
  from cai_jax.jobs import sl_generate

  def record(i, flags, rounds=1):
    return {"id": f"r{i}", "prompt": f"\n\nHuman: q{i}\n\nAssistant:", "final": f" rev {i}",
            "flags": flags, "rounds": [{"principle_id": "p"}] * rounds}

  records = [record(0, []), record(1, ["initial:runaway_length"]),
             record(2, ["round1.critique:runaway_length"]),
             record(3, ["round1.revision:runaway_length"]),
             record(4, ["initial:empty", "round1.revision:repetitive"]),
             record(5, ["round1.revision:runaway_length"], rounds=2),  # round 1 is not final
             record(6, ["initial:empty"], rounds=0),  # no rounds: the initial answer is final
             record(7, []), record(8, [])]
  helpful = [{"id": "h0", "prompt": "p", "completion": " ok", "flags": []},
             {"id": "h1", "prompt": "p", "completion": " ok", "flags": ["runaway_length"]}]
  train, held = str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")
  n, n_eval, per_round = sl_generate.write_sl_file(train, records, helpful, True, 0,
                                                   heldout_fraction=0.34, eval_path=held,
                                                   targets="final")
  rows = [obj for _, obj in read_jsonl(train)]
  held_rows = [obj for _, obj in read_jsonl(held)]
  usable = {"r0", "r1", "r2", "r5", "r7", "r8"}
  assert n_eval == 2 and {r["id"] for r in held_rows} < usable  # round(0.34 x 6) = 2
  assert {r["id"] for r in rows} == (usable - {r["id"] for r in held_rows}) | {"h0"}
  assert n == len(rows) == 5 and all(r["source"] == "sl_cai" for r in held_rows)
  assert sum(per_round.values()) == 4 and set(per_round) <= {"0", "1", "2"}
  n_all, none, _ = sl_generate.write_sl_file(train, records, helpful, False, 0, targets="final")
  assert (n_all, none) == (11, 0)


def sl_record(rid, revisions, flags=(), initial=" first try"):
  """A records.jsonl record as the critique-revision loop writes it (only the SL file's fields)."""
  return {"id": rid, "prompt": f"\n\nHuman: {rid}?\n\nAssistant:", "initial_response": initial,
          "rounds": [{"principle_id": f"p{k}", "critique": " meh", "revision": text}
                     for k, text in enumerate(revisions, 1)],
          "final": revisions[-1] if revisions else initial, "flags": list(flags)}


def test_sl_file_all_revisions_one_row_per_usable_round(tmp_path):
  """targets="all_revisions": each round's revision with the record's prompt; drop_flagged drops
  a round only for its own revision's flag, never for a flagged initial answer or critique."""
  from cai_jax.jobs import sl_generate

  records = [sl_record("a", [" a one", " a two"]),
             sl_record("b", [" b one", " b two"], ["round1.revision:repetitive"]),
             sl_record("c", [" c one", " c two"],
                       ["initial:runaway_length", "round2.critique:runaway_length"])]
  helpful = [{"id": "h0", "prompt": "\n\nHuman: hi\n\nAssistant:", "completion": " hello",
              "flags": []}]

  def row(rid, k, principles):
    return {"id": f"{rid}:r{k}", "record_id": rid, "prompt": f"\n\nHuman: {rid}?\n\nAssistant:",
            "completion": f" {rid} {['one', 'two'][k - 1]}", "source": "sl_cai", "round": k,
            "principles": principles}

  helpful_row = {"id": "h0", "prompt": "\n\nHuman: hi\n\nAssistant:", "completion": " hello",
                 "source": "helpful"}
  path = str(tmp_path / "train.jsonl")

  def written(**kw):
    out = sl_generate.write_sl_file(path, records, helpful, seed=0, **kw)
    return out, sorted((obj for _, obj in read_jsonl(path)), key=lambda r: r["id"])

  out, rows = written(drop_flagged=True)
  assert rows == [row("a", 1, ["p1"]), row("a", 2, ["p1", "p2"]), row("b", 2, ["p1", "p2"]),
                  row("c", 1, ["p1"]), row("c", 2, ["p1", "p2"]), helpful_row]
  assert out == (6, 0, {"1": 2, "2": 3})
  out, rows = written(drop_flagged=False)
  assert [r["id"] for r in rows] == ["a:r1", "a:r2", "b:r1", "b:r2", "c:r1", "c:r2", "h0"]
  assert out.train_per_round == {"1": 3, "2": 3}
  # "final": one row per record under its own id, the last revision (b's is not flagged)
  out, rows = written(drop_flagged=True, targets="final")
  assert rows == [{"id": rid, "record_id": rid, "prompt": f"\n\nHuman: {rid}?\n\nAssistant:",
                   "completion": f" {rid} two", "source": "sl_cai", "round": 2,
                   "principles": ["p1", "p2"]} for rid in "abc"] + [helpful_row]
  assert out == (4, 0, {"2": 3})

  # A blank revision is never trained on; a flagged final revision drops only that round.
  more = [sl_record("d", [" d one", "  \n"]),
          sl_record("e", [" e one", " e two"], ["round2.revision:runaway_length"])]
  rows = sl_generate.revision_rows(more, drop_flagged=False)
  assert [r["id"] for r in rows] == ["d:r1", "e:r1", "e:r2"]
  assert [r["id"] for r in sl_generate.revision_rows(more, True)] == ["d:r1", "e:r1"]
  assert sl_generate.revision_rows(more, True, "final") == []
  # No rounds: the initial answer is the one row in both modes (dropped when it is flagged).
  bare = [sl_record("f", [], initial=" plain"), sl_record("g", [], ["initial:empty"], " x")]
  for targets, rid in (("all_revisions", "f:r0"), ("final", "f")):
    assert sl_generate.revision_rows(bare, True, targets) == [
        {"id": rid, "record_id": "f", "prompt": "\n\nHuman: f?\n\nAssistant:",
         "completion": " plain", "source": "sl_cai", "round": 0, "principles": []}]
    assert len(sl_generate.revision_rows(bare, False, targets)) == 2


def test_sl_holdout_keeps_all_rounds_of_a_record_together(tmp_path):
  from cai_jax.data import holdout
  from cai_jax.jobs import sl_generate

  records = [sl_record(f"rec{i}", [f" {i} one", f" {i} two", f" {i} three"]) for i in range(12)]
  train, held = str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")
  out = sl_generate.write_sl_file(train, records, [], True, 5, heldout_fraction=0.25,
                                  eval_path=held)
  train_rows = [obj for _, obj in read_jsonl(train)]
  held_rows = [obj for _, obj in read_jsonl(held)]
  held_records = {r["record_id"] for r in held_rows}
  assert held_records == holdout.held_out_ids([r["id"] for r in records], 0.25, "sl_generate:5")
  assert len(held_records) == 3 and out == (27, 9, {"1": 9, "2": 9, "3": 9})
  assert sorted(r["id"] for r in held_rows) == sorted(
      f"{rid}:r{k}" for rid in held_records for k in (1, 2, 3))
  assert not held_records & {r["record_id"] for r in train_rows}


def test_bad_sl_targets_is_a_config_error(tmp_path):
  from cai_jax.config_defaults import ConfigError

  with pytest.raises(ConfigError, match="sl_generate.targets"):
    main.run(load_config("sl_generate", **{"sl_generate.targets": "last",
                                           "model.checkpoint": str(tmp_path / "none")}),
             str(tmp_path))
