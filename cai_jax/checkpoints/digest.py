"""A fingerprint of a parameter tree, computed where the parameters live.

Stored results that depend on a model (the reference log-probs of preference optimisation)
carry it, so a rerun can tell whether they came from the same weights. Each leaf's bits are
read as unsigned integers, multiplied by a position-dependent odd number and summed modulo 2^32
on device: integer sums are exact in any order, so the fingerprint is the same however the
leaf is sharded, on one device or a pod, and nothing is gathered to the host. Two different
trees collide only if every such sum agrees (about 2^-32 per leaf for unrelated weights).
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _leaf_sums(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  bits = jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize]).astype(jnp.uint32).ravel()
  i = jnp.arange(bits.size, dtype=jnp.uint32)
  a = jnp.sum(bits * (i * jnp.uint32(2654435761) + jnp.uint32(1)), dtype=jnp.uint32)
  b = jnp.sum((bits ^ (i * jnp.uint32(40503))) * jnp.uint32(2246822519), dtype=jnp.uint32)
  return jnp.stack([a, b])


@jax.jit
def _tree_sums(tree):
  return jax.tree.map(_leaf_sums, tree)


def params_digest(params) -> str:
  """Hex sha256 over every leaf's path, shape, dtype and on-device sums."""
  sums = jax.device_get(_tree_sums(params))
  h = hashlib.sha256()
  for (path, leaf), (_, s) in zip(jax.tree_util.tree_leaves_with_path(params),
                                  jax.tree_util.tree_leaves_with_path(sums)):
    h.update(f"{jax.tree_util.keystr(path)}:{tuple(leaf.shape)}:{leaf.dtype}:".encode())
    h.update(np.asarray(s, np.uint32).tobytes())
  return h.hexdigest()
