"""Training checkpoints: orbax `CheckpointManager` holding the TrainState, the data position and
the model config, saved every N steps (asynchronously) and kept K deep.

Each step folder holds three items: `state` (params, optimizer state, step, rng; restored
straight into their shardings), `data` (the iterator position, JSON) and `meta` (model config
and run facts, JSON). `meta` is read first on restore, so a checkpoint of another model shape is
refused with a message instead of an orbax shape error half-way through.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from cai_jax.checkpoints.hf import CheckpointError


# orbax writes a step into `<step>.orbax-checkpoint-tmp-<n>` and renames it when the save is
# committed: such a folder is a save that a crash cut off.
CUT_SAVE_MARK = ".orbax-checkpoint-tmp"


def cut_saves(directory: str) -> list[str]:
  """The uncommitted (cut mid-save) step folders under DIRECTORY, sorted."""
  if not os.path.isdir(directory):
    return []
  return sorted(n for n in os.listdir(directory) if CUT_SAVE_MARK in n)


def remove_cut_saves(directory: str) -> list[str]:
  """Deletes the cut saves under DIRECTORY (process 0; every process waits) and names them.

  Done here, synchronously, rather than by orbax's `cleanup_tmp_directories`, which deletes
  them in a background thread: a second manager on the same folder (a resumed job after a
  query of its latest step) then ran its own rmtree over the same tree, and one of the two
  failed with FileNotFoundError on a file the other had just removed."""
  cut = cut_saves(directory)
  if cut and jax.process_index() == 0:
    for name in cut:
      try:
        shutil.rmtree(os.path.join(directory, name))
      except FileNotFoundError:  # removed meanwhile by another process of ours
        pass
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("cai_jax.remove_cut_saves")
  return cut


class TrainCheckpoints:

  def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.save_every = int(save_every)
    cut = remove_cut_saves(self.directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(keep) if keep else None, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))
    if cut and jax.process_index() == 0:
      latest = self.manager.latest_step()
      print(f"warning: {self.directory}: {', '.join(cut)}: a checkpoint cut off mid-save (never "
            f"committed); ignored and removed, "
            + (f"resuming from step {latest}" if latest is not None else "starting afresh"),
            file=sys.stderr, flush=True)

  def should_save(self, step: int) -> bool:
    return self.save_every > 0 and step % self.save_every == 0

  def save(self, step: int, state, data_position: dict, meta: dict, *, force: bool = False) -> None:
    if self.manager.latest_step() == step:
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position),
        meta=ocp.args.JsonSave(meta)), force=force)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, abstract_state, expected_meta: dict, step: int | None = None
              ) -> tuple[Any, dict, int] | None:
    """(state, data position, step) of the latest (or given) checkpoint; None when there is none."""
    step = self.manager.latest_step() if step is None else step
    if step is None:
      return None
    where = os.path.join(self.directory, str(step))
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - orbax raises several types for unreadable folders
      raise CheckpointError(f"{where}: cannot read checkpoint metadata ({e})") from e
    for key in ("model_config",):
      if key in expected_meta and meta.get(key) != expected_meta[key]:
        theirs, ours = meta.get(key) or {}, expected_meta[key]
        diff = {k: (theirs.get(k), ours.get(k)) for k in set(theirs) | set(ours)
                if theirs.get(k) != ours.get(k)}
        raise CheckpointError(f"{where}: checkpoint is from another model ({key} differs: "
                              f"{{field: (checkpoint, this run)}} = {diff}); use a fresh workdir")
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{where}: cannot restore training state ({type(e).__name__}: {e})"
                            ) from e
    return out["state"], out["data"], step

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    return bool(self.manager.reached_preemption(step))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
