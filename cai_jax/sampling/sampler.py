"""Batched generation: prefill, then one compiled `lax.while_loop` over a KV cache.

Cache layout per batch (slots along the cache axis) on global layers:
  [shared prefix (optional) | row prompts, right-padded to a bucket | generated tokens]
and on sliding-window layers a ring of `sliding_window` slots (when the batch needs more), where
a row's token at position p lives in slot p % sliding_window (`kv_cache`). Every slot records its
token's absolute position (-1 = empty), so one mask rule serves all of it: a query reads the
filled slots at or before its own position (local layers also require
`query_pos - key_pos < sliding_window`). Rows of different lengths thus decode in lockstep with
per-row positions, and a shared prefix is prefilled once and copied into every batch.

Prompts are prefilled `prefill_chunk` slots at a time (window layers then attend over their
ring plus one chunk, not the whole prompt; chunks of padding only are skipped). Per decode step
on CPU the logits come from the layout XLA runs fastest (see `_project`), the greedy argmax
avoids XLA's slow paired reduction, and only the chosen token's log-prob is computed
(logit - logsumexp).

Stopping: end-of-sequence ids on device; stop *strings* are checked on the host between chunks
of `chunk_size` decode steps (without stop strings the whole budget runs as one loop), and the
returned text is cut before the stop string. Finish reasons: "stop", "eos", "length".

Policies: prompts are encoded with BOS first and nothing else (with a prefix, BOS starts the
prefix and each prompt is appended as encoded on its own); an empty prompt is an error; a prompt
longer than `max_prompt_length` tokens keeps BOS and loses tokens from its left, and is reported
as truncated. Shapes are bucketed (powers of two for batch and prompt length), so a run compiles
a handful of programs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh

from cai_jax import parallel
from cai_jax.model import decoder, kv_cache
from cai_jax.model.config import DecoderConfig
from cai_jax.sampling.strategies import Greedy, Sampling, logprob_of
from cai_jax.shapes import pow2_bucket, truncate_left

FINISH_STOP, FINISH_EOS, FINISH_LENGTH = "stop", "eos", "length"


@flax.struct.dataclass
class DecodeState:
  step: jax.Array             # scalar: tokens generated so far
  logits: jax.Array           # float32 logits for the next token: [B, V], or [V, B] (see _project)
  cache: list                 # list[LayerCache]
  next_pos_B: jax.Array       # position of the next generated token
  done_B: jax.Array
  eos_B: jax.Array
  tokens_BN: jax.Array        # generated tokens (pad after a row is done)
  logp_BN: jax.Array          # log-prob under the raw model distribution
  sampling_logp_BN: jax.Array  # log-prob under the sampling distribution
  key: jax.Array              # [2]: split each step; or [B, 2] per row: folded with the step


@dataclasses.dataclass
class SampleOutput:
  texts: list[str]
  tokens: list[list[int]]
  finish_reasons: list[str]
  num_tokens: list[int]
  logprobs: list[np.ndarray]           # raw model distribution (temperature 1, no truncation)
  sampling_logprobs: list[np.ndarray]  # the distribution actually sampled from
  truncated: list[bool]


@dataclasses.dataclass(frozen=True)
class PrefixCache:
  """A prefilled shared prefix: its cache rows (batch 1) and its token count."""
  cache: list
  length: int   # real tokens
  slots: int    # bucketed cache slots it occupies


def _project(model, cpu, params, embedding_DV, hidden_BD):
  """float32 next-token logits from final-normed hidden states [B, D]: [B, V], except on CPU
  with several rows, where [V, D] x [D, B] runs about twice as fast as [B, D] x [D, V] and the
  result stays vocab-major, [V, B] (transposing it here would make XLA fold the transpose back
  into the slow matmul; `_decode` reduces over its axis 0 instead).
  With one row (CPU), the [D, V] copy of the embedding, when given, is the fast layout."""
  if _vocab_major(cpu, embedding_DV, hidden_BD.shape[0]):
    return model.apply({"params": params}, hidden_BD, method=decoder.Decoder.vocab_major_logits)
  return model.apply({"params": params}, hidden_BD[:, None], embedding_DV,
                     method=decoder.Decoder.logits)[:, 0].astype(jnp.float32)


def _vocab_major(cpu, embedding_DV, batch: int) -> bool:
  return cpu and embedding_DV is None and batch > 1


def _prefill(model, params, tokens_BL, positions_BL, last_B, hidden_BD, cache, cache_index):
  """Writes one chunk of prompt tokens into the cache. `hidden_BD` is each row's final hidden
  state at position last_B (its last prompt token), replaced for the rows whose last token is in
  this chunk."""
  # Positions go in as they are: -1 marks padding (never written, never visible), and the
  # model derives every layer's mask from positions (ring-buffer layers included).
  hidden, cache = model.apply({"params": params}, tokens_BL, positions_BL, None,
                              cache=cache, cache_index=cache_index, return_hidden=True)
  at_last = positions_BL == last_B[:, None]
  h = jnp.take_along_axis(hidden, jnp.argmax(at_last, axis=1)[:, None, None], axis=1)[:, 0]
  return jnp.where(jnp.any(at_last, axis=1)[:, None], h.astype(hidden_BD.dtype), hidden_BD), cache


def _decode(model, cpu, strategy, eos_ids, first_slot, params, embedding_DV, state: DecodeState,
            until):
  """Samples tokens until step == until or every row is done (one compiled loop)."""
  eos_ids = jnp.asarray(eos_ids, jnp.int32)
  zero = jnp.zeros((), jnp.int32)  # explicit int32 indices: also right under jax_enable_x64

  def cond(s: DecodeState):
    return (s.step < until) & ~jnp.all(s.done_B)

  def body(s: DecodeState):
    if s.key.ndim == 2:  # row keys: token t of a row is drawn with fold_in(row key, t)
      key, sub = s.key, jax.vmap(jax.random.fold_in, (0, None))(s.key, s.step)
    else:
      key, sub = jax.random.split(s.key)
    # Vocab-major logits ([V, B], see _project) are reduced over axis 0 where they lie.
    axis = 0 if _vocab_major(cpu, embedding_DV, s.done_B.shape[0]) else -1
    token, sampling_logp = strategy.sample(s.logits, sub, vocab_axis=axis)
    raw_logp = logprob_of(s.logits, token, axis)
    active = ~s.done_B
    token = jnp.where(active, token, 0)
    is_eos = active & jnp.isin(token, eos_ids)
    upd = lambda buf, v: jax.lax.dynamic_update_slice(  # noqa: E731
        buf, v[:, None].astype(buf.dtype), (zero, s.step))
    positions = jnp.where(active, s.next_pos_B, -1)[:, None]
    slot = (first_slot + s.step).astype(jnp.int32)
    hidden, cache = model.apply({"params": params}, token[:, None], positions, None,
                                cache=s.cache, cache_index=slot, return_hidden=True)
    return DecodeState(
        step=s.step + 1,
        logits=_project(model, cpu, params, embedding_DV, hidden[:, 0]),
        cache=cache,
        next_pos_B=s.next_pos_B + 1,
        done_B=s.done_B | is_eos,
        eos_B=s.eos_B | is_eos,
        tokens_BN=upd(s.tokens_BN, token),
        logp_BN=upd(s.logp_BN, jnp.where(active, raw_logp, 0.0)),
        sampling_logp_BN=upd(s.sampling_logp_BN, jnp.where(active, sampling_logp, 0.0)),
        key=key)

  return jax.lax.while_loop(cond, body, state)


class Sampler:
  """Generates from one model; compiled programs are reused across calls of equal shapes."""

  def __init__(self, config: DecoderConfig, params, tokenizer, *, max_prompt_length: int = 2048,
               max_batch: int = 16, chunk_size: int = 32, eos_ids: Sequence[int] | None = None,
               mesh: Mesh | None = None, ring_buffer: bool = True,
               prefill_chunk: int = 256):
    """`mesh`: sample with parameters sharded as in training (e.g. `TrainState.params` under
    the engine's mesh): rows are split over the data axes, every batch is padded to a multiple
    of data x fsdp rows (padding rows are added and dropped, so batches hold the same prompts
    as without a mesh and sample the same tokens), and the model's activation rules apply.
    Without a mesh everything runs on the default device. `ring_buffer`: sliding-window
    layers keep `sliding_window` cache slots (a ring) instead of one per token; the output is
    the same. `prefill_chunk` (a power of two): prompts are prefilled this many slots at a time,
    so that window layers attend over their ring plus one chunk rather than the whole prompt."""
    if prefill_chunk < 32 or prefill_chunk & (prefill_chunk - 1):
      raise ValueError(f"prefill_chunk must be a power of two >= 32, got {prefill_chunk}")
    if max_batch < 1 or chunk_size < 1 or max_prompt_length < 1:
      raise ValueError(f"max_batch, chunk_size and max_prompt_length must be >= 1, got "
                       f"{max_batch}, {chunk_size}, {max_prompt_length}")
    self.mesh = mesh
    self.min_batch = 1 if mesh is None else parallel.batch_size_per_shard(mesh)
    self.config = config
    self.params = params  # (a property: assigning new parameters drops the [D, V] copy)
    self.tokenizer = tokenizer
    self.max_prompt_length = max_prompt_length
    self.max_batch = max_batch
    self.chunk_size = chunk_size
    self.eos_ids = tuple(eos_ids) if eos_ids is not None else (tokenizer.eos_id,)
    self.ring_buffer = ring_buffer
    self.prefill_chunk = prefill_chunk
    self.model = decoder.Decoder(config)
    leaf = jax.tree.leaves(params)[0]
    devices = leaf.devices() if hasattr(leaf, "devices") else jax.devices()
    self._cpu = all(d.platform == "cpu" for d in devices)
    self._prefill = self._under_mesh(jax.jit(
        functools.partial(_prefill, self.model), donate_argnums=(4, 5)))
    self._first_logits = self._under_mesh(jax.jit(
        functools.partial(_project, self.model, self._cpu)))
    self._decode_fns = {}
    self._cache_makers = {}

  @property
  def params(self):
    return self._params

  @params.setter
  def params(self, params):
    """New parameters (e.g. each RL iteration's policy) for the next `generate` calls."""
    self._params = params
    self._embedding_DV = None  # [D, V] copy for one-row batches on CPU, made when first needed

  def _under_mesh(self, jitted):
    return jitted if self.mesh is None else parallel.run_under(self.mesh, jitted)

  def _rows_sharded(self, tree):
    """Batch-major arrays placed with their rows over the data axes (no-op without a mesh)."""
    if self.mesh is None:
      return tree
    return jax.tree.map(lambda x: jax.device_put(x, parallel.batch_sharding(self.mesh, x.ndim)),
                        tree)

  def _new_cache(self, rows: int, slots: int) -> list[kv_cache.LayerCache]:
    """An empty cache of `rows` x `slots`; under a mesh it is created already split over the
    data axes (each device allocates only its rows), never whole on one device first."""
    def make():
      return kv_cache.init_cache(self.config, rows, slots, ring=self.ring_buffer)

    if self.mesh is None:
      return make()
    if (rows, slots) not in self._cache_makers:  # one compiled initialiser per shape
      shardings = jax.tree.map(lambda x: parallel.batch_sharding(self.mesh, x.ndim),
                               jax.eval_shape(make))
      self._cache_makers[rows, slots] = jax.jit(make, out_shardings=shardings)
    return self._cache_makers[rows, slots]()

  # ------------------------------------------------------------------ prompts and prefixes

  def encode(self, prompts: Sequence[str], *, add_bos: bool) -> tuple[list[list[int]], list[bool]]:
    for i, p in enumerate(prompts):
      if not p:
        raise ValueError(f"prompt {i} is empty")
    ids = self.tokenizer.encode_batch(list(prompts), add_bos=add_bos)
    keep_first = add_bos and bool(self.tokenizer.start_ids)
    rows = [truncate_left(row, self.max_prompt_length, keep_first=keep_first) for row in ids]
    return [r for r, _ in rows], [t for _, t in rows]

  def prefill_prefix(self, prefix: str) -> PrefixCache:
    """Prefills a shared prefix (BOS first) once; pass it to `generate` for every batch."""
    ids = self.tokenizer.encode(prefix, add_bos=True)
    slots = pow2_bucket(len(ids), 64)
    rows = self.min_batch  # identical rows, one per data shard; row 0 is used
    tokens = np.zeros((rows, slots), np.int32)
    positions = np.full((rows, slots), -1, np.int32)
    tokens[:, :len(ids)] = ids
    positions[:, :len(ids)] = np.arange(len(ids))
    cache = self._new_cache(rows, slots)
    _, cache = self._prefill_chunks(tokens, positions, np.full(rows, len(ids) - 1), cache, 0)
    cache = [jax.tree.map(lambda x: x[:1], c) for c in cache]
    return PrefixCache(cache=cache, length=len(ids), slots=slots)

  # ------------------------------------------------------------------ generation

  def _decode_fn(self, strategy):
    if strategy not in self._decode_fns:
      self._decode_fns[strategy] = self._under_mesh(jax.jit(
          functools.partial(_decode, self.model, self._cpu, strategy, self.eos_ids),
          static_argnums=(0,), donate_argnums=(3,)))
    return self._decode_fns[strategy]

  def _prefill_chunks(self, tokens, positions, last, cache, first_slot):
    """Prefills [rows, slots] tokens (numpy; position -1: padding) from cache slot `first_slot`
    on, in chunks of at most `prefill_chunk` tokens, skipping chunks of padding only (their
    slots stay empty); returns the final hidden state at each row's position `last`."""
    rows, slots = tokens.shape
    chunk = min(slots, self.prefill_chunk)
    starts = [s for s in range(0, slots, chunk) if np.any(positions[:, s:s + chunk] >= 0)]
    hidden = np.zeros((rows, self.config.embed_dim), jnp.dtype(self.config.dtype))
    last = np.asarray(last, np.int32)
    tokens, positions, last, hidden, cache = self._rows_sharded(
        (tokens, positions, last, hidden, cache))
    for start in starts:
      hidden, cache = self._prefill(self.params, tokens[:, start:start + chunk],
                                    positions[:, start:start + chunk], last, hidden, cache,
                                    first_slot + start)
    return hidden, cache

  def _embedding_for(self, rows: int):
    """The [D, V] embedding copy for one-row batches on CPU (1.5x faster logits there, for
    vocab x embed extra parameter memory), else None."""
    if not (self._cpu and rows == 1):
      return None
    if self._embedding_DV is None:
      self._embedding_DV = self._under_mesh(jax.jit(decoder.decode_embedding))(self.params)
    return self._embedding_DV

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int,
               strategy: Greedy | Sampling = Greedy(), key: jax.Array | None = None,
               stop: Sequence[str] = (), prefix: PrefixCache | None = None,
               progress=None, keys=None) -> SampleOutput:
    """Samples an answer to every prompt. Randomness: `key` (one key, split per batch: a
    prompt's sample depends on the batch it falls in), or `keys`, one key per prompt ([N, 2]):
    a prompt's sample then depends on its own key only (up to float noise of the batch's
    shapes), whichever batch, process or restart produces it."""
    if isinstance(prompts, str):
      raise TypeError("generate takes a sequence of prompts, not one string")
    if keys is not None:
      if key is not None:
        raise ValueError("pass `key` or `keys`, not both")
      keys = np.asarray(jax.device_get(keys), np.uint32)
      if keys.shape != (len(prompts), 2):
        raise ValueError(f"keys must be one PRNG key per prompt, shape ({len(prompts)}, 2); got "
                         f"{keys.shape}")
    if max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if any(not isinstance(s, str) or not s for s in stop):
      raise ValueError(f"stop strings must be non-empty strings, got {stop!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    ids, truncated = self.encode(prompts, add_bos=prefix is None)
    outputs = [None] * len(ids)
    # Longest first, so each batch pads to a similar length.
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    start = 0
    pad = lambda n: -(-n // self.min_batch) * self.min_batch  # noqa: E731
    while start < len(order):
      chunk = order[start:start + self.max_batch]  # the same prompts with or without a mesh
      rows = min(pad(self.max_batch), pad(pow2_bucket(len(chunk), 1)))
      if keys is None:
        key, sub = jax.random.split(key)
      else:  # padding rows get zero keys (their tokens are discarded)
        sub = np.zeros((rows, 2), np.uint32)
        sub[:len(chunk)] = keys[chunk]
      for i, out in zip(chunk, self._generate_batch([ids[i] for i in chunk], rows,
                                                    max_new_tokens, strategy, sub, stop, prefix)):
        outputs[i] = out
      start += len(chunk)
      if progress is not None:
        progress.update(len(chunk))
    return SampleOutput(
        texts=[o[0] for o in outputs], tokens=[o[1] for o in outputs],
        finish_reasons=[o[2] for o in outputs], num_tokens=[len(o[1]) for o in outputs],
        logprobs=[o[3] for o in outputs], sampling_logprobs=[o[4] for o in outputs],
        truncated=truncated)

  def _generate_batch(self, rows_ids, rows, max_new_tokens, strategy, key, stop, prefix):
    n = len(rows_ids)
    prompt_slots = pow2_bucket(max(len(r) for r in rows_ids), 32)
    prefix_slots = prefix.slots if prefix else 0
    prefix_len = prefix.length if prefix else 0
    total = prefix_slots + prompt_slots + max_new_tokens
    tokens = np.zeros((rows, prompt_slots), np.int32)
    positions = np.full((rows, prompt_slots), -1, np.int32)
    lengths = np.zeros((rows,), np.int32)
    for r, row in enumerate(rows_ids):
      tokens[r, :len(row)] = row
      positions[r, :len(row)] = prefix_len + np.arange(len(row))
      lengths[r] = len(row)
    positions[n:, 0] = prefix_len  # padding rows get one token so their logits stay finite

    # With ring_buffer, sliding-window layers keep a ring of `sliding_window` slots.
    cache = self._new_cache(rows, total)
    if prefix is not None:
      cache = kv_cache.copy_prefix(cache, prefix.cache)
    hidden, cache = self._prefill_chunks(tokens, positions, positions.max(axis=1), cache,
                                         prefix_slots)
    embedding_DV = self._embedding_for(rows)
    logits = self._first_logits(self.params, embedding_DV, hidden)
    done = np.arange(rows) >= n
    state = DecodeState(
        step=jnp.zeros((), jnp.int32), logits=logits, cache=cache,
        next_pos_B=jnp.asarray(prefix_len + lengths), done_B=jnp.asarray(done),
        eos_B=jnp.zeros((rows,), bool),
        tokens_BN=jnp.zeros((rows, max_new_tokens), jnp.int32),
        logp_BN=jnp.zeros((rows, max_new_tokens), jnp.float32),
        sampling_logp_BN=jnp.zeros((rows, max_new_tokens), jnp.float32),
        key=self._rows_sharded(key) if np.ndim(key) == 2 else key)
    decode = self._decode_fn(strategy)
    first_slot = prefix_slots + prompt_slots
    stop_at = [None] * n  # (tokens kept, text) per row that hit a stop string
    step = 0
    while step < max_new_tokens:
      step = max_new_tokens if not stop else min(step + self.chunk_size, max_new_tokens)
      state = decode(first_slot, self.params, embedding_DV, state, step)
      if stop:
        done = np.asarray(state.done_B).copy()
        eos = np.asarray(state.eos_B)
        generated = np.asarray(state.tokens_BN)
        now = int(state.step)
        for r in range(n):
          if stop_at[r] is None:  # rows that ended by EOS may still hold a stop string
            row = generated[r, :now]
            if eos[r]:  # only the tokens up to EOS: the slots after it hold padding
              row = row[:int(np.argmax(np.isin(row, self.eos_ids))) + 1]
            stop_at[r] = self._find_stop(row, stop)
            if stop_at[r] is not None:
              done[r] = True
        state = state.replace(done_B=jnp.asarray(done))
      if bool(np.all(np.asarray(state.done_B))):
        break
    generated = np.asarray(state.tokens_BN)
    logp, slogp = np.asarray(state.logp_BN), np.asarray(state.sampling_logp_BN)
    eos = np.asarray(state.eos_B)
    final_step = int(state.step)
    results = []
    for r in range(n):
      if stop_at[r] is not None:
        count, text = stop_at[r]
        reason = FINISH_STOP
      else:
        count = final_step
        toks = generated[r, :count]
        if eos[r]:
          count = int(np.argmax(np.isin(toks, self.eos_ids))) + 1
          reason = FINISH_EOS
        else:
          reason = FINISH_LENGTH
        ids = generated[r, :count]
        text = self.tokenizer.decode([t for t in ids if t not in self.eos_ids])
      results.append((text, generated[r, :count].tolist(), reason, logp[r, :count],
                      slogp[r, :count]))
    return results

  def _find_stop(self, tokens: np.ndarray, stop: Sequence[str]):
    """(k, text) or None. As if decoding stopped at the first token whose text completes any
    stop string: k counts the tokens up to and including it, and `text` is their text cut
    before the earliest stop string in it (which may begin inside a token)."""
    def text_of(k):
      return self.tokenizer.decode([int(t) for t in tokens[:k] if int(t) not in self.eos_ids])

    def hit(k):
      t = text_of(k)
      return any(s in t for s in stop)

    if not len(tokens) or not hit(len(tokens)):
      return None
    lo, hi = 1, len(tokens)  # the text of a token prefix only grows: binary search for k
    while lo < hi:
      mid = (lo + hi) // 2
      if hit(mid):
        hi = mid
      else:
        lo = mid + 1
    text = text_of(lo)
    return lo, text[:min(text.find(s) for s in stop if s in text)]
