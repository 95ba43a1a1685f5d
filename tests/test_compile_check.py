"""The compile_check job: TPU programs compiled by libtpu on this CPU machine (the `tpu-aot`
extra; skipped without it).

Checked here: every TPU hardware config maps to a topology libtpu describes with the config's
device count, and GPU configs are refused (their memory stays the estimate); the per-device
bytes and FLOPs the job reads from the compiler, against numbers worked out by hand for a
program small enough to count; a program larger than a chip's HBM reported as not fitting;
bad settings (an unknown topology, a mesh that does not divide a batch or the heads, a GPU
config, a bad override) stopped with an error naming the setting before any compile; and the
command line end to end on one real program, once fitting and once deliberately oversized.

Compiling every program of every config at full depth takes longer than the suite's budget on a
2-core machine (with the TPU configs' scanned layers, 4-11 minutes a config, 42 minutes for all
of them and the two-slice run; unrolled, Gemma 3 1B's sl_train step alone took more than 18
minutes), so that run is `test_every_program_of_every_tpu_config_fits` and
`test_the_largest_config_on_two_slices_fits`, which run when CAI_JAX_COMPILE_ALL=1 and are
skipped otherwise, saying so.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from ml_collections import ConfigDict

from cai_jax.config_defaults import ConfigError
from cai_jax.train import aot

from configs_loader import CONFIGS, load_config

pytestmark = pytest.mark.skipif(not aot.libtpu_available(),
                                reason="libtpu not installed: pip install -e '.[tpu-aot]'")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARDWARE = os.path.join(CONFIGS, "hardware")
NAMES = sorted(os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(HARDWARE, "*.py"))
               if not os.path.basename(p).startswith("_"))
TPU = [n for n in NAMES if load_config(f"hardware/{n}").hardware.kind == "tpu"]
GPU = [n for n in NAMES if load_config(f"hardware/{n}").hardware.kind == "gpu"]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
    p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p))


def cc_config(name: str, **fields) -> ConfigDict:
  c = dict(hardware=os.path.join(HARDWARE, f"{name}.py"), topology="", num_slices=1, stages="",
           overrides="")
  c.update(fields)
  return ConfigDict({"job": "compile_check", "compile_check": c})


def test_the_folder_has_tpu_and_gpu_configs():
  assert len(TPU) >= 5 and len(GPU) >= 5, (TPU, GPU)


# ---------------------------------------------------------------------------------------------
# Topologies


EXPECTED = {  # Cloud TPU's layouts of these slices
    "gemma3_1b_tpu_v5e_8": "v5e:2x4",
    "gemma3_4b_tpu_v5p_8": "v5:2x2x1",
    "gemma3_27b_tpu_v5p_64": "v5:2x4x4",
    "qwen3_32b_tpu_v5p_64": "v5:2x4x4",
    "llama3_1_70b_tpu_v5p_128": "v5:4x4x4",
}


@pytest.mark.parametrize("name", TPU)
def test_each_tpu_config_names_a_topology_libtpu_describes(name):
  hw = load_config(f"hardware/{name}").hardware
  topology = aot.topology_for(hw)
  assert topology.name == EXPECTED[name]
  devices = aot.topology_devices(topology)
  assert len(devices) == hw.num_devices
  # one host's devices: the sampling stages' machine
  assert len(aot.host_devices(devices, hw.num_devices // hw.hosts)) == hw.num_devices // hw.hosts


def test_across_two_slices_the_data_axis_is_the_network_axis():
  """Llama 3.1 70B on two v5p-128 slices: data=2 (one replica a slice), each replica's
  fsdp x tensor block of 64 chips inside one slice, so only the gradient reduction crosses
  the data-centre network."""
  from cai_jax.jobs import compile_check
  config = compile_check.with_slices(load_config("hardware/llama3_1_70b_tpu_v5p_128"), 2)
  assert dict(config.mesh) == {"data": 2, "fsdp": 32, "tensor": 2}
  assert config.hardware.num_devices == 128 and config.hardware.hosts == 32
  devices = aot.topology_devices(aot.topology_for(
      load_config("hardware/llama3_1_70b_tpu_v5p_128").hardware, num_slices=2))
  mesh = compile_check.mesh_over(devices, dict(config.mesh), 2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 32, "tensor": 2}
  slices = [{d.slice_index for d in mesh.devices[i].flat} for i in range(2)]
  assert slices == [{0}, {1}] or slices == [{1}, {0}], slices


@pytest.mark.parametrize("name", GPU)
def test_gpu_configs_are_estimate_only(name):
  """A GPU program needs a GPU to compile: these configs keep cai_jax.train.memory's
  estimate (tests/test_hardware_configs.py) and the check refuses them by name."""
  with pytest.raises(ConfigError, match="hardware.kind='gpu'"):
    aot.topology_for(load_config(f"hardware/{name}").hardware)


def test_an_unknown_topology_is_an_error_naming_the_setting():
  hw = load_config("hardware/gemma3_1b_tpu_v5e_8").hardware
  with pytest.raises(ConfigError, match="compile_check.topology='v9:2x2'"):
    aot.topology_devices(aot.topology_for(hw, name="v9:2x2"))
  with pytest.raises(ConfigError, match="compile_check.topology='v5e:3x3'"):
    aot.topology_devices(aot.topology_for(hw, name="v5e:3x3"))


# ---------------------------------------------------------------------------------------------
# What the compiler reports, against hand counts


def _v5e_mesh():
  from cai_jax import parallel
  devices = aot.topology_devices(aot.Topology("v5e:2x4", "default", (2, 4, 1)))
  return parallel.make_mesh({"data": 8}, devices=devices)


def test_bytes_and_flops_of_a_small_program_match_a_hand_count():
  """x [4096, 1024] f32 with rows over 8 chips, w [1024, 256] f32 on every chip: a chip holds
  512 x 1024 x 4 + 1024 x 256 x 4 bytes of arguments, writes 512 x 256 x 4 bytes and does
  2 x 512 x 1024 x 256 FLOPs."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from cai_jax import parallel
  mesh = _v5e_mesh()
  rows = NamedSharding(mesh, P("data"))
  x = jax.ShapeDtypeStruct((4096, 1024), jnp.float32, sharding=rows)
  w = jax.ShapeDtypeStruct((1024, 256), jnp.float32, sharding=NamedSharding(mesh, P()))
  program = aot.Program("matmul", jax.jit(lambda a, b: a @ b, out_shardings=rows), (x, w),
                        lambda: parallel.activate(mesh), resident_bytes=1000)
  r = aot.compile_program(program, 16 * aot.GIB)
  assert r.argument_bytes == 512 * 1024 * 4 + 1024 * 256 * 4
  assert r.output_bytes == 512 * 256 * 4
  assert r.flops == 2 * 512 * 1024 * 256
  assert r.bytes_per_device == (r.argument_bytes + r.output_bytes - r.alias_bytes
                                + r.temp_bytes + 1000)
  assert r.fits and not r.error
  tight = aot.compile_program(program, r.bytes_per_device - 1)  # one byte short
  assert not tight.fits


def test_a_program_beyond_hbm_is_reported_not_raised():
  """5 GiB of float32 a chip in, three results of 5 GiB out: the compiler refuses 20 GiB on a
  16 GiB v5e chip."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from cai_jax import parallel
  mesh = _v5e_mesh()
  big = jax.ShapeDtypeStruct((8 * 5 * aot.GIB // 4,), jnp.float32,
                             sharding=NamedSharding(mesh, P("data")))
  r = aot.compile_program(aot.Program("big", jax.jit(lambda x: (x * 2, x + 1, x - 1)), (big,),
                                      lambda: parallel.activate(mesh)), 16 * aot.GIB)
  assert not r.fits
  assert "RESOURCE_EXHAUSTED" in r.error and "HBM" in r.error
  assert r.to_json()["fits"] is False


# ---------------------------------------------------------------------------------------------
# Bad settings, before any compile


@pytest.fixture
def no_libtpu(monkeypatch):
  """The checks below must stop before libtpu is asked for anything."""
  from cai_jax.jobs import compile_check

  def refuse(*a, **k):
    raise AssertionError("libtpu reached before the settings were checked")

  monkeypatch.setattr(compile_check.aot, "topology_devices", refuse)
  return compile_check


def test_a_gpu_config_is_refused(no_libtpu):
  with pytest.raises(ConfigError, match="hardware.kind='gpu'"):
    no_libtpu.run(cc_config("gemma3_1b_1x_h100"), "/nonexistent")


def test_a_batch_the_mesh_does_not_divide_is_refused(no_libtpu):
  with pytest.raises(ConfigError, match="sl_train.batch_size"):
    no_libtpu.run(cc_config("gemma3_1b_tpu_v5e_8", overrides="sl_train.batch_size=12"),
                  "/nonexistent")
  with pytest.raises(ConfigError, match="rl_train.batch_size"):
    no_libtpu.run(cc_config("gemma3_27b_tpu_v5p_64", overrides="rl_train.batch_size=24,"
                            "rl_train.minibatch_size=8"), "/nonexistent")


def test_a_tensor_axis_that_does_not_divide_the_heads_is_refused(no_libtpu):
  # Gemma 3 1B has one KV head: tensor=2 would leave it whole on both devices
  with pytest.raises(ConfigError, match="tensor=2 does not divide the model's num_kv_heads=1"):
    no_libtpu.run(cc_config("gemma3_1b_tpu_v5e_8", overrides="mesh.fsdp=4,mesh.tensor=2"),
                  "/nonexistent")


def test_bad_overrides_and_stages_are_refused(no_libtpu):
  with pytest.raises(ConfigError, match="compile_check.overrides"):
    no_libtpu.run(cc_config("gemma3_1b_tpu_v5e_8", overrides="sl_train.no_such=1"),
                  "/nonexistent")
  with pytest.raises(ConfigError, match="compile_check.stages"):
    no_libtpu.run(cc_config("gemma3_1b_tpu_v5e_8", stages="sl_train,report"), "/nonexistent")
  with pytest.raises(ConfigError, match="compile_check.hardware"):
    no_libtpu.run(cc_config("no_such_config"), "/nonexistent")


# ---------------------------------------------------------------------------------------------
# The command line


def _cli(tmp_path, name: str, *flags: str) -> tuple[subprocess.CompletedProcess, dict | None]:
  cmd = [sys.executable, "-m", "cai_jax.main", "--config", os.path.join(CONFIGS,
                                                                        "compile_check.py"),
         f"--config.compile_check.hardware={os.path.join(HARDWARE, name + '.py')}",
         f"--workdir={tmp_path}", *flags]
  proc = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=3000)
  path = tmp_path / "compile_check" / "report.json"
  return proc, (json.loads(path.read_text()) if path.exists() else None)


QUICK = ("--config.compile_check.stages=feedback", "--config.compile_check.num_layers=1")
SHORT = "feedback.max_length=256,feedback.tokens_per_batch=2048"


def test_the_command_compiles_and_writes_the_report(tmp_path):
  """Gemma 3 1B's multiple-choice scorer (one block, 256-token rows: the plumbing, in seconds)
  for the v5e-8's topology: the report has the fields an outside check reads, and the
  program's arguments are the parameters' shards plus the batch's rows, counted by hand."""
  proc, report = _cli(tmp_path, "gemma3_1b_tpu_v5e_8", *QUICK,
                      f"--config.compile_check.overrides={SHORT}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert report["topology"] == "v5e:2x4" and report["num_layers"] == 1
  assert not report["all_layers"] and report["complete"]
  (p,) = report["programs"]
  assert {"name", "bytes_per_device", "hbm_bytes_per_device", "fits", "flops",
          "compile_s"} <= set(p)
  assert p["name"] == "feedback/mc_scorer" and p["fits"] is True
  assert p["hbm_bytes_per_device"] == 16 * aot.GIB
  assert p["flops"] > 0 and p["compile_s"] > 0
  # bfloat16 weights (pipeline.sampling_param_dtype) of one block, fsdp=8: the embedding
  # [262144, 1152] and each block matrix split 8 ways over `embed`, norms whole
  from cai_jax.model import families
  cfg = families.preset("gemma3-1b")
  D, F, N, K, H, V = (cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads,
                      cfg.head_dim, cfg.vocab_size)
  params = 2 * (V * D // 8 + (2 * N * H + 2 * K * H + 3 * F) * D // 8
                + 4 * D + 2 * H + D)
  rows, length, targets = 8 // 8, 256, 8  # 2048 // 256 = 8 rows over 8 chips
  batch = 4 * rows * (3 * length + 3 * targets)  # int32 tokens/positions/branch, 3 target arrays
  # TPU stores arrays in tiles of 4 KiB (8 x 128 words): a small array (a norm scale, the
  # [1, 8] target arrays) may take up to one more tile than its elements; 16 parameter
  # arrays and 6 batch arrays here. (Measured: 10,400 bytes of padding.)
  assert params + batch <= p["argument_bytes"] <= params + batch + 22 * 4096
  assert p["bytes_per_device"] == (p["argument_bytes"] + p["output_bytes"] - p["alias_bytes"]
                                   + p["temp_bytes"] + p["resident_bytes"])
  assert "feedback/mc_scorer" in proc.stdout and "v5e:2x4" in proc.stdout


def test_a_program_that_does_not_fit_fails_the_command(tmp_path):
  """2^17 rows of 256 tokens: 16,384 rows a chip, more than 16 GiB of activations: status 2,
  the program and the HBM setting named, the report written with fits = false."""
  proc, report = _cli(tmp_path, "gemma3_1b_tpu_v5e_8", *QUICK,
                      "--config.compile_check.overrides=feedback.max_length=256,"
                      f"feedback.tokens_per_batch={256 * 2 ** 17}")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "feedback/mc_scorer does not fit" in proc.stderr
  assert "hardware.hbm_gib_per_device=16" in proc.stderr
  (p,) = report["programs"]
  assert p["fits"] is False


@pytest.mark.skipif(os.environ.get("CAI_JAX_COMPILE_ALL") != "1",
                    reason="every program of every TPU config at full depth: 4-11 minutes a config "
                           "on a 2-core machine (docs/hardware.md); CAI_JAX_COMPILE_ALL=1 runs it")
@pytest.mark.parametrize("name", TPU)
def test_every_program_of_every_tpu_config_fits(name, tmp_path):
  """The whole check: every program of every stage, every layer, fits the chip's HBM; each
  compared with cai_jax.train.memory's estimate (the ratio printed)."""
  proc, report = _cli(tmp_path, name)
  assert report is not None, proc.stderr[-3000:]
  for p in report["programs"]:
    print(f"{name} {p['name']}: {p['bytes_per_device'] / aot.GIB:.2f} GiB per device, "
          f"estimate {p['estimate_bytes'] / aot.GIB:.2f} GiB "
          f"(x{p['estimate_bytes'] / max(p['bytes_per_device'], 1):.2f}), "
          f"{p['flops'] / 1e12:.1f} TFLOP, compiled in {p['compile_s']:.0f} s")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert report["complete"] and report["all_layers"]
  assert all(p["fits"] for p in report["programs"])
  assert {p["name"].split("/")[0] for p in report["programs"]} == set(
      s for s in ("sl_generate", "sl_train", "sample_pairs", "feedback", "pm_train", "rl_train",
                  "eval"))


@pytest.mark.skipif(os.environ.get("CAI_JAX_COMPILE_ALL") != "1",
                    reason="the 70B config's trainers on two slices at full depth: minutes on a "
                           "2-core machine; CAI_JAX_COMPILE_ALL=1 runs it")
def test_the_largest_config_on_two_slices_fits(tmp_path):
  """Llama 3.1 70B's trainers on two v5p-128 slices, data over the data-centre network (the
  held-out batches doubled to divide data x fsdp = 64)."""
  proc, report = _cli(tmp_path, "llama3_1_70b_tpu_v5p_128",
                      "--config.compile_check.num_slices=2",
                      "--config.compile_check.stages=sl_train,pm_train,rl_train",
                      "--config.compile_check.overrides=sl_train.eval_batch_size=64,"
                      "pm_train.eval_batch_size=64")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert report["topology"] == "v5:4x4x4 x 2 slices" and report["num_slices"] == 2
  assert report["complete"] and all(p["fits"] for p in report["programs"])
