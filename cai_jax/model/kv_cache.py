"""Key/value cache layout read and written by attention in decode mode.

Each layer's cache holds keys, values and the absolute position of the token in every slot
(-1 = empty). Attention masks are derived from those positions, so the same attention code serves
full-sequence forward passes (keys = the sequence itself) and cached decoding (keys = the slots),
and sliding-window layers only need `query_pos - key_pos < window`.

Two kinds of layer cache:
- linear (every layer unless asked otherwise): `length` slots; a call writes its L tokens at the
  shared slots [index, index + L) of every row (`write`).
- ring (sliding-window layers with `init_cache(..., ring=True)`): `min(sliding_window, length)`
  slots, and row b's token at position p lives in slot p % slots (`write_ring`). The slots then
  always hold each row's latest `slots` positions, which is all a window layer can see, whatever
  the row's length or padding. Attention reads a ring before writing a chunk into it (a chunk's
  later tokens may evict keys its earlier queries still see), except for single-token steps, where
  the evicted key (position p - window) is already outside the window.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from cai_jax import parallel
from cai_jax.model import layer_scan
from cai_jax.model.config import GLOBAL, DecoderConfig


@flax.struct.dataclass
class LayerCache:
  k_BSKH: jax.Array
  v_BSKH: jax.Array
  positions_BS: jax.Array  # int32 absolute positions, -1 where the slot is empty
  # Static: slot = position % num_slots per row (sliding-window layers), instead of shared slots.
  ring: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def layer_axes(self) -> int:
    """1 for the stacked cache of a scanned group (every array has a leading layer axis, rows
    come second), 0 for one layer's."""
    return len(self.positions_BS.shape) - 2

  @property
  def num_slots(self) -> int:
    return self.positions_BS.shape[-1]

  def slot_positions(self) -> jax.Array:
    """[B, S]: the positions held in each slot (those of the group's first layer when stacked;
    a group's layers share their slots)."""
    return self.positions_BS[0] if self.layer_axes else self.positions_BS


def init_cache(config: DecoderConfig, batch: int, length: int, dtype=None, *,
               ring: bool = False) -> list[LayerCache]:
  """An empty cache for every layer: `length` slots per row, or with `ring=True`
  min(sliding_window, length) ring slots on the sliding-window layers.

  With `config.scan_layers` the list follows the scanned layout (`layer_scan`): one stacked
  cache per position in the repeating group (a leading axis over the groups, `layer_axes` = 1),
  then one per remaining layer, so that the scan reads and writes it in place."""
  dtype = jnp.dtype(dtype or config.dtype)

  def layer(kind, lead=()):
    is_ring = ring and kind != GLOBAL and config.sliding_window < length
    slots = config.sliding_window if is_ring else length
    shape = lead + (batch, slots, config.num_kv_heads, config.head_dim)
    return LayerCache(k_BSKH=jnp.zeros(shape, dtype), v_BSKH=jnp.zeros(shape, dtype),
                      positions_BS=jnp.full(lead + (batch, slots), -1, jnp.int32), ring=is_ring)

  if not config.scan_layers:
    return [layer(kind) for kind in config.layer_types]
  period, reps = layer_scan.groups(config.layer_types)
  return ([layer(kind, (reps,)) for kind in config.layer_types[:period]]
          + [layer(kind) for kind in config.layer_types[period * reps:]])


def map_rows(fn, tree):
  """fn(array, row_axis) on every array of `tree` (caches, batches, tuples of both): the row axis
  is 1 in a scanned group's stacked cache and 0 everywhere else."""
  def one(node):
    axis = node.layer_axes if isinstance(node, LayerCache) else 0
    return jax.tree.map(lambda x: fn(x, axis), node)
  return jax.tree.map(one, tree, is_leaf=lambda n: isinstance(n, LayerCache))


def row_shardings(tree, mesh):
  """For every array (or jax.ShapeDtypeStruct) of `tree`, the sharding that splits its rows over
  `mesh`'s data axes and replicates the rest."""
  return map_rows(lambda x, axis: parallel.batch_sharding(mesh, len(x.shape), axis), tree)


def place_rows(tree, mesh):
  """`tree` (caches, batches) with its rows over `mesh`'s data axes; unchanged without a mesh."""
  return tree if mesh is None else jax.device_put(tree, row_shardings(tree, mesh))


def set_rows(cache: list[LayerCache], rows_K, new: list[LayerCache]) -> list[LayerCache]:
  """`cache` with rows `rows_K` replaced by the K rows of `new` (same layout); out-of-range row
  indices are dropped."""
  def put(buf, x, axis):
    index = (slice(None),) * axis + (rows_K,)
    return buf.at[index].set(x.astype(buf.dtype), mode="drop")
  return [c.replace(k_BSKH=put(c.k_BSKH, n.k_BSKH, c.layer_axes),
                    v_BSKH=put(c.v_BSKH, n.v_BSKH, c.layer_axes),
                    positions_BS=put(c.positions_BS, n.positions_BS, c.layer_axes))
          for c, n in zip(cache, new)]


def write(cache: LayerCache, k_BLKH, v_BLKH, positions_BL, index) -> LayerCache:
  """Writes L new entries into slots [index, index + L) of every row."""
  zero = jnp.zeros((), jnp.int32)
  index = jnp.asarray(index, jnp.int32)
  return cache.replace(
      k_BSKH=jax.lax.dynamic_update_slice(
          cache.k_BSKH, k_BLKH.astype(cache.k_BSKH.dtype), (zero, index, zero, zero)),
      v_BSKH=jax.lax.dynamic_update_slice(
          cache.v_BSKH, v_BLKH.astype(cache.v_BSKH.dtype), (zero, index, zero, zero)),
      positions_BS=jax.lax.dynamic_update_slice(
          cache.positions_BS, positions_BL.astype(jnp.int32), (zero, index)))


def write_ring(cache: LayerCache, k_BLKH, v_BLKH, positions_BL) -> LayerCache:
  """Writes each real token (position >= 0) into slot position % num_slots of its row. Within
  the chunk, only each row's latest num_slots positions are written (earlier ones would share
  their slots); positions must increase along a row."""
  B, L = positions_BL.shape
  W = cache.num_slots
  positions_BL = positions_BL.astype(jnp.int32)
  keep = positions_BL >= 0
  if L > 1:
    keep &= positions_BL > jnp.max(positions_BL, axis=1, keepdims=True) - W
  # Dropped entries go to distinct out-of-bounds slots, so all indices stay unique.
  slot = jnp.where(keep, positions_BL % W, W + jnp.arange(L, dtype=jnp.int32))
  return _scatter(cache, k_BLKH, v_BLKH, positions_BL, slot)


def write_step(cache: LayerCache, k_B1KH, v_B1KH, positions_B1, index) -> LayerCache:
  """One token per row, as `write_ring` (ring caches) or `write` (linear ones) do, as a scatter:
  XLA fused a dynamic-update-slice into the squeezed view attention reads, which cost a copy of
  the whole cache every decode step; a scatter stays in place."""
  if cache.ring:
    return write_ring(cache, k_B1KH, v_B1KH, positions_B1)
  slot = jnp.broadcast_to(jnp.asarray(index, jnp.int32), positions_B1.shape)
  return _scatter(cache, k_B1KH, v_B1KH, positions_B1, slot)


def _scatter(cache, k_BLKH, v_BLKH, positions_BL, slot_BL):
  """Row b's token l into slot slot_BL[b, l] (unique per row; out of bounds: dropped)."""
  B, L = positions_BL.shape
  rows = jnp.broadcast_to(jnp.arange(B, dtype=jnp.int32)[:, None], (B, L))

  def put(buf, new):
    return buf.at[rows, slot_BL].set(new.astype(buf.dtype), mode="drop", unique_indices=True)

  return cache.replace(k_BSKH=put(cache.k_BSKH, k_BLKH), v_BSKH=put(cache.v_BSKH, v_BLKH),
                       positions_BS=put(cache.positions_BS, positions_BL.astype(jnp.int32)))


def copy_prefix(cache: list[LayerCache], prefix: list[LayerCache]) -> list[LayerCache]:
  """`cache` (B rows) with every row's first slots set to the one-row `prefix` cache (as made by
  `init_cache` with the same `ring`, for a length at most this cache's). A ring prefix keeps
  its slot = position % slots mapping: both rings have `sliding_window` slots, or the prefix's
  positions are below its own slot count."""
  out = []
  for c, p in zip(cache, prefix):
    if p.num_slots > c.num_slots or (p.ring and not c.ring):
      raise ValueError(f"a prefix cache of {p.num_slots} slots (ring={p.ring}) does not fit a "
                       f"cache of {c.num_slots} slots (ring={c.ring})")
    slots = (slice(None),) * (c.layer_axes + 1) + (slice(0, p.num_slots),)
    out.append(c.replace(
        k_BSKH=c.k_BSKH.at[slots].set(p.k_BSKH.astype(c.k_BSKH.dtype)),
        v_BSKH=c.v_BSKH.at[slots].set(p.v_BSKH.astype(c.v_BSKH.dtype)),
        positions_BS=c.positions_BS.at[slots].set(p.positions_BS)))
  return out
