"""Job `compile_check`: compile every program a hardware config's pipeline runs for its TPU
topology, on this machine, without a TPU (libtpu's deviceless compiler; `pip install
.[tpu-aot]`).

    python -m cai_jax.main --config configs/compile_check.py \
        --config.compile_check.hardware=configs/hardware/gemma3_27b_tpu_v5p_64.py --workdir DIR

Programs, each at the config's shapes, dtypes and shardings (built by the jobs' own builders
where the jobs have them): every trainer's train step; rl_train's scoring pass (policy,
reference, value), its PM pass and its rollout sampler's prefill and decode programs on the
training mesh; the sampling stages' prefill and decode (sl_generate, sample_pairs, eval's
answers) on one host's devices; the multiple-choice scorer (feedback, eval's judge); eval's PM
scores on the whole mesh. The sampling stages' context lengths depend on the data: they are
compiled at the lengths `cai_jax.train.memory` assumes (`memory.sampler_shape`).

Bytes per device = the compiler's arguments + outputs (less those aliased to donated
arguments) + temporaries, plus the buffers the job keeps alive beside the program (rl_train:
the frozen reference and PM during the PPO step, the optimizer state during scoring and the
rollout). Writes DIR/compile_check/report.json ({"topology", "programs": [{"name",
"bytes_per_device", "hbm_bytes_per_device", "fits", "flops", "compile_s", ...}]}) and prints a
table beside the memory estimate; exits with status 2 when a program does not fit.

Bad settings stop before libtpu is loaded: a GPU config, a mesh that does not divide a batch
or the model's heads, an unknown topology (ConfigError naming the setting).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from cai_jax import config_defaults, parallel
from cai_jax.rl import ppo_trainer
from cai_jax.rl import rollout as ro
from cai_jax.config_defaults import ConfigError
from cai_jax.data.jsonl import write_json_atomic
from cai_jax.eval import mc
from cai_jax.jobs import pm_train, rl_train, sl_train
from cai_jax.jobs.common import sampling_strategy
from cai_jax.model import decoder, kv_cache
from cai_jax.sampling import sampler as sampler_lib
from cai_jax.train import aot, engine, memory
from cai_jax.train import pm as pm_lib

PREFILL_CHUNK = 256  # the Sampler's default prefill_chunk


class DoesNotFit(ConfigError):
  """A program does not fit the chip's HBM (the CLI prints it and exits with status 2)."""


# ---------------------------------------------------------------------------------------------
# The config: the hardware config, overrides, checks before any compile


def _parse_value(text: str):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def hardware_config(cc):
  """The hardware config file `compile_check.hardware`, with `compile_check.overrides`
  ("section.field=value,...") applied."""
  if not cc.hardware:
    raise ConfigError("compile_check.hardware: set it to a configs/hardware/<file>.py")
  if not os.path.isfile(cc.hardware):
    raise ConfigError(f"compile_check.hardware={cc.hardware!r}: no such file")
  config = config_defaults.load_config_file(cc.hardware)
  if "hardware" not in config:
    raise ConfigError(f"compile_check.hardware={cc.hardware!r} has no `hardware` section")
  for item in filter(None, (x.strip() for x in cc.overrides.split(","))):
    key, sep, value = item.partition("=")
    *path, field = key.strip().split(".")
    section = config
    try:
      for name in path:
        section = section[name]
      if not sep or field not in section:
        raise KeyError(key)
      old = section[field]
      new = _parse_value(value.strip())
      section[field] = type(old)(new) if isinstance(old, (int, float)) and not isinstance(
          old, bool) else new
    except (KeyError, TypeError, ValueError) as e:
      raise ConfigError(f"compile_check.overrides: {item!r} is not section.field=value of an "
                        f"existing field ({e})") from None
  return config


def with_slices(config, num_slices: int):
  """The config over `num_slices` slices joined by the data-centre network: the data axis
  grows by that factor (one data replica per slice), as do the devices and hosts."""
  if num_slices == 1:
    return config
  config = config.copy_and_resolve_references()
  hw = config.hardware
  hw.num_devices = int(hw.num_devices) * num_slices
  hw.hosts = int(hw.hosts) * num_slices
  spec = dict(config.mesh)
  if -1 in spec.values():
    raise ConfigError("compile_check.num_slices > 1 needs mesh sizes without -1")
  config.mesh.data = int(spec.get("data", 1)) * num_slices
  return config


def stages_to_check(config, cc) -> tuple[str, ...]:
  runs = memory.stages_of(config)
  if not cc.stages:
    return runs
  wanted = tuple(s.strip() for s in cc.stages.split(",") if s.strip())
  unknown = [s for s in wanted if s not in runs]
  if unknown:
    raise ConfigError(f"compile_check.stages: {', '.join(unknown)} not among this config's "
                      f"stages ({', '.join(runs)})")
  return wanted


def check_heads(model_cfg, mesh_sizes: dict, where: str) -> None:
  """The tensor axis must divide the heads and KV heads (the rules would otherwise leave them
  whole on every device, silently)."""
  t = int(mesh_sizes.get("tensor", 1))
  for field in ("num_heads", "num_kv_heads"):
    n = getattr(model_cfg, field)
    if n % t:
      raise ConfigError(f"{where}: tensor={t} does not divide the model's {field}={n}")


def check_stage(config, stage: str, stage_cfg, arch: str, num_devices: int, hosts: int) -> None:
  """The jobs' own checks (batches against the mesh), on an abstract mesh of the target size."""
  model_cfg = memory.model_config_for(stage_cfg, arch)
  if stage in memory.TRAINERS or stage == "eval":
    mesh = memory.mesh_for(stage_cfg, num_devices)
    check_heads(model_cfg, dict(mesh.shape), "mesh")
    checks = {"sl_train": sl_train.check_config, "pm_train": pm_train.check_config,
              "rl_train": rl_train.check_config}
    if stage in checks:
      checks[stage](stage_cfg[stage], mesh)
    else:
      parallel.check_batch(stage_cfg.eval.batch_size, mesh, "eval.batch_size")
  if stage in memory.SAMPLING:
    local = num_devices // hosts
    spec = parallel.sampling_mesh_spec(dict(stage_cfg.mesh), local)
    check_heads(model_cfg, spec, f"sampling mesh {spec} (from mesh on {local} devices)")


# ---------------------------------------------------------------------------------------------
# Meshes over the topology's devices


def mesh_over(devices, spec: dict, num_slices: int = 1) -> Mesh:
  """A (data, fsdp, tensor) mesh over libtpu's devices; across slices the data axis is laid
  over the data-centre network (each slice holds data / num_slices replicas)."""
  sizes = parallel.mesh_shape(spec, len(devices))
  if num_slices == 1:
    return parallel.make_mesh(spec, devices=devices)
  from jax.experimental import mesh_utils  # noqa: PLC0415
  if sizes[0] % num_slices:
    raise ConfigError(f"mesh.data={sizes[0]} is not divisible by compile_check.num_slices="
                      f"{num_slices}")
  ici = (sizes[0] // num_slices, sizes[1], sizes[2])
  grid = mesh_utils.create_hybrid_device_mesh(ici, (num_slices, 1, 1), devices,
                                              allow_split_physical_axes=True)
  return Mesh(grid, parallel.MESH_AXES)


def _sds(shape, dtype, sharding):
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def _rows(mesh: Mesh, shape, dtype):
  """A batch-major array with its rows over the data axes."""
  return _sds(shape, dtype, parallel.batch_sharding(mesh, len(shape)))


def _sharded_params(boxed, mesh: Mesh, dtype=None):
  return memory.sharded_params(boxed, mesh, dtype)


def _activate(mesh):
  return functools.partial(parallel.activate, mesh)


def _abstract_cache(cfg, mesh, rows: int, slots: int, ring: bool = True):
  shapes = jax.eval_shape(lambda: kv_cache.init_cache(cfg, rows, slots, ring=ring))
  return jax.tree.map(lambda x, s: _sds(x.shape, x.dtype, s), shapes,
                      kv_cache.row_shardings(shapes, mesh))


def _pad_rows(rows: int, mesh: Mesh) -> int:
  n = parallel.batch_size_per_shard(mesh)
  return -(-rows // n) * n


# ---------------------------------------------------------------------------------------------
# Programs


def sampler_programs(prefix: str, cfg, params, mesh: Mesh, shape: memory.SamplerShape,
                     strategy, eos_ids=(1,)) -> list[aot.Program]:
  """The Sampler's prefill (one chunk of `PREFILL_CHUNK` prompt slots into the cache) and
  decode loop (`sampler._decode`), for its largest batch: `shape.rows` prompts padded to the
  data axes, the cache of prefix + prompt + new slots. Built here from the sampler's module
  functions, as `Sampler.__init__` jits them (the decode state as `_empty_state` makes it)."""
  cfg = cfg.replace(remat=False)
  model = decoder.Decoder(cfg)
  rows = _pad_rows(shape.rows, mesh)
  chunk = min(shape.prompt, PREFILL_CHUNK)
  cache = _abstract_cache(cfg, mesh, rows, shape.slots)
  replicated = parallel.replicated(mesh)
  prefill = jax.jit(functools.partial(sampler_lib._prefill, model),  # noqa: SLF001
                    donate_argnums=(4, 5))
  prefill_args = (params, _rows(mesh, (rows, chunk), jnp.int32),
                  _rows(mesh, (rows, chunk), jnp.int32), _rows(mesh, (rows,), jnp.int32),
                  _rows(mesh, (rows, cfg.embed_dim), cfg.dtype), cache,
                  _sds((), jnp.int32, replicated))
  new = shape.new
  state = sampler_lib.DecodeState(
      step=_sds((), jnp.int32, replicated),
      hidden_BD=_rows(mesh, (rows, cfg.embed_dim), cfg.dtype),
      cache=cache,
      next_pos_B=_rows(mesh, (rows,), jnp.int32), count_B=_rows(mesh, (rows,), jnp.int32),
      done_B=_rows(mesh, (rows,), jnp.bool_), eos_B=_rows(mesh, (rows,), jnp.bool_),
      tokens_BN=_rows(mesh, (rows, new), jnp.int32),
      logp_BN=_rows(mesh, (rows, new), jnp.float32),
      sampling_logp_BN=_rows(mesh, (rows, new), jnp.float32),
      key_B=_rows(mesh, (rows, 2), jnp.uint32), stop_hit_B=_rows(mesh, (rows,), jnp.bool_))
  decode = jax.jit(functools.partial(sampler_lib._decode, model, False, strategy,  # noqa: SLF001
                                     tuple(eos_ids)),
                   static_argnums=(0,), donate_argnums=(4,))
  decode_args = (shape.prefix + shape.prompt, params, None,
                 _sds((cfg.vocab_size,), jnp.bool_, replicated), state,
                 _sds((), jnp.int32, replicated), _sds((), jnp.int32, replicated))
  prefix_cache = (memory.kv_cache_bytes(cfg, 1, shape.prefix) if shape.prefix else 0)
  return [
      aot.Program(f"{prefix}/prefill", prefill, prefill_args, _activate(mesh),
                  resident_bytes=prefix_cache,
                  note=f"{rows} rows x {chunk} prompt slots into a {shape.slots}-slot cache"),
      aot.Program(f"{prefix}/decode", _StaticFirst(decode), decode_args, _activate(mesh),
                  resident_bytes=prefix_cache,
                  note=f"{rows} rows, {new} new tokens, {shape.slots}-slot cache; FLOPs of "
                       "one token (XLA counts a loop's body once)"),
  ]


class _StaticFirst:
  """`jitted.lower(first_slot, ...)` with the static first argument passed as it is."""

  def __init__(self, jitted):
    self.jitted = jitted

  def lower(self, *args):
    return self.jitted.lower(*args)


def mc_program(name: str, cfg, params, mesh: Mesh, *, max_length: int, tokens_per_batch: int,
               num_options: int = 2, option_tokens: int = 8) -> aot.Program:
  """`MCScorer`'s scoring program for its longest bucket: rows of `max_length` tokens, as
  many as `tokens_per_batch` allows (a power of two, padded to the data axes)."""
  cfg = cfg.replace(remat=False)
  length = max_length
  rows = max(1, tokens_per_batch // length)
  rows = _pad_rows(1 << (rows.bit_length() - 1), mesh)
  targets = option_tokens
  batch = {k: _rows(mesh, (rows, length), jnp.int32) for k in ("tokens", "positions", "branch")}
  batch.update({k: _rows(mesh, (rows, targets), jnp.int32)
                for k in ("pred_index", "target", "option")})
  fn = jax.jit(functools.partial(mc.option_scores, decoder.Decoder(cfg)),
               static_argnames="num_options")
  return aot.Program(name, _WithKwargs(fn, num_options=num_options), (params, batch),
                     _activate(mesh), note=f"{rows} rows x {length} tokens")


class _WithKwargs:
  def __init__(self, jitted, **kwargs):
    self.jitted, self.kwargs = jitted, kwargs

  def lower(self, *args):
    return self.jitted.lower(*args, **self.kwargs)


def model_config(config, arch: str, layers: int = 0):
  """The architecture in the stage's dtypes; `layers` > 0 keeps only the first `layers` blocks
  (compile_check.num_layers: a quick check of the plumbing, not of the config's memory)."""
  cfg = memory.model_config_for(config, arch)
  if layers:
    cfg = cfg.replace(num_layers=layers, layer_types=tuple(cfg.layer_types[:layers]))
  return cfg


def _schedule_steps(config) -> int:
  """A schedule length the optimizer accepts (shapes do not depend on it)."""
  return int(config.optim.warmup_steps) + 1


def trainer_programs(stage: str, config, arch: str, mesh: Mesh, layers: int = 0
                     ) -> list[aot.Program]:
  """The train step of sl_train or pm_train, built by the job's own `make_steps`."""
  c = config[stage]
  model_cfg = model_config(config, arch, layers).replace(remat=c.remat or False)
  job = {"sl_train": sl_train, "pm_train": pm_train}[stage]
  opt_cfg, optimizer = job.make_optimizer(config, _schedule_steps(config))
  boxed = (memory.decoder_params(model_cfg) if stage == "sl_train"
           else memory.reward_params(model_cfg))
  shardings, abstract = engine.state_shardings_for(boxed, mesh, optimizer)
  step_fn, _ = job.make_steps(c, model_cfg, optimizer, opt_cfg, mesh, shardings)
  B, L = c.batch_size, c.max_length
  if stage == "sl_train":
    batch = {"tokens": _rows(mesh, (B, L), jnp.int32), "targets": _rows(mesh, (B, L), jnp.int32),
             "weights": _rows(mesh, (B, L), jnp.float32), "valid": _rows(mesh, (B, L), jnp.bool_)}
  else:
    batch = {"tokens": _rows(mesh, (B, 2, L), jnp.int32),
             "valid": _rows(mesh, (B, 2, L), jnp.bool_), "last": _rows(mesh, (B, 2), jnp.int32),
             "p": _rows(mesh, (B,), jnp.float32), "weight": _rows(mesh, (B,), jnp.float32)}
  return [aot.Program(f"{stage}/train_step", step_fn.jitted, (abstract, batch), _activate(mesh),
                      note=f"{B} rows x {L} tokens, {c.micro_batches} micro-batch(es), "
                           f"remat={c.remat or 'none'}")]


def rl_train_programs(config, arch: str, mesh: Mesh, *, hosts: int, pm_max_length: int,
                      layers: int = 0) -> list[aot.Program]:
  """rl_train's PPO step, scoring pass, PM pass (the job's `make_programs`) and its rollout
  sampler on the training mesh, each counted with the other models it keeps in memory."""
  c = config.rl_train
  base = model_config(config, arch, layers)
  remat = c.remat or False
  policy_cfg = base.replace(remat=remat)
  value_cfg = base.replace(remat=remat)  # the PM's (the policy's) architecture
  ref_cfg = policy_cfg.replace(param_dtype=c.frozen_dtype, remat=False)
  pm_cfg = (base.replace(param_dtype=c.frozen_dtype, remat=False) if c.reward == "pm"
            else None)
  opt_cfg, optimizer = rl_train.make_optimizer(config, _schedule_steps(config))
  shardings, state = engine.state_shardings_for(ro.boxed_trainable(policy_cfg, value_cfg),
                                                mesh, optimizer)
  score_fn, pm_fn, step_fn = ppo_trainer.make_programs(c, policy_cfg, ref_cfg, value_cfg, pm_cfg,
                                                    optimizer, opt_cfg, mesh, shardings)
  ref = _sharded_params(memory.decoder_params(ref_cfg), mesh, c.frozen_dtype)
  pm_params = (_sharded_params(memory.reward_params(pm_cfg), mesh, c.frozen_dtype)
               if pm_cfg is not None else None)
  b = memory.tree_bytes
  ref_b, pm_b = b(ref), b(pm_params) if pm_params is not None else 0
  opt_b = b((state.opt_state, state.step, state.rng))
  L = memory.pow2_bucket(c.max_prompt_tokens + c.max_new_tokens, c.min_length)
  mb = c.minibatch_size
  train = {k: _rows(mesh, (mb, L), d) for k, d in (
      ("tokens", jnp.int32), ("valid", jnp.bool_), ("targets", jnp.int32),
      ("mask", jnp.float32), ("old_logp", jnp.float32), ("old_values", jnp.float32),
      ("advantages", jnp.float32), ("returns", jnp.float32))}
  W = min(c.max_new_tokens, L)  # the response window the log-probs are computed in
  train["window"] = _rows(mesh, (mb, W), jnp.int32)
  B = c.batch_size
  grid = {k: _rows(mesh, (B, L), d) for k, d in (
      ("tokens", jnp.int32), ("valid", jnp.bool_), ("targets", jnp.int32))}
  grid["window"] = _rows(mesh, (B, W), jnp.int32)
  act = _activate(mesh)
  programs = [
      aot.Program("rl_train/train_step", step_fn.jitted, (state, train), act,
                  resident_bytes=ref_b + pm_b,
                  note=f"{mb} rows x {L} tokens, {c.micro_batches} micro-batch(es), remat="
                       f"{c.remat or 'none'}; + frozen reference and PM"),
      aot.Program("rl_train/scoring", score_fn.jitted,
                  (state.params["policy"], ref, state.params["value"], grid), act,
                  resident_bytes=opt_b + pm_b,
                  note=f"{B} rows x {L} tokens; + optimizer state and PM"),
  ]
  if pm_fn is not None:
    # the PM's rows: BOS + prompt + answer (+ EOS), at most its trained length (pm_train's)
    pm_len = memory.pow2_bucket(max(L + 2, pm_max_length), c.min_length)
    multiple = math.lcm(parallel.batch_size_per_shard(mesh), hosts)
    rows = -(-B // multiple) * multiple  # the job pads to the data axes and the processes
    pm_in = {"tokens": _rows(mesh, (rows, pm_len), jnp.int32),
             "valid": _rows(mesh, (rows, pm_len), jnp.bool_),
             "last": _rows(mesh, (rows,), jnp.int32)}
    programs.append(aot.Program("rl_train/pm_scoring", pm_fn.jitted, (pm_params, pm_in), act,
                                resident_bytes=b(state) + ref_b,
                                note=f"{rows} rows x {pm_len} tokens; + train state and "
                                     "reference"))
  per_shard = parallel.batch_size_per_shard(mesh)
  shape = memory.sampler_shape(config, "rl_train")
  shape = shape._replace(rows=-(-shape.rows // per_shard) * per_shard)
  strategy = sampling_strategy(c, "rl_train")
  others = b(state) - b(state.params["policy"]) + ref_b + pm_b
  for p in sampler_programs("rl_train/rollout", policy_cfg, state.params["policy"], mesh,
                            shape, strategy):
    p.resident_bytes += others
    p.note += "; + value model, optimizer state, reference and PM"
    programs.append(p)
  return programs


def sampling_programs(stage: str, config, arch: str, devices, num_devices: int, hosts: int,
                      full_mesh: Mesh, pm_max_length: int, layers: int = 0
                      ) -> list[aot.Program]:
  """A sampling stage's programs on one host's devices (the mesh `jobs.common.sampling_mesh`
  picks there), and eval's PM scores on the whole mesh."""
  cfg = model_config(config, arch, layers)
  local = num_devices // hosts
  spec = parallel.sampling_mesh_spec(dict(config.mesh), local)
  mesh = parallel.make_mesh(spec, devices=aot.host_devices(devices, local))
  params = _sharded_params(memory.decoder_params(cfg.replace(remat=False)), mesh)
  if stage == "sl_generate":
    return sampler_programs(stage, cfg, params, mesh, memory.sampler_shape(config, stage),
                            sampling_strategy(config.sl_generate, stage))
  if stage == "sample_pairs":
    return sampler_programs(stage, cfg, params, mesh, memory.sampler_shape(config, stage),
                            sampling_strategy(config.sample_pairs, stage))
  if stage == "feedback":
    f = config.feedback
    return [mc_program("feedback/mc_scorer", cfg, params, mesh, max_length=f.max_length,
                       tokens_per_batch=f.tokens_per_batch)]
  if stage == "eval":
    e = config.eval
    strategy = sampling_strategy(e, "eval", "answer_temperature", "answer_top_k",
                                 "answer_top_p")
    programs = sampler_programs("eval/answers", cfg, params, mesh,
                                memory.sampler_shape(config, "eval"), strategy)
    programs.append(mc_program("eval/judge_mc_scorer", cfg, params, mesh,
                               max_length=e.mc_max_length, tokens_per_batch=e.mc_tokens_per_batch))
    pm_len = memory.pow2_bucket(int(e.max_length or pm_max_length or 1024), e.min_length)
    pm_params = _sharded_params(memory.reward_params(cfg.replace(remat=False)), full_mesh)
    fn = engine.compile_eval_step(pm_lib.make_reward_fn(cfg.replace(remat=False)),
                                  jax.tree.map(lambda x: x.sharding, pm_params), full_mesh)
    B = e.batch_size
    batch = {"tokens": _rows(full_mesh, (B, 2, pm_len), jnp.int32),
             "valid": _rows(full_mesh, (B, 2, pm_len), jnp.bool_),
             "last": _rows(full_mesh, (B, 2), jnp.int32)}
    programs.append(aot.Program("eval/pm_scores", fn.jitted, (pm_params, batch),
                                _activate(full_mesh), note=f"{B} pairs x {pm_len} tokens"))
    return programs
  raise ValueError(stage)


# ---------------------------------------------------------------------------------------------
# Estimates beside each program


def _phase_total(est: memory.Estimate, phase: str) -> int:
  """A phase's estimate: for rl_train the persistent part plus the phase; for eval the phase
  (each holds one model)."""
  if not est.phases:
    return est.total
  if est.stage == "eval":
    return est.phases[phase]
  persistent = est.total - est.phases[est.phase]
  return persistent + est.phases[phase]


ESTIMATE_PHASE = {
    "rl_train/train_step": "update", "rl_train/scoring": "scoring",
    "rl_train/pm_scoring": "pm scoring", "rl_train/rollout/prefill": "rollout",
    "rl_train/rollout/decode": "rollout", "eval/answers/prefill": "answers",
    "eval/answers/decode": "answers", "eval/judge_mc_scorer": "judge",
    "eval/pm_scores": "pm scores",
}


def attach_estimates(programs, estimates) -> None:
  for p in programs:
    stage = p.name.split("/")[0]
    est = estimates[stage]
    phase = ESTIMATE_PHASE.get(p.name)
    p.estimate_bytes = _phase_total(est, phase) if phase else est.total


# ---------------------------------------------------------------------------------------------
# The job


@dataclasses.dataclass
class Plan:
  config: object           # the hardware config (slices applied)
  topology: aot.Topology
  stages: tuple
  arch: str
  hbm_bytes: int
  layers: int = 0          # compile_check.num_layers (0 = the architecture's)


def plan(config) -> Plan:
  """Everything checked before libtpu loads: the hardware config, its stages' batches and meshes,
  the topology it names."""
  cc = config.compile_check
  hw_config = hardware_config(cc)
  topology = aot.topology_for(hw_config.hardware, name=cc.topology,
                              num_slices=int(cc.num_slices))
  hw_config = with_slices(hw_config, int(cc.num_slices))
  hw = hw_config.hardware
  arch = memory.architecture_of(hw_config)
  stages = stages_to_check(hw_config, cc)
  for stage in stages:
    check_stage(hw_config, stage, memory.stage_config_for(hw_config, stage), arch,
                int(hw.num_devices), int(hw.hosts))
  layers = int(cc.num_layers)
  depth = memory.model_config_for(hw_config, arch).num_layers
  if not 0 <= layers <= depth:
    raise ConfigError(f"compile_check.num_layers={layers}: 0 (all) up to the model's {depth}")
  return Plan(hw_config, topology, stages, arch, int(float(hw.hbm_gib_per_device) * aot.GIB),
              layers)


def programs_for(p: Plan, devices) -> list[aot.Program]:
  hw = p.config.hardware
  num, hosts = int(hw.num_devices), int(hw.hosts)
  if len(devices) != num:
    raise ConfigError(f"compile_check.topology={p.topology.label}: {len(devices)} devices, but "
                      f"hardware.num_devices={num}")
  full = mesh_over(devices, dict(p.config.mesh), p.topology.num_slices)
  # the PM's trained length, which rl_train and eval read from pm.json
  pm_max_length = int(p.config.pm_train.max_length) if "pm_train" in p.config else 0
  programs = []
  for stage in p.stages:
    stage_cfg = memory.stage_config_for(p.config, stage)
    if stage in ("sl_train", "pm_train"):
      programs += trainer_programs(stage, stage_cfg, p.arch, full, p.layers)
    elif stage == "rl_train":
      programs += rl_train_programs(stage_cfg, p.arch, full, hosts=hosts,
                                    pm_max_length=pm_max_length, layers=p.layers)
    else:
      programs += sampling_programs(stage, stage_cfg, p.arch, devices, num, hosts, full,
                                    pm_max_length, p.layers)
  if not p.layers:  # the estimates are of the whole model
    attach_estimates(programs, memory.stage_estimates(p.config, p.stages))
  return programs


def table(topology: aot.Topology, results) -> str:
  gib = lambda x: f"{x / aot.GIB:7.2f}"  # noqa: E731
  lines = [f"topology {topology.label}",
           f"{'program':28s} {'GiB/dev':>7s} {'args':>7s} {'out':>7s} {'temp':>7s} "
           f"{'beside':>7s} {'HBM':>7s} {'fits':>4s} {'estim.':>7s} {'est/xla':>7s} "
           f"{'TFLOP':>8s} {'compile':>7s}"]
  for r in results:
    ratio = f"{r.estimate_bytes / r.bytes_per_device:7.2f}" if r.bytes_per_device else "      -"
    lines.append(f"{r.name:28s} {gib(r.bytes_per_device)} {gib(r.argument_bytes)} "
                 f"{gib(r.output_bytes - r.alias_bytes)} {gib(r.temp_bytes)} "
                 f"{gib(r.resident_bytes)} {gib(r.hbm_bytes_per_device)} "
                 f"{'yes' if r.fits else 'NO':>4s} {gib(r.estimate_bytes)} {ratio} "
                 f"{r.flops / 1e12:8.2f} {r.compile_s:6.1f}s")
    if r.error:
      lines.append(f"  {r.error}")
  return "\n".join(lines)


def run(config, workdir: str) -> dict:
  p = plan(config)
  devices = aot.topology_devices(p.topology)
  programs = programs_for(p, devices)
  out_dir = os.path.join(workdir, "compile_check")
  os.makedirs(out_dir, exist_ok=True)
  results = []
  for program in programs:
    r = aot.compile_program(program, p.hbm_bytes)
    results.append(r)
    print(f"compile_check: {r.name}: {r.bytes_per_device / aot.GIB:.2f} GiB per device of "
          f"{r.hbm_bytes_per_device / aot.GIB:.1f} ({'fits' if r.fits else 'DOES NOT FIT'}), "
          f"{r.compile_s:.1f} s", flush=True)
    report = {"topology": p.topology.label, "hardware": p.config.hardware.name,
              "config": os.path.abspath(config.compile_check.hardware),
              "num_slices": p.topology.num_slices, "complete": len(results) == len(programs),
              "num_layers": p.layers or memory.model_config_for(p.config, p.arch).num_layers,
              "all_layers": not p.layers,
              "programs": [dict(r.to_json(), note=prog.note)
                           for r, prog in zip(results, programs)]}
    # written after every program: a long run leaves what it has measured so far
    write_json_atomic(os.path.join(out_dir, "report.json"), report)
  print(table(p.topology, results), flush=True)
  bad = [r for r in results if not r.fits]
  if bad:
    raise DoesNotFit("; ".join(
        f"{r.name} does not fit: {r.bytes_per_device / aot.GIB:.2f} GiB per device of "
        f"hardware.hbm_gib_per_device={p.hbm_bytes / aot.GIB:g}"
        + (f" ({r.error[:300]})" if r.error else "") for r in bad)
        + f" (report: {os.path.join(out_dir, 'report.json')})")
  return report
