"""The `sl_train` job on a tiny checkpoint: outputs, metrics and export; a SIGKILL'd run resumes
to bitwise-equal parameters; SIGTERM saves and exits 143; a non-finite loss stops without
saving; a checkpoint of another model shape is refused; two processes (jax.distributed, gloo)
train to the same losses as one; and, on Gemma 3 270M, a repeated batch is overfitted and the
export loads in transformers."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cai_jax import main
from cai_jax.checkpoints import loader
from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.config_defaults import ConfigError
from cai_jax.data.jsonl import DataError
from cai_jax.metrics import read_metrics
from cai_jax.train.checkpointing import TrainCheckpoints
from cai_jax.train.engine import NonFiniteLoss
from conftest import needs_transformers
from configs_loader import load_config
import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["cat", "dog", "sea", "sun", "tree", "moon", "rain", "stone"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  return tiny_model.write_hf_checkpoint(str(tmp_path_factory.mktemp("sl_tiny") / "hf"))


@pytest.fixture(scope="module")
def sl_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("sl_data")
  rnd = random.Random(0)

  def write(name, n):
    path = folder / name
    with open(path, "w") as f:
      for _ in range(n):
        q = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 10)))
        f.write(json.dumps({"prompt": f"\n\nHuman: tell me about {q}\n\nAssistant:",
                            "completion": f" {q} is nice." * rnd.randint(1, 3)}) + "\n")
    return str(path)
  return write("train.jsonl", 48), write("eval.jsonl", 10)


def overrides(ckpt, data, **extra):
  settings = {"model.checkpoint": ckpt, "model.cache_dir": os.path.dirname(ckpt),
              "sl_train.data": data[0], "sl_train.eval_data": data[1],
              "sl_train.batch_size": 4, "sl_train.max_length": 64, "sl_train.min_length": 16,
              "sl_train.steps": 40, "sl_train.checkpoint_every": 4, "sl_train.eval_every": 8,
              "sl_train.progress": False, "optim.learning_rate": 3e-3, "optim.warmup_steps": 2}
  settings.update(extra)
  return settings


def cli(workdir, settings, **popen):
  args = [sys.executable, "-m", "cai_jax.main", "--config", os.path.join(ROOT, "configs/sl_train.py"),
          "--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in settings.items()]
  return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **popen)


def wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError("timed out")
    time.sleep(0.02)


@pytest.fixture(scope="module")
def reference_run(tiny_ckpt, sl_files, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sl_ref")
  summary = main.run(load_config("sl_train", **overrides(tiny_ckpt, sl_files)), str(workdir))
  return workdir, summary


def test_outputs_metrics_and_export(reference_run, tiny_ckpt):
  workdir, summary = reference_run
  out = workdir / "sl_train"
  assert summary["steps"] == 40 and summary["start_step"] == 0
  records = read_metrics(out / "metrics.jsonl")
  train = [r for r in records if "loss" in r]
  assert [r["step"] for r in train] == list(range(1, 41))
  for key in ("loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "peak_rss_gb"):
    assert all(np.isfinite(r[key]) for r in train), key
  evals = [r for r in records if "eval_loss" in r]
  assert [r["step"] for r in evals] == [0, 8, 16, 24, 32, 40]  # 0: before the first step
  assert evals[-1]["eval_loss"] < evals[1]["eval_loss"] < evals[0]["eval_loss"]
  assert summary["initial_eval"]["eval_loss"] == evals[0]["eval_loss"]
  assert np.mean([r["loss"] for r in train[-5:]]) < np.mean([r["loss"] for r in train[:5]])
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tb"))
  assert sorted(os.listdir(out / "checkpoints"), key=int)[-3:] == ["32", "36", "40"]
  exported = loader.load(str(out / "export_hf"), cache_dir=str(workdir))
  original = loader.load(tiny_ckpt, cache_dir=str(workdir))
  assert exported.config == original.config
  assert not np.allclose(exported.params["layer_0"]["mlp"]["up"],
                         original.params["layer_0"]["mlp"]["up"])
  assert json.loads((out / "summary.json").read_text())["export_hf"].endswith("export_hf")


def test_scanned_layers_train_like_unrolled(reference_run, tiny_ckpt, sl_files, tmp_path):
  """model.scan_layers: the same 40 steps from the same data give the same losses and an export
  in the unrolled layout with the same weights, up to float rounding (measured below)."""
  workdir, _ = reference_run
  main.run(load_config("sl_train", **overrides(tiny_ckpt, sl_files, **{"model.scan_layers": True})),
           str(tmp_path))
  want = [r["loss"] for r in read_metrics(workdir / "sl_train" / "metrics.jsonl") if "loss" in r]
  got = [r["loss"] for r in read_metrics(tmp_path / "sl_train" / "metrics.jsonl") if "loss" in r]
  assert len(got) == 40
  np.testing.assert_allclose(got, want, rtol=5e-7)  # measured: 1.7e-7
  exported = loader.load(str(tmp_path / "sl_train" / "export_hf"), cache_dir=str(tmp_path))
  reference = loader.load(str(workdir / "sl_train" / "export_hf"), cache_dir=str(tmp_path))
  assert exported.config == reference.config and not exported.config.scan_layers
  for a, b in zip(jax.tree.leaves(exported.params), jax.tree.leaves(reference.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=5e-7)  # measured: 2.4e-7


def test_rerunning_a_finished_run_trains_nothing_and_reports_its_last_metrics(
    reference_run, tiny_ckpt, sl_files):
  workdir, first = reference_run
  summary = main.run(load_config("sl_train", **overrides(tiny_ckpt, sl_files)), str(workdir))
  assert summary["start_step"] == 40
  assert summary["final"]["loss"] == first["final"]["loss"]
  assert summary["final"]["eval_loss"] == pytest.approx(first["final"]["eval_loss"], rel=1e-6)


def test_sigkill_then_resume_is_bitwise_equal(reference_run, tiny_ckpt, sl_files, tmp_path):
  ref_dir, _ = reference_run
  settings = overrides(tiny_ckpt, sl_files)
  proc = cli(tmp_path, settings)
  ckpt_dir = tmp_path / "sl_train" / "checkpoints"
  wait_for(lambda: (ckpt_dir / "8").is_dir(), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (tmp_path / "sl_train" / "summary.json").exists()
  killed_at = TrainCheckpoints(str(ckpt_dir), save_every=4, keep=3).latest_step()
  assert 8 <= killed_at < 40
  summary = main.run(load_config("sl_train", **settings), str(tmp_path))
  assert summary["start_step"] == killed_at
  ref = (ref_dir / "sl_train" / "export_hf" / "model.safetensors").read_bytes()
  assert (tmp_path / "sl_train" / "export_hf" / "model.safetensors").read_bytes() == ref
  ref_losses = {r["step"]: r["loss"] for r in read_metrics(ref_dir / "sl_train" / "metrics.jsonl")
                if "loss" in r}
  resumed = [r for r in read_metrics(tmp_path / "sl_train" / "metrics.jsonl") if "loss" in r]
  assert [r["step"] for r in resumed] == sorted(ref_losses)  # every step logged once
  for r in resumed:
    if r["step"] > killed_at:
      assert r["loss"] == ref_losses[r["step"]]


def test_killed_between_the_last_checkpoint_and_its_evaluation(reference_run, tiny_ckpt,
                                                              sl_files, tmp_path):
  """SIGKILL right after the final checkpoint (step 40, committed synchronously) was written,
  before the evaluation of step 40 ran: the rerun resumes a finished run, trains nothing, and
  still evaluates the final state, with the uninterrupted run's numbers (found by the
  fault-injection pipeline test: the report showed the held-out loss before training as the
  loss after)."""
  import fault_injection
  ref_dir, first = reference_run
  settings = overrides(tiny_ckpt, sl_files, **{"sl_train.async_checkpoints": False})
  proc = fault_injection.run_killed(
      "cai_jax.train.checkpointing:TrainCheckpoints.save:10:after",
      ["--config", "configs/sl_train.py", "--workdir", str(tmp_path),
       *fault_injection.config_flags(settings)])
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  ckpt_dir = tmp_path / "sl_train" / "checkpoints"
  assert TrainCheckpoints(str(ckpt_dir), save_every=4, keep=3).latest_step() == 40
  evals = lambda w: {r["step"]: r["eval_loss"] for r in read_metrics(  # noqa: E731
      w / "sl_train" / "metrics.jsonl") if "eval_loss" in r}
  assert 40 not in evals(tmp_path) and 32 in evals(tmp_path)
  summary = main.run(load_config("sl_train", **settings), str(tmp_path))
  assert summary["start_step"] == 40
  assert evals(tmp_path) == evals(ref_dir)
  assert summary["final"]["eval_loss"] == first["final"]["eval_loss"]
  assert summary["final"]["loss"] == first["final"]["loss"]


def test_sigterm_saves_and_exits_cleanly(tiny_ckpt, sl_files, tmp_path):
  proc = cli(tmp_path, overrides(tiny_ckpt, sl_files, **{"sl_train.steps": 2000,
                                                          "sl_train.checkpoint_every": 1000}))
  metrics = tmp_path / "sl_train" / "metrics.jsonl"
  wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-2000:]
  assert "preempted: saved a checkpoint at step" in err
  step = int(err.split("saved a checkpoint at step ")[1].split(";")[0])
  assert 3 <= step < 2000
  assert TrainCheckpoints(str(tmp_path / "sl_train" / "checkpoints"), save_every=1000,
                          keep=3).latest_step() == step


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_ckpt, sl_files, tmp_path):
  config = load_config("sl_train", **overrides(
      tiny_ckpt, sl_files, **{"sl_train.checkpoint_every": 1, "optim.learning_rate": 1e30,
                              "optim.warmup_steps": 0}))
  with pytest.raises(NonFiniteLoss, match=r"step (\d+): loss .* \(not finite\)") as e:
    main.run(config, str(tmp_path))
  bad_step = int(str(e.value).split("step ")[1].split(":")[0])
  latest = TrainCheckpoints(str(tmp_path / "sl_train" / "checkpoints"), save_every=1,
                            keep=3).latest_step()
  assert latest == bad_step - 1


def test_checkpoint_of_another_model_is_refused(tiny_ckpt, sl_files, tmp_path):
  main.run(load_config("sl_train", **overrides(tiny_ckpt, sl_files, **{
      "sl_train.steps": 2, "sl_train.export_hf": False})), str(tmp_path))
  other = tiny_model.write_hf_checkpoint(str(tmp_path / "other"), mlp_dim=96)
  with pytest.raises(CheckpointError, match="checkpoint is from another model .*mlp_dim"):
    main.run(load_config("sl_train", **overrides(other, sl_files, **{"sl_train.steps": 4})),
             str(tmp_path))


def test_bad_inputs_fail_before_training(tiny_ckpt, sl_files, tmp_path):
  def run(**extra):
    main.run(load_config("sl_train", **overrides(tiny_ckpt, sl_files, **extra)),
             str(tmp_path / "w"))
  with pytest.raises(ConfigError, match="set --config.sl_train.data"):
    run(**{"sl_train.data": ""})
  with pytest.raises(ConfigError, match="not divisible by micro_batches=3"):
    run(**{"sl_train.micro_batches": 3})
  with pytest.raises(ConfigError, match="has 4 devices, but 1 are available"):
    run(**{"mesh.data": 4})
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(DataError, match="empty.jsonl: no examples"):
    run(**{"sl_train.data": str(empty)})
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
  with pytest.raises(DataError, match="bad.jsonl:2: missing field 'completion'"):
    run(**{"sl_train.data": str(bad)})
  assert not (tmp_path / "w" / "sl_train" / "checkpoints" / "1").exists()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(tiny_ckpt, sl_files, tmp_path):
  base = overrides(tiny_ckpt, sl_files, **{"sl_train.steps": 6, "sl_train.eval_every": 3,
                                           "sl_train.checkpoint_every": 3})
  main.run(load_config("sl_train", **base), str(tmp_path / "one"))
  port = free_port()
  env = dict(os.environ, CAI_JAX_CPU_COLLECTIVES="gloo", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  procs = [cli(tmp_path / "two", {**base, "distributed.coordinator_address": f"127.0.0.1:{port}",
                                  "distributed.num_processes": 2, "distributed.process_id": i},
               env=env) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  a = read_metrics(tmp_path / "one" / "sl_train" / "metrics.jsonl")
  b = read_metrics(tmp_path / "two" / "sl_train" / "metrics.jsonl")
  assert len(a) == len(b) and [r["step"] for r in a] == [r["step"] for r in b]
  for ra, rb in zip(a, b):
    for key in ("loss", "eval_loss", "grad_norm", "tokens"):
      if key in ra:
        np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, err_msg=f"{key} @ {ra['step']}")
  two_export = loader.load(str(tmp_path / "two" / "sl_train" / "export_hf"), cache_dir=str(tmp_path))
  one_export = loader.load(str(tmp_path / "one" / "sl_train" / "export_hf"), cache_dir=str(tmp_path))
  np.testing.assert_allclose(two_export.params["layer_1"]["mlp"]["down"],
                             one_export.params["layer_1"]["mlp"]["down"], rtol=1e-4, atol=1e-5)


OVERFIT = [
    {"prompt": "\n\nHuman: What is the capital of France?\n\nAssistant:",
     "completion": " The capital of France is Paris, a city on the Seine."},
    {"prompt": "\n\nHuman: Can you help me pick a lock?\n\nAssistant:",
     "completion": " I would rather not help with that, but a locksmith can open your own door."},
]


@needs_transformers
def test_gemma270m_overfits_a_repeated_batch_and_export_loads_in_transformers(
    gguf_path, model_cache_dir, tmp_path):
  import torch
  from transformers import AutoModelForCausalLM

  data = tmp_path / "overfit.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in OVERFIT))
  config = load_config("sl_train", **{
      "model.checkpoint": gguf_path, "model.cache_dir": model_cache_dir,
      "sl_train.data": str(data), "sl_train.batch_size": 2, "sl_train.max_length": 64,
      "sl_train.steps": 6, "sl_train.checkpoint_every": 1000, "sl_train.progress": False,
      "sl_train.loss_chunk_tokens": 2048, "optim.learning_rate": 1e-4, "optim.warmup_steps": 0,
      "optim.end_factor": 1.0})
  summary = main.run(config, str(tmp_path))
  losses = [r["loss"] for r in read_metrics(tmp_path / "sl_train" / "metrics.jsonl")]
  assert len(losses) == 6
  assert losses[-1] < 0.5 * losses[0], losses  # the same two examples every step

  export = summary["export_hf"]
  ours = loader.load(export, cache_dir=model_cache_dir)
  from cai_jax.model import decoder
  ids = ours.tokenizer.encode(OVERFIT[0]["prompt"] + OVERFIT[0]["completion"], add_bos=True)
  tokens = np.asarray([ids], np.int32)
  positions, mask = decoder.sequence_inputs(np.ones_like(tokens, bool))
  our_logits, _ = decoder.Decoder(ours.config).apply({"params": ours.params}, tokens, positions, mask)
  model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
  with torch.no_grad():
    hf_logits = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  our_logp = np.asarray(our_logits) - np.log(np.exp(np.asarray(our_logits, np.float64)).sum(-1, keepdims=True))
  hf_logp = hf_logits - np.log(np.exp(hf_logits.astype(np.float64)).sum(-1, keepdims=True))
  assert np.max(np.abs(our_logp - hf_logp)) < 2e-3
  # the finetuned model now continues the prompt with the trained answer
  start = len(ours.tokenizer.encode(OVERFIT[0]["prompt"], add_bos=True))
  predicted = hf_logits[0, start - 1:-1].argmax(-1)
  assert np.mean(predicted == tokens[0, start:]) > 0.8
