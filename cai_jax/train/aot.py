"""Ahead-of-time compilation for a TPU topology on a machine without a TPU.

libtpu (the optional `tpu-aot` extra) describes a TPU slice to JAX without owning one
(`jax.experimental.topologies.get_topology_desc`): its devices make a real `Mesh`, and
`jax.jit(...).lower(ShapeDtypeStructs).compile()` runs TPU's own XLA passes on it, so a
program's per-device argument, output and temporary bytes (`memory_analysis()`), its FLOPs
(`cost_analysis()`) and whether it fits the chip's HBM at all come from the compiler that
will run it, not from a formula (`cai_jax.train.memory` is the formula, for GPUs and for
planning). Nothing is allocated and no weights are read.

This module knows topologies and how to compile and measure one program; which programs a
pipeline runs, at which shapes, is `cai_jax.train.programs`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any, Callable, Sequence


from cai_jax.config_defaults import ConfigError

GIB = 2 ** 30

# Chip generations by the names the hardware configs use, with libtpu's topology prefix, its
# chip configuration and the chips one host drives (v5p: 4 chips as a 2x2x1 block; a v5e-8
# host drives its 8 chips as 2x4; larger v5e slices have 4-chip hosts).
CHIPS = {
    "v5p": dict(prefix="v5", chip_config="megacore", dims=3),
    "v5e": dict(prefix="v5e", chip_config="default", dims=2),
    "v4": dict(prefix="v4", chip_config="megacore", dims=3),
    "v6e": dict(prefix="v6e", chip_config="default", dims=2),
}


def libtpu_available() -> bool:
  """Whether libtpu (the `tpu-aot` extra) can be imported here."""
  try:
    import libtpu  # noqa: F401, PLC0415
  except ImportError:
    return False
  return True


def _quiet_libtpu(accelerator: str) -> None:
  """libtpu warns about a missing TPU environment on a CPU machine; these two settings say
  which slice it is describing and that it is alone."""
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # Other JAX processes on this machine (a test run) may hold libtpu's lock file without
  # using a TPU; describing a topology needs no exclusive access.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


# The usual slice shapes by chip count (Cloud TPU's v5p-N / v5litepod-N layouts).
SHAPES = {
    3: {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
        128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)},
    2: {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
        256: (16, 16)},
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice as libtpu names it."""
  name: str                  # libtpu's topology name, e.g. "v5:2x4x4"
  chip_config: str           # "megacore" (v4, v5p) or "default" (v5e, v6e)
  host_bounds: tuple[int, int, int]  # chips one host drives
  num_slices: int = 1

  @property
  def label(self) -> str:
    return self.name + (f" x {self.num_slices} slices" if self.num_slices > 1 else "")


def topology_for(hardware, *, name: str = "", num_slices: int = 1) -> Topology:
  """The topology of a hardware config (`config.hardware`): its chip generation read from
  hardware.name ("TPU v5p-64 ...", "TPU v5e-8 ..."), hardware.num_devices chips in the usual
  shape, hardware.num_devices / hardware.hosts chips a host. `name` ("v5:2x4x4") overrides
  the shape. ConfigError naming the setting for a GPU config or an unknown chip."""
  if hardware.kind != "tpu":
    raise ConfigError(f"hardware.kind={hardware.kind!r}: only TPU configs compile without the "
                      "hardware (a GPU program needs a GPU to compile; its memory stays the "
                      "estimate of cai_jax.train.memory)")
  found = re.search(r"\b(v5p|v5e|v4|v6e)\b", hardware.name.lower().replace("v5litepod", "v5e"))
  if not found:
    raise ConfigError(f"hardware.name={hardware.name!r} names no TPU generation this check "
                      f"knows ({', '.join(CHIPS)})")
  chip = CHIPS[found.group(1)]
  devices, hosts = int(hardware.num_devices), max(1, int(hardware.hosts))
  if devices % hosts:
    raise ConfigError(f"hardware.num_devices={devices} is not divisible by hardware.hosts="
                      f"{hosts}")
  per_host = devices // hosts
  host = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}.get(per_host)
  if host is None:
    raise ConfigError(f"hardware: {per_host} chips a host (num_devices / hosts); TPU hosts "
                      "drive 1, 4 or 8")
  if num_slices < 1:
    raise ConfigError(f"compile_check.num_slices must be >= 1, got {num_slices}")
  if not name:
    shape = SHAPES[chip["dims"]].get(devices)
    if shape is None:
      raise ConfigError(f"hardware.num_devices={devices}: no usual {found.group(1)} slice "
                        f"shape; set compile_check.topology (e.g. {chip['prefix']}:2x2x2)")
    name = f"{chip['prefix']}:{'x'.join(map(str, shape))}"
  return Topology(name=name, chip_config=chip["chip_config"], host_bounds=host,
                  num_slices=num_slices)


def topology_devices(topology: Topology) -> list:
  """libtpu's devices of the topology (all slices), in libtpu's order. ConfigError naming the
  setting when libtpu does not know the name or the layout."""
  from jax.experimental import topologies  # noqa: PLC0415
  chips = 1
  for d in re.findall(r"\d+", topology.name.split(":", 1)[-1]):
    chips *= int(d)
  # Cloud TPU's accelerator names: TensorCores for v4 / v5p (2 a chip), chips for v5e / v6e
  prefix = topology.name.split(":")[0]
  accelerator = {"v5": f"v5p-{2 * chips}", "v4": f"v4-{2 * chips}",
                 "v5e": f"v5litepod-{chips}"}.get(prefix, f"{prefix}-{chips}")
  _quiet_libtpu(accelerator)
  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=topology.name, chip_config_name=topology.chip_config,
        chips_per_host_bounds=topology.host_bounds, num_slices=topology.num_slices)
  except Exception as e:  # libtpu raises JaxRuntimeError (INVALID_ARGUMENT, NOT_FOUND)
    raise ConfigError(f"compile_check.topology={topology.name!r} (chip config "
                      f"{topology.chip_config!r}, {topology.num_slices} slice(s)): libtpu "
                      f"does not describe it: {str(e).splitlines()[0]}") from None
  return list(desc.devices)


def host_devices(devices: Sequence, count: int) -> list:
  """`count` devices of the first host (process 0), as a one-process sampling stage sees
  them."""
  first = [d for d in devices if d.process_index == devices[0].process_index]
  if len(first) < count:
    raise ConfigError(f"a host of this topology has {len(first)} devices, fewer than the "
                      f"{count} a sampling stage uses (hardware.num_devices / hosts)")
  return first[:count]


# ---------------------------------------------------------------------------------------------
# One program: compile and measure


@dataclasses.dataclass
class Program:
  """A jitted function and the abstract arguments (ShapeDtypeStructs carrying shardings) it
  runs on, to be lowered under `activate` (a context manager: mesh and logical rules).
  `resident_bytes`: per-device bytes other buffers of the job hold while it runs (e.g. rl_train's
  frozen reference during the PPO step), counted with the program's own."""
  name: str
  jitted: Any
  args: tuple
  activate: Callable[[], Any]
  resident_bytes: int = 0
  estimate_bytes: int = 0       # cai_jax.train.memory's estimate of the same phase
  note: str = ""


@dataclasses.dataclass
class Measured:
  """What the compiler says about one program, per device."""
  name: str
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  resident_bytes: int
  hbm_bytes_per_device: int
  flops: float
  compile_s: float
  estimate_bytes: int = 0
  error: str = ""

  @property
  def bytes_per_device(self) -> int:
    """Peak bytes while it runs: arguments + outputs (less those aliased to donated
    arguments) + temporaries, plus the job's other resident buffers."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
            + self.resident_bytes)

  @property
  def fits(self) -> bool:
    return not self.error and self.bytes_per_device <= self.hbm_bytes_per_device

  def to_json(self) -> dict:
    return {"name": self.name, "bytes_per_device": self.bytes_per_device,
            "hbm_bytes_per_device": self.hbm_bytes_per_device, "fits": self.fits,
            "flops": self.flops, "compile_s": round(self.compile_s, 3),
            "argument_bytes": self.argument_bytes, "output_bytes": self.output_bytes,
            "alias_bytes": self.alias_bytes, "temp_bytes": self.temp_bytes,
            "resident_bytes": self.resident_bytes, "estimate_bytes": self.estimate_bytes,
            "error": self.error}


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def compile_program(program: Program, hbm_bytes: int) -> Measured:
  """Lowers and compiles `program` for its mesh's devices. A program the compiler cannot fit
  in HBM (RESOURCE_EXHAUSTED) is reported with its message, not raised."""
  start = time.perf_counter()
  with program.activate():
    lowered = program.jitted.lower(*program.args)
    try:
      compiled = lowered.compile()
    except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED ... exceeds available HBM
      message = str(e)
      if "RESOURCE_EXHAUSTED" not in message:
        raise
      return Measured(program.name, 0, 0, 0, 0, program.resident_bytes, hbm_bytes, 0.0,
                      time.perf_counter() - start, program.estimate_bytes,
                      error=" ".join(message.split())[:600])
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  return Measured(program.name, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                  int(m.alias_size_in_bytes), int(m.temp_size_in_bytes), program.resident_bytes,
                  hbm_bytes, _flops(compiled), seconds, program.estimate_bytes)
