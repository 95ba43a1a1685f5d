"""Batched generation: prefill, then compiled `lax.while_loop`s over a KV cache of row slots.

Continuous batching (the default): the sampler keeps `max_batch` row slots; a slot whose row
finishes (EOS, stop string, budget) takes the next waiting prompt, prefilled in a batch of its
own and moved into the slot (`_admit`), so the decode program keeps running full instead of
padding behind finished rows. Lockstep batching (each batch decodes until its slowest row is
done) remains as `batching="lockstep"`. A row's token t is drawn with fold_in(its key, t) and
every row counts its own tokens, so the outputs are the same either way, and the same for any
slot or step that serves a prompt.

Cache layout per slot (slots along the cache axis) on global layers:
  [shared prefix (optional) | prompt, right-padded to a bucket | generated tokens]
where decode step s writes every row's token into generated slot s % max_new_tokens: a row
admitted at any step has exactly its budget of slots ahead of it. Sliding-window layers keep a
ring of `sliding_window` slots (when the cache needs more), where a row's token at position p
lives in slot p % sliding_window (`kv_cache`). Every slot records its token's absolute position
(-1 = empty), so one mask rule serves all of it: a query reads the filled slots at or before
its own position (local layers also require `query_pos - key_pos < sliding_window`), in any slot
order. A shared prefix is prefilled once and copied into every admitted row.

Prompts are prefilled `prefill_chunk` slots at a time (window layers then attend over their
ring plus one chunk, not the whole prompt; chunks of padding only are skipped). Per decode step
on CPU the logits come from the layout XLA runs fastest (see `_project`), the greedy argmax
avoids XLA's slow paired reduction, and only the chosen token's log-prob is computed
(logit - logsumexp).

Stopping: end-of-sequence ids and the budget on device; stop *strings* on the host, which
checks a row's text when its loop ends: the loop ends at the first step where a row emits a
token that may complete a stop string (`stop_tokens`: one holding a stop string's last
character), so a row that stops frees its slot at that step, and the results are those of a
check after every step. Where that rule does not apply (a stop string ending in whitespace, or
`stop_on_device=False`), the host checks between chunks of `chunk_size` decode steps. The
returned text is cut before the stop string. Finish reasons: "stop", "eos", "length".

Policies: prompts are encoded with BOS first and nothing else (with a prefix, BOS starts the
prefix and each prompt is appended as encoded on its own); an empty prompt is an error; a prompt
longer than `max_prompt_length` tokens keeps BOS and loses tokens from its left, and is reported
as truncated. Shapes are bucketed (powers of two for rows and prompt length), so a run compiles
a handful of programs.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh

from cai_jax import parallel
from cai_jax.model import decoder, kv_cache
from cai_jax.model.config import DecoderConfig
from cai_jax.sampling import stop_tokens
from cai_jax.sampling.strategies import Greedy, Sampling, logprob_of
from cai_jax.shapes import pow2_bucket, truncate_left

FINISH_STOP, FINISH_EOS, FINISH_LENGTH = "stop", "eos", "length"
BATCHING = ("continuous", "lockstep")
SAMPLING_PARAM_DTYPES = ("float32", "bfloat16", "float16")


@flax.struct.dataclass
class DecodeState:
  """Every slot's decoding state. `step` counts the program's decode steps since the cache was
  made; a linear cache writes step t's tokens into generated slot t % new_tokens, so a slot that
  takes a new prompt (`_admit`) finds its whole budget of slots ahead of it."""
  step: jax.Array             # scalar
  hidden_BD: jax.Array        # final-normed hidden state whose logits give each row's next token
  cache: list                 # list[LayerCache]
  next_pos_B: jax.Array       # position of the row's next generated token
  count_B: jax.Array          # tokens the row has generated
  done_B: jax.Array           # finished, or an empty slot
  eos_B: jax.Array
  tokens_BN: jax.Array        # generated tokens, row-major by the row's own count
  logp_BN: jax.Array          # log-prob under the raw model distribution
  sampling_logp_BN: jax.Array  # log-prob under the sampling distribution
  key_B: jax.Array            # [B, 2]: token t of a row is drawn with fold_in(row key, t)
  stop_hit_B: jax.Array       # the row's last token may complete a stop string (ends the loop)


@dataclasses.dataclass
class SampleOutput:
  texts: list[str]
  tokens: list[list[int]]
  finish_reasons: list[str]
  num_tokens: list[int]
  logprobs: list[np.ndarray]           # raw model distribution (temperature 1, no truncation)
  sampling_logprobs: list[np.ndarray]  # the distribution actually sampled from
  truncated: list[bool]


# Weight dtypes a backend cannot sample with at a useful speed, with what was measured.
UNSUPPORTED_SAMPLING_DTYPES = {
    ("cpu", "float16"): ("XLA's CPU dots have no float16 kernels: an 8-row [640, 12288] matmul "
                         "took 6.7 ms on float16 weights against 2.1 ms in float32 and 1.4 ms "
                         "on bfloat16"),
}


def check_sampling_dtype(param_dtype, platform: str) -> None:
  """Refuses sampling weights of `param_dtype` on `platform` where that backend cannot use them
  (before any weights are cast or programs compiled)."""
  why = UNSUPPORTED_SAMPLING_DTYPES.get((platform, jnp.dtype(param_dtype).name))
  if why:
    raise ValueError(f"sampling weights in {jnp.dtype(param_dtype).name} are not supported on "
                     f"{platform}: {why}; use bfloat16 or float32")


def device_memory_bytes(mesh: Mesh | None = None) -> tuple[int | None, str]:
  """(bytes of memory one device can hold, its name): the accelerator's own limit where the
  runtime reports one, else the host's physical memory (CPU); None when neither is known."""
  device = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0])
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
    pass
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.platform} device {device.id}"
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this host's memory"
  except (ValueError, OSError, AttributeError):
    return None, "unknown"


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


def _decode(model, cpu, strategy, eos_ids, first_slot, params, embedding_DV, stop_V,
            state: DecodeState, until, min_done):
  """Samples tokens until step == until, at least `min_done` rows are done, or a row emits a
  token v with stop_V[v] (one compiled loop). Row b's token t is drawn with fold_in(key_b, t)
  and written at its own count, so a row's tokens do not depend on the slot or the step that
  produced them."""
  eos_ids = jnp.asarray(eos_ids, jnp.int32)
  rows_B = jnp.arange(state.done_B.shape[0], dtype=jnp.int32)
  budget = state.tokens_BN.shape[1]

  def cond(s: DecodeState):
    return ((s.step < until) & (jnp.sum(s.done_B.astype(jnp.int32)) < min_done)
            & ~jnp.any(s.stop_hit_B))

  def body(s: DecodeState):
    logits = _project(model, cpu, params, embedding_DV, s.hidden_BD)
    # Vocab-major logits ([V, B], see _project) are reduced over axis 0 where they lie.
    axis = 0 if _vocab_major(cpu, embedding_DV, s.done_B.shape[0]) else -1
    sub = jax.vmap(jax.random.fold_in)(s.key_B, s.count_B)
    token, sampling_logp = strategy.sample(logits, sub, vocab_axis=axis)
    raw_logp = logprob_of(logits, token, axis)
    active = ~s.done_B
    token = jnp.where(active, token, 0)
    is_eos = active & jnp.isin(token, eos_ids)
    column = jnp.where(active, s.count_B, budget)  # done rows write out of bounds: dropped

    def put(buf, v):
      return buf.at[rows_B, column].set(v.astype(buf.dtype), mode="drop", unique_indices=True)

    positions = jnp.where(active, s.next_pos_B, -1)[:, None]
    slot = (first_slot + s.step % budget).astype(jnp.int32)
    hidden, cache = model.apply({"params": params}, token[:, None], positions, None,
                                cache=s.cache, cache_index=slot, return_hidden=True)
    count = s.count_B + active.astype(jnp.int32)
    return DecodeState(
        step=s.step + 1,
        hidden_BD=hidden[:, 0],
        cache=cache,
        next_pos_B=s.next_pos_B + active.astype(jnp.int32),
        count_B=count,
        done_B=s.done_B | is_eos | (count >= budget),
        eos_B=s.eos_B | is_eos,
        tokens_BN=put(s.tokens_BN, token),
        logp_BN=put(s.logp_BN, jnp.where(active, raw_logp, 0.0)),
        sampling_logp_BN=put(s.sampling_logp_BN, jnp.where(active, sampling_logp, 0.0)),
        key_B=s.key_B,
        stop_hit_B=active & stop_V[token])

  state = state.replace(stop_hit_B=jnp.zeros_like(state.stop_hit_B))
  return jax.lax.while_loop(cond, body, state)


def _admit(state: DecodeState, new_cache, hidden_KD, rows_K, next_pos_K, key_K) -> DecodeState:
  """Slots `rows_K` take K freshly prefilled prompts: their whole cache rows (prefix, prompt,
  and empty generated slots, which also clears what the slot's previous row left), the hidden
  state of their last prompt token, their positions and keys. Indices out of range (padding
  rows of the prefill batch) are dropped."""
  def put(buf, new):
    return buf.at[rows_K].set(new.astype(buf.dtype), mode="drop")

  cache = kv_cache.set_rows(state.cache, rows_K, new_cache)
  zeros = jnp.zeros(rows_K.shape, jnp.int32)
  return state.replace(
      hidden_BD=put(state.hidden_BD, hidden_KD), cache=cache,
      next_pos_B=put(state.next_pos_B, next_pos_K), count_B=put(state.count_B, zeros),
      done_B=put(state.done_B, zeros.astype(bool)), eos_B=put(state.eos_B, zeros.astype(bool)),
      key_B=put(state.key_B, key_K))


class Sampler:
  """Generates from one model; compiled programs are reused across calls of equal shapes."""

  def __init__(self, config: DecoderConfig, params, tokenizer, *, max_prompt_length: int = 2048,
               max_batch: int = 16, chunk_size: int = 32, eos_ids: Sequence[int] | None = None,
               mesh: Mesh | None = None, ring_buffer: bool = True,
               prefill_chunk: int = 256, batching: str = "continuous",
               param_dtype: str | None = None, stop_on_device: bool = True):
    """`mesh`: sample with parameters sharded as in training (e.g. `TrainState.params` under
    the engine's mesh): rows are split over the data axes, every batch is padded to a multiple
    of data x fsdp rows (padding rows are added and dropped, so batches hold the same prompts
    as without a mesh and sample the same tokens), and the model's activation rules apply.
    Without a mesh everything runs on the default device. `ring_buffer`: sliding-window
    layers keep `sliding_window` cache slots (a ring) instead of one per token; the output is
    the same. `prefill_chunk` (a power of two): prompts are prefilled this many slots at a time,
    so that window layers attend over their ring plus one chunk rather than the whole prompt.
    `batching`: "continuous" (`max_batch` row slots; a slot whose row finishes takes the next
    prompt, so the decode program keeps running full) or "lockstep" (batches of `max_batch`
    prompts, each decoding until its slowest row is done); the outputs are the same.
    `param_dtype` (e.g. "bfloat16"): sample with the weights cast to it (a copy; every
    assignment to `params` is cast too), fed to the matmuls as stored and accumulated in the
    model's dtype (`DecoderConfig.narrow_matmuls`): half the bytes read per decode step. On CPU
    a batch then has at least 2 rows, since a 1-row bfloat16 matmul is several times slower
    there than the float32 one. `stop_on_device`: end a decode loop at any token that may
    complete a stop string (see the module's "Stopping"), not only every `chunk_size` steps;
    the results are the same, with fewer steps run past a stop."""
    if batching not in BATCHING:
      raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
    if prefill_chunk < 32 or prefill_chunk & (prefill_chunk - 1):
      raise ValueError(f"prefill_chunk must be a power of two >= 32, got {prefill_chunk}")
    if max_batch < 1 or chunk_size < 1 or max_prompt_length < 1:
      raise ValueError(f"max_batch, chunk_size and max_prompt_length must be >= 1, got "
                       f"{max_batch}, {chunk_size}, {max_prompt_length}")
    if param_dtype is not None and param_dtype not in SAMPLING_PARAM_DTYPES:
      raise ValueError(f"param_dtype must be one of {SAMPLING_PARAM_DTYPES}, got {param_dtype!r}")
    self._cast_to = None  # the dtype `params` are cast to on assignment
    if param_dtype is not None and param_dtype != config.param_dtype:
      self._cast_to = jnp.dtype(param_dtype)
      narrow = self._cast_to.itemsize < jnp.dtype(config.dtype).itemsize
      config = config.replace(param_dtype=param_dtype, narrow_matmuls=narrow)
    self.mesh = mesh
    self.min_batch = 1 if mesh is None else parallel.batch_size_per_shard(mesh)
    self.config = config
    leaf = jax.tree.leaves(params)[0]
    devices = leaf.devices() if hasattr(leaf, "devices") else jax.devices()
    self._cpu = all(d.platform == "cpu" for d in devices)
    check_sampling_dtype(config.param_dtype, "cpu" if self._cpu else next(iter(devices)).platform)
    self.params = params  # (a property: cast to param_dtype, and drops the [D, V] copy)
    self.tokenizer = tokenizer
    self.max_prompt_length = max_prompt_length
    self.max_batch = max_batch
    self.chunk_size = chunk_size
    self.eos_ids = tuple(eos_ids) if eos_ids is not None else (tokenizer.eos_id,)
    self.ring_buffer = ring_buffer
    self.prefill_chunk = prefill_chunk
    self.batching = batching
    self.stop_on_device = stop_on_device
    self._token_texts = None  # each id's text alone, made when stop strings first need it
    self._stop_masks = {}     # stop strings -> ([V] bool on device, whether loops end there)
    self.model = decoder.Decoder(config)
    # fewest rows per batch: 2 for narrow weights on CPU (see param_dtype)
    self._min_rows = 2 if self._cpu and config.narrow_matmuls else 1
    self._prefill = self._under_mesh(jax.jit(
        functools.partial(_prefill, self.model), donate_argnums=(4, 5)))
    self._admit = self._under_mesh(jax.jit(_admit, donate_argnums=(0,)))
    self._decode_fns = {}
    self._cache_makers = {}
    # Totals over the sampler's life: decode steps x slots run, and tokens they generated
    # (their ratio is the slots' utilisation: padding behind finished rows lowers it).
    self.slot_steps = 0
    self.tokens_generated = 0

  @property
  def params(self):
    return self._params

  @params.setter
  def params(self, params):
    """New parameters (e.g. each RL iteration's policy) for the next `generate` calls."""
    if self._cast_to is not None:
      params = jax.tree.map(lambda x: x.astype(self._cast_to), params)
    self._params = params
    self._embedding_DV = None  # [D, V] copy for one-row batches on CPU, made when first needed

  def _under_mesh(self, jitted):
    return jitted if self.mesh is None else parallel.run_under(self.mesh, jitted)

  def _new_cache(self, rows: int, slots: int) -> list[kv_cache.LayerCache]:
    """An empty cache of `rows` x `slots`; under a mesh it is created already split over the
    data axes (each device allocates only its rows), never whole on one device first."""
    def make():
      return kv_cache.init_cache(self.config, rows, slots, ring=self.ring_buffer)

    if self.mesh is None:
      return make()
    if (rows, slots) not in self._cache_makers:  # one compiled initialiser per shape
      shardings = kv_cache.row_shardings(jax.eval_shape(make), self.mesh)
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
    cache = kv_cache.map_rows(lambda x, axis: jax.lax.slice_in_dim(x, 0, 1, axis=axis), cache)
    return PrefixCache(cache=cache, length=len(ids), slots=slots)

  # ------------------------------------------------------------------ generation

  def _decode_fn(self, strategy):
    if strategy not in self._decode_fns:
      self._decode_fns[strategy] = self._under_mesh(jax.jit(
          functools.partial(_decode, self.model, self._cpu, strategy, self.eos_ids),
          static_argnums=(0,), donate_argnums=(4,)))
    return self._decode_fns[strategy]

  def _stop_mask(self, stop: tuple[str, ...]):
    """[V] bool on device: the tokens that end a decode loop for these stop strings (all False
    without stop strings, or when the host checks them per chunk instead), and whether decode
    loops end at those tokens (else the host checks every `chunk_size` steps)."""
    if stop not in self._stop_masks:
      vocab = self.config.vocab_size
      mask = None
      if stop and self.stop_on_device:
        if self._token_texts is None:
          self._token_texts = stop_tokens.token_texts(self.tokenizer, vocab)
        mask = stop_tokens.may_complete(self._token_texts, stop)
      exact = mask is not None
      self._stop_masks[stop] = (jnp.asarray(mask if exact else np.zeros(vocab, bool)), exact)
    return self._stop_masks[stop]

  def _prefill_chunks(self, tokens, positions, last, cache, first_slot):
    """Prefills [rows, slots] tokens (numpy; position -1: padding) from cache slot `first_slot`
    on, in chunks of at most `prefill_chunk` tokens, skipping chunks of padding only (their
    slots stay empty); returns the final hidden state at each row's position `last`."""
    rows, slots = tokens.shape
    chunk = min(slots, self.prefill_chunk)
    starts = [s for s in range(0, slots, chunk) if np.any(positions[:, s:s + chunk] >= 0)]
    hidden = np.zeros((rows, self.config.embed_dim), jnp.dtype(self.config.dtype))
    last = np.asarray(last, np.int32)
    tokens, positions, last, hidden, cache = kv_cache.place_rows(
        (tokens, positions, last, hidden, cache), self.mesh)
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
    """Samples an answer to every prompt. Randomness: one key per prompt, `keys` ([N, 2]), or
    fold_in(`key`, i) for the call's i-th prompt. A prompt's sample depends on its own key only
    (up to float noise of the batch's shapes), whichever slot, batch, process or restart
    produces it, and whether batching is continuous or lockstep."""
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
    if keys is None:
      key = jax.random.PRNGKey(0) if key is None else key
      keys = np.asarray(jax.vmap(jax.random.fold_in, (None, 0))(
          key, jnp.arange(len(prompts), dtype=jnp.uint32)), np.uint32).reshape(-1, 2)
    ids, truncated = self.encode(prompts, add_bos=prefix is None)
    outputs = [None] * len(ids)
    # Longest first: lockstep batches pad to similar lengths; slots take long prompts first.
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    groups = ([order[s:s + self.max_batch] for s in range(0, len(order), self.max_batch)]
              if self.batching == "lockstep" else [order] if order else [])
    group_rows = [max(self._pad(self._min_rows),
                      min(self._pad(self.max_batch), self._pad(pow2_bucket(len(g), 1))))
                  for g in groups]
    if ids:
      self._check_fits(max(len(r) for r in ids), max_new_tokens, prefix, max(group_rows))
    for group, rows in zip(groups, group_rows):  # the same prompts per lockstep batch, any mesh
      self._run_slots(ids, group, rows, keys, max_new_tokens, strategy, stop, prefix, outputs,
                      progress)
    return SampleOutput(
        texts=[o[0] for o in outputs], tokens=[o[1] for o in outputs],
        finish_reasons=[o[2] for o in outputs], num_tokens=[len(o[1]) for o in outputs],
        logprobs=[o[3] for o in outputs], sampling_logprobs=[o[4] for o in outputs],
        truncated=truncated)

  def _check_fits(self, longest_prompt: int, budget: int, prefix: PrefixCache | None,
                  rows: int) -> None:
    """Refuses, before any compute, a call whose rows would run past the model's context
    (prefix, longest prompt and budget over `max_seq_len`) or whose KV cache (`rows` slots x
    the call's cache length: prefix, prompt bucket and budget) cannot fit one device's
    memory."""
    context = (prefix.length if prefix else 0) + longest_prompt + budget
    if context > self.config.max_seq_len:
      raise ValueError(
          f"a prefix of {prefix.length if prefix else 0} tokens, a prompt of {longest_prompt} "
          f"and {budget} new tokens make {context} positions, past the model's context of "
          f"{self.config.max_seq_len} (max_seq_len); shorten the prefix, lower "
          "max_prompt_length or max_new_tokens")
    prefix_slots = prefix.slots if prefix else 0
    length = prefix_slots + pow2_bucket(longest_prompt, 32) + budget
    shapes = jax.eval_shape(lambda: kv_cache.init_cache(self.config, rows, length,
                                                        ring=self.ring_buffer))
    need = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)) / self.min_batch
    have, device = device_memory_bytes(self.mesh)
    if have and need > have:
      raise ValueError(
          f"{rows} row slots x {length} cache slots need {need / 2**30:.3g} GiB of KV cache per "
          f"device, more than the {have / 2**30:.3g} GiB of {device}; lower the slot count "
          "(max_batch / the job's batch_size), max_new_tokens or the prefix")

  def _pad(self, n: int) -> int:
    """n rounded up to whole rows per data shard."""
    return -(-n // self.min_batch) * self.min_batch

  def _run_slots(self, ids, order, rows, keys, budget, strategy, stop, prefix, outputs,
                 progress):
    """Decodes the prompts `order` (indices into `ids`) in `rows` slots, writing each result to
    `outputs`. A decode loop also ends at a token that may complete a stop string, and the host
    then frees the slots of rows that did stop. Continuous batching: once a quarter of the
    slots (at least one) are free while prompts wait, every free slot takes the next prompt
    (admitting each row as soon as its slot frees ran slower on the workload benchmark: each
    admission is a prefill). Lockstep: the prompts fit the slots and start together."""
    prefix_slots = prefix.slots if prefix else 0
    prompt_slots = pow2_bucket(max(len(ids[i]) for i in order), 32)
    total = prefix_slots + prompt_slots + budget
    first_slot = prefix_slots + prompt_slots
    state = self._empty_state(rows, total, budget)
    embedding_DV = self._embedding_for(rows)
    decode = self._decode_fn(strategy)
    stop_V, stops_on_device = self._stop_mask(stop)
    # Continuous batching admits prompts once a quarter of the slots (at least one) are free.
    admit_at = max(1, rows // 4) if self.batching == "continuous" else rows
    pending = collections.deque(order)
    owner: list[int | None] = [None] * rows  # the prompt each slot decodes
    while True:
      free = [r for r in range(rows) if owner[r] is None]
      busy = rows - len(free)
      if pending and free and (len(free) >= min(admit_at, len(pending)) or not busy):
        take = [pending.popleft() for _ in range(min(len(free), len(pending)))]
        state = self._admit_prompts(state, rows, [ids[i] for i in take], free[:len(take)],
                                    keys[take], prefix, total)
        for r, i in zip(free, take):
          owner[r] = i
      busy = sum(o is not None for o in owner)
      if not busy:
        return
      waiting = bool(pending) and self.batching == "continuous"
      # Every free slot is empty and done, so the loop ends once enough slots are free.
      min_done = min(admit_at, len(pending)) if waiting else rows
      start = int(state.step)
      chunked = bool(stop) and not stops_on_device
      until = start + (min(self.chunk_size, budget) if chunked else budget)
      state = decode(first_slot, self.params, embedding_DV, stop_V, state, jnp.int32(until),
                     jnp.int32(min_done))
      self.slot_steps += rows * (int(state.step) - start)
      finished, state = self._harvest(state, owner, stop, every_row=not stops_on_device)
      for r, result in finished:
        outputs[owner[r]] = result
        owner[r] = None
        self.tokens_generated += len(result[1])
      if progress is not None and finished:
        progress.update(len(finished))

  def _empty_state(self, rows: int, total: int, budget: int) -> DecodeState:
    """`rows` empty (done) slots over a cache of `total` slots per row."""
    rows_arrays = kv_cache.place_rows(dict(
        hidden_BD=np.zeros((rows, self.config.embed_dim), jnp.dtype(self.config.dtype)),
        next_pos_B=np.zeros((rows,), np.int32), count_B=np.zeros((rows,), np.int32),
        done_B=np.ones((rows,), bool), eos_B=np.zeros((rows,), bool),
        tokens_BN=np.zeros((rows, budget), np.int32),
        logp_BN=np.zeros((rows, budget), np.float32),
        sampling_logp_BN=np.zeros((rows, budget), np.float32),
        key_B=np.zeros((rows, 2), np.uint32), stop_hit_B=np.zeros((rows,), bool)), self.mesh)
    return DecodeState(step=jnp.zeros((), jnp.int32), cache=self._new_cache(rows, total),
                       **rows_arrays)

  def _admit_prompts(self, state, rows, rows_ids, slots, keys, prefix, total) -> DecodeState:
    """Prefills `rows_ids` (after the shared prefix, if any) in a batch of their own and moves
    them into the free slots `slots` of `state`."""
    n = len(rows_ids)
    batch = min(rows, self._pad(pow2_bucket(n, 1)))
    prompt_slots = pow2_bucket(max(len(r) for r in rows_ids), 32)
    prefix_slots = prefix.slots if prefix else 0
    prefix_len = prefix.length if prefix else 0
    tokens = np.zeros((batch, prompt_slots), np.int32)
    positions = np.full((batch, prompt_slots), -1, np.int32)
    lengths = np.zeros((batch,), np.int32)
    for r, row in enumerate(rows_ids):
      tokens[r, :len(row)] = row
      positions[r, :len(row)] = prefix_len + np.arange(len(row))
      lengths[r] = len(row)
    positions[n:, 0] = prefix_len  # padding rows get one token so their hidden stays finite
    # With ring_buffer, sliding-window layers keep a ring of `sliding_window` slots, as the
    # slots' cache does (same total length), so rows move over slot for slot.
    cache = self._new_cache(batch, total)
    if prefix is not None:
      cache = kv_cache.copy_prefix(cache, prefix.cache)
    hidden, cache = self._prefill_chunks(tokens, positions, positions.max(axis=1), cache,
                                         prefix_slots)
    rows_K = np.full((batch,), rows, np.int32)  # padding rows: out of range, dropped
    rows_K[:n] = slots
    key_K = np.zeros((batch, 2), np.uint32)
    key_K[:n] = keys
    return self._admit(state, cache, hidden, rows_K, prefix_len + lengths, key_K)

  def _harvest(self, state: DecodeState, owner, stop, every_row: bool = True):
    """The rows that finished (EOS, budget, or a stop string found in their text), as
    (slot, (text, tokens, finish reason, raw log-probs, sampling log-probs)); rows stopped by a
    stop string are marked done in the returned state. Without `every_row` (decode loops that
    end at stop tokens), a row still running is searched for stop strings only if its last
    token may complete one: any earlier such token would have ended the loop there."""
    done = np.asarray(state.done_B).copy()
    hit_last = np.asarray(state.stop_hit_B)
    eos = np.asarray(state.eos_B)
    count = np.asarray(state.count_B)
    generated = np.asarray(state.tokens_BN)
    finished = []
    stopped = False
    for r, prompt in enumerate(owner):
      if prompt is None or not (every_row or done[r] or hit_last[r]):
        continue
      row = generated[r, :count[r]]
      text = None
      if stop:  # rows that ended by EOS may still hold a stop string before it
        hit = self._find_stop(row, stop)
        if hit is not None:
          k, text = hit
          row, reason = row[:k], FINISH_STOP
          stopped |= not done[r]
          done[r] = True
      if text is None:
        if not done[r]:
          continue
        reason = FINISH_EOS if eos[r] else FINISH_LENGTH
        text = self.tokenizer.decode([int(t) for t in row if int(t) not in self.eos_ids])
      finished.append((r, len(row), text, row.tolist(), reason))
    if finished:
      logp, slogp = np.asarray(state.logp_BN), np.asarray(state.sampling_logp_BN)
      finished = [(r, (text, toks, reason, logp[r, :k].copy(), slogp[r, :k].copy()))
                  for r, k, text, toks, reason in finished]
    if stopped:
      state = state.replace(done_B=kv_cache.place_rows(done, self.mesh))
    return finished, state

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
