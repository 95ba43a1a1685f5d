"""Multiple-choice scoring: each option's summed log-probability after the prompt.

The prompt is encoded with BOS first; each option is encoded on its own (no BOS) and appended.
To compute the shared prompt once per item, the prompt and all its options are packed into one
row: option j's tokens attend to the prompt and causally to themselves, never to other options,
and their positions continue from the end of the prompt, so each option sees exactly the
context it would see alone. Logits are computed only where an option token is predicted.

Shapes are bucketed (length, rows, targets and options in powers of two) so a whole file compiles
a handful of programs. Truncation policy: when prompt + options exceed `max_length`, the prompt
loses tokens from its left (BOS kept) and the item is counted as truncated.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cai_jax import parallel
from cai_jax.data.jsonl import DataError, read_jsonl, require
from cai_jax.model import decoder, kv_cache
from cai_jax.model.config import DecoderConfig
from cai_jax.shapes import pow2_bucket, truncate_left

PAD_BRANCH = -1  # padding slots; 0 = prompt, j + 1 = option j


@dataclasses.dataclass(frozen=True)
class MCItem:
  prompt: str
  options: tuple[str, ...]
  is_correct: tuple[bool, ...]


def read_mc_file(path: str) -> list[MCItem]:
  """Items of a jsonl file with `prompt`, `corrects` and `incorrects` (lists of continuations)."""
  items = []
  for lineno, obj in read_jsonl(path):
    prompt = require(obj, "prompt", str, path, lineno)
    corrects = require(obj, "corrects", list, path, lineno)
    incorrects = require(obj, "incorrects", list, path, lineno)
    options = corrects + incorrects
    if not corrects or not all(isinstance(o, str) and o for o in options):
      raise DataError(f"{path}:{lineno}: 'corrects' must be a non-empty list and every option "
                      "a non-empty string")
    items.append(MCItem(prompt, tuple(options),
                        (True,) * len(corrects) + (False,) * len(incorrects)))
  if not items:
    raise DataError(f"{path}: no items")
  return items


@dataclasses.dataclass(frozen=True)
class PackedItem:
  """One item laid out in a row: prompt tokens, then each option's tokens."""
  tokens: np.ndarray     # [n]
  positions: np.ndarray  # [n]
  branch: np.ndarray     # [n] 0 = prompt, j + 1 = option j
  pred_index: np.ndarray  # [t] index of the token whose logits predict target t
  target: np.ndarray     # [t] the option token predicted
  option: np.ndarray     # [t] which option target t belongs to
  num_options: int
  truncated: bool


def pack(prompt_ids: Sequence[int], option_ids: Sequence[Sequence[int]],
         max_length: int, *, keep_first: bool = True) -> PackedItem:
  """`keep_first`: the prompt starts with BOS, which left-truncation keeps."""
  option_tokens = sum(len(o) for o in option_ids)
  budget = max_length - option_tokens
  if budget < 2:
    raise ValueError(f"options alone take {option_tokens} tokens; max_length is {max_length}")
  prompt_ids, truncated = truncate_left(prompt_ids, budget, keep_first=keep_first)
  p = len(prompt_ids)
  tokens, positions, branch = [list(prompt_ids)], [np.arange(p)], [np.zeros(p, np.int32)]
  pred, target, option = [], [], []
  start = p
  for j, ids in enumerate(option_ids):
    n = len(ids)
    tokens.append(ids)
    positions.append(np.arange(p, p + n))
    branch.append(np.full(n, j + 1, np.int32))
    # Token k of the option is predicted by token k-1 of it, the first by the prompt's last.
    pred.append(np.concatenate([[p - 1], np.arange(start, start + n - 1)]))
    target.append(ids)
    option.append(np.full(n, j, np.int32))
    start += n
  cat = lambda xs: np.concatenate([np.asarray(x, np.int32) for x in xs])  # noqa: E731
  return PackedItem(cat(tokens), cat(positions), cat(branch), cat(pred), cat(target),
                    cat(option), len(option_ids), truncated)


def length_bucket(n: int, max_length: int) -> int:
  return min(pow2_bucket(n, 64), max_length)


def make_batch(items: Sequence[PackedItem], rows: int, length: int) -> dict[str, np.ndarray]:
  """Pads `items` into [rows, length] and [rows, targets] arrays (targets a power of two)."""
  num_targets = pow2_bucket(max(len(it.target) for it in items), 8)
  b = {
      "tokens": np.zeros((rows, length), np.int32),
      "positions": np.full((rows, length), -1, np.int32),
      "branch": np.full((rows, length), PAD_BRANCH, np.int32),
      "pred_index": np.zeros((rows, num_targets), np.int32),
      "target": np.zeros((rows, num_targets), np.int32),
      "option": np.full((rows, num_targets), -1, np.int32),
  }
  for r, it in enumerate(items):
    n, t = len(it.tokens), len(it.target)
    b["tokens"][r, :n] = it.tokens
    b["positions"][r, :n] = it.positions
    b["branch"][r, :n] = it.branch
    b["pred_index"][r, :t] = it.pred_index
    b["target"][r, :t] = it.target
    b["option"][r, :t] = it.option
  return b


def packed_mask(positions_BL, branch_BL):
  """Query i reads key j when j is a real token at or before i's position in the prompt or in
  i's own option."""
  bq, bk = branch_BL[:, :, None], branch_BL[:, None, :]
  same_branch = (bk == bq) | (bk == 0)
  return same_branch & (bk != PAD_BRANCH) & decoder.causal_mask(positions_BL, positions_BL)


def _summed_option_logprobs(model: decoder.Decoder, params, hidden_BLD, batch,
                            num_options: int) -> jax.Array:
  """Logits only where option tokens are predicted, summed per option: [rows, options]."""
  h = jnp.take_along_axis(hidden_BLD, batch["pred_index"][..., None], axis=1)
  logits = model.apply({"params": params}, h, method=decoder.Decoder.logits).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  token_logp = jnp.take_along_axis(logp, batch["target"][..., None], axis=-1)[..., 0]
  one_hot = jax.nn.one_hot(batch["option"], num_options, dtype=jnp.float32)
  return jnp.einsum("BT,BTO->BO", token_logp, one_hot)


def option_scores(model: decoder.Decoder, params, batch, num_options: int) -> jax.Array:
  """[rows, options] summed log-probabilities (float32) of each option's tokens."""
  mask = packed_mask(batch["positions"], batch["branch"])
  hidden, _ = model.apply({"params": params}, batch["tokens"], batch["positions"], mask,
                          return_hidden=True)
  return _summed_option_logprobs(model, params, hidden, batch, num_options)


def option_scores_after_prefix(model: decoder.Decoder, params, batch, cache, prefix_slots: int,
                               num_options: int) -> jax.Array:
  """`option_scores` for rows that continue a cached prefix: `cache` holds the prefix in slots
  [0, prefix_slots) of every row and room for the row after it; the row's tokens read every
  prefix token and, as in `packed_mask`, the question and their own option."""
  zero = jnp.zeros((), jnp.int32)
  kv_positions = jax.lax.dynamic_update_slice(cache[0].slot_positions(), batch["positions"],
                                              (zero, jnp.asarray(prefix_slots, jnp.int32)))
  prefix_visible = ((kv_positions[:, None, :prefix_slots] >= 0)
                    & (batch["positions"][:, :, None] >= 0))
  mask = jnp.concatenate([prefix_visible, packed_mask(batch["positions"], batch["branch"])],
                         axis=-1)
  hidden, _ = model.apply({"params": params}, batch["tokens"], batch["positions"], mask,
                          cache=cache, cache_index=prefix_slots, return_hidden=True)
  return _summed_option_logprobs(model, params, hidden, batch, num_options)


def _prefill(model: decoder.Decoder, params, tokens_BL, positions_BL, cache):
  mask = decoder.causal_mask(positions_BL, positions_BL) & (positions_BL >= 0)[:, :, None]
  _, cache = model.apply({"params": params}, tokens_BL, positions_BL, mask, cache=cache,
                         cache_index=0, return_hidden=True)
  return cache


@dataclasses.dataclass(frozen=True)
class ScoringPrefix:
  """A shared context (e.g. a few-shot prefix) run once: its text, token count and cache."""
  text: str
  length: int
  slots: int
  cache: list


@dataclasses.dataclass
class MCResult:
  scores: list[list[float]]  # per item, per option (corrects first, as read)
  correct: list[bool]
  num_truncated: int

  @property
  def accuracy(self) -> float:
    return float(np.mean(self.correct)) if self.correct else float("nan")


class MCScorer:
  """Scores multiple-choice items with one compiled program per shape bucket."""

  def __init__(self, config: DecoderConfig, params, tokenizer, *, max_length: int = 4096,
               tokens_per_batch: int = 4096, mesh=None):
    """`mesh`: parameters placed as in training (e.g. `engine.model_shardings`); rows are split
    over the data axes, every batch a multiple of data x fsdp rows (padding rows are scored and
    dropped). Without a mesh everything runs on the default device."""
    self.params = params
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.tokens_per_batch = tokens_per_batch
    self.config = config
    self.mesh = mesh
    self.min_rows = 1 if mesh is None else parallel.batch_size_per_shard(mesh)
    under = (lambda f: f) if mesh is None else (lambda f: parallel.run_under(mesh, f))  # noqa
    self._score = under(jax.jit(functools.partial(option_scores, decoder.Decoder(config)),
                                static_argnames="num_options"))
    self._score_after = under(jax.jit(functools.partial(option_scores_after_prefix,
                                                        decoder.Decoder(config)),
                                      static_argnames=("prefix_slots", "num_options")))
    self._prefill = under(jax.jit(functools.partial(_prefill, decoder.Decoder(config)),
                                  donate_argnums=(3,)))

  def rows_for(self, length: int) -> int:
    rows = max(1, self.tokens_per_batch // length)
    return 1 << (rows.bit_length() - 1)

  def _rows(self, rows: int) -> int:
    """`rows` rounded up to a multiple of the data axes."""
    return -(-rows // self.min_rows) * self.min_rows

  def pack_items(self, items: Sequence[MCItem]) -> list[PackedItem]:
    prompts = self.tokenizer.encode_batch([it.prompt for it in items], add_bos=True)
    options = [self.tokenizer.encode_batch(list(it.options), add_bos=False) for it in items]
    keep_first = bool(self.tokenizer.start_ids)
    return [pack(p, o, self.max_length, keep_first=keep_first) for p, o in zip(prompts, options)]

  def score_packed(self, packed: Sequence[PackedItem], progress=None) -> list[np.ndarray]:
    """Per item, its options' scores; items are batched longest first, results in input order."""
    order = sorted(range(len(packed)), key=lambda i: -len(packed[i].tokens))
    results: list[np.ndarray | None] = [None] * len(packed)
    start = 0
    while start < len(order):
      length = length_bucket(len(packed[order[start]].tokens), self.max_length)
      # The last batch of a bucket shrinks to a power of two instead of padding full rows.
      rows = min(self.rows_for(length), pow2_bucket(len(order) - start, 1))
      chunk = order[start:start + rows]
      batch = kv_cache.place_rows(
          make_batch([packed[i] for i in chunk], self._rows(rows), length), self.mesh)
      num_options = pow2_bucket(max(packed[i].num_options for i in chunk), 2)
      scores = np.asarray(self._score(self.params, batch, num_options=num_options))
      for r, i in enumerate(chunk):
        results[i] = scores[r, :packed[i].num_options]
      start += len(chunk)
      if progress is not None:
        progress.update(len(chunk))
    return results

  def score(self, items: Sequence[MCItem], progress=None) -> MCResult:
    packed = self.pack_items(items)
    scores = self.score_packed(packed, progress)
    correct = [bool(it.is_correct[int(np.argmax(s))]) for it, s in zip(items, scores)]
    return MCResult(scores=[[float(x) for x in s] for s in scores], correct=correct,
                    num_truncated=sum(p.truncated for p in packed))

  # ---------------------------------------------------------------- shared prefixes

  def prefill(self, text: str) -> ScoringPrefix:
    """Runs a shared context once (BOS first); `score(items, prefix=...)` reuses it."""
    ids = self.tokenizer.encode(text, add_bos=True)
    slots = pow2_bucket(len(ids), 64)
    rows = self.min_rows  # identical rows, one per data shard; row 0 is kept
    tokens = np.zeros((rows, slots), np.int32)
    positions = np.full((rows, slots), -1, np.int32)
    tokens[:, :len(ids)] = ids
    positions[:, :len(ids)] = np.arange(len(ids))
    tokens, positions, cache = kv_cache.place_rows(
        (tokens, positions, kv_cache.init_cache(self.config, rows, slots)), self.mesh)
    cache = self._prefill(self.params, tokens, positions, cache)
    if self.mesh is not None:
      cache = kv_cache.map_rows(lambda x, axis: jax.device_put(
          jax.lax.slice_in_dim(x, 0, 1, axis=axis), parallel.replicated(self.mesh)), cache)
    return ScoringPrefix(text=text, length=len(ids), slots=slots, cache=cache)

  def score_after(self, items: Sequence[MCItem], prefix: ScoringPrefix, progress=None) -> MCResult:
    """Like `score`, for items whose prompts all start with `prefix.text`: only the rest of each
    prompt (encoded on its own, no BOS) and the options are computed, reading the cached prefix.
    Truncation applies to that rest: max_length - prefix tokens."""
    rests = []
    for it in items:
      if not it.prompt.startswith(prefix.text):
        raise ValueError("score_after: an item's prompt does not start with the prefix")
      rests.append(it.prompt[len(prefix.text):])
      if not rests[-1]:
        raise ValueError("score_after: an item's prompt is the prefix alone")
    budget = self.max_length - prefix.length
    encoded = self.tokenizer.encode_batch(rests, add_bos=False)
    packed = []
    for it, ids in zip(items, encoded):
      options = self.tokenizer.encode_batch(list(it.options), add_bos=False)
      item = pack([0] + ids, options, budget)  # a placeholder first token keeps pack's BOS rule
      keep = np.arange(1, len(item.tokens))  # drop the placeholder; positions follow the prefix
      packed.append(dataclasses.replace(
          item, tokens=item.tokens[keep], positions=item.positions[keep] - 1 + prefix.length,
          branch=item.branch[keep], pred_index=item.pred_index - 1))
    order = sorted(range(len(packed)), key=lambda i: -len(packed[i].tokens))
    results: list[np.ndarray | None] = [None] * len(packed)
    start = 0
    while start < len(order):
      length = length_bucket(len(packed[order[start]].tokens), self.max_length)
      rows = min(self.rows_for(length + prefix.slots), pow2_bucket(len(order) - start, 1))
      chunk = order[start:start + rows]
      rows = self._rows(rows)
      batch = kv_cache.place_rows(make_batch([packed[i] for i in chunk], rows, length), self.mesh)
      num_options = pow2_bucket(max(packed[i].num_options for i in chunk), 2)
      cache = kv_cache.place_rows(kv_cache.copy_prefix(
          kv_cache.init_cache(self.config, rows, prefix.slots + length), prefix.cache), self.mesh)
      scores = np.asarray(self._score_after(self.params, batch, cache, prefix_slots=prefix.slots,
                                            num_options=num_options))
      for r, i in enumerate(chunk):
        results[i] = scores[r, :packed[i].num_options]
      start += len(chunk)
      if progress is not None:
        progress.update(len(chunk))
    correct = [bool(it.is_correct[int(np.argmax(s))]) for it, s in zip(items, results)]
    return MCResult(scores=[[float(x) for x in s] for s in results], correct=correct,
                    num_truncated=sum(p.truncated for p in packed))
