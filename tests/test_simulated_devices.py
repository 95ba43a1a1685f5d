"""The environment every multi-device test gives its subprocess (conftest.simulated_devices_env)
runs 200 programs that each all-reduce after a matmul XLA splits into parallel tasks. With XLA's
default pools of max(cores, devices) threads this deadlocks on 2 cores every time once enough
programs are in flight (measured here: 8 devices hang with 8 to 15 threads after 50 programs,
run with 16 threads for 3000; 4 devices hang with 4 threads, run with 8); the same hang failed
test_sampling_sharded in CI ("only 6 of 8 arrived")."""

from __future__ import annotations

import subprocess
import sys

from conftest import simulated_devices_env

_PROGRAM = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
n = jax.device_count()
assert n == 8, n
mesh = Mesh(np.array(jax.devices()), ("d",))
x = jax.device_put(jnp.full((n * 256, 256), 1e-3), NamedSharding(mesh, P("d")))
w = jax.device_put(jnp.full((256, 256), 1e-3), NamedSharding(mesh, P()))
step = jax.jit(lambda x, w: jnp.tanh(x @ w) + (x @ w).sum(0, keepdims=True) * 1e-6,
               out_shardings=NamedSharding(mesh, P("d")))
for _ in range(200):  # many programs in flight: 50 were enough to hang
  x = step(x, w)
print(bool(jnp.isfinite(x).all()))
"""


def test_a_collective_after_a_parallel_matmul_completes_on_8_simulated_devices():
  env = simulated_devices_env(8)
  # A hang ends in 30 s (XLA aborts the process) instead of the suite's 600 s.
  env["XLA_FLAGS"] = env["XLA_FLAGS"].replace("seconds=600", "seconds=30")
  proc = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split()[-1] == "True"
