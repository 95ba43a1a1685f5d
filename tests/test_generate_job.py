"""The `generate` job end to end on a tiny checkpoint (tiny preset + a small byte-fallback
SentencePiece vocabulary, saved as an HF folder): records carry every field and equal the
sampler's output, restarts skip finished ids, a last line cut mid-write is repaired and
regenerated without duplicates, and bad prompt files fail with file:line before the model loads."""

from __future__ import annotations

import json
import os
import signal

import pytest

from cai_jax import main
from cai_jax.checkpoints import loader
from cai_jax.data.jsonl import DataError
from cai_jax.jobs import generate as generate_job
from cai_jax.sampling.sampler import Sampler
import tiny_model
from configs_loader import load_config

FIELDS = {"id", "prompt", "completion", "finish_reason", "num_tokens", "truncated"}
PROMPTS = [
    ("a", "Human: hello\n\nAssistant:"),
    (7, "Tell me a story about a lighthouse keeper and the long winter storm."),
    ("c", "x"),
    ("d", "Why is the sea salty? " * 6),  # longer than max_prompt_length below
    ("e", "ok"),
]




@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
  return tiny_model.write_hf_checkpoint(str(tmp_path_factory.mktemp("tiny_ckpt") / "hf"),
                                        flat_logits=True)


def write_prompts(path, rows):
  path.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in rows))
  return str(path)


def job_settings(checkpoint, prompts, output, **overrides) -> dict:
  """The job's config fields (dotted keys), for `load_config` or as CLI flags."""
  settings = {"model.checkpoint": checkpoint, "model.cache_dir": os.path.dirname(checkpoint),
              "generate.prompts": prompts, "generate.output": output,
              "generate.max_new_tokens": 8, "generate.temperature": 0.0,
              "generate.batch_size": 2, "generate.write_every": 2,
              "generate.max_prompt_length": 32}
  settings.update(overrides)
  return settings


def job_config(checkpoint, prompts, output, **overrides):
  return load_config("generate", **job_settings(checkpoint, prompts, output, **overrides))


def read_records(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def forbid_model_loading(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("the model was loaded")
  monkeypatch.setattr(generate_job, "load_model", fail)


@pytest.fixture(scope="module")
def complete(tiny_checkpoint, tmp_path_factory):
  """One full run over PROMPTS: (prompts file, output bytes, workdir)."""
  tmp = tmp_path_factory.mktemp("complete")
  prompts = write_prompts(tmp / "prompts.jsonl", PROMPTS)
  output = str(tmp / "out" / "completions.jsonl")
  assert main.run(job_config(tiny_checkpoint, prompts, output), str(tmp / "w")) == output
  with open(output, "rb") as f:
    return prompts, f.read(), tmp / "w"


def test_writes_every_record_with_every_field(tiny_checkpoint, complete, tmp_path):
  _, data, workdir = complete
  records = [json.loads(line) for line in data.decode("utf-8").splitlines()]
  assert [r["id"] for r in records] == [str(i) for i, _ in PROMPTS]
  for r, (_, prompt) in zip(records, PROMPTS):
    assert set(r) == FIELDS
    assert r["prompt"] == prompt
    assert isinstance(r["completion"], str) and isinstance(r["num_tokens"], int)
    assert r["finish_reason"] in ("length", "eos", "stop") and 1 <= r["num_tokens"] <= 8
  assert [r["truncated"] for r in records] == [False, True, False, True, False]
  assert (workdir / "generate" / "config.json").exists()
  # The records are the sampler's own output for these settings.
  model = loader.load(tiny_checkpoint, cache_dir=str(tmp_path))
  want = Sampler(model.config, model.params, model.tokenizer, max_prompt_length=32).generate(
      [p for _, p in PROMPTS], max_new_tokens=8, stop=("\n\nHuman:",))
  assert [r["completion"] for r in records] == want.texts
  assert [r["num_tokens"] for r in records] == want.num_tokens
  assert [r["finish_reason"] for r in records] == want.finish_reasons


def test_restart_skips_finished_ids(tiny_checkpoint, complete, tmp_path, monkeypatch):
  prompts, data, _ = complete
  output = tmp_path / "completions.jsonl"
  output.write_bytes(data)
  config = job_config(tiny_checkpoint, prompts, str(output))
  with monkeypatch.context() as m:  # everything done: no model is even loaded
    forbid_model_loading(m)
    main.run(config, str(tmp_path / "w"))
  assert output.read_bytes() == data
  lines = data.splitlines(keepends=True)
  output.write_bytes(b"".join(lines[:3]))  # as if the run had stopped after three ids
  main.run(config, str(tmp_path / "w"))
  assert output.read_bytes() == data


@pytest.mark.parametrize("cut", ["mid_line", "before_newline", "inside_the_first_line"])
def test_a_line_cut_mid_write_is_repaired(tiny_checkpoint, complete, tmp_path, cut):
  prompts, data, _ = complete
  lines = data.splitlines(keepends=True)
  if cut == "mid_line":
    damaged = b"".join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2]
  elif cut == "before_newline":  # a complete record whose newline never made it
    damaged = data[:-1]
  else:
    damaged = lines[0][:10]
  output = tmp_path / "completions.jsonl"
  output.write_bytes(damaged)
  main.run(job_config(tiny_checkpoint, prompts, str(output)), str(tmp_path / "w"))
  records = read_records(output)
  assert sorted(r["id"] for r in records) == sorted(str(i) for i, _ in PROMPTS)  # no duplicates
  # Greedy: the regenerated records (in other batches) equal the lost ones.
  assert sorted(records, key=lambda r: r["id"]) == sorted(
      [json.loads(x) for x in lines], key=lambda r: r["id"])


def test_sampling_settings_and_seed(tiny_checkpoint, tmp_path):
  prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:2])
  outs = []
  for run, seed in (("a", 3), ("b", 3), ("c", 4)):
    output = str(tmp_path / f"{run}.jsonl")
    config = job_config(tiny_checkpoint, prompts, output, **{
        "generate.temperature": 1.0, "generate.top_k": 20, "generate.top_p": 0.95,
        "seed": seed, "generate.stop": ()})
    main.run(config, str(tmp_path / run))
    outs.append([(r["completion"], r["num_tokens"]) for r in read_records(output)])
  assert outs[0] == outs[1] and outs[0] != outs[2]


@pytest.mark.parametrize("line, message", [
    ("not json", "not valid JSON"),
    ('{"prompt": "p"}', "missing field 'id'"),
    ('{"id": "z"}', "missing field 'prompt'"),
    ('{"id": 1.5, "prompt": "p"}', "field 'id' should be"),
    ('{"id": "z", "prompt": ""}', "empty prompt"),
    ('{"id": "a", "prompt": "again"}', "duplicate id 'a'"),
])
def test_bad_prompt_lines_fail_before_the_model_loads(tmp_path, monkeypatch, line, message):
  path = tmp_path / "prompts.jsonl"
  path.write_text('{"id": "a", "prompt": "fine"}\n\n' + line + "\n")
  forbid_model_loading(monkeypatch)
  config = job_config("no-such-checkpoint", str(path), str(tmp_path / "out.jsonl"))
  with pytest.raises(DataError, match=f"prompts.jsonl:3: .*{message}"):
    main.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "out.jsonl").exists()


def test_bad_settings_fail_before_the_model_loads(tmp_path, monkeypatch):
  prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
  forbid_model_loading(monkeypatch)
  for overrides, error, message in (
      ({"generate.max_new_tokens": 0}, ValueError, "max_new_tokens"),
      ({"generate.temperature": -0.5}, ValueError, "temperature"),
      ({"generate.top_p": 0.0}, ValueError, "top_p"),
      ({"generate.write_every": 0}, ValueError, "write_every"),
      ({"generate.batch_size": 0}, ValueError, "batch_size"),
      ({"generate.stop": ("",)}, ValueError, "stop"),
      ({"generate.prompts": ""}, DataError, "no prompts"),
  ):
    config = job_config("no-such-checkpoint", prompts, str(tmp_path / "out.jsonl"), **overrides)
    with pytest.raises(error, match=message):
      main.run(config, str(tmp_path / "w"))
  with pytest.raises(DataError, match="not a record with an .id.; refusing to append"):
    (tmp_path / "foreign.jsonl").write_text('{"something": "else"}\n')
    main.run(job_config("no-such-checkpoint", prompts, str(tmp_path / "foreign.jsonl")),
             str(tmp_path / "w"))


@pytest.mark.parametrize("point, blocks", [
    ("cai_jax.jobs.record_split:SplitOutput.append:2:after", 2),  # between two appends
    ("cai_jax.sampling.sampler:Sampler.generate:2", 1),           # while sampling
])
def test_sigterm_stops_with_whole_records_and_exit_143(tiny_checkpoint, complete, tmp_path,
                                                        point, blocks):
  """A preemption notice (SIGTERM, tests/fault_injection.py) stops the job with status 143 and
  a message, the blocks appended so far whole; the same command then finishes with the
  uninterrupted run's bytes."""
  import fault_injection
  prompts, full, _ = complete
  output = tmp_path / "out" / "completions.jsonl"
  settings = job_settings(tiny_checkpoint, prompts, str(output))
  proc = fault_injection.run_killed(
      point, ["--config", "configs/generate.py", "--workdir", str(tmp_path / "w"),
              *fault_injection.config_flags(settings)], signum=signal.SIGTERM)
  assert proc.returncode == 143, proc.stderr[-3000:]
  assert "stopped by SIGTERM; the records written so far are kept" in proc.stderr
  assert "Traceback" not in proc.stderr
  written = output.read_bytes()
  assert written.endswith(b"\n") and full.startswith(written)
  assert len(written.splitlines()) == 2 * blocks
  main.run(job_config(tiny_checkpoint, prompts, str(output)), str(tmp_path / "w"))
  assert output.read_bytes() == full


def test_compilation_cache_serves_a_second_process_the_same_programs(tiny_checkpoint, complete,
                                                                      tmp_path):
  """`compilation_cache` (the CLI sets JAX's persistent cache to it): the first process fills
  it; a second process running the same job loads every program it holds (JAX logs each hit
  under JAX_LOG_COMPILES), adds none, and both write the bytes of a run without the cache."""
  import re
  import subprocess
  import sys
  import fault_injection
  prompts, full, _ = complete
  cache = tmp_path / "xla"
  entries, hits = [], []
  for run in ("first", "second"):
    output = tmp_path / run / "completions.jsonl"
    settings = job_settings(tiny_checkpoint, prompts, str(output),
                            compilation_cache=str(cache))
    proc = subprocess.run(
        [sys.executable, "-m", "cai_jax.main", "--config", "configs/generate.py", "--workdir",
         str(tmp_path / run / "w"), *fault_injection.config_flags(settings)],
        cwd=fault_injection.REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_LOG_COMPILES": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert output.read_bytes() == full
    entries.append(sorted(n for n in os.listdir(cache) if n.endswith("-cache")))  # (+ LRU times)
    hits.append(set(re.findall(r"Persistent compilation cache hit for '\S+' with key '(\S+)'",
                               proc.stderr)))
  assert hits[0] == set() and len(entries[0]) >= 3  # the sampler's programs at least
  assert entries[1] == entries[0]
  assert hits[1] == {name.removesuffix("-cache") for name in entries[0]}


def test_scanned_layers_write_the_same_records(tiny_checkpoint, complete, tmp_path):
  """model.scan_layers reaches the loader and the sampler: greedy records byte for byte equal."""
  prompts, data, _ = complete
  output = str(tmp_path / "out.jsonl")
  main.run(job_config(tiny_checkpoint, prompts, output, **{"model.scan_layers": True}),
           str(tmp_path / "w"))
  with open(output, "rb") as f:
    assert f.read() == data
