"""Key/value cache layout read and written by attention in decode mode.

Each layer's cache holds keys, values and the absolute position of the token in every slot
(-1 = empty). Attention masks are derived from those positions, so the same attention code serves
full-sequence forward passes (keys = the sequence itself) and cached decoding (keys = the slots),
and sliding-window layers only need `query_pos - key_pos < window`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from cai_jax.model.config import GemmaConfig


@flax.struct.dataclass
class LayerCache:
  k_BSKH: jax.Array
  v_BSKH: jax.Array
  positions_BS: jax.Array  # int32 absolute positions, -1 where the slot is empty


def init_cache(config: GemmaConfig, batch: int, length: int, dtype=None) -> list[LayerCache]:
  """An empty cache of `length` slots per row for every layer."""
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch, length, config.num_kv_heads, config.head_dim)
  return [LayerCache(k_BSKH=jnp.zeros(shape, dtype), v_BSKH=jnp.zeros(shape, dtype),
                     positions_BS=jnp.full((batch, length), -1, jnp.int32))
          for _ in range(config.num_layers)]


def write(cache: LayerCache, k_BLKH, v_BLKH, positions_BL, index) -> LayerCache:
  """Writes L new entries into slots [index, index + L) of every row."""
  zero = jnp.zeros((), jnp.int32)
  index = jnp.asarray(index, jnp.int32)
  return LayerCache(
      k_BSKH=jax.lax.dynamic_update_slice(
          cache.k_BSKH, k_BLKH.astype(cache.k_BSKH.dtype), (zero, index, zero, zero)),
      v_BSKH=jax.lax.dynamic_update_slice(
          cache.v_BSKH, v_BLKH.astype(cache.v_BSKH.dtype), (zero, index, zero, zero)),
      positions_BS=jax.lax.dynamic_update_slice(
          cache.positions_BS, positions_BL.astype(jnp.int32), (zero, index)))
