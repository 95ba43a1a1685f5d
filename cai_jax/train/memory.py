"""Per-device memory of the training stages, estimated without devices or weights.

    python -m cai_jax.train.memory configs/hardware/gemma3_12b_8x_h100.py

prints, for each stage of a pipeline config (or the one stage of a stage config), the bytes one
device holds at the stage's peak, part by part. The architecture comes from
`config.hardware.preset` (a hardware config names it; the checkpoint folder need not exist) or
from `config.model.checkpoint` when that is a preset name.

Each stage is estimated from the config it runs with: for a pipeline config the one
`cai_jax.jobs.pipeline.stage_config` builds (`stage_config_for`), so every stage is counted in
its own dtypes and on its own mesh, as the pipeline wires them: the trainers' parameters,
gradients and AdamW moments in `model.param_dtype` (float32 master weights in the hardware
configs), their activations in `model.dtype`; the sampling stages (sl_generate, sample_pairs,
feedback, eval) in `pipeline.sampling_param_dtype` when set; rl_train's frozen reference and
preference model in `rl_train.frozen_dtype`.

Exact parts. The train state is built as the jobs build it (`engine.state_shardings_for` on the
same boxed parameters: the decoder, `heads.RewardModel`, rl_train's {"policy", "value"}), but
with `jax.eval_shape` (nothing is allocated) and on a `jax.sharding.AbstractMesh` of the target
size (`AbstractMesh(axis_sizes, axis_names)`, JAX >= 0.5: no devices needed, 8 or 256 of them
are described by their axis sizes alone). Each leaf's per-device bytes are
`NamedSharding(abstract_mesh, spec).shard_shape(shape)` x itemsize, with
the specs `parallel.param_specs` gives on a real mesh (logical rules, axes that do not divide a
dimension dropped). Parameters, AdamW's mu and nu (in the parameters' dtype, as optax keeps
them), step and RNG are counted exactly; so are rl_train's frozen reference and preference
model (in `rl_train.frozen_dtype`) and the sampler's KV cache.

Estimated parts (per device; b = rows of one micro-batch on one device = batch / (micro_batches
x data x fsdp), doubled for the PM's pairs; L = padded length; n layers; D, F, N, K, H = embed,
mlp, heads, kv heads, head dim; N, K, F and V divided by the `tensor` size where it divides them;
a = itemsize of `model.dtype`, p = of `model.param_dtype`; u = b x L):

  gradients    params x 1, or x 2 with micro_batches > 1 (the accumulator + one micro-batch's);
               the optimizer update is assumed to run in place on the donated state.
  gathered     FSDP's working copies: the tied embedding [V, D] and two blocks' weights with the
               fsdp sharding undone, in param dtype, twice (the gathered weights, and their
               gradient before the reduce-scatter); once with fsdp = 1 (the gradient buffers of
               the layer being differentiated). With float32 parameters and bfloat16 matmuls
               the model casts each weight before its matmul, and XLA may gather the bfloat16
               copy instead: counting float32 is the upper bound.
  activations  saved for the backward pass, by remat policy, per block (tensors at XLA's fusion
               boundaries: norms, RoPE and the gelu are recomputed inside fusions):
                 ''     S = u·a·(6·D [residuals, norm outputs, o_proj and down outputs]
                             + 3·(N+K)·H [q, k, v projections; q, k after norm and RoPE;
                             attention output] + 4·F [gate, up, gelu, product])
                        + b·N·L²·(4 + a) [float32 softmax and its `dtype` copy] + b·L² [mask]
                 'dots' u·a·(3·D + (N + 2K)·H + 2·F)  (block input and matmul outputs)
                 'full' u·a·D                          (block input only)
               times n, plus one block's S (the block being differentiated is rematerialised, or
               its intermediates are live), plus the embedding output and final norm (3·u·D·4).
               Attention scores are [L, L] on every layer: local layers mask the full square
               rather than computing a window.
  loss chunk   the chunked vocabulary projection, recomputed in the backward pass: T x V x
               (4 + 2a) bytes (the logits in `dtype` and float32, their gradient in `dtype`; +4
               for the entropy), T = the chunk's tokens on one device (`losses._chunk_len` on
               the micro-batch), V over `tensor`. PM steps have none.

Checked against measured peaks (tests/test_hardware_configs.py reads the files): the 270M
default checkpoint, 8 x 512 tokens, one micro-batch, loss chunks of 1,024, no remat, one H200
(benchmarks/results/h200_train_step_{fp32,bf16}.json): the estimate is 18% above JAX's
`peak_bytes_in_use` (13.5 vs 11.5 GiB in float32, 7.6 vs 6.4 GiB in bfloat16). Remat and FSDP
have no measurement yet; on CPU, XLA keeps rematerialised activations anyway (its memory
analysis shows no saving) and computes bfloat16 in float32, so CPU checks only float32 without
remat.

Checked against TPU's compiler (`cai_jax.jobs.compile_check`: libtpu compiles each program
for the config's topology on a CPU machine and reports its arguments, outputs and temporaries
per device). The 1B config on a v5e-8 (gemma3_1b_tpu_v5e_8), estimate / compiler's bytes per
device: sl_generate prefill 1.84 / 1.46 GiB (x1.26), decode 1.84 / 1.58 (x1.16); sample_pairs
prefill 1.10 / 1.15 (x0.96), decode 1.10 / 2.65 (x0.41: the estimate is low; the decode loop's
temporaries, 2.36 GiB, exceed the KV cache and one block's working set it counts); feedback's
scorer 1.58 / 1.49 (x1.06); eval's answers prefill 1.09 / 1.44 (x0.75), decode 1.09 / 1.57
(x0.69), its judge 1.58 / 1.49 (x1.06), its PM scores on the whole mesh 1.34 / 0.62 (x2.17);
sl_train's step (fsdp=8, remat=full, 2 micro-batches of 32 x 1,024) 6.15 / 8.16 (x0.75: the
compiler's temporaries, 6.76 GiB, exceed the gradients, gathered weights, saved block inputs
and loss chunk counted); pm_train's step (the same batch as pairs) 6.32 / 11.47 (x0.55: its
[2B, L] pair batch's temporaries, 10.07 GiB). rl_train and the larger configs compile too
slowly on a 2-core machine to have been measured yet (docs/hardware.md's table); until they
are, an estimate can be low by up to 2.4x (the decode loop) and stays a planning number.

For rl_train the job's phases do not overlap, so the peak is the persistent part (train state
of policy + value model, frozen reference and PM) plus the largest of:
  update    gradients, gathered, activations of the policy and of the value decoder (both run
            in the loss; minibatch_size / micro_batches rows of pow2(max_prompt_tokens +
            max_new_tokens) tokens), the policy's loss chunk (+ entropy when ent_coef > 0);
  scoring   a forward pass without gradients (one block's intermediates S, the residual stream
            and a loss chunk with the entropy) over the whole rollout batch (`batch_size` rows);
            the policy, reference and value passes run one after the other, so one is counted;
  pm        the PM's forward pass over the rollout batch at its length;
  rollout   the sampler's KV cache for `sampler_batch` rows (rounded up to the data axes) of
            pow2(max_prompt_tokens) + max_new_tokens slots (created in its shards: each device
            allocates only its rows) and the prefill's scores.
KV caches are counted as the sampler allocates them: sliding-window layers keep a ring of
`sliding_window` slots, global layers one slot per token.
Forward-only phases count the FSDP working copies without their gradients (half of gathered;
none with fsdp = 1).
The value model and the PM are assumed to have the policy's architecture.

The sampling stages (sl_generate, sample_pairs, feedback) run in one process on one host's
devices (`sampling_mesh_for`: the whole model on one device, or sharded as in training over
a host's devices, with the rows of the KV cache over the data axes): parameters, the KV cache of
`batch_size` rows (a cached few-shot prefix of ASSUMED_PREFIX_TOKENS copied into each), one
block's prefill working set and, with fsdp > 1, the gathered weights; their context lengths
depend on the data, so their estimates assume them (ASSUMED_PREFIX_TOKENS,
ASSUMED_REQUEST_TOKENS). eval holds one model at a time: its answers (a sampler on the sampling
mesh), its AI judge (the multiple-choice scorer on the sampling mesh) and the PM's scores (the
PM sharded over the whole mesh, a forward pass of `batch_size` pairs); its peak is the largest.

Honesty: the state part is exact for the code as it is. The rest counts the big tensors the
code creates; XLA may fuse some of them away (less) and adds its own temporaries, collective
buffers and fragmentation (more), and allocators reserve some memory (a GPU process by default
preallocates 75%: set XLA_PYTHON_CLIENT_MEM_FRACTION). Keep the estimate under about 90% of a
device's memory; it is a planning number, not a guarantee. Measured peaks are logged by the
jobs (`device_peak_gb` in metrics.jsonl).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import sys
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from cai_jax import parallel
from cai_jax.config_defaults import ConfigError
from cai_jax.model import families
from cai_jax.model import decoder, heads
from cai_jax.model.config import GLOBAL, DecoderConfig
from cai_jax.shapes import pow2_bucket
from cai_jax.train import engine, losses, optim

GIB = 2 ** 30
TRAINERS = ("sl_train", "pm_train", "rl_train")


# ---------------------------------------------------------------------------------------------
# Meshes without devices, and per-device bytes of sharded abstract arrays


def abstract_mesh(spec: Mapping[str, int] | Sequence[int], num_devices: int | None = None
                  ) -> AbstractMesh:
  """An AbstractMesh over (data, fsdp, tensor): from a 3-tuple of sizes, or from a mesh config
  (one axis may be -1) and the device count, resolved as `parallel.make_mesh` resolves it."""
  if isinstance(spec, Mapping):
    if num_devices is None:
      raise ValueError("a mesh config needs num_devices")
    sizes = parallel.mesh_shape(spec, num_devices)
  else:
    sizes = tuple(int(s) for s in spec)
    if len(sizes) != len(parallel.MESH_AXES):
      raise ValueError(f"mesh sizes {sizes}: expected one per axis {parallel.MESH_AXES}")
  try:  # jax >= 0.5: AbstractMesh(axis_sizes, axis_names)
    return AbstractMesh(tuple(sizes), parallel.MESH_AXES)
  except TypeError:  # older jax: AbstractMesh(((name, size), ...))
    return AbstractMesh(tuple(zip(parallel.MESH_AXES, sizes)))


def shard_shape(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[int, ...]:
  """`sharding.shard_shape(shape)`; computed from the spec and the mesh's axis sizes where a
  JAX version does not offer it for an AbstractMesh."""
  try:
    return tuple(sharding.shard_shape(tuple(shape)))
  except (AttributeError, NotImplementedError):  # pragma: no cover - other JAX versions
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    sizes = dict(sharding.mesh.shape)
    out = []
    for dim, axes in zip(shape, spec):
      names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      out.append(dim // math.prod(sizes[n] for n in names))
    return tuple(out)


def leaf_bytes(x) -> int:
  """Bytes one device holds of `x` (a ShapeDtypeStruct or array; without a sharding: all)."""
  sharding = getattr(x, "sharding", None)
  shape = shard_shape(sharding, tuple(x.shape)) if sharding is not None else tuple(x.shape)
  return math.prod(shape) * jnp.dtype(x.dtype).itemsize


def tree_bytes(tree) -> int:
  return sum(leaf_bytes(x) for x in jax.tree.leaves(tree))


def sharded_params(boxed_params, mesh, dtype: str | None = None):
  """ShapeDtypeStructs of a boxed parameter tree placed as the rules say (optionally recast)."""
  specs = parallel.param_specs(boxed_params, mesh)
  plain = parallel.unbox(boxed_params)
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, jnp.dtype(dtype or a.dtype),
                                        sharding=NamedSharding(mesh, s)),
      plain, specs, is_leaf=lambda x: isinstance(x, P))


def abstract_train_state(boxed_params, mesh, optimizer) -> engine.TrainState:
  """The TrainState the engine would build, as ShapeDtypeStructs carrying their shardings on
  `mesh` (`engine.state_shardings_for`: nothing is allocated)."""
  _, abstract = engine.state_shardings_for(boxed_params, mesh, optimizer)
  return abstract


def state_bytes(abstract: engine.TrainState) -> dict[str, int]:
  """Per-device bytes of an abstract TrainState: {"params", "optimizer", "step+rng"}."""
  return {"params": tree_bytes(abstract.params), "optimizer": tree_bytes(abstract.opt_state),
          "step+rng": tree_bytes((abstract.step, abstract.rng))}


# ---------------------------------------------------------------------------------------------
# Abstract parameters (cached: tracing a 27B init takes a second)


def decoder_params(cfg: DecoderConfig):
  """`decoder.abstract_params` (boxed ShapeDtypeStructs), traced once per architecture and dtype."""
  return _decoder_params(cfg.replace(remat=False))


@functools.lru_cache(maxsize=None)
def _decoder_params(cfg: DecoderConfig):
  return decoder.abstract_params(cfg)


def reward_params(cfg: DecoderConfig):
  """`heads.abstract_params`' tree {"decoder", "head"}, reusing the traced decoder (the tests
  check it equals `heads.abstract_params`)."""
  head = jax.eval_shape(
      lambda h: heads.ScalarHead(cfg.param_dtype).init(jax.random.PRNGKey(0), h)["params"],
      jax.ShapeDtypeStruct((1, cfg.embed_dim), jnp.float32))
  return {"decoder": decoder_params(cfg), "head": head}


def rl_trainable_params(policy_cfg: DecoderConfig, value_cfg: DecoderConfig):
  """rl_train's {"policy", "value": {"decoder", "head"}} (as `rollout.boxed_trainable`)."""
  return {"policy": decoder_params(policy_cfg), "value": reward_params(value_cfg)}


# ---------------------------------------------------------------------------------------------
# Analytic parts


def _split(mesh, axis: str, dim: int) -> int:
  """How many ways `axis` splits a dimension of size `dim` (1 when it does not divide it, as
  `parallel._fit` leaves such a dimension whole)."""
  size = mesh.shape[axis]
  return size if dim % size == 0 else 1


def _data_ways(mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def _rows_per_device(rows: int, mesh) -> int:
  return -(-int(rows) // _data_ways(mesh))


def _dims(cfg: DecoderConfig, mesh):
  t = lambda d: d // _split(mesh, "tensor", d)  # noqa: E731
  heads_split = _split(mesh, "tensor", cfg.num_kv_heads)  # q is reshaped to [K, N/K]
  return dict(D=cfg.embed_dim, F=t(cfg.mlp_dim), N=cfg.num_heads // heads_split,
              K=cfg.num_kv_heads // heads_split, H=cfg.head_dim, V=t(cfg.vocab_size),
              a=jnp.dtype(cfg.dtype).itemsize, p=jnp.dtype(cfg.param_dtype).itemsize)


def block_intermediates(cfg: DecoderConfig, rows: int, length: int, mesh) -> int:
  """S: the tensors one block keeps for its backward pass without remat (module docstring)."""
  d = _dims(cfg, mesh)
  u = rows * length
  per_token = d["a"] * (6 * d["D"] + 3 * (d["N"] + d["K"]) * d["H"] + 4 * d["F"])
  scores = rows * d["N"] * length * length * (4 + d["a"]) + rows * length * length
  return u * per_token + scores


def block_saved(cfg: DecoderConfig, rows: int, length: int, mesh, remat) -> int:
  """What one block keeps until the backward pass under the remat policy."""
  d = _dims(cfg, mesh)
  u = rows * length
  if remat in ("full", True):
    return u * d["a"] * d["D"]
  if remat == "dots":
    return u * d["a"] * (3 * d["D"] + (d["N"] + 2 * d["K"]) * d["H"] + 2 * d["F"])
  if remat in ("", False, None):
    return block_intermediates(cfg, rows, length, mesh)
  raise ValueError(f"remat={remat!r}: use '', 'dots' or 'full'")


def loss_chunk_bytes(cfg: DecoderConfig, global_rows: int, length: int, chunk_tokens: int,
                     mesh, *, entropy: bool = False) -> int:
  """The chunked vocabulary projection's live logits on one device (0 without a vocab loss)."""
  if not chunk_tokens:
    return 0
  d = _dims(cfg, mesh)
  c = losses._chunk_len(global_rows, length, chunk_tokens)  # noqa: SLF001 - the same chunking
  tokens = _rows_per_device(global_rows, mesh) * c
  return tokens * d["V"] * (4 + 2 * d["a"] + (4 if entropy else 0))


def activation_bytes(cfg: DecoderConfig, *, global_rows: int, length: int, mesh, remat,
                     loss_chunk_tokens: int = 0, entropy: bool = False) -> dict[str, int]:
  """Activations of one micro-batch's forward + backward on one device."""
  rows = _rows_per_device(global_rows, mesh)
  u = rows * length
  return {
      "activations": (cfg.num_layers * block_saved(cfg, rows, length, mesh, remat)
                      + block_intermediates(cfg, rows, length, mesh) + 3 * u * cfg.embed_dim * 4),
      "loss chunk": loss_chunk_bytes(cfg, global_rows, length, loss_chunk_tokens, mesh,
                                     entropy=entropy),
  }


def forward_bytes(cfg: DecoderConfig, *, global_rows: int, length: int, mesh,
                  loss_chunk_tokens: int = 0, entropy: bool = False) -> int:
  """A forward pass without gradients: the residual stream, one block's intermediates and the
  projection chunk."""
  rows = _rows_per_device(global_rows, mesh)
  return (block_intermediates(cfg, rows, length, mesh) + 3 * rows * length * cfg.embed_dim * 4
          + loss_chunk_bytes(cfg, global_rows, length, loss_chunk_tokens, mesh, entropy=entropy))


def gathered_bytes(cfg: DecoderConfig, mesh) -> int:
  """FSDP's working copies: the embedding and two blocks with the fsdp sharding undone, as
  weights and as gradients; with fsdp = 1 only the gradients' (nothing is gathered)."""
  d = _dims(cfg, mesh)
  embedding = d["V"] * d["D"]
  block = d["D"] * (d["N"] + d["K"]) * d["H"] * 2 + 3 * d["D"] * d["F"]
  copies = 2 if mesh.shape["fsdp"] > 1 else 1
  return copies * (embedding + 2 * block) * d["p"]


def kv_cache_bytes(cfg: DecoderConfig, rows: int, slots: int, ring: bool = True) -> int:
  """`kv_cache.init_cache(cfg, rows, slots, ring=ring)`: keys and values in `dtype`, int32
  positions; with `ring` (the sampler's default) sliding-window layers hold at most
  `sliding_window` slots."""
  per_slot = rows * (2 * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize + 4)
  return sum(per_slot * (min(slots, cfg.sliding_window) if ring and kind != GLOBAL else slots)
             for kind in cfg.layer_types)


def prefill_bytes(cfg: DecoderConfig, rows: int, prompt: int, slots: int, mesh=None) -> int:
  """One block's working set while prefilling `prompt` tokens against `slots` keys (scores
  [rows, N, prompt, slots] in float32 and `dtype`, the block's other tensors as in S), plus the
  decode loop's next-token logits (float32, and their sampling copy)."""
  d = _dims(cfg, mesh if mesh is not None else abstract_mesh((1, 1, 1)))
  scores = rows * d["N"] * prompt * slots * (4 + d["a"]) + rows * prompt * slots
  hidden = rows * prompt * d["a"] * (6 * d["D"] + 3 * (d["N"] + d["K"]) * d["H"] + 4 * d["F"])
  return scores + hidden + rows * cfg.vocab_size * 4 * 2


# ---------------------------------------------------------------------------------------------
# Estimates


@dataclasses.dataclass
class Estimate:
  """Bytes per device, part by part; `phase` names the peak phase when a job has several."""
  stage: str
  mesh: tuple[int, ...]
  parts: dict[str, int]
  phase: str = ""
  phases: dict[str, int] = dataclasses.field(default_factory=dict)
  state: Any = None  # the abstract sharded TrainState behind the exact parts (trainers only)

  @property
  def total(self) -> int:
    return sum(self.parts.values())

  @property
  def gib(self) -> float:
    return self.total / GIB

  def describe(self) -> str:
    head = f"{self.stage}: {self.gib:.2f} GiB per device (estimate) on mesh " \
           f"{dict(zip(parallel.MESH_AXES, self.mesh))}"
    if self.phase:
      head += f"; peak phase: {self.phase}"
    lines = [head] + [f"  {k:34s} {v / GIB:9.2f} GiB" for k, v in self.parts.items() if v]
    if self.phases:
      lines.append("  phases (beyond the persistent part): " + ", ".join(
          f"{k} {v / GIB:.2f}" for k, v in self.phases.items()))
    return "\n".join(lines)


def _mesh_sizes(mesh) -> tuple[int, ...]:
  return tuple(mesh.shape[a] for a in parallel.MESH_AXES)


class Pass(NamedTuple):
  """One decoder run inside a loss: its config, global rows per micro-batch, padded length, and
  the vocabulary projection's chunk (0 = no vocabulary loss) with or without the entropy."""
  config: DecoderConfig
  rows: int
  length: int
  loss_chunk_tokens: int = 0
  entropy: bool = False


def train_step_estimate(stage: str, boxed_params, mesh, optimizer, *, passes: Sequence[Pass],
                        micro_batches: int, remat) -> Estimate:
  """One engine step: state (exact) + gradients + FSDP working copies + activations of every
  decoder pass of the loss (all live in the backward pass)."""
  state = abstract_train_state(boxed_params, mesh, optimizer)
  parts = state_bytes(state)
  parts["gradients"] = parts["params"] * (2 if micro_batches > 1 else 1)
  parts["gathered weights (FSDP)"] = max(gathered_bytes(p.config, mesh) for p in passes)
  acts = loss = 0
  for p in passes:
    a = activation_bytes(p.config, global_rows=p.rows, length=p.length, mesh=mesh, remat=remat,
                         loss_chunk_tokens=p.loss_chunk_tokens, entropy=p.entropy)
    acts += a["activations"]
    loss += a["loss chunk"]
  parts["activations"] = acts
  parts["loss chunk"] = loss
  return Estimate(stage, _mesh_sizes(mesh), parts, state=state)


def _optimizer(config, stage: str):
  opt = config.optim
  cfg = (opt[stage] if stage in opt else opt).copy_and_resolve_references()
  with cfg.unlocked():
    cfg.total_steps = max(int(cfg.total_steps), 1)  # shapes do not depend on the schedule
    cfg.warmup_steps = min(int(cfg.warmup_steps), cfg.total_steps)
  return optim.make_optimizer(cfg)


def architecture_of(config) -> str:
  """The preset a config trains: `config.hardware.preset`, else `config.model.checkpoint` when it
  names a preset."""
  name = ""
  if "hardware" in config and config.hardware.get("preset"):
    name = config.hardware.preset
  elif config.model.checkpoint in families.PRESETS:
    name = config.model.checkpoint
  if not name:
    raise ConfigError("the memory estimate needs the architecture: set config.hardware.preset "
                      f"to one of {', '.join(families.PRESETS)}")
  return name


def model_config_for(config, architecture: str | None = None) -> DecoderConfig:
  """The architecture (`architecture_of(config)` unless named) in `config.model`'s dtypes. For
  a pipeline stage pass the stage's own config (`stage_config_for`): its dtypes are the ones the
  stage runs with (the sampling stages' `pipeline.sampling_param_dtype`)."""
  name = architecture or architecture_of(config)
  return families.preset(name, param_dtype=config.model.param_dtype, dtype=config.model.dtype,
                         scan_layers=bool(config.model.get("scan_layers", False)))


def mesh_for(config, num_devices: int | None = None) -> AbstractMesh:
  if num_devices is None:
    num_devices = int(config.hardware.num_devices)
  return abstract_mesh(dict(config.mesh), num_devices)


# The stages estimated, in the pipeline's order (report computes nothing on a device).
SAMPLING = ("sl_generate", "sample_pairs", "feedback", "eval")
STAGES = ("sl_generate", "sl_train", "sample_pairs", "feedback", "pm_train", "rl_train", "eval")
# `pipeline.stage_config` joins the paths between stages under a workdir; nothing is read or
# written there by the estimate.
ESTIMATE_WORKDIR = os.path.join(os.sep, "nonexistent", "cai_jax_memory_estimate")


def stages_of(config) -> tuple[str, ...]:
  """The stages a config runs: a pipeline config's (those it has a section for), or the one
  stage of a stage config."""
  if config.job == "pipeline":
    return tuple(s for s in STAGES if s in config)
  return (config.job,) if config.job in STAGES else ()


def stage_config_for(config, stage: str, workdir: str = ESTIMATE_WORKDIR):
  """The config `stage` runs with. From a pipeline config: `cai_jax.pipeline.stages.stage_config`
  (the stage's section, optimizer and mesh, and its dtypes: the trainers at model.param_dtype,
  the sampling stages at pipeline.sampling_param_dtype), with pm_train's AI labels pointed at
  where feedback writes them (stage_config checks that file for records; nothing reads it
  here). A stage config is its own stage's config."""
  if config.job != "pipeline":
    if config.job != stage:
      raise ValueError(f"a {config.job} config has no stage {stage!r}")
    return config
  from cai_jax.pipeline import stages as pipeline  # noqa: PLC0415
  c = config.copy_and_resolve_references()
  if stage == "pm_train" and not c.pm_train.ai_labels:
    c.pm_train.ai_labels = c.feedback.output or os.path.join(workdir, "feedback", "labels.jsonl")
  return pipeline.stage_config(c, stage, workdir)


def sl_train_estimate(config, model_cfg: DecoderConfig, mesh) -> Estimate:
  c = config.sl_train
  cfg = model_cfg.replace(remat=c.remat or False)
  rows = c.batch_size // c.micro_batches
  return train_step_estimate(
      "sl_train", decoder_params(cfg), mesh, _optimizer(config, "sl_train"),
      passes=[Pass(cfg, rows, c.max_length, c.loss_chunk_tokens)],
      micro_batches=c.micro_batches, remat=c.remat)


def pm_train_estimate(config, model_cfg: DecoderConfig, mesh) -> Estimate:
  c = config.pm_train
  cfg = model_cfg.replace(remat=c.remat or False)
  rows = 2 * (c.batch_size // c.micro_batches)  # two sequences per pair, one [2B, L] batch
  return train_step_estimate(
      "pm_train", reward_params(cfg), mesh, _optimizer(config, "pm_train"),
      passes=[Pass(cfg, rows, c.max_length)], micro_batches=c.micro_batches, remat=c.remat)


def rl_train_estimate(config, model_cfg: DecoderConfig, mesh, *, pm_max_length: int = 0
                      ) -> Estimate:
  """rl_train's peak (module docstring). The value model and the PM are assumed to have the
  policy's architecture (the pipeline trains the PM from the base model). `model_cfg`'s
  param_dtype is the trainable models' (their AdamW moments follow it); the frozen reference
  and PM are counted in `rl_train.frozen_dtype`.
  `pm_max_length`: the PM's trained length (pm_train.max_length, which rl_train reads from
  pm.json); 0 = config.pm_train.max_length when the config has that section."""
  c = config.rl_train
  cfg = model_cfg.replace(remat=c.remat or False)
  mb_rows = c.minibatch_size // c.micro_batches
  length = pow2_bucket(c.max_prompt_tokens + c.max_new_tokens, c.min_length)
  update = train_step_estimate(
      "rl_train", rl_trainable_params(cfg, cfg), mesh, _optimizer(config, "rl_train"),
      passes=[Pass(cfg, mb_rows, length, c.loss_chunk_tokens, c.ent_coef > 0),  # policy
              Pass(cfg, mb_rows, length)],  # value model: a decoder and a scalar head
      micro_batches=c.micro_batches, remat=c.remat)
  persistent = {k: update.parts[k] for k in ("params", "optimizer", "step+rng")}
  # the frozen models: the same shapes and shardings, stored in frozen_dtype
  persistent["reference (frozen)"] = tree_bytes(sharded_params(decoder_params(cfg), mesh,
                                                               c.frozen_dtype))
  persistent["preference model (frozen)"] = (
      tree_bytes(sharded_params(reward_params(cfg), mesh, c.frozen_dtype))
      if c.reward == "pm" else 0)

  phases: dict[str, dict[str, int]] = {}
  phases["update"] = {k: update.parts[k] for k in ("gradients", "gathered weights (FSDP)",
                                                   "activations", "loss chunk")}
  # forward-only phases: the gathered weights without their gradients (nothing with fsdp = 1)
  gathered_weights = gathered_bytes(cfg, mesh) // 2 if mesh.shape["fsdp"] > 1 else 0
  fwd = lambda rows, L, chunk=0, entropy=False: forward_bytes(  # noqa: E731
      cfg, global_rows=rows, length=L, mesh=mesh, loss_chunk_tokens=chunk, entropy=entropy)
  phases["scoring"] = {
      "scoring pass (policy, reference, value)": fwd(c.batch_size, length, c.loss_chunk_tokens,
                                                     True),
      "gathered weights (FSDP)": gathered_weights}
  if not pm_max_length and "pm_train" in config:
    pm_max_length = config.pm_train.max_length
  # the job's pm_max_length: the PM's own max_length, else prompt + new + 2
  pm_length = max(length + 2, int(pm_max_length or 0))
  phases["pm scoring"] = {"pm pass": fwd(c.batch_size, pow2_bucket(pm_length, c.min_length))
                          if c.reward == "pm" else 0,
                          "gathered weights (FSDP)": gathered_weights}
  per_shard = _data_ways(mesh)
  sampler_rows = -(-c.sampler_batch // per_shard) * per_shard
  prompt_slots = pow2_bucket(c.max_prompt_tokens, 32)
  slots = prompt_slots + c.max_new_tokens
  sampling_cfg = cfg.replace(remat=False)
  phases["rollout"] = {
      "sampler KV cache": kv_cache_bytes(sampling_cfg, sampler_rows // per_shard, slots),
      "prefill working set": prefill_bytes(sampling_cfg, sampler_rows // per_shard,
                                           prompt_slots, slots, mesh),
      "gathered weights (FSDP)": gathered_weights}
  totals = {k: sum(v.values()) for k, v in phases.items()}
  peak = max(totals, key=totals.get)
  parts = dict(persistent)
  parts.update({f"{k} [{peak}]": v for k, v in phases[peak].items()})
  return Estimate("rl_train", _mesh_sizes(mesh), parts, phase=peak, phases=totals,
                  state=update.state)


def sampling_estimate(stage: str, model_cfg: DecoderConfig, *, rows: int, prompt: int,
                      slots: int, prefix_slots: int = 0, mesh=None) -> Estimate:
  """A sampling job on one device, or on `mesh` (the sampling mesh of one host, see
  `sampling_mesh_for`): the parameters (sharded as in training on a mesh), the KV cache of
  `rows` rows x `slots` slots (rows over the data axes, padded to a multiple of them; a cached
  prefix is copied into every row), the prefill of `prompt` tokens, the prefix's own cache
  (replicated) and, with fsdp > 1, the gathered weights of the forward pass."""
  cfg = model_cfg.replace(remat=False)
  if mesh is None:
    parts = {
        "params (whole model)": tree_bytes(decoder_params(cfg)),
        "KV cache": kv_cache_bytes(cfg, rows, slots),
        "prefix cache": kv_cache_bytes(cfg, 1, prefix_slots) if prefix_slots else 0,
        "prefill working set": prefill_bytes(cfg, rows, prompt, slots),
    }
    return Estimate(stage, (1, 1, 1), parts)
  local = -(-rows // parallel.batch_size_per_shard(mesh))
  parts = {
      "params (sharded)": tree_bytes(sharded_params(decoder_params(cfg), mesh)),
      "KV cache": kv_cache_bytes(cfg, local, slots),  # the sampler splits rows, not heads
      "prefix cache": kv_cache_bytes(cfg, 1, prefix_slots) if prefix_slots else 0,
      "prefill working set": prefill_bytes(cfg, local, prompt, slots, mesh),
      "gathered weights (FSDP)": gathered_bytes(cfg, mesh) // 2 if mesh.shape["fsdp"] > 1 else 0,
  }
  return Estimate(stage, _mesh_sizes(mesh), parts)


def sampling_mesh_for(stage_cfg, num_devices: int, hosts: int = 1):
  """The mesh a sampling stage runs on (`jobs.common.sampling_mesh`): over the devices of one
  host (the sampling stages run in one process), config.mesh where it fits them
  (`parallel.sampling_mesh_spec`), or None on one device."""
  local = num_devices // max(1, hosts)
  if local <= 1 or stage_cfg.get("mesh") is None:
    return None
  return abstract_mesh(parallel.sampling_mesh_spec(dict(stage_cfg.mesh), local), local)


# Assumed lengths of the sampling stages' contexts (the real ones depend on the data and the
# constitution): the few-shot prefixes of constitutions/harmless.json are about 2,000 tokens,
# and each critique or revision request adds up to this many tokens to a transcript.
ASSUMED_PREFIX_TOKENS = 2048


def _policy_prefix_tokens(config) -> int:
  """The policy's cached prefix (conversation.policy_prefix) in the stages that answer prompts:
  ASSUMED_PREFIX_TOKENS for the helpful exchanges, 0 for none."""
  from cai_jax.constitution import policy_layout
  return ASSUMED_PREFIX_TOKENS if policy_layout.prefix_name(config) == "helpful_exchanges" else 0
ASSUMED_REQUEST_TOKENS = 128


class SamplerShape(NamedTuple):
  """The largest batch a sampling stage generates: `rows` prompts (before padding to the data
  axes) of `prompt` bucketed slots after a shared prefix of `prefix` slots, `new` tokens."""
  rows: int
  prompt: int
  new: int
  prefix: int = 0

  @property
  def slots(self) -> int:
    return self.prefix + self.prompt + self.new


def sampler_shape(config, stage: str) -> SamplerShape:
  """The sampler's batch of a stage, from the config it runs with (the estimates below and the
  compile check use the same)."""
  if stage == "sl_generate":
    g = config.sl_generate
    transcript = g.max_conversation_tokens + g.rounds * (
        g.max_critique_tokens + g.max_revision_tokens + 2 * ASSUMED_REQUEST_TOKENS)
    return SamplerShape(g.batch_size, pow2_bucket(min(transcript, g.max_prompt_length), 32),
                        max(g.max_response_tokens, g.max_critique_tokens,
                            g.max_revision_tokens), ASSUMED_PREFIX_TOKENS)
  if stage == "sample_pairs":
    g = config.sample_pairs
    return SamplerShape(2 * g.batch_size,
                        pow2_bucket(min(g.max_conversation_tokens, g.max_prompt_length), 32),
                        g.max_response_tokens, _policy_prefix_tokens(config))
  if stage == "eval":
    e = config.eval
    return SamplerShape(e.answer_batch_size, pow2_bucket(e.max_prompt_length, 32),
                        e.answer_max_tokens,
                        _policy_prefix_tokens(config))
  if stage == "rl_train":
    c = config.rl_train
    return SamplerShape(c.sampler_batch, pow2_bucket(c.max_prompt_tokens, 32), c.max_new_tokens)
  raise ValueError(f"stage {stage!r} runs no sampler")


def sl_generate_estimate(config, model_cfg: DecoderConfig, mesh=None) -> Estimate:
  s = sampler_shape(config, "sl_generate")
  return sampling_estimate("sl_generate", model_cfg, rows=s.rows, prompt=s.prompt,
                           slots=s.slots, prefix_slots=s.prefix, mesh=mesh)


def sample_pairs_estimate(config, model_cfg: DecoderConfig, mesh=None) -> Estimate:
  s = sampler_shape(config, "sample_pairs")
  return sampling_estimate("sample_pairs", model_cfg, rows=s.rows, prompt=s.prompt,
                           slots=s.slots, prefix_slots=s.prefix, mesh=mesh)


def mc_scorer_estimate(stage: str, model_cfg: DecoderConfig, *, max_length: int,
                       tokens_per_batch: int, mesh=None) -> Estimate:
  """The multiple-choice scorer: tokens_per_batch tokens of forward pass at max_length."""
  length = pow2_bucket(max_length, 32)
  rows = max(1, tokens_per_batch // length)
  est = sampling_estimate(stage, model_cfg, rows=rows, prompt=length, slots=length, mesh=mesh)
  est.parts["KV cache"] = 0
  return est


def feedback_estimate(config, model_cfg: DecoderConfig, mesh=None) -> Estimate:
  f = config.feedback
  return mc_scorer_estimate("feedback", model_cfg, max_length=f.max_length,
                            tokens_per_batch=f.tokens_per_batch, mesh=mesh)


def eval_estimate(config, model_cfg: DecoderConfig, mesh, *, pm_max_length: int = 0,
                  sampling_mesh=None) -> Estimate:
  """eval's peak over its phases, which hold one model at a time (the job deletes each before
  loading the next): the answers of each compared stage (a sampler on `sampling_mesh`, the
  few-shot prefix assumed ASSUMED_PREFIX_TOKENS long, prompts at eval.max_prompt_length), the AI
  judge and eval.mc_files (the multiple-choice scorer on `sampling_mesh`), and the PM's scores
  (the PM sharded over the mesh, `batch_size` pairs at eval.max_length, else the PM's trained length
  `pm_max_length`, else 1,024)."""
  e = config.eval
  phases: dict[str, dict[str, int]] = {}
  s = sampler_shape(config, "eval")
  phases["answers"] = sampling_estimate(
      "eval", model_cfg, rows=s.rows, prompt=s.prompt, slots=s.slots, prefix_slots=s.prefix,
      mesh=sampling_mesh).parts
  phases["judge"] = mc_scorer_estimate("eval", model_cfg, max_length=e.mc_max_length,
                                       tokens_per_batch=e.mc_tokens_per_batch,
                                       mesh=sampling_mesh).parts
  length = pow2_bucket(int(e.max_length or pm_max_length or 1024), e.min_length)
  gathered = gathered_bytes(model_cfg, mesh) // 2 if mesh.shape["fsdp"] > 1 else 0
  phases["pm scores"] = {
      "params (PM, sharded)": tree_bytes(sharded_params(reward_params(model_cfg), mesh)),
      "pm pass": forward_bytes(model_cfg, global_rows=2 * e.batch_size, length=length,
                               mesh=mesh),
      "gathered weights (FSDP)": gathered}
  totals = {k: sum(v.values()) for k, v in phases.items()}
  peak = max(totals, key=totals.get)
  sizes = _mesh_sizes(mesh) if peak == "pm scores" else (
      _mesh_sizes(sampling_mesh) if sampling_mesh is not None else (1, 1, 1))
  return Estimate("eval", sizes, {f"{k} [{peak}]": v for k, v in phases[peak].items()},
                  phase=peak, phases=totals)


def estimate_stage(stage_cfg, stage: str, *, architecture: str | None = None,
                   num_devices: int | None = None, pm_max_length: int = 0,
                   hosts: int = 1) -> Estimate:
  """One stage's estimate from the config it runs with (`stage_config_for`): the model in that
  config's dtypes, the trainers (and eval's PM) on its mesh over `num_devices`, the sampling
  stages on the devices of one of `hosts` hosts (`sampling_mesh_for`)."""
  model_cfg = model_config_for(stage_cfg, architecture)
  if num_devices is None:
    num_devices = int(stage_cfg.hardware.num_devices)
  smesh = sampling_mesh_for(stage_cfg, num_devices, hosts) if stage in SAMPLING else None
  if stage in SAMPLING and stage != "eval":
    fns = {"sl_generate": sl_generate_estimate, "sample_pairs": sample_pairs_estimate,
           "feedback": feedback_estimate}
    return fns[stage](stage_cfg, model_cfg, smesh)
  mesh = mesh_for(stage_cfg, num_devices)
  if stage == "sl_train":
    return sl_train_estimate(stage_cfg, model_cfg, mesh)
  if stage == "pm_train":
    return pm_train_estimate(stage_cfg, model_cfg, mesh)
  if stage == "rl_train":
    return rl_train_estimate(stage_cfg, model_cfg, mesh, pm_max_length=pm_max_length)
  if stage == "eval":
    return eval_estimate(stage_cfg, model_cfg, mesh, pm_max_length=pm_max_length,
                         sampling_mesh=smesh)
  raise ValueError(f"no estimate for stage {stage!r}; stages: {', '.join(STAGES)}")


def stage_estimates(config, stages: Sequence[str] | None = None,
                    num_devices: int | None = None) -> dict[str, Estimate]:
  """The estimate of each stage (default: all the config runs), each from the config the
  stage runs with (`stage_config_for`, i.e. `pipeline.stage_config` for a pipeline config), so
  every stage is counted in its own dtypes and on its own mesh. `num_devices`: default
  config.hardware.num_devices."""
  architecture = architecture_of(config)
  if num_devices is None:
    num_devices = int(config.hardware.num_devices)
  hardware = config.get("hardware")
  hosts = int(hardware.hosts) if hardware is not None and "hosts" in hardware else 1
  pm_max_length = int(config.pm_train.max_length) if "pm_train" in config else 0
  out = {}
  for stage in (stages_of(config) if stages is None else stages):
    out[stage] = estimate_stage(stage_config_for(config, stage), stage,
                                architecture=architecture, num_devices=num_devices,
                                pm_max_length=pm_max_length, hosts=hosts)
  return out


def trainer_estimates(config, num_devices: int | None = None) -> dict[str, Estimate]:
  """`stage_estimates` of the trainers the config runs."""
  return stage_estimates(config, [s for s in stages_of(config) if s in TRAINERS], num_devices)


def sampling_stage_estimates(config, num_devices: int | None = None) -> dict[str, Estimate]:
  """`stage_estimates` of the sampling stages the config runs (sl_generate, sample_pairs,
  feedback, eval)."""
  return stage_estimates(config, [s for s in stages_of(config) if s in SAMPLING], num_devices)


# ---------------------------------------------------------------------------------------------
# CLI


def load_config_file(path: str):
  spec = importlib.util.spec_from_file_location("cai_jax_memory_config", os.path.abspath(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main(argv: Sequence[str]) -> int:
  if len(argv) != 2:
    print("usage: python -m cai_jax.train.memory CONFIG.py", file=sys.stderr)
    return 2
  config = load_config_file(argv[1])
  architecture = architecture_of(config)
  model_cfg = model_config_for(config, architecture)
  hw = config.get("hardware") or {}
  num = int(hw.get("num_devices", 0)) or jax.device_count()
  budget = float(hw.get("hbm_gib_per_device", 0))
  estimates = stage_estimates(config, num_devices=num)
  dtypes = {}
  for stage in estimates:
    m = stage_config_for(config, stage).model
    dtypes.setdefault((m.param_dtype, m.dtype), []).append(stage)
  print(f"{hw.get('name', 'this machine')}: {num} devices"
        + (f", {budget:g} GiB each" if budget else "")
        + f"; model {architecture}, {model_cfg.num_params() / 1e9:.2f}B parameters")
  for (param_dtype, dtype), stages in dtypes.items():
    print(f"  {param_dtype} parameters, {dtype} matmuls: {', '.join(stages)}")
  if "rl_train" in estimates:
    print(f"  rl_train's frozen reference and PM: {config.rl_train.frozen_dtype}")
  for est in estimates.values():
    print(est.describe())
    if budget:
      print(f"  = {100 * est.gib / budget:.0f}% of {budget:g} GiB")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
