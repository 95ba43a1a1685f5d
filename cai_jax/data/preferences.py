"""Preference-model data: answer pairs with soft labels -> padded pair batches.

Sources (every file is read, validated and tokenised once, into memory, before any compute):
- AI labels (`feedback` job's labels.jsonl, read by `cai.feedback.read_feedback_file`, which
  fails with file:line on a probability outside [0, 1]): a = responses[0], b = responses[1],
  p = p_first_better.
- Human comparisons (HH-RLHF `{"chosen", "rejected"}` jsonl or jsonl.gz, read by
  `sources.read_hh_comparisons`): the chosen answer is preferred (p = 1), but which side it goes
  to is drawn per comparison from (seed, id) (`chosen_is_a`), so about half the pairs are
  (chosen, rejected) with p = 1 and half (rejected, chosen) with p = 0 and the model cannot
  learn "a is better".

Sequences: BOS + prompt + response (+ EOS when `append_eos`), the prompt and the response
tokenised separately and concatenated. The reward is read at the last token (the EOS when it is
appended), whose index is stored explicitly per sequence (`last`), never inferred from padding.
Truncation policy (longer than `max_length`): tokens are dropped from the left after BOS, so the
prompt goes first and the response's end, where the reward is read, always survives; such pairs
are counted (`truncated`).

Batches (`make_batch`): the two sequences of a pair are stacked on axis 1, so that reshaping
[B, 2, L] -> [2B, L] inside the step keeps every data shard's rows where they are:
  tokens int32 [B, 2, L] (right-padded with `pad_id`), valid bool [B, 2, L], last int32 [B, 2],
  p float32 [B] (P(a better)), weight float32 [B] (1 real pair, 0 padding row).
L is the power-of-two bucket (>= min_length, <= max_length) of the batch's longest sequence.

Mixing (`PreferenceBatches`): each global batch holds a FIXED number of rows from each source,
`mix_rows(batch_size, n_ai, n_human, human_fraction)`: round(batch_size * human_fraction) human
comparisons and the rest AI-labelled pairs (human_fraction < 0: in proportion to the two sets'
sizes). Each source cycles through its own permutations, drawn from (seed, source, epoch), so a
small source repeats more often than a large one; the rows of a batch are then shuffled by a
permutation drawn from the position. The position ({source: {"epoch", "index"}}) is saved with
every checkpoint and restored on resume, as in `data.sl.BatchIterator`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Iterator, Sequence

import numpy as np

from cai_jax.config_defaults import ConfigError
from cai_jax.data.jsonl import DataError, read_jsonl, require
from cai_jax.data.sources import Comparison, read_hh_comparisons, split_last_assistant
from cai_jax.shapes import pow2_bucket, truncate_left

AI, HUMAN = "ai", "human"


@dataclasses.dataclass(frozen=True)
class Preference:
  """A pair of answers to `prompt` and P(responses[0] is better)."""
  id: str
  prompt: str
  responses: tuple[str, str]
  p: float
  source: str = ""   # AI or HUMAN (or a file's name for evaluation sets)
  where: str = ""    # "file:line"
  axis: str = ""     # AI labels: the constitution's axis ('harmless', 'helpful', ...)


@dataclasses.dataclass(frozen=True)
class PairExample:
  """A tokenised preference: ids[0] = a, ids[1] = b (each BOS + prompt + response [+ EOS])."""
  ids: tuple[np.ndarray, np.ndarray]
  p: float
  truncated: bool = False
  source: str = ""


# ---------------------------------------------------------------------------------------------
# Reading.


def chosen_is_a(seed: int, pair_id: str) -> bool:
  """Whether the chosen answer of comparison `pair_id` goes first (from (seed, id) alone)."""
  digest = hashlib.sha256(f"pm_side:{seed}:{pair_id}".encode()).digest()
  return bool(digest[0] & 1)


def from_feedback_labels(labels) -> list[Preference]:
  return [Preference(x.id, x.prompt, tuple(x.responses), float(x.p_first_better), AI, x.where,
                     getattr(x, "axis", ""))
          for x in labels]


def from_comparisons(comparisons: Sequence[Comparison], seed: int, *,
                     randomize_sides: bool = True) -> list[Preference]:
  out = []
  for c in comparisons:
    if not randomize_sides or chosen_is_a(seed, c.id):
      out.append(Preference(c.id, c.prompt, (c.chosen, c.rejected), 1.0, HUMAN, c.source))
    else:
      out.append(Preference(c.id, c.prompt, (c.rejected, c.chosen), 0.0, HUMAN, c.source))
  return out


def read_ai_labels(path: str) -> list[Preference]:
  from cai_jax.cai.feedback import read_feedback_file
  return from_feedback_labels(read_feedback_file(path))


def read_human_comparisons(path: str, seed: int, *, randomize_sides: bool = True
                           ) -> list[Preference]:
  return from_comparisons(read_hh_comparisons(path), seed, randomize_sides=randomize_sides)


def read_text_pairs(path: str) -> list[Preference]:
  """HHH-format multiple-choice files: every line must have `text_correct` and
  `text_incorrect` (the two full transcripts); a = correct, p = 1. When both transcripts split
  at their last "\\n\\nAssistant:" into the same prompt, the pair is (prompt, two replies), the
  way the preference model is trained; otherwise the prompt is empty and the whole transcripts
  are compared."""
  out = []
  for lineno, obj in read_jsonl(path):
    good = require(obj, "text_correct", str, path, lineno)
    bad = require(obj, "text_incorrect", str, path, lineno)
    if not good.strip() or not bad.strip():
      raise DataError(f"{path}:{lineno}: 'text_correct' and 'text_incorrect' must be non-empty")
    sg, sb = split_last_assistant(good), split_last_assistant(bad)
    if sg is not None and sb is not None and sg[0] == sb[0]:
      prompt, responses = sg[0], (sg[1], sb[1])
    else:
      prompt, responses = "", (good, bad)
    out.append(Preference(f"{os.path.basename(path)}-{lineno:06d}", prompt, responses, 1.0,
                          os.path.basename(path), f"{path}:{lineno}"))
  if not out:
    raise DataError(f"{path}: no items")
  return out


def write_pairs_for_comparisons(comparisons: Sequence[Comparison], path: str, seed: int) -> None:
  """A pairs file for the `feedback` job from human comparisons (ids kept, sides drawn as in
  `chosen_is_a`), so that the AI labeller can be scored against the human labels
  (`eval.feedback_labels` + `eval.human_file`)."""
  with open(path, "w", encoding="utf-8") as f:
    for c in comparisons:
      pair = [c.chosen, c.rejected] if chosen_is_a(seed, c.id) else [c.rejected, c.chosen]
      f.write(json.dumps({"id": c.id, "prompt": c.prompt, "responses": pair},
                         ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Tokenising.


def encode_sequence(prompt_ids: Sequence[int], response_ids: Sequence[int], *,
                    start_ids: Sequence[int], eos_id: int, max_length: int, append_eos: bool
                    ) -> tuple[np.ndarray, bool]:
  """start (BOS, or nothing for tokenizers without one) + prompt + response (+ EOS),
  left-truncated after the start to `max_length`."""
  ids = (list(start_ids) + list(prompt_ids) + list(response_ids)
         + ([eos_id] if append_eos else []))
  ids, truncated = truncate_left(ids, max_length, keep_first=bool(start_ids))
  return np.asarray(ids, np.int32), truncated


def _formatted(prompt: str, response: str, fmt) -> tuple[str, str]:
  """(prompt, response) as the conversation format `fmt` lays them out. A pair compared as
  whole transcripts (empty prompt) is split at its last Assistant turn first, since a chat
  template renders turns, not a transcript."""
  if not prompt:
    split = split_last_assistant(response)
    if split is None:
      raise DataError(f"a whole transcript without an '\\n\\nAssistant:' turn cannot be laid "
                      f"out as a chat: {response[:60]!r}...")
    prompt, response = split
  return fmt.context(prompt), fmt.response(response)


def tokenize(prefs: Sequence[Preference], tokenizer, *, max_length: int, append_eos: bool,
             fmt=None) -> list[PairExample]:
  """Both sequences of every pair: start + prompt + response (+ end id). With a conversation
  format `fmt` (cai_jax.constitution.conversation_format), prompt and responses as that format
  lays them out and the format's end id (the chat template's end-of-turn token) after them."""
  if max_length < 2:
    raise ConfigError(f"max_length={max_length} must be at least 2")
  if fmt is None or fmt.name == "hh":
    texts = [(x.prompt, x.responses[0], x.prompt, x.responses[1]) for x in prefs]
  else:
    texts = [(*_formatted(x.prompt, x.responses[0], fmt), *_formatted(x.prompt, x.responses[1],
                                                                     fmt)) for x in prefs]
  enc = lambda k: tokenizer.encode_batch([t[k] for t in texts], add_bos=False)  # noqa: E731
  prompts_a, firsts, prompts_b, seconds = enc(0), enc(1), enc(2), enc(3)
  end_id = fmt.end_id if fmt is not None else tokenizer.eos_id
  out = []
  for x, pa, r0, pb, r1 in zip(prefs, prompts_a, firsts, prompts_b, seconds):
    kw = dict(start_ids=tokenizer.start_ids, eos_id=end_id, max_length=max_length,
              append_eos=append_eos)
    a, ta = encode_sequence(pa, r0, **kw)
    b, tb = encode_sequence(pb, r1, **kw)
    out.append(PairExample((a, b), float(x.p), ta or tb, x.source))
  return out


# ---------------------------------------------------------------------------------------------
# Batching.


def make_batch(examples: Sequence[PairExample | None], length: int, *, pad_id: int = 0
               ) -> dict[str, np.ndarray]:
  """The arrays described in the module docstring; `None` rows are padding (weight 0)."""
  B = len(examples)
  tokens = np.full((B, 2, length), pad_id, np.int32)
  valid = np.zeros((B, 2, length), bool)
  last = np.zeros((B, 2), np.int32)
  p = np.full((B,), 0.5, np.float32)
  weight = np.zeros((B,), np.float32)
  for r, ex in enumerate(examples):
    if ex is None:
      continue
    for s in range(2):
      n = len(ex.ids[s])
      if n > length:
        raise ValueError(f"row {r}: sequence of {n} tokens does not fit length {length}")
      tokens[r, s, :n] = ex.ids[s]
      valid[r, s, :n] = True
      last[r, s] = n - 1
    p[r], weight[r] = ex.p, 1.0
  return {"tokens": tokens, "valid": valid, "last": last, "p": p, "weight": weight}


def bucket_length(examples, min_length: int, max_length: int) -> int:
  longest = max((len(ids) for e in examples if e is not None for ids in e.ids), default=1)
  return min(max_length, pow2_bucket(longest, min_length))


def mix_rows(batch_size: int, n_ai: int, n_human: int, human_fraction: float) -> dict[str, int]:
  """Rows per global batch for each source (see the module docstring); ConfigError when the
  fraction cannot be met with the data given."""
  if n_ai == 0 and n_human == 0:
    raise ConfigError("no preference data: set pm_train.ai_labels and/or "
                      "pm_train.human_comparisons")
  f = float(human_fraction)
  if f < 0:
    f = n_human / (n_ai + n_human)
    k = round(batch_size * f)
    if n_ai and n_human:
      k = min(max(k, 1), batch_size - 1)
  else:
    if f > 1:
      raise ConfigError(f"human_fraction={f} must be in [0, 1] (or negative: proportional)")
    if f > 0 and not n_human:
      raise ConfigError(f"human_fraction={f} but no human comparisons "
                        "(set pm_train.human_comparisons)")
    if f < 1 and not n_ai:
      raise ConfigError(f"human_fraction={f} but no AI labels (set pm_train.ai_labels)")
    if f == 0 and n_human:
      raise ConfigError("human_comparisons are given but human_fraction=0 leaves them unused")
    if f == 1 and n_ai:
      raise ConfigError("ai_labels are given but human_fraction=1 leaves them unused")
    k = round(batch_size * f)
    if 0 < f < 1 and k in (0, batch_size):
      raise ConfigError(f"batch_size={batch_size} is too small for human_fraction={f} "
                        f"(it rounds to {k} human rows)")
  return {AI: batch_size - k, HUMAN: k}


def ai_sources(labels: Sequence[Preference]) -> dict[str, list[Preference]]:
  """AI-labelled pairs as training sources: one source `ai` when they share one axis (or carry
  none), else one per axis, `ai_<axis>`, so each axis gets its own rows in every batch."""
  axes = sorted({x.axis for x in labels})
  if len(axes) <= 1:
    return {AI: list(labels)} if labels else {}
  return {f"{AI}_{a}": [x for x in labels if x.axis == a] for a in axes}


def split_ai_rows(rows: int, sizes: dict[str, int], axis_fractions: str) -> dict[str, int]:
  """The `rows` AI rows of a batch split between the AI sources (`ai_sources`): in proportion
  to their sizes when `axis_fractions` is '', else by its weights ('harmless=1,helpful=1', one
  per axis present, normalised). Largest remainders, then a row moved from the largest share to
  any source left with none, so every axis is seen in every batch (ConfigError when there are
  fewer rows than axes or the weights name axes the labels lack)."""
  names = sorted(sizes)
  if not names or rows == 0:
    return {n: 0 for n in names}
  if len(names) == 1:
    return {names[0]: rows}
  axis = {n: n[len(AI) + 1:] for n in names}
  if axis_fractions:
    weights = {}
    for part in axis_fractions.split(","):
      key, sep, value = part.partition("=")
      try:
        w = float(value)
      except ValueError:
        w = -1.0
      if not sep or w < 0:
        raise ConfigError(f"pm_train.axis_fractions={axis_fractions!r}: expected "
                          "'axis=weight,...' with weights >= 0")
      weights[key.strip()] = w
    missing = sorted(set(axis.values()) - set(weights))
    unknown = sorted(set(weights) - set(axis.values()))
    if missing or unknown:
      raise ConfigError(f"pm_train.axis_fractions={axis_fractions!r} must give a weight to each "
                        f"axis of the labels ({', '.join(sorted(axis.values()))})"
                        + (f"; missing {missing}" if missing else "")
                        + (f"; no labels of {unknown}" if unknown else ""))
    share = np.asarray([weights[axis[n]] for n in names], np.float64)
  else:
    share = np.asarray([sizes[n] for n in names], np.float64)
  if share.sum() <= 0:
    raise ConfigError(f"pm_train.axis_fractions={axis_fractions!r}: the weights sum to 0")
  exact = rows * share / share.sum()
  out = np.floor(exact).astype(int)
  for i in np.argsort(-(exact - out), kind="stable")[:rows - out.sum()]:
    out[i] += 1
  for i in np.flatnonzero((out == 0) & (share > 0)):  # a small axis still gets one row a batch
    j = int(np.argmax(out))
    if out[j] > 1:
      out[j] -= 1
      out[i] += 1
  result = {n: int(k) for n, k in zip(names, out)}
  starved = [axis[n] for n in names if result[n] == 0 and share[names.index(n)] > 0]
  if starved:
    raise ConfigError(f"pm_train: {rows} AI rows per batch leave no row for axis "
                      f"{', '.join(starved)}; raise pm_train.batch_size or set axis_fractions")
  return result


def steps_for_epochs(sizes: dict[str, int], rows: dict[str, int], epochs: float) -> int:
  """Steps after which every example of every source has been seen `epochs` times."""
  return max(1, math.ceil(max(epochs * sizes[s] / rows[s] for s in sizes if rows.get(s))))


class PreferenceBatches:
  """Endless mixed batches with a saveable position; yields (local batch, position after)."""

  def __init__(self, sources: dict[str, list[PairExample]], rows_per_source: dict[str, int], *,
               seed: int, max_length: int, min_length: int = 32, rows: slice | None = None,
               pad_id: int = 0):
    self.names = [s for s in sorted(sources) if rows_per_source.get(s, 0) > 0]
    for s in self.names:
      if not sources[s]:
        raise ValueError(f"source {s!r} is asked for {rows_per_source[s]} rows but is empty")
    self.sources = sources
    self.per = {s: int(rows_per_source[s]) for s in self.names}
    self.batch_size = sum(self.per.values())
    self.seed = int(seed)
    self.max_length, self.min_length = int(max_length), int(min_length)
    self.rows = rows or slice(0, self.batch_size)
    self.pad_id = int(pad_id)
    self.cursor = {s: [0, 0] for s in self.names}  # [epoch, index]

  def permutation(self, source: str, epoch: int) -> np.ndarray:
    k = sorted(self.sources).index(source)
    return np.random.default_rng([self.seed, k, epoch]).permutation(len(self.sources[source]))

  @property
  def position(self) -> dict:
    return {s: {"epoch": e, "index": i} for s, (e, i) in self.cursor.items()}

  def restore(self, position: dict) -> None:
    if set(position) != set(self.names):
      raise ValueError(f"data position has sources {sorted(position)}, this run mixes "
                       f"{self.names}; use a fresh workdir to change the mix")
    for s, pos in position.items():
      self.cursor[s] = [int(pos["epoch"]), int(pos["index"])]

  def _take(self, source: str, k: int) -> list[int]:
    chosen = []
    cur = self.cursor[source]
    while len(chosen) < k:
      perm = self.permutation(source, cur[0])
      take = perm[cur[1]:cur[1] + k - len(chosen)]
      chosen.extend(int(i) for i in take)
      cur[1] += len(take)
      if cur[1] >= len(perm):
        cur[0], cur[1] = cur[0] + 1, 0
    return chosen

  def __iter__(self) -> Iterator[tuple[dict, dict]]:
    return self

  def __next__(self) -> tuple[dict, dict]:
    before = [v for s in self.names for v in self.cursor[s]]
    picked: list[PairExample] = []
    for s in self.names:
      picked.extend(self.sources[s][i] for i in self._take(s, self.per[s]))
    order = np.random.default_rng([self.seed, 99, *before]).permutation(len(picked))
    picked = [picked[i] for i in order]
    length = bucket_length(picked, self.min_length, self.max_length)
    return make_batch(picked[self.rows], length, pad_id=self.pad_id), self.position


def eval_batches(examples: Sequence[PairExample], batch_size: int, *, max_length: int,
                 min_length: int = 32, rows: slice | None = None, pad_id: int = 0
                 ) -> Iterator[tuple[list[int], dict]]:
  """Every example once, in batches of similar lengths (longest first); yields (indices of the
  examples in the batch's rows, local batch). The last batch is filled with padding rows."""
  rows = rows or slice(0, batch_size)
  order = sorted(range(len(examples)), key=lambda i: -max(len(x) for x in examples[i].ids))
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    chunk: list = [examples[i] for i in idx] + [None] * (batch_size - len(idx))
    yield idx, make_batch(chunk[rows], bucket_length(chunk, min_length, max_length),
                          pad_id=pad_id)
