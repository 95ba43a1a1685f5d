"""The training engine on the tiny preset: chunked loss = naive loss = NumPy, micro-batching =
one batch, sharded meshes (8 simulated devices, in a subprocess) = one device, optimizer pieces,
and the mesh / batch checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cai_jax import parallel
from cai_jax.config_defaults import ConfigError
from cai_jax.data import sl
from cai_jax.model import families
from cai_jax.model import decoder
from cai_jax.train import engine, flops, lm, losses, optim
from conftest import simulated_devices_env

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def tiny():
  cfg = families.preset("tiny")
  params = decoder.init_params(cfg, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  examples = [sl.Example(rng.integers(3, cfg.vocab_size, n).astype(np.int32),
                         np.arange(n) > n // 3) for n in rng.integers(5, 48, 8)]
  return cfg, params, sl.make_batch(examples, 48)


def numpy_nll(hidden, embedding, targets, weights):
  logits = np.einsum("bld,vd->blv", np.asarray(hidden, np.float64), np.asarray(embedding, np.float64))
  m = logits.max(-1, keepdims=True)
  logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
  picked = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
  return float(np.sum((logz - picked) * weights)), float(np.sum(weights))


@pytest.mark.parametrize("chunk_tokens", [1, 40, 96, 10_000])
def test_chunked_logprobs_equal_naive_value_and_gradient(tiny, chunk_tokens):
  cfg, params, batch = tiny
  hidden = lm.hidden_states(cfg, params, batch["tokens"], batch["valid"])
  emb = params["embedder"]["embedding"]
  w = jnp.asarray(batch["weights"])

  def total(fn, h, e):
    return jnp.sum(fn(h, e, batch["targets"]) * w)

  chunked = lambda h, e: losses.token_logprobs(h, e, batch["targets"], chunk_tokens=chunk_tokens)  # noqa: E731
  naive = lambda h, e: losses.naive_token_logprobs(h, e, batch["targets"])  # noqa: E731
  np.testing.assert_allclose(chunked(hidden, emb), naive(hidden, emb), rtol=1e-6, atol=1e-5)
  g_chunked = jax.grad(lambda h, e: total(lambda *a: losses.token_logprobs(
      *a, chunk_tokens=chunk_tokens), h, e), argnums=(0, 1))(hidden, emb)
  g_naive = jax.grad(lambda h, e: total(losses.naive_token_logprobs, h, e),
                     argnums=(0, 1))(hidden, emb)
  for a, b in zip(g_chunked, g_naive):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lm_loss_matches_numpy_formula_and_never_builds_full_logits(tiny):
  cfg, params, batch = tiny
  loss_sum, sums = lm.make_lm_loss(cfg, chunk_tokens=64)(params, batch, None)
  hidden = lm.hidden_states(cfg, params, batch["tokens"], batch["valid"])
  ref_sum, ref_weight = numpy_nll(hidden, params["embedder"]["embedding"], batch["targets"],
                                  batch["weights"])
  assert float(sums["weight"]) == ref_weight == batch["weights"].sum()
  np.testing.assert_allclose(float(loss_sum), ref_sum, rtol=1e-5)
  # The chunked program holds at most [B, chunk, V] logits: no [B, L, V] buffer in its HLO.
  B, L = batch["tokens"].shape
  hlo = jax.jit(lambda p: jax.grad(lambda q: lm.make_lm_loss(cfg, chunk_tokens=64)(
      q, batch, None)[0])(p)).lower(params).as_text()
  assert f"{B}x{L}x{cfg.vocab_size}x" not in hlo
  naive_hlo = jax.jit(lambda p: lm.naive_lm_loss(cfg)(p, batch, None)[0]).lower(params).as_text()
  assert f"{B}x{L}x{cfg.vocab_size}x" in naive_hlo


def single_device_run(cfg, params, batch, micro_batches, steps=2):
  optimizer = optax.adamw(1e-3, b2=0.95, weight_decay=0.1)
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  shardings, _ = engine.state_shardings(cfg, mesh, optimizer)
  state = engine.new_state(jax.tree.map(jnp.array, params), optimizer, jax.random.PRNGKey(1),
                           shardings)
  step = engine.compile_step(engine.make_train_step(
      lm.make_lm_loss(cfg, chunk_tokens=96), optimizer, micro_batches=micro_batches, mesh=mesh),
      shardings, mesh)
  out = []
  for _ in range(steps):
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    out.append(jax.device_get(metrics))
  return out, jax.device_get(state.params)


def test_four_micro_batches_equal_one_batch(tiny):
  cfg, params, batch = tiny
  big, p_big = single_device_run(cfg, params, batch, 1)
  micro, p_micro = single_device_run(cfg, params, batch, 4)
  for a, b in zip(big, micro):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    assert a["weight"] == b["weight"] and a["step"] == b["step"]
  for x, y in zip(jax.tree.leaves(p_big), jax.tree.leaves(p_micro)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
  # and training did move the parameters (the comparison is not between two copies of init)
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(p_big), jax.tree.leaves(params)))
  assert moved > 1e-3


def test_meshes_match_one_device_and_shard_as_the_rules_say():
  env = simulated_devices_env(8)
  proc = subprocess.run([sys.executable, os.path.join(HERE, "sharded_check.py")], env=env,
                        capture_output=True, text=True, timeout=600, cwd=HERE)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  ref = np.asarray(out["reference_losses"])
  assert set(out["meshes"]) == {"(8, 1, 1)/micro1", "(2, 2, 2)/micro1", "(2, 2, 2)/micro4",
                                "(1, 4, 2)/micro1"}
  for name, r in out["meshes"].items():
    np.testing.assert_allclose(r["losses"], ref, rtol=1e-5, err_msg=name)
    # Parameters after 3 AdamW steps: 1e-5 relative (norm-wise). Elementwise, Adam's
    # g / sqrt(v) turns summation-order rounding of near-zero gradients into up to ~1.5e-5
    # absolute at lr 1e-3, so the elementwise bound is looser.
    assert r["rel_norm_diff"] < 1e-5, (name, r)
    assert r["max_abs_diff"] < 5e-5, (name, r)
  # tiny preset: embed 64, mlp 128, heads 4, vocab 512. Rules: embed->fsdp, heads/mlp/vocab->tensor.
  m = out["meshes"]
  assert m["(2, 2, 2)/micro1"]["q_proj_spec"] == "P('fsdp', 'tensor', None)"
  assert m["(2, 2, 2)/micro1"]["q_proj_shard"] == [32, 2, 16]
  assert m["(2, 2, 2)/micro1"]["embedding_shard"] == [256, 32]
  assert m["(1, 4, 2)/micro1"]["embedding_shard"] == [256, 16]
  assert m["(1, 4, 2)/micro1"]["adam_mu_gate_shard"] == [16, 64]
  assert m["(8, 1, 1)/micro1"]["embedding_shard"] == [512, 64]  # pure data parallel: replicated
  # The sampler runs with the training mesh's parameter shardings and matches one device.
  # varied greedy output (10 token changes over 5 rows x 12 tokens; the model as initialised
  # repeats one token per row: 0), so equal outputs are not vacuous
  assert out["sampler"]["greedy_token_changes"] >= 8
  for shape, r in out["sampler"]["meshes"].items():
    assert r["equal"], shape
    # Its KV caches are made already split over the data axes, never whole on one device.
    assert r["caches_made"] >= 3 and r["caches_traced"] == r["caches_made"], (shape, r)
  sampler = out["sampler"]["meshes"]
  assert sampler["(8, 1, 1)"]["cache_rows_on_device_0"] == 1
  assert sampler["(2, 2, 2)"]["cache_rows_on_device_0"] == 2
  assert sampler["(2, 2, 2)"]["param_spec"] == "P('fsdp', 'tensor')"


def test_mesh_and_batch_errors():
  assert parallel.mesh_shape({"data": -1, "tensor": 2}, 8) == (4, 1, 2)
  assert parallel.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ConfigError, match="3 does not divide the 8 devices"):
    parallel.mesh_shape({"data": -1, "tensor": 3}, 8)
  with pytest.raises(ConfigError, match="has 4 devices, but 8 are available"):
    parallel.mesh_shape({"data": 2, "fsdp": 2}, 8)
  with pytest.raises(ConfigError, match="at most one axis"):
    parallel.mesh_shape({"data": -1, "fsdp": -1}, 8)
  fake = FakeMesh(data=2, fsdp=2, tensor=2)
  parallel.check_batch(8, fake)
  with pytest.raises(ConfigError, match="batch_size=6 is not divisible by the data axes"):
    parallel.check_batch(6, fake)


class FakeMesh:
  """Only the axis sizes: enough for the spec-fitting and batch-check logic."""

  def __init__(self, **shape):
    self.shape = shape


def test_unshardable_dimension_is_replicated_not_an_error():
  P = jax.sharding.PartitionSpec
  mesh = FakeMesh(data=1, fsdp=2, tensor=2)
  # Gemma 3 270M's k_proj [640, 1 kv head, 256]: the single KV head cannot split over tensor=2.
  assert parallel._fit(P("fsdp", "tensor", None), (640, 1, 256), mesh) == P("fsdp", None, None)
  assert parallel._fit(P("fsdp", "tensor", None), (640, 4, 256), mesh) == P("fsdp", "tensor", None)
  assert parallel._fit(P(("data", "fsdp"), None), (6, 3), FakeMesh(data=3, fsdp=2, tensor=1)) \
      == P(("data", "fsdp"), None)
  assert parallel._fit(P(("data", "fsdp"), None), (3, 3), FakeMesh(data=3, fsdp=2, tensor=1)) \
      == P("data", None)


def test_weight_decay_mask_and_schedule():
  cfg = families.preset("tiny")
  params = jax.eval_shape(lambda: decoder.init_params(cfg, jax.random.PRNGKey(0)))
  mask = optim.decay_mask(params, decay_norms=False, decay_embedding=False)
  assert mask["embedder"]["embedding"] is False
  assert mask["layer_0"]["pre_attn_norm"]["scale"] is False
  assert mask["layer_0"]["attn"]["q_norm"]["scale"] is False
  assert mask["layer_0"]["mlp"]["gate"] is True
  assert optim.decay_mask(params, decay_embedding=True)["embedder"]["embedding"] is True
  import ml_collections
  c = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=4, total_steps=20,
                                     end_factor=0.1))
  s = optim.schedule(c)
  assert float(s(0)) == 0.0 and abs(float(s(4)) - 1e-3) < 1e-9
  assert abs(float(s(20)) - 1e-4) < 1e-9 and float(s(12)) < float(s(5))
  with pytest.raises(ConfigError, match="warmup_steps=30"):
    optim.schedule(ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=30,
                                                  total_steps=20, end_factor=0.1)))


def test_flops_formula():
  cfg = families.preset("gemma3-270m")
  per_token = flops.train_flops_per_token(cfg, 512)
  n = cfg.num_params()
  assert 260e6 < n < 275e6
  attn = per_token - 6 * n
  assert attn == 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * 512  # window 512 >= L


def test_bfloat16_state_keeps_its_types_and_compiles_once():
  cfg = families.preset("tiny", param_dtype="bfloat16", dtype="bfloat16")
  optimizer = optax.adamw(1e-3)
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  shardings, _ = engine.state_shardings(cfg, mesh, optimizer)
  state = engine.new_state(decoder.init_params(cfg, jax.random.PRNGKey(0)), optimizer,
                           jax.random.PRNGKey(1), shardings)
  step = engine.compile_step(engine.make_train_step(lm.make_lm_loss(cfg), optimizer), shardings,
                             mesh)
  rng = np.random.default_rng(0)
  batch = sl.make_batch([sl.Example(rng.integers(3, 500, 30).astype(np.int32), np.ones(30, bool))
                         for _ in range(2)], 32)
  for _ in range(3):
    state, _ = step(state, parallel.global_batch(batch, mesh))
  assert state.params["layer_0"]["mlp"]["up"].dtype == jnp.bfloat16
  assert state.opt_state[0].mu["layer_0"]["mlp"]["up"].dtype == jnp.bfloat16
  assert step.jitted._cache_size() == 1


@pytest.mark.parametrize("objective", ["lm", "pm"])
def test_model_flops_stay_below_xla_count_of_the_compiled_step(objective):
  """MFU = model FLOPs / seconds / peak cannot exceed 1 when the model FLOPs of a step are at
  most what the compiled step computes. XLA's own count (cost_analysis) is the independent
  reference; the vocabulary is large beside the body (as in Gemma 3 270M, where the embedding is
  63% of the parameters), so counting it for the preference model, which never projects onto
  the vocabulary, breaks the bound (the bug that showed MFU 1.21 in the quickstart)."""
  from cai_jax.data import preferences as prefs
  from cai_jax.train import pm

  cfg = families.preset("tiny", vocab_size=16384)
  B, L = 2, 64
  rng = np.random.default_rng(0)
  optimizer = optax.adamw(1e-3)
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  if objective == "lm":
    shardings, abstract = engine.state_shardings(cfg, mesh, optimizer)
    loss_fn = lm.make_lm_loss(cfg, chunk_tokens=B * L)  # one chunk: no loop for XLA to count
    batch = sl.make_batch([sl.Example(rng.integers(3, 500, L).astype(np.int32), np.ones(L, bool))
                           for _ in range(B)], L)
    tokens = B * L
  else:
    shardings, abstract = pm.state_shardings(cfg, mesh, optimizer)
    loss_fn = pm.make_pm_loss(cfg)
    batch = prefs.make_batch([prefs.PairExample(
        (rng.integers(3, 500, L).astype(np.int32), rng.integers(3, 500, L).astype(np.int32)),
        0.7) for _ in range(B)], L)
    tokens = 2 * B * L
  step = engine.compile_step(engine.make_train_step(loss_fn, optimizer), shardings, mesh)
  with parallel.activate(mesh):
    compiled = step.jitted.lower(abstract, parallel.global_batch(batch, mesh)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost["flops"])
  ours = tokens * flops.train_flops_per_token(cfg, L, lm_head=objective == "lm")
  # Below XLA's count (which adds norms, softmax, the optimizer), and not far below it.
  print(objective, ours / xla_flops)
  assert 0.6 * xla_flops < ours <= xla_flops, (ours, xla_flops)
  # With the step taking exactly the time the machine needs at its peak, MFU is at most 1.
  peak = 1e12
  assert ours / (xla_flops / peak) / peak <= 1.0
  if objective == "pm":  # the lm_head count is the one that overstated the preference model
    wrong = tokens * flops.train_flops_per_token(cfg, L, lm_head=True)
    assert wrong > xla_flops


def test_subtree_learning_rate_scale():
  """optim.make_optimizer(subtree_lr_scale={"head": k}): the head's update is k times AdamW's,
  the decoder's unchanged; k = 1 adds nothing to the optimizer state."""
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=0, total_steps=10, end_factor=1.0, b1=0.9, b2=0.95,
      eps=1e-8, weight_decay=0.0, clip_norm=0.0, decay_norms=False, decay_embedding=False))
  params = {"decoder": {"w": jnp.ones((3, 2))}, "head": {"kernel": jnp.ones((2, 1))}}
  grads = {"decoder": {"w": jnp.full((3, 2), 0.5)}, "head": {"kernel": jnp.full((2, 1), -2.0)}}
  plain, scaled = optim.make_optimizer(cfg), optim.make_optimizer(cfg, subtree_lr_scale={"head": 10.0})
  u_plain, _ = plain.update(grads, plain.init(params), params)
  u_scaled, _ = scaled.update(grads, scaled.init(params), params)
  np.testing.assert_allclose(u_scaled["head"]["kernel"], 10.0 * u_plain["head"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(u_scaled["decoder"]["w"], u_plain["decoder"]["w"], rtol=1e-6)
  assert float(u_plain["head"]["kernel"][0, 0]) == pytest.approx(1e-3, rel=1e-4)  # Adam's step 1
  same = optim.make_optimizer(cfg, subtree_lr_scale={"head": 1.0})
  assert jax.tree.structure(same.init(params)) == jax.tree.structure(plain.init(params))


def test_a_checkpoint_cut_mid_save_is_skipped_with_a_warning(tmp_path, capsys):
  """orbax writes a step into '<step>.orbax-checkpoint-tmp-<n>' and renames it on commit: a
  crash mid-save leaves that folder (here a copy of step 2 with a file cut short). A restart
  warns, names it, resumes from the last committed step, removes it, and saves step 3."""
  import shutil
  from cai_jax.train.checkpointing import TrainCheckpoints
  meta = {"model_config": {"d": 1}}
  ck = TrainCheckpoints(str(tmp_path), save_every=1, keep=3, async_save=False)
  ck.save(1, {"w": jnp.arange(4.0)}, {"index": 1}, meta)
  ck.save(2, {"w": jnp.arange(4.0) + 1}, {"index": 2}, meta)
  ck.close()
  cut = tmp_path / "3.orbax-checkpoint-tmp-1796464000"
  shutil.copytree(tmp_path / "2", cut)
  biggest = max((p for p in cut.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:biggest.stat().st_size // 2])
  capsys.readouterr()
  ck = TrainCheckpoints(str(tmp_path), save_every=1, keep=3, async_save=False)
  err = capsys.readouterr().err
  assert f"{cut.name}: a checkpoint cut off mid-save" in err and "resuming from step 2" in err
  assert ck.latest_step() == 2
  abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
  state, position, step = ck.restore(abstract, meta)
  np.testing.assert_array_equal(state["w"], np.arange(4.0) + 1)
  assert (position, step) == ({"index": 2}, 2)
  ck.save(3, {"w": jnp.arange(4.0) + 2}, {"index": 3}, meta)
  ck.close()
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]


def test_drop_metrics_after_a_crash(tmp_path):
  """A resumed run's metrics file keeps the records up to its checkpoint, loses those after it
  and a last line cut off mid-write; a fresh start (step 0) keeps nothing."""
  from cai_jax.train.runner import drop_metrics_after
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4)]
  path.write_text("".join(lines) + lines[0][:9])
  assert drop_metrics_after(str(path), 2) == 3
  assert path.read_text() == "".join(lines[:2])
  assert drop_metrics_after(str(path), 2) == 0
  samples = tmp_path / "samples.jsonl"
  samples.write_text("".join(json.dumps({"iteration": i}) + "\n" for i in (1, 1, 2)))
  assert drop_metrics_after(str(samples), 1, key="iteration") == 1
  assert drop_metrics_after(str(samples), 0, key="iteration") == 2 and samples.read_text() == ""
  assert drop_metrics_after(str(tmp_path / "absent.jsonl"), 3) == 0


def test_cut_saves_are_gone_when_the_manager_is_built(tmp_path):
  """A job that queries the latest step and then resumes builds two managers on one folder. When
  orbax removed cut saves in a background thread, the two rmtrees raced and the resumed run's
  first save died with FileNotFoundError (seen once in CI, in test_sl_train's SIGKILL test).
  TrainCheckpoints removes them before it returns, so nothing is left for a second one to race."""
  from cai_jax.train.checkpointing import TrainCheckpoints, cut_saves
  meta = {"model_config": {"d": 1}}
  ck = TrainCheckpoints(str(tmp_path), save_every=1, keep=3, async_save=False)
  ck.save(1, {"w": jnp.arange(4.0)}, {"index": 1}, meta)
  ck.close()
  cut = tmp_path / "2.orbax-checkpoint-tmp-1796464001"
  for d in range(40):  # enough files that a background deletion is still running on return
    (cut / "state" / f"d{d}").mkdir(parents=True)
    for f in range(50):
      (cut / "state" / f"d{d}" / f"f{f}").write_bytes(b"x")
  first = TrainCheckpoints(str(tmp_path), save_every=1, keep=3)
  assert not cut.exists() and cut_saves(str(tmp_path)) == []
  second = TrainCheckpoints(str(tmp_path), save_every=1, keep=3)
  second.save(2, {"w": jnp.arange(4.0) + 1}, {"index": 2}, meta, force=True)
  second.close()
  first.close()
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]
