"""Run metrics to `metrics.jsonl` (one JSON object per line: step, time, values) and TensorBoard
event files (`tb/`), written by process 0 only. tensorboardX writes the event files; without it
the jsonl is still written and a note says why the TensorBoard files are missing."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

import jax


class MetricsWriter:

  def __init__(self, folder: str, *, enabled: bool | None = None, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.folder = folder
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(folder, exist_ok=True)
    self._jsonl = open(os.path.join(folder, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(folder, "tb"))
      except ImportError:
        print("note: tensorboardX is not installed; writing metrics.jsonl only", file=sys.stderr)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "time": round(time.time(), 3)}
    record.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, float(v), int(step))

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
