"""PRNG keys per record: a record's samples derive from (seed, record id) alone, so they do not
depend on the batch, the process or the restart that produces them (`Sampler.generate(keys=)`)."""

from __future__ import annotations

import hashlib
from typing import Sequence

import jax
import numpy as np


def id_hash(text: str) -> int:
  """A stable 32-bit hash of a record id (Python's hash() changes between processes)."""
  return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def record_key(seed: int, record_id: str, *path: int) -> jax.Array:
  """The key of one record, then `fold_in` each of `path` (which sample of the record)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), id_hash(record_id) & 0x7FFFFFFF)
  for p in path:
    key = jax.random.fold_in(key, p)
  return key


def record_keys(seed: int, record_ids: Sequence[str], *path: int) -> np.ndarray:
  """[N, 2] uint32: `record_key(seed, id, *path)` for each id."""
  if not record_ids:
    return np.zeros((0, 2), np.uint32)
  return np.stack([np.asarray(record_key(seed, rid, *path)) for rid in record_ids])


def fold_rows(keys, n: int) -> np.ndarray:
  """[N, 2] -> [N, 2]: each row key folded with `n` (the n-th sampling step of every record)."""
  keys = np.asarray(jax.device_get(keys), np.uint32)
  return np.stack([np.asarray(jax.random.fold_in(k, n)) for k in keys]) if len(keys) \
      else np.zeros((0, 2), np.uint32)
