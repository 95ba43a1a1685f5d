"""Device mesh, logical-axis rules and the helpers that place parameters and batches on it.

The model names every parameter axis (vocab, embed, mlp, heads, kv_heads, head_dim, norm) and
its activations (batch, length); `LOGICAL_RULES` maps those names onto the mesh axes
`data` (pure data parallelism), `fsdp` (data parallelism with parameters and optimizer state
sharded) and `tensor` (Megatron-style model parallelism). A dimension that a mesh axis does not
divide (e.g. a single KV head on tensor=2) is left unsharded along that axis rather
than failing: `param_specs` reports the spec actually used.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cai_jax.config_defaults import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),  # the stacked axis of scanned layers (`layer_scan`)
)


def mesh_shape(spec: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves one `-1` entry to fill the remaining devices; checks the product."""
  sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive or -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: {known} does not divide the "
                        f"{num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices, "
                      f"but {num_devices} are available")
  return tuple(sizes)


def sampling_mesh_spec(spec: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """The mesh a one-process sampling stage uses on `num_devices` devices: `spec` (the run's
  mesh) when it fits them, else every device on fsdp with the run's tensor axis where it
  divides them (a slice's mesh such as fsdp=16 x tensor=2 on a 4-chip sampling machine)."""
  try:
    mesh_shape(spec, num_devices)
    return dict(spec)
  except ConfigError:
    tensor = math.gcd(max(1, int(spec.get("tensor", 1))), num_devices)
    return {"data": 1, "fsdp": num_devices // tensor, "tensor": tensor}


def make_mesh(spec: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(spec or {"data": -1}, len(devices))
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # non-TPU topologies mesh_utils cannot lay out: plain row-major order
    grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES)


def batch_size_per_shard(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = batch_size_per_shard(mesh)
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} is not divisible by the data axes "
                      f"(data x fsdp = {n}) of mesh {dict(mesh.shape)}")


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide their dimension (replicating that dimension instead)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    kept, size = [], 1
    for name in names:
      if dim % (size * mesh.shape[name]) == 0:
        kept.append(name)
        size *= mesh.shape[name]
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*out)


def logical_to_spec(names: Sequence[str | None], shape: tuple[int, ...], mesh: Mesh,
                    rules=LOGICAL_RULES) -> P:
  spec = nn.logical_to_mesh_axes(tuple(names), rules)
  return _fit(spec, shape, mesh)


def param_specs(boxed_params, mesh: Mesh, rules=LOGICAL_RULES):
  """PartitionSpecs for a tree of `nn.LogicallyPartitioned` leaves (e.g. `abstract_params`)."""
  def spec(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return logical_to_spec(leaf.names, leaf.value.shape, mesh, rules)
    return P()
  return jax.tree.map(spec, boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def unbox(tree):
  return nn.unbox(tree)


def named(mesh: Mesh, specs):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2, axis: int = 0) -> NamedSharding:
  """The batch dimension (the leading one unless `axis` says) over the data axes; the rest
  replicated."""
  spec = [None] * ndim
  spec[axis] = BATCH_AXES
  return NamedSharding(mesh, P(*spec))


def shard_host_tree(tree, shardings):
  """Places host (numpy) arrays: each device receives only its own shard, never the whole."""
  return jax.tree.map(lambda x, s: jax.make_array_from_callback(
      np.shape(x), s, lambda idx, x=x: np.asarray(x)[idx]), tree, shardings)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from each process's slice of the batch (rows = this process's share)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
          for k, v in local_batch.items()}


def pad_rows(batch: Mapping[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
  """`batch` with copies of its last row appended until its rows divide `multiple` (the data
  axes times the processes): a scoring pass over any number of rows, the copies dropped after."""
  rows = len(next(iter(batch.values())))
  padded = -(-rows // multiple) * multiple
  if padded == rows:
    return dict(batch)
  return {k: np.concatenate([v, np.repeat(v[-1:], padded - rows, axis=0)])
          for k, v in batch.items()}


def process_rows(global_batch_size: int) -> slice:
  """The rows of a global batch this process loads (contiguous, in process order)."""
  n = jax.process_count()
  if global_batch_size % n:
    raise ConfigError(f"batch_size={global_batch_size} is not divisible by the "
                      f"{n} processes")
  per = global_batch_size // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def maybe_initialize_distributed(config: Mapping[str, Any] | None = None) -> bool:
  """`jax.distributed.initialize()` when the config or the environment asks for several processes.

  Config keys (all optional): coordinator_address, num_processes, process_id, cpu_collectives
  ('gloo' for CPU multi-process runs). The environment variables CAI_JAX_COORDINATOR,
  CAI_JAX_NUM_PROCESSES and CAI_JAX_PROCESS_ID fill the same roles; on TPU pods and SLURM,
  `distributed.auto=True` lets JAX discover everything itself.
  """
  config = dict(config or {})
  address = config.get("coordinator_address") or os.environ.get("CAI_JAX_COORDINATOR")
  auto = bool(config.get("auto", False))
  if not address and not auto:
    return False
  if jax.distributed.is_initialized():
    return True
  collectives = config.get("cpu_collectives") or os.environ.get("CAI_JAX_CPU_COLLECTIVES")
  if collectives:
    jax.config.update("jax_cpu_collectives_implementation", collectives)
  if auto:
    jax.distributed.initialize()
    return True
  num = int(config.get("num_processes") or os.environ.get("CAI_JAX_NUM_PROCESSES", 0))
  pid = config.get("process_id")
  pid = int(pid if pid not in (None, -1) else os.environ.get("CAI_JAX_PROCESS_ID", -1))
  if num <= 0 or pid < 0:
    raise ConfigError("multi-process run needs num_processes and process_id "
                      "(config.distributed or CAI_JAX_NUM_PROCESSES / CAI_JAX_PROCESS_ID)")
  jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
  return True



@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_RULES):
  """Mesh + logical rules for tracing: inside, the model's activation constraints
  (`nn.with_logical_constraint`) apply; outside any mesh they are no-ops. Enter it around the
  call of a jitted function (JAX refuses to set a mesh inside `jit`)."""
  mesh_ctx = jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else jax.sharding.use_mesh(mesh)
  with mesh_ctx, nn.logical_axis_rules(rules):
    yield


def run_under(mesh: Mesh, jitted, rules=LOGICAL_RULES):
  """`jitted` called inside `activate(mesh)`."""
  @functools.wraps(jitted)
  def call(*args, **kwargs):
    with activate(mesh, rules):
      return jitted(*args, **kwargs)
  call.jitted = jitted
  return call
