"""Supervised (SL) data: a jsonl of {"prompt", "completion", ...metadata} -> padded batches.

Design: the file is read and tokenised once into memory (SL-CAI sets are thousands to a few
hundred thousand short examples); no TFDS and no TensorFlow. Each epoch visits the examples in
a permutation drawn from (seed, epoch); a batch is the next `batch_size` indices, continuing into
the next epoch's permutation when one runs out, so every batch is full. The iterator's position
({"epoch", "index"}) is saved with each checkpoint and a resumed run continues from it.

Shapes: a batch is right-padded to the power-of-two bucket (at least `min_length`, at most
`max_length`) of its longest example, so a run compiles a handful of programs.

Truncation policy (examples longer than `max_length`): drop prompt tokens from the left, keeping
BOS; if the completion alone does not fit, keep its first tokens. Every truncated example is
counted (`truncated_examples` in the run's metrics).

Multi-host: every process reads the whole file (cheap) and builds the same global batch, then
keeps its own contiguous rows (`parallel.process_rows`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from cai_jax.data import conversation
from cai_jax.data.jsonl import DataError, read_jsonl, require
from cai_jax.shapes import pow2_bucket


@dataclasses.dataclass(frozen=True)
class Example:
  ids: np.ndarray     # int32 [n]
  mask: np.ndarray    # bool [n]: True where the token is a training target
  truncated: bool = False


def fit_length(ids, mask, max_length: int) -> tuple[list[int], list[bool], bool]:
  """The documented truncation policy (see module docstring)."""
  ids, mask = list(ids), list(mask)
  if len(ids) <= max_length:
    return ids, mask, False
  n_prompt = mask.index(True) if True in mask else len(ids)
  completion = ids[n_prompt:], mask[n_prompt:]
  room = max_length - len(completion[0])
  if room >= 1:  # keep BOS + the newest `room - 1` prompt tokens
    keep = ids[:1] + ids[1:n_prompt][len(ids[1:n_prompt]) - (room - 1):] if room > 1 else ids[:1]
    return keep + completion[0], [False] * len(keep) + completion[1], True
  out_ids = ids[:1] + completion[0][:max_length - 1]
  return out_ids, [False] + completion[1][:max_length - 1], True


def read_sl_file(path: str, tokenizer, *, max_length: int, append_eos: bool = True,
                 fmt=None) -> list[Example]:
  """Tokenised examples (in the conversation format `fmt`, the paper's layout when None); fails
  with file:line on malformed records and on an empty file."""
  out = []
  for lineno, obj in read_jsonl(path):
    prompt = require(obj, "prompt", str, path, lineno)
    completion = require(obj, "completion", str, path, lineno)
    if not completion.strip():
      raise DataError(f"{path}:{lineno}: empty completion (nothing to train on)")
    try:
      if prompt.startswith(conversation.HUMAN):
        conversation.parse(prompt)  # HH-format prompts must be well-formed
    except ValueError as e:
      raise DataError(f"{path}:{lineno}: prompt: {e}") from None
    try:
      ids, mask = conversation.tokenize_prompt_completion(tokenizer, prompt, completion,
                                                          append_eos=append_eos, fmt=fmt)
    except ValueError as e:  # a prompt the conversation format cannot lay out
      raise DataError(f"{path}:{lineno}: prompt: {e}") from None
    ids, mask, truncated = fit_length(ids, mask, max_length)
    out.append(Example(np.asarray(ids, np.int32), np.asarray(mask, bool), truncated))
  if not out:
    raise DataError(f"{path}: no examples (empty file)")
  return out


def make_batch(examples: list[Example | None], length: int) -> dict[str, np.ndarray]:
  """Right-padded arrays; `None` rows are empty (all padding, zero weight).

  tokens, targets: int32 [B, L] (targets[i] = tokens[i + 1]); weights: float32 [B, L], the
  weight of predicting targets[i]; valid: bool [B, L], real tokens."""
  B = len(examples)
  tokens = np.zeros((B, length), np.int32)
  mask = np.zeros((B, length), bool)
  valid = np.zeros((B, length), bool)
  for r, ex in enumerate(examples):
    if ex is None:
      continue
    n = len(ex.ids)
    tokens[r, :n], mask[r, :n], valid[r, :n] = ex.ids, ex.mask, True
  targets = np.zeros_like(tokens)
  targets[:, :-1] = tokens[:, 1:]
  weights = np.zeros((B, length), np.float32)
  weights[:, :-1] = mask[:, 1:]
  return {"tokens": tokens, "targets": targets, "weights": weights, "valid": valid}


def bucket_length(examples, min_length: int, max_length: int) -> int:
  longest = max((len(e.ids) for e in examples if e is not None), default=1)
  return min(max_length, pow2_bucket(longest, min_length))


class BatchIterator:
  """Endless shuffled batches with a saveable position; yields (local batch, position after)."""

  def __init__(self, examples: list, batch_size: int, *, seed: int, max_length: int,
               min_length: int = 32, rows: slice | None = None, epoch: int = 0, index: int = 0,
               collate=None):
    """`collate(global batch's examples, rows) -> this process's arrays` for examples of
    another kind (default: `Example`s through `make_batch` at the batch's length bucket)."""
    self.examples = examples
    self.collate = collate
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.max_length, self.min_length = int(max_length), int(min_length)
    self.rows = rows or slice(0, self.batch_size)
    self.epoch, self.index = int(epoch), int(index)

  def permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

  @property
  def position(self) -> dict:
    return {"epoch": self.epoch, "index": self.index}

  def restore(self, position: dict) -> None:
    self.epoch, self.index = int(position["epoch"]), int(position["index"])

  def __iter__(self) -> Iterator[tuple[dict, dict]]:
    return self

  def __next__(self) -> tuple[dict, dict]:
    chosen = []
    while len(chosen) < self.batch_size:
      perm = self.permutation(self.epoch)
      take = perm[self.index:self.index + self.batch_size - len(chosen)]
      chosen.extend(int(i) for i in take)
      self.index += len(take)
      if self.index >= len(perm):
        self.epoch, self.index = self.epoch + 1, 0
    batch_examples = [self.examples[i] for i in chosen]
    if self.collate is not None:
      return self.collate(batch_examples, self.rows), self.position
    length = bucket_length(batch_examples, self.min_length, self.max_length)
    return make_batch(batch_examples[self.rows], length), self.position


def eval_batches(examples: list[Example], batch_size: int, *, max_length: int,
                 min_length: int = 32, rows: slice | None = None) -> Iterator[dict]:
  """The held-out examples once, in file order; the last batch is filled with empty rows."""
  rows = rows or slice(0, batch_size)
  for start in range(0, len(examples), batch_size):
    chunk: list = list(examples[start:start + batch_size])
    chunk += [None] * (batch_size - len(chunk))
    yield make_batch(chunk[rows], bucket_length(chunk, min_length, max_length))
