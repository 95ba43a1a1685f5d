"""configs/hardware/: every config loads (as the CLI loads it), its mesh covers the hardware's
devices, its batches divide the data axes (the jobs' own checks, on an abstract mesh of the
target size), the trainers run float32 master weights with bfloat16 matmuls and the sampling
stages bfloat16 weights (through `pipeline.stage_config`, as the pipeline runs them), every
trainer's train state builds abstractly in its shards and the per-device estimate of
`cai_jax.train.memory` stays under 90% of a device's memory; the sampling stages (one device)
too. And `cai_jax.train.memory` itself: per-device bytes as the sharding rules say (by hand and
against real shards on 8 simulated devices), dtype and fsdp scaling, each stage estimated in
the dtype it runs with, and the activation formula against XLA's own count for an
unrematerialised float32 step on CPU.
No weights are read and nothing of a real model's size is allocated."""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from absl import flags
from ml_collections import config_flags

from cai_jax import config_defaults, parallel
from cai_jax.model import families
from cai_jax.model import heads, kv_cache
from cai_jax.train import engine, memory, optim

from configs_loader import CONFIGS, load_config
from conftest import simulated_devices_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HARDWARE = os.path.join(CONFIGS, "hardware")
NAMES = sorted(os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(HARDWARE, "*.py"))
               if not os.path.basename(p).startswith("_"))
MARGIN = 0.9  # estimates must leave 10% of a device for what they do not count


@functools.lru_cache(maxsize=None)
def config_of(name: str):
  return load_config(f"hardware/{name}")


@functools.lru_cache(maxsize=None)
def estimates_of(name: str):
  """(trainers, sampling stages), each estimated from its stage's config."""
  est = memory.stage_estimates(config_of(name))
  return ({s: e for s, e in est.items() if s in memory.TRAINERS},
          {s: e for s, e in est.items() if s in memory.SAMPLING})


def adamw():
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=0.1))


# ---------------------------------------------------------------------------------------------
# The hardware configs


def test_the_folder_covers_every_size_on_gpus_and_tpus():
  presets = {config_of(n).hardware.preset for n in NAMES}
  kinds = {config_of(n).hardware.kind for n in NAMES}
  assert {"gemma3-1b", "gemma3-4b", "gemma3-12b", "gemma3-27b"} <= presets, presets
  assert {"llama3.1-8b", "qwen2.5-7b", "qwen3-32b"} <= presets, presets
  assert {"gpu", "tpu"} <= kinds, kinds


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_like_the_cli_loads_it(name):
  path = os.path.join(HARDWARE, f"{name}.py")
  argv = ["cai_jax.main", f"--config={path}", "--config.model.checkpoint=/models/gemma"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)  # overrides are read from argv, as the CLI's
  fv(argv)
  config = fv.config
  assert config.job == "pipeline"
  assert config.model.checkpoint == "/models/gemma"
  hw = config.hardware
  assert hw.preset in families.PRESETS and hw.kind in ("gpu", "tpu")
  assert hw.num_devices >= 1 and hw.hosts >= 1 and hw.num_devices % hw.hosts == 0
  assert 0 < hw.hbm_gib_per_device < 1024
  # the docstring says what to run and what to set
  with open(path) as f:
    text = f.read()
  assert "python -m cai_jax.main" in text and f"configs/hardware/{name}.py" in text
  assert "model.checkpoint" in text
  # a stage config built from it carries what the jobs read
  from cai_jax.jobs import pipeline
  sl = pipeline.stage_config(config, "sl_train", "/tmp/w")
  assert dict(sl.mesh) == dict(config.mesh) and sl.sl_train.remat == config.sl_train.remat


@pytest.mark.parametrize("name", NAMES)
def test_trainers_keep_float32_master_weights_and_sampling_stages_bfloat16(name, tmp_path):
  """As the pipeline runs each stage (pipeline.stage_config): the trainers hold float32
  parameters (and so float32 AdamW moments) with bfloat16 matmuls; the stages that only sample
  and score hold bfloat16 weights, as do rl_train's frozen reference and PM."""
  from cai_jax.jobs import pipeline
  config = config_of(name)
  labels = tmp_path / "feedback" / "labels.jsonl"  # pm_train's stage config wants AI labels
  labels.parent.mkdir()
  labels.write_text('{"id": "x"}\n')
  assert set(pipeline.SAMPLING_STAGES) == set(memory.SAMPLING)
  for stage in memory.TRAINERS:
    m = pipeline.stage_config(config, stage, str(tmp_path)).model
    assert (m.param_dtype, m.dtype) == ("float32", "bfloat16"), stage
  for stage in pipeline.SAMPLING_STAGES:
    m = pipeline.stage_config(config, stage, str(tmp_path)).model
    assert (m.param_dtype, m.dtype) == ("bfloat16", "bfloat16"), stage
  assert config.rl_train.frozen_dtype == "bfloat16"
  # the estimate counts each stage in the dtypes of the same stage configs
  dtypes = lambda m: (m.param_dtype, m.dtype)  # noqa: E731
  for stage in pipeline.SAMPLING_STAGES + memory.TRAINERS:
    assert dtypes(memory.stage_config_for(config, stage).model) == dtypes(
        pipeline.stage_config(config, stage, str(tmp_path)).model), stage
  # the trainers' estimated train states are float32 throughout (parameters and moments)
  trainers, _ = estimates_of(name)
  for stage, est in trainers.items():
    floats = [x.dtype for x in jax.tree.leaves((est.state.params, est.state.opt_state))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and set(floats) == {jnp.dtype("float32")}, stage


@pytest.mark.parametrize("name", NAMES)
def test_mesh_covers_the_devices_and_batches_divide_the_data_axes(name):
  from cai_jax.jobs import pm_train, rl_train, sl_train
  config = config_of(name)
  hw = config.hardware
  sizes = parallel.mesh_shape(dict(config.mesh), hw.num_devices)
  assert math.prod(sizes) == hw.num_devices
  assert all(int(config.mesh[a]) > 0 for a in parallel.MESH_AXES), "spell the mesh out"
  mesh = memory.mesh_for(config)
  assert mesh.size == hw.num_devices and tuple(mesh.axis_names) == parallel.MESH_AXES
  # the jobs' own checks (ConfigError on a batch the data axes do not divide)
  sl_train.check_config(config.sl_train, mesh)
  pm_train.check_config(config.pm_train, mesh)
  rl_train.check_config(config.rl_train, mesh)
  # every process loads an equal share of each batch (parallel.process_rows)
  for section, fields in (("sl_train", ("batch_size", "eval_batch_size")),
                          ("pm_train", ("batch_size", "eval_batch_size")),
                          ("rl_train", ("batch_size", "minibatch_size"))):
    for field in fields:
      assert config[section][field] % hw.hosts == 0, (section, field)
  assert config.distributed.auto == (hw.hosts > 1)
  r = config.rl_train
  assert r.max_prompt_tokens + r.max_new_tokens <= families.PRESETS[hw.preset].max_seq_len


@pytest.mark.parametrize("name", NAMES)
def test_every_trainer_fits_its_devices(name):
  config = config_of(name)
  hw = config.hardware
  trainers, _ = estimates_of(name)
  assert set(trainers) == {"sl_train", "pm_train", "rl_train"}
  model_cfg = memory.model_config_for(memory.stage_config_for(config, "sl_train"),
                                      hw.preset)
  budget = MARGIN * hw.hbm_gib_per_device * memory.GIB
  for stage, est in trainers.items():
    # the abstract state was built in its shards on a mesh of the target size
    leaves = jax.tree.leaves(est.state)
    assert leaves and all(x.sharding.mesh.size == hw.num_devices for x in leaves), stage
    embedding = (est.state.params["policy"] if stage == "rl_train" else
                 est.state.params["decoder"] if stage == "pm_train" else
                 est.state.params)["embedder"]["embedding"]
    assert embedding.shape == (model_cfg.vocab_size, model_cfg.embed_dim)
    assert embedding.dtype == jnp.dtype(config.model.param_dtype)
    # sharded: one device holds a share of the parameters, never all of them
    whole = memory.tree_bytes(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                           est.state.params))
    assert est.parts["params"] * hw.num_devices >= whole
    if hw.num_devices > 1:
      assert est.parts["params"] < whole / 2, stage
    assert est.total <= budget, f"{name}/{stage}:\n{est.describe()}"


@pytest.mark.parametrize("name", NAMES)
def test_every_sampling_stage_fits_its_devices(name):
  """The sampling stages run in one process on one host's devices (the whole model on one
  device, or sharded as in training over a host's chips)."""
  config = config_of(name)
  _, sampling = estimates_of(name)
  assert set(sampling) == {"sl_generate", "sample_pairs", "feedback", "eval"}
  hw = config.hardware
  budget = MARGIN * hw.hbm_gib_per_device * memory.GIB
  local = hw.num_devices // hw.hosts
  for stage, est in sampling.items():
    assert est.total <= budget, f"{name}/{stage}:\n{est.describe()}"
    if stage != "eval" or est.phase != "pm scores":
      assert math.prod(est.mesh) == local, (name, stage, est.mesh)
      if local > 1:  # sharded: a device holds a share of the weights
        whole = memory.tree_bytes(memory.decoder_params(
            memory.model_config_for(memory.stage_config_for(config, stage),
                                    memory.architecture_of(config))))
        params = [v for k, v in est.parts.items() if k.startswith("params")][0]
        assert params < whole / 2, (name, stage)
  if name == "gemma3_27b_tpu_v5p_64":  # its docstring: they run on one H100 too
    h100 = MARGIN * 79.6 * memory.GIB
    arch = memory.architecture_of(config)
    for stage in sampling:
      est = memory.estimate_stage(memory.stage_config_for(config, stage), stage,
                                  architecture=arch, num_devices=hw.num_devices,
                                  hosts=hw.num_devices)  # one device to sample on
      assert est.mesh == (1, 1, 1) or est.phase == "pm scores"
      assert est.total <= h100, f"{name}/{stage} on an H100:\n{est.describe()}"


def _sampling_estimates(sampling_param_dtype):
  config = config_of("gemma3_1b_1x_h100").copy_and_resolve_references()
  config.pipeline.sampling_param_dtype = sampling_param_dtype
  return memory.stage_estimates(config)


def test_sampling_stages_are_estimated_in_sampling_param_dtype():
  """2 bytes a parameter at sampling_param_dtype=bfloat16, twice that at float32 (and with ''
  they follow model.param_dtype, float32); the trainers do not change."""
  bf16, f32, default = (_sampling_estimates(d) for d in ("bfloat16", "float32", ""))
  cfg = families.preset("gemma3-1b")
  n, head = cfg.num_params(), cfg.embed_dim + 1  # decoder; the PM's scalar head
  for stage in ("sl_generate", "sample_pairs", "feedback"):
    assert bf16[stage].parts["params (whole model)"] == 2 * n, stage
    assert f32[stage].parts["params (whole model)"] == 4 * n, stage
    # everything else (KV cache, prefill: in model.dtype) is the same
    assert f32[stage].total - bf16[stage].total == 2 * n, stage
  # eval: each phase holds one model; its parameters take twice the bytes in float32
  diff = {k: f32["eval"].phases[k] - bf16["eval"].phases[k] for k in bf16["eval"].phases}
  assert diff == {"answers": 2 * n, "judge": 2 * n, "pm scores": 2 * (n + head)}, diff
  for stage, est in f32.items():
    assert est.parts == default[stage].parts, stage
  for stage in memory.TRAINERS:
    assert bf16[stage].parts == f32[stage].parts, stage


def test_the_memory_cli_prints_every_stage(capsys):
  assert memory.main(["memory", os.path.join(HARDWARE, "gemma3_1b_1x_h100.py")]) == 0
  out = capsys.readouterr().out
  for stage in ("sl_train", "pm_train", "rl_train", "sl_generate", "sample_pairs", "feedback",
                "eval"):
    assert f"\n{stage}: " in out or out.startswith(f"{stage}: ")
  assert "% of 79.6 GiB" in out
  assert "float32 parameters, bfloat16 matmuls: sl_train, pm_train, rl_train" in out
  assert "bfloat16 parameters, bfloat16 matmuls: sl_generate, sample_pairs, feedback, eval" in out


# ---------------------------------------------------------------------------------------------
# cai_jax.train.memory


TINY = families.preset("tiny")


def _hand_param_bytes(cfg, data_fsdp_tensor, itemsize):
  """Per-device parameter bytes of a decoder by the rules (embed->fsdp; vocab, heads, kv heads,
  mlp->tensor; norms and head_dim whole), written out without the library's helpers."""
  _, fsdp, tensor = data_fsdp_tensor
  split = lambda n, k: n // k if n % k == 0 else n  # noqa: E731 - an axis that does not divide
  D, F, N, K, H = cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  d = split(D, fsdp)
  per_layer = (d * split(N, tensor) * H * 2          # q_proj, o_proj
               + d * split(K, tensor) * H * 2        # k_proj, v_proj
               + d * split(F, tensor) * 3            # gate, up, down
               + 4 * D + 2 * H)                      # 4 norms, q_norm, k_norm (replicated)
  elements = split(cfg.vocab_size, tensor) * d + cfg.num_layers * per_layer + D
  return elements * itemsize


def test_per_device_param_bytes_follow_the_rules_by_hand():
  for sizes in ((2, 2, 2), (1, 8, 1), (1, 1, 8), (8, 1, 1), (1, 2, 4)):
    mesh = memory.abstract_mesh(sizes)
    state = memory.abstract_train_state(memory.decoder_params(TINY), mesh, adamw())
    got = memory.state_bytes(state)
    assert got["params"] == _hand_param_bytes(TINY, sizes, 4), sizes
    # AdamW's mu and nu follow their parameter (plus an int32 step count)
    assert 0 <= got["optimizer"] - 2 * got["params"] <= 16, sizes
  # tensor=8 does not divide tiny's 2 KV heads: they stay whole, as parallel._fit does
  mesh = memory.abstract_mesh((1, 1, 8))
  specs = parallel.param_specs(memory.decoder_params(TINY), mesh)
  assert specs["layer_0"]["attn"]["k_proj"] == jax.sharding.PartitionSpec("fsdp", None, None)


def test_abstract_mesh_resolves_minus_one_like_make_mesh():
  mesh = memory.abstract_mesh({"data": -1, "fsdp": 4, "tensor": 2}, 32)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 4, "tensor": 2}
  with pytest.raises(ValueError):
    memory.abstract_mesh({"data": 3, "fsdp": 1, "tensor": 1}, 8)


def test_float32_parameters_take_twice_the_bytes_of_bfloat16():
  mesh = memory.abstract_mesh((1, 4, 2))
  f32 = memory.state_bytes(memory.abstract_train_state(
      memory.decoder_params(TINY.replace(param_dtype="float32")), mesh, adamw()))
  bf16 = memory.state_bytes(memory.abstract_train_state(
      memory.decoder_params(TINY.replace(param_dtype="bfloat16")), mesh, adamw()))
  assert f32["params"] == 2 * bf16["params"]
  counts = f32["optimizer"] - 2 * f32["params"]  # AdamW's int32 step count, in both
  assert f32["optimizer"] - counts == 2 * (bf16["optimizer"] - counts)


def test_more_fsdp_devices_hold_fewer_bytes():
  cfg = families.preset("gemma3-4b", param_dtype="bfloat16", dtype="bfloat16")
  boxed = memory.decoder_params(cfg)
  opt = adamw()
  per_device = [memory.state_bytes(memory.abstract_train_state(
      boxed, memory.abstract_mesh((1, n, 1)), opt)) for n in (1, 2, 4, 8, 16)]
  whole = 2 * cfg.num_params()
  assert per_device[0]["params"] == whole  # one device: everything, 2 bytes a parameter
  for fewer, more in zip(per_device, per_device[1:]):
    assert more["params"] < fewer["params"] and more["optimizer"] < fewer["optimizer"]
  # only the (replicated) norm scales keep 16 devices from holding exactly 1/16 each
  assert whole / 16 <= per_device[-1]["params"] < whole / 16 * 1.01


def test_reward_params_are_the_reward_models():
  ours = memory.reward_params(TINY)
  theirs = heads.abstract_params(TINY)
  describe = lambda t: jax.tree.map(  # noqa: E731
      lambda b: (b.value.shape, b.value.dtype, b.names), t,
      is_leaf=lambda x: hasattr(x, "names"))
  assert describe(ours) == describe(theirs)


def test_remat_micro_batches_and_the_loss_chunk_move_the_estimate_the_right_way():
  cfg = families.preset("gemma3-1b", param_dtype="bfloat16", dtype="bfloat16")
  mesh = memory.abstract_mesh((1, 1, 1))
  act = lambda remat, rows=8, L=1024: memory.activation_bytes(  # noqa: E731
      cfg, global_rows=rows, length=L, mesh=mesh, remat=remat)["activations"]
  assert act("full") < act("dots") < act("")
  assert act("full", rows=4) < act("full", rows=8)
  # attention scores grow with the square of the length: more than twice for twice the length
  assert act("", L=2048) > 2 * act("", L=1024)
  chunk = lambda n: memory.loss_chunk_bytes(cfg, 8, 1024, n, mesh)  # noqa: E731
  assert chunk(2048) == 2 * chunk(1024) and chunk(0) == 0
  step = lambda micro: memory.train_step_estimate(  # noqa: E731
      "sl", memory.decoder_params(cfg), mesh, adamw(),
      passes=[memory.Pass(cfg, 16 // micro, 512, 1024)], micro_batches=micro, remat="full")
  one, four = step(1), step(4)
  assert four.parts["gradients"] == 2 * one.parts["gradients"]  # accumulator + micro-batch
  assert four.parts["activations"] < one.parts["activations"] / 3
  # tensor parallelism divides the vocabulary of the loss chunk
  tp = memory.loss_chunk_bytes(cfg, 8, 1024, 1024, memory.abstract_mesh((1, 1, 4)))
  assert tp == chunk(1024) // 4


def test_rl_train_counts_its_four_models_and_the_sampler():
  config = memory.stage_config_for(load_config("hardware/gemma3_1b_1x_h100"), "rl_train")
  cfg = memory.model_config_for(config, "gemma3-1b")
  assert cfg.param_dtype == "float32" and config.rl_train.frozen_dtype == "bfloat16"
  mesh = memory.abstract_mesh((1, 1, 1))
  est = memory.rl_train_estimate(config, cfg, mesh, pm_max_length=1024)
  n, head = cfg.num_params(), cfg.embed_dim + 1  # decoder; kernel [D, 1] and bias [1]
  # policy + value model (decoder + head), float32 master weights, and their float32 moments
  assert est.parts["params"] == 4 * (2 * n + head)
  assert 0 <= est.parts["optimizer"] - 2 * est.parts["params"] <= 16
  assert est.parts["reference (frozen)"] == 2 * n  # bfloat16
  assert est.parts["preference model (frozen)"] == 2 * (n + head)
  assert set(est.phases) == {"update", "scoring", "pm scoring", "rollout"}
  assert est.phase == max(est.phases, key=est.phases.get)
  with config.unlocked():
    config.rl_train.reward = "target_token"
    config.rl_train.frozen_dtype = "float32"
  est = memory.rl_train_estimate(config, cfg, mesh)
  assert est.parts["preference model (frozen)"] == 0
  assert est.parts["reference (frozen)"] == 4 * n
  # the KV cache: exactly what kv_cache.init_cache allocates, with and without rings
  for slots in (10, 3000):
    for ring in (True, False):
      shapes = jax.eval_shape(lambda: kv_cache.init_cache(cfg, 2, slots, ring=ring))
      assert memory.kv_cache_bytes(cfg, 2, slots, ring=ring) == sum(
          x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  assert memory.kv_cache_bytes(cfg, 2, 3000) < memory.kv_cache_bytes(cfg, 2, 3000, ring=False)


@pytest.mark.parametrize("result", ["h200_train_step_fp32", "h200_train_step_bf16"])
def test_estimate_against_the_measured_gpu_peak(result):
  """benchmarks/train_step.py's runs on an H200 (Gemma 3 270M architecture, one device): the
  estimate for the same step must cover JAX's measured peak, by at most 35% more."""
  path = os.path.join(ROOT, "benchmarks", "results", f"{result}.json")
  if not os.path.exists(path):
    pytest.skip(f"{path} not present")
  with open(path) as f:
    r = json.load(f)
  assert r["num_devices"] == 1 and r["weights"] in ("random", "gemma3-270m")
  cfg = families.preset("gemma3-270m", param_dtype=r["dtype"], dtype=r["dtype"])
  opt_cfg = config_defaults.optim_config(learning_rate=1e-5, warmup_steps=0)  # as the benchmark
  opt_cfg.total_steps = 4
  est = memory.train_step_estimate(
      "sl_train", memory.decoder_params(cfg), memory.abstract_mesh((1, 1, 1)),
      optim.make_optimizer(opt_cfg),
      passes=[memory.Pass(cfg, r["batch"] // r["micro_batches"], r["length"],
                          r["loss_chunk_tokens"])],
      micro_batches=r["micro_batches"], remat=r["remat"] or "")
  measured = r["device_peak_gb"]  # GiB (peak_bytes_in_use / 2**30)
  assert measured <= est.gib <= 1.35 * measured, (measured, est.describe())


_SHARD_SCRIPT = r"""
import json, jax, numpy as np, optax
from cai_jax import config_defaults, parallel
from cai_jax.model import families
from cai_jax.train import engine, memory
cfg = families.preset("tiny")
opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=0.1))
out = {}
for sizes in ((2, 2, 2), (1, 8, 1), (1, 2, 4)):
  mesh = parallel.make_mesh(dict(zip(parallel.MESH_AXES, sizes)))
  shardings, _ = engine.state_shardings(cfg, mesh, opt)
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                       parallel.unbox(memory.decoder_params(cfg)))
  params = parallel.shard_host_tree(zeros, shardings.params)
  state = engine.new_state(params, opt, jax.random.PRNGKey(1), shardings)
  real = {}
  for part, tree in (("params", state.params), ("optimizer", state.opt_state)):
    per_device = {}
    for leaf in jax.tree.leaves(tree):
      for shard in leaf.addressable_shards:
        per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
    real[part] = sorted(set(per_device.values()))
  est = memory.state_bytes(memory.abstract_train_state(
      memory.decoder_params(cfg), memory.abstract_mesh(sizes), opt))
  out[str(sizes)] = {"real": real, "estimate": est}
print(json.dumps(out))
"""


def test_abstract_state_bytes_equal_real_shards_on_8_devices():
  env = dict(simulated_devices_env(8), PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p))
  proc = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(out) == 3
  for sizes, r in out.items():
    for part in ("params", "optimizer"):
      # every device holds the same amount, and it is what the abstract mesh says
      assert r["real"][part] == [r["estimate"][part]], (sizes, part, r)


def test_activation_formula_against_xla_without_remat_on_cpu():
  """XLA's buffer assignment for a float32 step of the tiny preset without remat, against the
  estimate's non-state parts. (CPU only shows this case: its XLA keeps rematerialised
  activations anyway and computes bfloat16 in float32.)"""
  from cai_jax.train import lm
  cfg = TINY
  B, L, chunk = 8, 256, 256
  opt = adamw()
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  shardings, abstract = engine.state_shardings(cfg, mesh, opt)
  step = engine.compile_step(engine.make_train_step(lm.make_lm_loss(cfg, chunk_tokens=chunk),
                                                    opt, mesh=mesh), shardings, mesh)
  batch = {k: jax.ShapeDtypeStruct((B, L), d) for k, d in
           (("tokens", jnp.int32), ("targets", jnp.int32), ("weights", jnp.float32),
            ("valid", jnp.bool_))}
  with parallel.activate(mesh):
    analysis = step.jitted.lower(abstract, batch).compile().memory_analysis()
  if analysis is None:
    pytest.skip("this backend gives no memory analysis")
  est = memory.train_step_estimate("sl", memory.decoder_params(cfg), memory.abstract_mesh(
      (1, 1, 1)), opt, passes=[memory.Pass(cfg, B, L, chunk)], micro_batches=1, remat="")
  state = est.parts["params"] + est.parts["optimizer"] + est.parts["step+rng"]
  batch_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in batch.values())
  assert analysis.argument_size_in_bytes == state + batch_bytes
  transient = est.total - state
  ratio = transient / analysis.temp_size_in_bytes
  assert 0.7 < ratio < 1.5, (ratio, est.describe(), analysis.temp_size_in_bytes)
