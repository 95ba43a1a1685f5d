"""Decoder layers run as a scan over repeated groups (`DecoderConfig.scan_layers`).

An unrolled decoder is one copy of the layer per layer in the compiled program, so XLA's compile
time grows with depth (minutes per program for a 62- or 80-layer model on a small host). Scanned,
the program holds one group of layers and loops over it, as MaxText and Tunix do on TPU.

A group is the shortest repeating pattern of layer kinds (`period` layers: 1 when every layer is
global, 6 for five sliding-window layers then one global layer); the first `period * repeats`
layers are scanned, the remainder after them (e.g. the last 2 of 26 in that pattern) run
unrolled.
Every layer keeps its own kind, window and RoPE, so a scanned decoder computes what the unrolled
one does.

Parameter layout when scanned: `params["scan"]["layer_{j}"]` holds the j-th layer of every group
stacked on a new leading axis (logical name `layers`, never sharded), remainder layers keep their
own `layer_{i}`. Checkpoint files always hold the unrolled layout; `stack` / `unstack` convert
(NumPy arrays stay NumPy, so a host-side import never touches a device).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

SCAN = "scan"  # the parameter collection name of the scanned groups


def groups(layer_types: Sequence[str]) -> tuple[int, int]:
  """(period, repeats): the shortest period p whose pattern repeats at least twice over the
  first p * (n // p) layers. (n, 1) when nothing repeats, which leaves nothing to scan."""
  n = len(layer_types)
  for p in range(1, n // 2 + 1):
    reps = n // p
    if all(layer_types[i] == layer_types[i % p] for i in range(p * reps)):
      return p, reps
  return n, 1


def _stack(leaves):
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def is_stacked(params: Any) -> bool:
  return SCAN in params


def stack(params: dict, layer_types: Sequence[str]) -> dict:
  """Unrolled decoder params (`layer_0` ... `layer_{n-1}`) -> the scanned layout."""
  period, reps = groups(layer_types)
  if is_stacked(params):
    raise ValueError("these parameters are already in the scanned layout")
  out = {k: v for k, v in params.items() if not k.startswith("layer_")}
  out[SCAN] = {
      f"layer_{j}": jax.tree.map(lambda *xs: _stack(xs),
                                 *[params[f"layer_{g * period + j}"] for g in range(reps)])
      for j in range(period)}
  for i in range(period * reps, len(layer_types)):
    out[f"layer_{i}"] = params[f"layer_{i}"]
  return out


def unstack(params: dict, layer_types: Sequence[str]) -> dict:
  """The scanned layout -> unrolled decoder params (the inverse of `stack`)."""
  if not is_stacked(params):
    return params
  period, reps = groups(layer_types)
  out = {k: v for k, v in params.items() if k != SCAN}
  for g in range(reps):
    for j in range(period):
      out[f"layer_{g * period + j}"] = jax.tree.map(lambda x: x[g], params[SCAN][f"layer_{j}"])
  return out


def relayout(params: dict, layer_types: Sequence[str], scanned: bool) -> dict:
  """`params` in the scanned layout when `scanned`, else unrolled, whichever they are now."""
  if scanned == is_stacked(params):
    return params
  return stack(params, layer_types) if scanned else unstack(params, layer_types)
