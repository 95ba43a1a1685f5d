"""Batched generation: prefill, then one compiled `lax.while_loop` over a KV cache.

Cache layout per batch (slots along the cache axis):
  [shared prefix (optional) | row prompts, right-padded to a bucket | generated tokens]
Every slot records its token's absolute position (-1 = empty), so one mask rule serves all of it:
a query reads the filled slots at or before its own position (local layers also require
`query_pos - key_pos < sliding_window`). Rows of different lengths thus decode in lockstep with
per-row positions, and a shared prefix is prefilled once and copied into every batch.

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
from cai_jax.model import gemma, kv_cache
from cai_jax.model.config import GemmaConfig
from cai_jax.sampling.strategies import Greedy, Sampling
from cai_jax.shapes import pow2_bucket, truncate_left

FINISH_STOP, FINISH_EOS, FINISH_LENGTH = "stop", "eos", "length"


@flax.struct.dataclass
class DecodeState:
  step: jax.Array             # scalar: tokens generated so far
  logits_BV: jax.Array        # float32 logits for the next token
  cache: list                 # list[LayerCache]
  next_pos_B: jax.Array       # position of the next generated token
  done_B: jax.Array
  eos_B: jax.Array
  tokens_BN: jax.Array        # generated tokens (pad after a row is done)
  logp_BN: jax.Array          # log-prob under the raw model distribution
  sampling_logp_BN: jax.Array  # log-prob under the sampling distribution
  key: jax.Array


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


def _prefill(model, params, tokens_BL, positions_BL, cache, cache_index):
  """Writes the tokens into the cache and returns the logits after each row's last token."""
  zero, cache_index = jnp.zeros((), jnp.int32), jnp.asarray(cache_index, jnp.int32)
  kv_positions = jax.lax.dynamic_update_slice(
      cache[0].positions_BS, positions_BL, (zero, cache_index))
  mask = gemma.causal_mask(positions_BL, kv_positions) & (positions_BL >= 0)[:, :, None]
  # Positions go in as they are: -1 marks padding in the cache, and RoPE of -1 is harmless.
  hidden, cache = model.apply({"params": params}, tokens_BL, positions_BL, mask,
                              cache=cache, cache_index=cache_index, return_hidden=True)
  last = jnp.argmax(positions_BL, axis=1)  # each row's last real token
  h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)
  logits = model.apply({"params": params}, h, method=gemma.Gemma3.logits)[:, 0]
  return logits.astype(jnp.float32), cache


def _decode(model, strategy, eos_ids, first_slot, params, state: DecodeState, until):
  """Samples tokens until step == until or every row is done (one compiled loop)."""
  eos_ids = jnp.asarray(eos_ids, jnp.int32)
  zero = jnp.zeros((), jnp.int32)  # explicit int32 indices: also right under jax_enable_x64

  def cond(s: DecodeState):
    return (s.step < until) & ~jnp.all(s.done_B)

  def body(s: DecodeState):
    key, sub = jax.random.split(s.key)
    token, sampling_logp = strategy.sample(s.logits_BV, sub)
    raw_logp = jnp.take_along_axis(jax.nn.log_softmax(s.logits_BV, axis=-1), token[:, None],
                                   axis=-1)[:, 0]
    active = ~s.done_B
    token = jnp.where(active, token, 0)
    is_eos = active & jnp.isin(token, eos_ids)
    upd = lambda buf, v: jax.lax.dynamic_update_slice(  # noqa: E731
        buf, v[:, None].astype(buf.dtype), (zero, s.step))
    positions = jnp.where(active, s.next_pos_B, -1)[:, None]
    slot = (first_slot + s.step).astype(jnp.int32)
    kv_positions = jax.lax.dynamic_update_slice(s.cache[0].positions_BS, positions, (zero, slot))
    mask = gemma.causal_mask(positions, kv_positions)
    logits, cache = model.apply({"params": params}, token[:, None], positions, mask,
                                cache=s.cache, cache_index=slot)
    return DecodeState(
        step=s.step + 1,
        logits_BV=logits[:, 0].astype(jnp.float32),
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

  def __init__(self, config: GemmaConfig, params, tokenizer, *, max_prompt_length: int = 2048,
               max_batch: int = 16, chunk_size: int = 32, eos_ids: Sequence[int] | None = None,
               mesh: Mesh | None = None):
    """`mesh`: sample with parameters sharded as in training (e.g. `TrainState.params` under
    the engine's mesh): rows are split over the data axes, every batch holds a multiple of
    data x fsdp rows (padding rows are added and dropped), and the model's activation rules
    apply. Without a mesh everything runs on the default device."""
    if max_batch < 1 or chunk_size < 1 or max_prompt_length < 1:
      raise ValueError(f"max_batch, chunk_size and max_prompt_length must be >= 1, got "
                       f"{max_batch}, {chunk_size}, {max_prompt_length}")
    self.mesh = mesh
    self.min_batch = 1 if mesh is None else parallel.batch_size_per_shard(mesh)
    if mesh is not None and max_batch % self.min_batch:
      raise ValueError(f"max_batch={max_batch} must be a multiple of the mesh's data axes "
                       f"(data x fsdp = {self.min_batch})")
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.max_prompt_length = max_prompt_length
    self.max_batch = max_batch
    self.chunk_size = chunk_size
    self.eos_ids = tuple(eos_ids) if eos_ids is not None else (tokenizer.eos_id,)
    self.model = gemma.Gemma3(config)
    self._prefill = self._under_mesh(
        jax.jit(functools.partial(_prefill, self.model), donate_argnums=(3,)))
    self._decode_fns = {}

  def _under_mesh(self, jitted):
    return jitted if self.mesh is None else parallel.run_under(self.mesh, jitted)

  def _rows_sharded(self, tree):
    """Batch-major arrays placed with their rows over the data axes (no-op without a mesh)."""
    if self.mesh is None:
      return tree
    return jax.tree.map(lambda x: jax.device_put(x, parallel.batch_sharding(self.mesh, x.ndim)),
                        tree)

  # ------------------------------------------------------------------ prompts and prefixes

  def encode(self, prompts: Sequence[str], *, add_bos: bool) -> tuple[list[list[int]], list[bool]]:
    for i, p in enumerate(prompts):
      if not p:
        raise ValueError(f"prompt {i} is empty")
    ids = self.tokenizer.encode_batch(list(prompts), add_bos=add_bos)
    rows = [truncate_left(row, self.max_prompt_length, keep_first=add_bos) for row in ids]
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
    cache = kv_cache.init_cache(self.config, rows, slots)
    tokens, positions, cache = self._rows_sharded((tokens, positions, cache))
    _, cache = self._prefill(self.params, tokens, positions, cache, 0)
    cache = [jax.tree.map(lambda x: x[:1], c) for c in cache]
    return PrefixCache(cache=cache, length=len(ids), slots=slots)

  # ------------------------------------------------------------------ generation

  def _decode_fn(self, strategy):
    if strategy not in self._decode_fns:
      self._decode_fns[strategy] = self._under_mesh(jax.jit(
          functools.partial(_decode, self.model, strategy, self.eos_ids),
          static_argnums=(0,), donate_argnums=(2,)))
    return self._decode_fns[strategy]

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int,
               strategy: Greedy | Sampling = Greedy(), key: jax.Array | None = None,
               stop: Sequence[str] = (), prefix: PrefixCache | None = None,
               progress=None) -> SampleOutput:
    if isinstance(prompts, str):
      raise TypeError("generate takes a sequence of prompts, not one string")
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
    while start < len(order):
      rows = pow2_bucket(len(order) - start, 1)
      rows = min(self.max_batch, -(-rows // self.min_batch) * self.min_batch)
      chunk = order[start:start + rows]
      key, sub = jax.random.split(key)
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

    cache = kv_cache.init_cache(self.config, rows, total)
    if prefix is not None:
      cache = [kv_cache.LayerCache(
          k_BSKH=c.k_BSKH.at[:, :prefix_slots].set(p.k_BSKH),
          v_BSKH=c.v_BSKH.at[:, :prefix_slots].set(p.v_BSKH),
          positions_BS=c.positions_BS.at[:, :prefix_slots].set(p.positions_BS))
          for c, p in zip(cache, prefix.cache)]
    tokens, positions, cache = self._rows_sharded((tokens, positions, cache))
    logits, cache = self._prefill(self.params, tokens, positions, cache, prefix_slots)
    done = np.arange(rows) >= n
    state = DecodeState(
        step=jnp.zeros((), jnp.int32), logits_BV=logits, cache=cache,
        next_pos_B=jnp.asarray(prefix_len + lengths), done_B=jnp.asarray(done),
        eos_B=jnp.zeros((rows,), bool),
        tokens_BN=jnp.zeros((rows, max_new_tokens), jnp.int32),
        logp_BN=jnp.zeros((rows, max_new_tokens), jnp.float32),
        sampling_logp_BN=jnp.zeros((rows, max_new_tokens), jnp.float32), key=key)
    decode = self._decode_fn(strategy)
    first_slot = prefix_slots + prompt_slots
    stop_at = [None] * n  # (tokens kept, text) per row that hit a stop string
    step = 0
    while step < max_new_tokens:
      step = max_new_tokens if not stop else min(step + self.chunk_size, max_new_tokens)
      state = decode(first_slot, self.params, state, step)
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
