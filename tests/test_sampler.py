"""The KV-cache sampler: cached decoding equals full forward passes (tiny preset, windows and
padding included), and so do ring-buffer caches for the window layers (generation well past the
window, chunked prefill); new parameters take effect, prefix caching changes nothing, stop
strings and EOS end rows exactly and independently, sampling draws from the distribution it
claims, bad input fails clearly, shapes are bucketed; and on Gemma 3 270M greedy decoding equals
transformers' token for token."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.model import families
from cai_jax.model import decoder, kv_cache
from cai_jax.sampling.sampler import Sampler
from cai_jax.sampling.strategies import Greedy, Sampling, from_settings, logprob_of
from conftest import needs_transformers
import tiny_model


class CharTokenizer:
  """Test double for the tiny preset: one id per character (BOS = 2, EOS = 1)."""
  bos_id = 2
  start_ids = [2]  # BOS starts every sequence
  eos_id = 1

  def encode(self, text, *, add_bos):
    return ([self.bos_id] if add_bos else []) + [3 + (ord(c) % 500) for c in text]

  def encode_batch(self, texts, *, add_bos):
    return [self.encode(t, add_bos=add_bos) for t in texts]

  def decode(self, ids):
    return "".join(chr(int(i) - 3) if i >= 3 else "" for i in ids)


class PieceTokenizer(CharTokenizer):
  """Decodes every id (specials included) to its own two-letter piece, so stop strings in the
  generated text straddle tokens and start or end inside them."""
  LETTERS = "abcdefghijklmnopqrstuvw"  # 23 * 23 >= 512 distinct pieces

  @classmethod
  def piece(cls, i):
    i = int(i)
    return cls.LETTERS[i % 23] + cls.LETTERS[(i // 23) % 23]

  def decode(self, ids):
    return "".join(self.piece(i) for i in ids)


@pytest.fixture(scope="module")
def tiny():
  """The tiny preset with norm scales that make its greedy output varied
  (`tiny_model.varied_params`)."""
  config = families.preset("tiny")
  params = jax.jit(decoder.init_params, static_argnums=0)(config, jax.random.PRNGKey(2))
  return config, tiny_model.varied_params(params)


@functools.partial(jax.jit, static_argnums=0)
def _forward_logprobs(config, params, tokens_BL, valid_BL):
  positions, mask = decoder.sequence_inputs(valid_BL)
  logits, _ = decoder.Decoder(config).apply({"params": params}, tokens_BL, positions, mask)
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


@pytest.fixture(scope="module")
def sampler(tiny):
  """Shared by the tests that can share compiled programs: CharTokenizer, no EOS id, so every row
  runs its full budget."""
  return Sampler(*tiny, CharTokenizer(), eos_ids=())


def full_logprobs(config, params, ids) -> np.ndarray:
  """log_softmax of one uncached forward pass over `ids`: [len(ids), vocab]. (Right-padded to a
  power of two, which leaves the real positions unchanged, so few programs compile.)"""
  length = max(64, 1 << (len(ids) - 1).bit_length())
  tokens = np.zeros((1, length), np.int32)
  tokens[0, :len(ids)] = ids
  valid = np.arange(length)[None] < len(ids)
  return np.asarray(_forward_logprobs(config, params, tokens, valid))[0, :len(ids)]


PROMPTS = ["the harbour lights were burning low", "hi", "abcdefghijklm", "q"]


# ----------------------------------------------------------------------------- cached decoding


def test_greedy_equals_argmax_of_full_forward(tiny, sampler):
  """Prompts longer and shorter than the sliding window (8), padded together in one batch, and
  16 new tokens: every cached step equals the uncached forward pass over prompt + generated."""
  config, params = tiny
  tok = CharTokenizer()
  out = sampler.generate(PROMPTS, max_new_tokens=16)
  for prompt, tokens, logp in zip(PROMPTS, out.tokens, out.logprobs):
    ids = tok.encode(prompt, add_bos=True)
    assert len(tokens) == 16 and len(set(tokens)) > 4  # not a degenerate repeat
    ref = full_logprobs(config, params, ids + tokens)
    pred = ref[len(ids) - 1:len(ids) - 1 + len(tokens)]
    np.testing.assert_array_equal(tokens, np.argmax(pred, axis=-1), err_msg=prompt)
    np.testing.assert_allclose(logp, pred[np.arange(len(tokens)), tokens], atol=1e-4,
                               err_msg=prompt)
  assert out.finish_reasons == ["length"] * 4 and out.num_tokens == [16] * 4


def test_prefix_cache_equals_uncached_tiny(tiny, sampler):
  config, params = tiny
  prefix_text = "A conversation between a person and a helpful assistant. "  # > window
  prompts = ["Human: hello there", "Human: why is the sky blue?", "x"]
  prefix = sampler.prefill_prefix(prefix_text)
  assert prefix.length == len(prefix_text) + 1
  cached = sampler.generate(prompts, max_new_tokens=16, prefix=prefix)
  # One character per token, so BOS + prefix + prompt is exactly what the text encodes to.
  plain = sampler.generate([prefix_text + p for p in prompts], max_new_tokens=16)
  assert cached.tokens == plain.tokens
  for a, b in zip(cached.logprobs, plain.logprobs):
    np.testing.assert_allclose(a, b, atol=1e-4)
  # The prefix cache is reusable across batches.
  again = sampler.generate(prompts[::-1], max_new_tokens=16, prefix=prefix)
  assert again.tokens == plain.tokens[::-1]


# ----------------------------------------------------------------------------- ring buffer


def test_ring_buffer_equals_full_cache_and_full_forward(tiny):
  """Sliding-window layers keep 8 ring slots (the window) instead of one per token. Prompts
  shorter than, equal to and longer than the window, padded together, and 40 new tokens (five
  windows, so every ring slot is rewritten several times): the ring cache gives the full
  cache's tokens, and both equal the argmax of an uncached forward pass at every step."""
  config, params = tiny
  tok = CharTokenizer()
  W = config.sliding_window
  prompts = ["xyzzy", "1234567", "Human: hi", "hello world"]  # BOS + 5, 7, 9 and 11 tokens
  assert W == 8
  ring = Sampler(config, params, tok, eos_ids=())
  full = Sampler(config, params, tok, eos_ids=(), ring_buffer=False)
  a = ring.generate(prompts, max_new_tokens=5 * W)
  b = full.generate(prompts, max_new_tokens=5 * W)
  assert a.tokens == b.tokens
  for prompt, tokens, la, lb in zip(prompts, a.tokens, a.logprobs, b.logprobs):
    np.testing.assert_allclose(la, lb, atol=1e-4, err_msg=prompt)
    ids = tok.encode(prompt, add_bos=True)
    assert len(set(tokens[3 * W:])) > 4, prompt  # still not a degenerate repeat late on
    ref = full_logprobs(config, params, ids + tokens)
    pred = ref[len(ids) - 1:len(ids) - 1 + len(tokens)]
    np.testing.assert_array_equal(tokens, np.argmax(pred, axis=-1), err_msg=prompt)
    np.testing.assert_allclose(la, pred[np.arange(len(tokens)), tokens], atol=1e-4,
                               err_msg=prompt)
  # One row alone (other padding, other bucket) and a batch agree too.
  alone = ring.generate(prompts[2:3], max_new_tokens=5 * W)
  assert alone.tokens[0] == a.tokens[2]


def test_prefill_in_chunks(tiny, sampler):
  """Prompts prefilled 32 slots at a time (rows of 52 to 89 tokens, their last tokens in
  different chunks, in a 128-slot bucket: 3 chunks and one of padding only, skipped), with and
  without a shared prefix of 4 chunks, give what one chunk gives."""
  config, params = tiny
  tok = CharTokenizer()
  chunked = Sampler(config, params, tok, eos_ids=(), prefill_chunk=32)
  prompts = ["p" * 40 + "hello world", "the harbour lights were burning low " * 2,
             "abcdefghijklmnopqrstuvwxyz" * 3 + "0123456789"]
  assert [len(p) + 1 for p in prompts] == [52, 73, 89]
  a = chunked.generate(prompts, max_new_tokens=12)
  b = sampler.generate(prompts, max_new_tokens=12)  # prefill_chunk=256: one chunk
  assert a.tokens == b.tokens
  for x, y in zip(a.logprobs, b.logprobs):
    np.testing.assert_allclose(x, y, atol=1e-4)
  prefix_text = "A conversation between a person and a helpful assistant. " * 2  # 117 tokens
  pa = chunked.prefill_prefix(prefix_text)
  pb = sampler.prefill_prefix(prefix_text)
  assert pa.slots == pb.slots == 128
  a = chunked.generate(prompts, max_new_tokens=12, prefix=pa)
  b = sampler.generate(prompts, max_new_tokens=12, prefix=pb)
  assert a.tokens == b.tokens
  with pytest.raises(ValueError, match="prefill_chunk"):
    Sampler(config, params, tok, prefill_chunk=48)


def test_ring_cache_layout():
  """Ring layers hold min(window, length) slots; writes land at position % window, only a
  chunk's last `window` positions are kept, padding (-1) is never written."""
  config = families.preset("tiny")
  W = config.sliding_window
  cache = kv_cache.init_cache(config, 2, 40, ring=True)
  for layer, kind in zip(cache, config.layer_types):
    assert layer.ring == (kind == "local")
    assert layer.num_slots == (W if kind == "local" else 40)
  short = kv_cache.init_cache(config, 2, W - 3, ring=True)  # fits: no ring needed
  assert all(not c.ring and c.num_slots == W - 3 for c in short)
  ring = cache[0]
  K, H = config.num_kv_heads, config.head_dim
  # Row 0: positions 0..12 (13 tokens, wraps); row 1: 0..4 then padding.
  positions = np.array([list(range(13)), list(range(5)) + [-1] * 8], np.int32)
  k = np.broadcast_to(positions[:, :, None, None], (2, 13, K, H)).astype(np.float32)
  out = kv_cache.write_ring(ring, jnp.asarray(k), jnp.asarray(-k), jnp.asarray(positions))
  want = np.full((2, W), -1)
  for p in range(5, 13):
    want[0, p % W] = p
  want[1, :5] = np.arange(5)
  np.testing.assert_array_equal(np.asarray(out.positions_BS), want)
  np.testing.assert_array_equal(np.asarray(out.k_BSKH)[..., 0, 0], np.where(want >= 0, want, 0))
  np.testing.assert_array_equal(np.asarray(out.v_BSKH)[..., 0, 0], -np.where(want >= 0, want, 0))
  # One more token per row overwrites the oldest slot of row 0 and fills row 1's next one.
  step = jnp.asarray([[13], [5]], jnp.int32)
  kk = jnp.broadcast_to(step[:, :, None, None].astype(jnp.float32), (2, 1, K, H))
  out = kv_cache.write_step(out, kk, kk, step, 0)
  want[0, 13 % W], want[1, 5] = 13, 5
  np.testing.assert_array_equal(np.asarray(out.positions_BS), want)


def test_chunked_prefill_into_rings_equals_full_forward(tiny):
  """The model's cached path on its own: a prompt fed in chunks of 5 tokens (a chunk's later
  tokens evict ring slots that its earlier queries still read), then single tokens, with ring
  caches on the local layers, gives the logits of one uncached forward pass."""
  config, params = tiny
  # In float64: float32 rounding, amplified by this fixture's norm scales, reaches ~1e-4 in the
  # last positions' logits and moves with XLA's choice of matmul kernels (1.1e-4 vs 1.3e-4 when
  # the projections became 2-D matmuls). In float64 the two paths agree to ~2e-6 (RMSNorm, RoPE
  # and the softmax stay float32 by design), so the check is tighter than a float32 one could be.
  with jax.enable_x64(True):
    _check_chunked_prefill_into_rings(
        config.replace(dtype="float64", param_dtype="float64"),
        jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params))


def _check_chunked_prefill_into_rings(config, params):
  model = decoder.Decoder(config)
  rng = np.random.default_rng(3)
  seq = rng.integers(3, config.vocab_size, size=(2, 23)).astype(np.int32)
  valid = np.ones(seq.shape, bool)
  valid[1, 17:] = False  # row 1 is shorter: padding at the end of its last chunks
  positions, mask = decoder.sequence_inputs(jnp.asarray(valid))
  want, _ = model.apply({"params": params}, jnp.asarray(seq), positions, mask)

  @jax.jit
  def step(cache, tokens, pos, index):
    return model.apply({"params": params}, tokens, pos, None, cache=cache, cache_index=index)

  cache = kv_cache.init_cache(config, 2, 23, ring=True)
  assert cache[0].ring and cache[0].num_slots == config.sliding_window
  got = []
  for start, stop in ((0, 5), (5, 10), (10, 15), (15, 20), (20, 21), (21, 22), (22, 23)):
    logits, cache = step(cache, jnp.asarray(seq[:, start:stop]), positions[:, start:stop],
                         start)
    got.append(np.asarray(logits))
  got = np.concatenate(got, axis=1)
  want = np.asarray(want)
  assert got.dtype == np.float64
  for r, n in enumerate((23, 17)):
    np.testing.assert_allclose(got[r, :n], want[r, :n], atol=2e-5, rtol=1e-6)


# ----------------------------------------------------------------------------- stopping


def test_stop_strings_cut_exactly_and_rows_are_independent(tiny):
  config, params = tiny
  tok = PieceTokenizer()
  sampler = Sampler(config, params, tok, eos_ids=(), chunk_size=4)
  prompts = PROMPTS[:3]
  full = sampler.generate(prompts, max_new_tokens=24)
  assert all(len(t) == 48 for t in full.texts)
  # Starts with the second letter of token 4 and ends with the first letter of token 6.
  stop = full.texts[0][9:13]
  cut = full.texts[0].find(stop)
  completing = (cut + len(stop) + 1) // 2  # every token is two letters
  batch = sampler.generate(prompts, max_new_tokens=24, stop=[stop])
  assert batch.texts[0] == full.texts[0][:cut]
  assert batch.finish_reasons[0] == "stop"
  assert batch.num_tokens[0] == completing
  assert batch.tokens[0] == full.tokens[0][:completing]
  np.testing.assert_array_equal(batch.logprobs[0], full.logprobs[0][:completing])
  for r in range(3):  # each row alone gives what it gives in the batch
    alone = sampler.generate([prompts[r]], max_new_tokens=24, stop=[stop])
    assert (alone.texts[0], alone.tokens[0], alone.finish_reasons[0]) == (
        batch.texts[r], batch.tokens[r], batch.finish_reasons[r])
    if stop not in full.texts[r]:
      assert (batch.tokens[r], batch.finish_reasons[r]) == (full.tokens[r], "length")
  # With several stop strings, the one completed first decides.
  late = full.texts[0][cut:cut + len(stop) + 6]  # starts with `stop`, so completes later
  early_end = full.texts[0][cut + 3:cut + len(stop)]
  two = sampler.generate(prompts[:1], max_new_tokens=24, stop=[late, early_end])
  first_hit = full.texts[0].find(early_end)
  assert two.num_tokens[0] == (first_hit + len(early_end) + 1) // 2
  assert two.texts[0] == full.texts[0][:first_hit]


def test_eos_ends_a_row(tiny):
  config, params = tiny
  tok = PieceTokenizer()
  plain = Sampler(config, params, tok, eos_ids=()).generate(PROMPTS[:2], max_new_tokens=20)
  row = plain.tokens[0]
  j = next(j for j in range(3, 20) if row[j] not in row[:j] and row[j] not in plain.tokens[1])
  eos = row[j]
  sampler = Sampler(config, params, tok, eos_ids=(eos,), chunk_size=4)
  out = sampler.generate(PROMPTS[:2], max_new_tokens=20)
  assert out.finish_reasons == ["eos", "length"]
  assert out.tokens[0] == row[:j + 1] and out.num_tokens[0] == j + 1  # EOS is counted
  assert out.texts[0] == tok.decode(row[:j])                          # but not in the text
  assert out.tokens[1] == plain.tokens[1]
  # After EOS a row's slots hold padding (id 0); a stop string that only padding would spell
  # must not turn the EOS into a stop.
  pad_text = tok.piece(0) * 2
  assert pad_text not in tok.decode(row[:j])
  with_stop = sampler.generate(PROMPTS[:2], max_new_tokens=20, stop=[pad_text])
  assert with_stop.finish_reasons[0] == "eos" and with_stop.tokens[0] == row[:j + 1]


# ----------------------------------------------------------------------------- sampling


def _model_logprobs(config, params, tok, prompt, tokens, temperature=1.0):
  """Per step, the tempered log-distribution the sampler drew token t from."""
  ids = tok.encode(prompt, add_bos=True)
  logp = full_logprobs(config, params, ids + list(tokens))
  steps = logp[len(ids) - 1:len(ids) - 1 + len(tokens)]
  return np.asarray(jax.nn.log_softmax(steps / temperature, axis=-1))


def test_top_k_stays_in_the_top_k(tiny, sampler):
  config, params = tiny
  tok = CharTokenizer()
  strategy = Sampling(top_k=3)
  out = sampler.generate(PROMPTS * 2, max_new_tokens=16, strategy=strategy,
                         key=jax.random.PRNGKey(3))
  not_argmax = 0
  for prompt, tokens, slogp in zip(PROMPTS * 2, out.tokens, out.sampling_logprobs):
    steps = _model_logprobs(config, params, tok, prompt, tokens)
    third = np.sort(steps, axis=-1)[:, -3]
    chosen = steps[np.arange(len(tokens)), tokens]
    assert np.all(chosen >= third - 1e-5), prompt
    not_argmax += int(np.sum(np.asarray(tokens) != np.argmax(steps, axis=-1)))
    top = np.sort(steps, axis=-1)[:, -3:]
    renorm = chosen - np.log(np.sum(np.exp(top), axis=-1))
    np.testing.assert_allclose(slogp, renorm, atol=1e-4)
  assert not_argmax > 10  # it does sample, not just take the argmax


def test_top_p_stays_in_the_nucleus(tiny, sampler):
  config, params = tiny
  tok = CharTokenizer()
  top_p, temperature = 0.5, 1.5
  out = sampler.generate(PROMPTS * 2, max_new_tokens=16, key=jax.random.PRNGKey(4),
                         strategy=Sampling(temperature=temperature, top_p=top_p))
  for prompt, tokens, slogp in zip(PROMPTS * 2, out.tokens, out.sampling_logprobs):
    steps = _model_logprobs(config, params, tok, prompt, tokens, temperature)
    probs = np.exp(steps)
    for t, token in enumerate(tokens):
      mass_before = probs[t][probs[t] > probs[t, token]].sum()
      assert mass_before < top_p + 1e-4, (prompt, t)
      order = np.argsort(-probs[t])
      before = np.cumsum(probs[t][order]) - probs[t][order]
      nucleus = probs[t][order][before < top_p].sum()
      np.testing.assert_allclose(slogp[t], np.log(probs[t, token] / nucleus), atol=1e-4)


def test_first_token_frequencies_match_softmax(tiny):
  """2,048 draws of the first token at temperature 1 against softmax(logits): a chi-square
  statistic over the tokens expected at least 10 times (the rest pooled), with a generous bound."""
  config, params = tiny
  tok = CharTokenizer()
  prompt = "hello world"
  sampler = Sampler(config, params, tok, max_batch=512)
  counts = np.zeros(config.vocab_size)
  for seed in range(4):
    out = sampler.generate([prompt] * 512, max_new_tokens=1, strategy=Sampling(),
                           key=jax.random.PRNGKey(100 + seed))
    np.add.at(counts, [t[0] for t in out.tokens], 1)
  n = counts.sum()
  ids = tok.encode(prompt, add_bos=True)
  expected = n * np.exp(full_logprobs(config, params, ids)[-1].astype(np.float64))
  big = expected >= 10
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  chi2 = float(np.sum((obs - exp) ** 2 / exp))
  df = len(obs) - 1
  assert df >= 20, "the check needs a spread-out distribution"
  bound = df + 6 * np.sqrt(2 * df)  # mean + 6 standard deviations
  assert chi2 < bound, f"chi2={chi2:.1f} over {df} degrees of freedom (bound {bound:.1f})"


def test_keys_and_logprobs(tiny, sampler):
  config, params = tiny
  gen = lambda key, strategy=Sampling(): sampler.generate(  # noqa: E731
      PROMPTS, max_new_tokens=16, strategy=strategy, key=key)
  a, b, c = gen(jax.random.PRNGKey(7)), gen(jax.random.PRNGKey(7)), gen(jax.random.PRNGKey(8))
  assert a.tokens == b.tokens and a.texts == b.texts
  assert a.tokens != c.tokens
  # Sampling() draws from the raw model distribution: both log-prob records agree.
  for raw, sampled in zip(a.logprobs, a.sampling_logprobs):
    np.testing.assert_allclose(sampled, raw, atol=1e-5)
  assert all(np.all(lp < 0) for lp in a.logprobs)
  greedy = gen(None, Greedy())
  assert all(np.all(s == 0) for s in greedy.sampling_logprobs)
  assert all(np.all(lp < 0) for lp in greedy.logprobs)


def test_row_keys_make_a_sample_independent_of_its_batch(tiny, sampler):
  """With one key per prompt, a prompt's tokens are the same alone, in a batch of 4 (another
  position, other neighbours, another prompt bucket), and in a batch that splits differently;
  other keys give other tokens; row r's noise is jax.random.gumbel(fold_in(key_r, t)) exactly."""
  keys = np.stack([np.asarray(jax.random.PRNGKey(40 + i)) for i in range(len(PROMPTS))])
  together = sampler.generate(PROMPTS, max_new_tokens=12, strategy=Sampling(), keys=keys)
  for i in range(len(PROMPTS)):
    alone = sampler.generate([PROMPTS[i]], max_new_tokens=12, strategy=Sampling(),
                             keys=keys[i:i + 1])
    assert alone.tokens[0] == together.tokens[i], i
    # batch size changes the matmul kernels' summation order: measured up to 4.7e-6 relative
    # (2.4e-5 at -5.2) in a fresh-clone CI run
    np.testing.assert_allclose(alone.logprobs[0], together.logprobs[i], rtol=1e-5, atol=1e-6)
  small = Sampler(*tiny, CharTokenizer(), eos_ids=(), max_batch=3)  # batches of 3 + 1
  reordered = small.generate(PROMPTS[::-1], max_new_tokens=12, strategy=Sampling(),
                             keys=keys[::-1])
  assert reordered.tokens == together.tokens[::-1]
  other = sampler.generate(PROMPTS, max_new_tokens=12, strategy=Sampling(), keys=keys[::-1])
  assert other.tokens != together.tokens
  # The draw itself: token t of row r inverts the cumulative distribution of softmax(logits_t)
  # (float64 here) at u = uniform(fold_in(key_r, t)).
  config, params = tiny
  ids = CharTokenizer().encode(PROMPTS[1], add_bos=True)
  row = together.tokens[1]
  for t in range(12):
    logits = np.asarray(full_logprobs(config, params, ids + row[:t])[-1], np.float64)
    p = np.exp(logits - logits.max())
    u = float(jax.random.uniform(jax.random.fold_in(keys[1], t), (), jnp.float32))
    assert int(np.searchsorted(np.cumsum(p), u * p.sum(), side="right")) == row[t], t
  with pytest.raises(ValueError, match="one PRNG key per prompt"):
    sampler.generate(PROMPTS, max_new_tokens=2, strategy=Sampling(), keys=keys[:2])
  with pytest.raises(ValueError, match="not both"):
    sampler.generate(PROMPTS, max_new_tokens=2, key=jax.random.PRNGKey(0), keys=keys)


def test_inverse_cdf_draw_matches_numpy():
  """strategies.inverse_cdf_draw against NumPy's float64 search of the cumulative distribution,
  in both layouts, with masked (-inf) tokens, u = 0 and u just below 1: masked tokens are never
  drawn."""
  from cai_jax.sampling.strategies import inverse_cdf_draw
  rng = np.random.default_rng(0)
  B, V = 64, 1000
  logits = rng.normal(0, 3, (B, V)).astype(np.float32)
  logits[rng.random((B, V)) < 0.3] = -np.inf
  logits[:, 0] = -np.inf
  u = rng.random(B).astype(np.float32)
  u[:2] = [0.0, np.nextafter(np.float32(1), np.float32(0))]
  p = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
  c = np.cumsum(p, 1)
  expected = np.array([np.searchsorted(c[b], u[b] * c[b, -1], side="right") for b in range(B)])
  expected = np.minimum(expected, V - 1)
  got = np.asarray(inverse_cdf_draw(jnp.asarray(logits), jnp.asarray(u)))
  got_t = np.asarray(inverse_cdf_draw(jnp.asarray(logits.T), jnp.asarray(u), axis=0))
  # float32 running sums against float64: a draw within ~1e-6 of a boundary may differ
  assert (got != expected).sum() <= 1 and np.array_equal(got, got_t)
  assert np.isfinite(logits[np.arange(B), got]).all()


@pytest.mark.parametrize("strategy", [Greedy(), Sampling(), Sampling(temperature=0.7),
                                      Sampling(top_k=5), Sampling(top_p=0.6)],
                         ids=["greedy", "raw", "tempered", "top_k", "top_p"])
def test_vocab_major_logits_give_the_same_draws(strategy):
  """The CPU sampler hands strategies [V, B] logits (vocab_axis=0): the same key must pick the
  same tokens with the same log-probs as from the [B, V] logits, ties and all."""
  rng = np.random.default_rng(0)
  logits_BV = rng.normal(size=(6, 300)).astype(np.float32) * 3
  logits_BV[0, [7, 200]] = logits_BV[0].max() + 1  # a tie: the first index wins in both layouts
  logits_BV = jnp.asarray(logits_BV)
  key = jax.random.PRNGKey(11)
  tokens, logp = jax.jit(lambda x: strategy.sample(x, key))(logits_BV)
  tokens_vm, logp_vm = jax.jit(lambda x: strategy.sample(x, key, vocab_axis=0))(logits_BV.T)
  np.testing.assert_array_equal(tokens_vm, tokens)
  np.testing.assert_allclose(logp_vm, logp, atol=1e-6)
  if isinstance(strategy, Greedy):
    assert int(tokens[0]) == 7
  raw = np.asarray(jax.nn.log_softmax(logits_BV, axis=-1))[np.arange(6), np.asarray(tokens)]
  for axis, x in ((-1, logits_BV), (0, logits_BV.T)):
    np.testing.assert_allclose(logprob_of(x, tokens, axis), raw, atol=1e-5)


def test_new_params_take_effect(tiny):
  """Assigning `sampler.params` (as RL does every iteration) changes the output, one row (which
  uses a transposed copy of the embedding on CPU) and several alike."""
  config, params = tiny
  tok = CharTokenizer()
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
  other = jax.tree.unflatten(treedef, [x + 0.5 * jnp.std(x) * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
  sampler = Sampler(config, params, tok, eos_ids=())
  fresh = Sampler(config, other, tok, eos_ids=())
  for prompts in (PROMPTS[:1], PROMPTS):
    before = sampler.generate(prompts, max_new_tokens=8)
    sampler.params = other
    assert sampler.generate(prompts, max_new_tokens=8).tokens == fresh.generate(
        prompts, max_new_tokens=8).tokens != before.tokens
    sampler.params = params


# ----------------------------------------------------------------------------- bad input


def test_bad_input_fails_clearly(sampler):
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    sampler.generate(["ok", ""], max_new_tokens=4)
  for n in (0, -1):
    with pytest.raises(ValueError, match="max_new_tokens"):
      sampler.generate(["ok"], max_new_tokens=n)
  with pytest.raises(ValueError, match="stop strings"):
    sampler.generate(["ok"], max_new_tokens=4, stop=["\n", ""])
  with pytest.raises(TypeError, match="sequence of prompts"):
    sampler.generate("ok", max_new_tokens=4)
  with pytest.raises(ValueError, match="batching must be one of"):
    Sampler(sampler.config, sampler.params, CharTokenizer(), batching="dynamic")
  with pytest.raises(ValueError, match="sampling weights in float16 are not supported on cpu: "
                                       "XLA's CPU dots have no float16 kernels"):
    Sampler(sampler.config, sampler.params, CharTokenizer(), param_dtype="float16")
  for top_p in (0.0, -0.1, 1.01):
    with pytest.raises(ValueError, match="top_p"):
      Sampling(top_p=top_p)
    with pytest.raises(ValueError, match="top_p"):
      from_settings(1.0, top_p=top_p)
  for t in (-1.0, -1e-3):
    with pytest.raises(ValueError, match="temperature"):
      Sampling(temperature=t)
    with pytest.raises(ValueError, match="temperature"):
      from_settings(t)
  with pytest.raises(ValueError, match="top_k"):
    Sampling(top_k=-1)
  with pytest.raises(ValueError, match="temperature 0 means greedy"):
    from_settings(0.0, top_p=0.9)
  assert from_settings(0.0) == Greedy() and from_settings(0.7, 5, 0.9) == Sampling(0.7, 5, 0.9)


def test_calls_that_cannot_fit_fail_before_sampling(tiny, monkeypatch):
  """Rows that would run past the model's context (prefix + prompt + budget over max_seq_len),
  and a KV cache (slots x prefix, prompt and budget) larger than a device's memory, are
  refused with the numbers, before anything is compiled or allocated."""
  from cai_jax.sampling import sampler as sampler_module
  config, params = tiny
  short = Sampler(config.replace(max_seq_len=64), params, CharTokenizer(), eos_ids=())
  assert short.generate(["ab"], max_new_tokens=61).num_tokens == [61]  # BOS + 2 + 61 = 64
  with pytest.raises(ValueError, match=r"a prefix of 0 tokens, a prompt of 3 and 62 new tokens "
                     r"make 65 positions, past the model's context of 64 \(max_seq_len\)"):
    short.generate(["ab", "a"], max_new_tokens=62)
  prefix = short.prefill_prefix("a shared prefix. ")  # BOS + 17 characters
  with pytest.raises(ValueError, match=r"a prefix of 18 tokens, a prompt of 2 and 45 new tokens "
                     r"make 65 positions"):
    short.generate(["ab"], max_new_tokens=45, prefix=prefix)
  assert short.generate(["ab"], max_new_tokens=44, prefix=prefix).num_tokens == [44]
  config = config.replace(max_seq_len=2**30)  # now the memory checks
  sampler = Sampler(config, params, CharTokenizer(), eos_ids=(), max_batch=4)
  # 4 slots x 2**27 positions of this model's KV cache are about 260 GiB, more than this host;
  # then a small reported device limit.
  with pytest.raises(ValueError, match=r"4 row slots x \d+ cache slots need [\d.]+ GiB of KV "
                     r"cache per device, more than the [\d.]+ GiB of this host's memory"):
    sampler.generate(["ab", "cd", "ef", "gh"], max_new_tokens=2**27)
  have, where = sampler_module.device_memory_bytes()
  assert where == "this host's memory" and have > 2**30
  monkeypatch.setattr(sampler_module, "device_memory_bytes", lambda mesh=None: (2**19, "device 0"))
  # 2 rows x (a 32-slot prompt bucket for BOS + 2 characters, then 1000 tokens) = 1032 slots:
  # float32 K and V [slots, 2 heads, 16] and int32 positions on the 2 global layers, a ring of
  # sliding_window = 8 slots on the 2 local ones.
  slots, window = 32 + 1000, config.sliding_window
  layer = lambda n: 2 * n * config.num_kv_heads * config.head_dim * 4 + 4 * n  # noqa: E731
  need = 2 * (2 * layer(slots) + 2 * layer(window))
  with pytest.raises(ValueError, match=rf"2 row slots x {slots} cache slots need "
                     rf"{need / 2**30:.3g} GiB of KV cache per device, more than the "
                     rf"{2**19 / 2**30:.3g} GiB of device 0; lower the slot count"):
    sampler.generate(["ab", "cd"], max_new_tokens=1000)
  monkeypatch.undo()
  assert sampler.generate(["ab", "cd"], max_new_tokens=4).num_tokens == [4, 4]


def test_long_prompts_keep_bos_and_lose_their_left(tiny):
  config, params = tiny
  tok = CharTokenizer()
  sampler = Sampler(config, params, tok, max_prompt_length=16, eos_ids=())
  long_prompt = "0123456789abcdefghijklmnopqrstuvwxyz"
  out = sampler.generate([long_prompt, "short"], max_new_tokens=8)
  assert out.truncated == [True, False]
  kept = sampler.generate([long_prompt[-15:]], max_new_tokens=8)  # BOS + the last 15 tokens
  assert kept.truncated == [False]
  assert out.tokens[0] == kept.tokens[0]
  ids, truncated = sampler.encode([long_prompt], add_bos=True)
  assert truncated == [True] and ids[0] == tok.encode(long_prompt[-15:], add_bos=True)


# ----------------------------------------------------------------------------- bucketing


def _dot_dtypes(jaxpr) -> list[tuple[str, str, str]]:
  """(lhs, rhs, out) dtypes of every dot_general in a jaxpr, nested jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(tuple(str(v.aval.dtype) for v in (*eqn.invars[:2], eqn.outvars[0])))
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", None)
      if inner is not None:
        found += _dot_dtypes(getattr(inner, "jaxpr", inner))
  return found


def test_narrow_sampling_weights(tiny):
  """Sampler(param_dtype="bfloat16") keeps a bfloat16 copy of the weights (the caller's stay
  float32) and every weight matmul of the model takes it as stored, bfloat16 x bfloat16 ->
  float32 (no float32 copy of a weight); attention's own dots stay float32. Its greedy tokens
  are the argmax of an uncached forward pass of the same narrow model at every step, and a
  1-row call (2 rows on CPU) gives the row what a full batch gives it."""
  config, params = tiny
  tok = CharTokenizer()
  narrow = Sampler(config, params, tok, eos_ids=(), param_dtype="bfloat16")
  assert narrow.config.narrow_matmuls and narrow.config.param_dtype == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves(narrow.params)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  model = decoder.Decoder(narrow.config)
  tokens = jnp.zeros((2, 4), jnp.int32)
  positions, mask = decoder.sequence_inputs(jnp.ones((2, 4), bool))
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, tokens, positions, mask))(
      narrow.params)
  dots = _dot_dtypes(jaxpr.jaxpr)
  weight_dots = 7 * config.num_layers + 1  # q, k, v, o, gate, up, down per layer; the logits
  assert dots.count(("bfloat16", "bfloat16", "float32")) == weight_dots, dots
  assert len(dots) == weight_dots + 2 * config.num_layers, dots  # + q.k and p.v, float32
  assert set(dots) == {("bfloat16", "bfloat16", "float32"), ("float32", "float32", "float32")}
  out = narrow.generate(PROMPTS, max_new_tokens=16)
  for prompt, row, logp in zip(PROMPTS, out.tokens, out.logprobs):
    assert len(set(row)) >= 4, row  # varied output: the comparison is not vacuous
    ids = tok.encode(prompt, add_bos=True)
    steps = slice(len(ids) - 1, len(ids) - 1 + len(row))
    uncached = full_logprobs(narrow.config, narrow.params, ids + row)[steps]
    np.testing.assert_array_equal(np.argmax(uncached, -1), row)
    # bfloat16 activations round differently along the cached path: measured up to 0.034
    np.testing.assert_allclose(logp, uncached[np.arange(len(row)), row], atol=0.05, rtol=0)
    # and the narrow model really is another model than the float32 one (measured up to 1.8)
    assert np.abs(uncached - full_logprobs(config, params, ids + row)[steps]).max() > 0.1
  alone = narrow.generate(PROMPTS[:1], max_new_tokens=16)
  assert alone.tokens[0] == out.tokens[0]
  with pytest.raises(ValueError, match="param_dtype must be one of"):
    Sampler(config, params, tok, param_dtype="int8")


def _draw_on_a_boundary(config, params, ids, row_a, row_b, row_key, tol=1e-4) -> bool:
  """Whether two samples of one prompt drawn with `row_key` first part at a step t whose
  uniform (fold_in(row_key, t), as the sampler draws it) lies within `tol` of the cumulative
  probability that separates their two tokens, which must be neighbours in the vocabulary."""
  t = next((j for j, (x, y) in enumerate(zip(row_a, row_b)) if x != y), None)
  if t is None:
    return False
  cdf = np.cumsum(np.exp(full_logprobs(config, params, ids + row_a[:t])[-1].astype(np.float64)))
  u = float(jax.random.uniform(jax.random.fold_in(row_key, t), (), jnp.float32))
  return abs(row_a[t] - row_b[t]) == 1 and abs(u - cdf[min(row_a[t], row_b[t])]) < tol


@pytest.mark.parametrize("strategy", [Greedy(), Sampling()], ids=["greedy", "seeded"])
def test_continuous_batching_equals_lockstep(tiny, strategy):
  """12 prompts whose rows end at many different steps (EOS = every tenth id, a stop string
  checked every 4 steps): 3 continuous slots, refilled as rows finish, give every prompt the
  tokens, text, finish reason and log-probs of lockstep batches of 3 (row keys from the call's
  key), with and without a shared prefix, the same tokens in fewer slot-steps. Seeded rows may
  part only where a draw sits on a boundary of the cumulative distribution (checked)."""
  config, params = tiny
  eos = tuple(range(10, config.vocab_size, 10))
  prompts = [p * k for p in PROMPTS for k in (1, 2, 3)]
  for prefix_text in (None, "a shared prefix. "):
    runs = {}
    for batching in ("lockstep", "continuous"):
      s = Sampler(config, params, CharTokenizer(), eos_ids=eos, max_batch=3, chunk_size=4,
                  batching=batching)
      prefix = s.prefill_prefix(prefix_text) if prefix_text else None
      runs[batching] = s, s.generate(prompts, max_new_tokens=24, strategy=strategy,
                                     key=jax.random.PRNGKey(7), stop=("!",), prefix=prefix)
      # (key 7: seeded rows end at EOS, the stop string and the budget, all three)
    (lock_sampler, lock), (cont_sampler, cont) = runs["lockstep"], runs["continuous"]
    same = [i for i in range(len(prompts)) if lock.tokens[i] == cont.tokens[i]]
    for i in sorted(set(range(len(prompts))) - set(same)):
      # Seeded only: a uniform within float noise of the boundary between two neighbouring
      # tokens' cumulative probabilities may fall on either side (seen on an AVX-512 host: one
      # row, tokens 417 and 418; the 12 rows' closest draws lie 4e-6 to 5e-3 from a boundary).
      assert isinstance(strategy, Sampling) and len(same) >= len(prompts) - 3, (i, same)
      ids = (CharTokenizer().encode(prefix_text, add_bos=True) if prefix_text else []) + \
          CharTokenizer().encode(prompts[i], add_bos=prefix_text is None)
      assert _draw_on_a_boundary(config, params, ids, lock.tokens[i], cont.tokens[i],
                                 jax.random.fold_in(jax.random.PRNGKey(7), i)), i
    for field in ("texts", "finish_reasons", "num_tokens"):
      assert [getattr(cont, field)[i] for i in same] == [getattr(lock, field)[i] for i in same]
    assert len(set(lock.num_tokens)) >= 5, lock.num_tokens  # rows really end apart
    if prefix_text is None:
      assert set(lock.finish_reasons) == {"eos", "stop", "length"}, lock.finish_reasons
    # Other neighbours and cache slots reorder float sums: measured up to 2.1e-5.
    for i in same:
      np.testing.assert_allclose(cont.logprobs[i], lock.logprobs[i], rtol=0, atol=3e-5)
      np.testing.assert_allclose(cont.sampling_logprobs[i], lock.sampling_logprobs[i], rtol=0,
                                 atol=3e-5)
    assert lock_sampler.tokens_generated == sum(lock.num_tokens)
    assert cont_sampler.tokens_generated == sum(cont.num_tokens)
    assert cont_sampler.slot_steps < 0.8 * lock_sampler.slot_steps, (
        cont_sampler.slot_steps, lock_sampler.slot_steps)


@pytest.mark.parametrize("batching", ["lockstep", "continuous"])
def test_a_handful_of_programs(tiny, batching):
  config, params = tiny
  sampler = Sampler(config, params, CharTokenizer(), max_batch=2, eos_ids=(), batching=batching)
  rng = np.random.default_rng(0)
  prefill_shapes, decode_shapes = set(), set()
  calls = (1, 3, 2, 5, 1, 4, 2)
  bucket = lambda n: max(32, 1 << (int(n) - 1).bit_length())  # noqa: E731
  for batch in calls:
    lengths = rng.integers(2, 60, size=batch)
    sampler.generate(["p" * int(n) for n in lengths], max_new_tokens=4)
    # Longest first, 2 rows at a time (every row runs its 4 tokens, so continuous slots refill
    # in the same pairs): rows and prompt slots are powers of two. Lockstep sizes each
    # batch's cache by its own longest prompt, continuous by the call's.
    lengths = sorted(lengths + 1, reverse=True)  # + BOS
    for start in range(0, batch, 2):
      chunk = lengths[start:start + 2]
      cache_prompt = bucket(chunk[0] if batching == "lockstep" else lengths[0])
      prefill_shapes.add((len(chunk), bucket(chunk[0]), cache_prompt))
      decode_shapes.add((min(2, batch), cache_prompt) if batching == "continuous"
                        else (len(chunk), cache_prompt))
  prefills = sampler._prefill._cache_size()
  decodes = sum(f._cache_size() for f in sampler._decode_fns.values())
  # 7 calls, 11 batches: at most (1 or 2 rows) x (32 or 64 prompt slots) x (cache of 32 or 64
  # prompt slots) prefill programs, and (rows, cache) decode programs.
  assert len(prefill_shapes) <= 6 and len(decode_shapes) <= 4
  assert prefills == len(prefill_shapes) and decodes == len(decode_shapes), (
      prefills, decodes, prefill_shapes, decode_shapes)


# ----------------------------------------------------------------------------- Gemma 3 270M

REAL_PROMPTS = [
    "The capital of France is",
    "Human: How do I bake bread?\n\nAssistant:",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
]
TIE_TOLERANCE = 2e-3  # logit gap that float32 rounding differences can flip (README numbers)


@pytest.fixture(scope="module")
def real_sampler(gemma270m):
  return Sampler(gemma270m.config, gemma270m.params, gemma270m.tokenizer)


@pytest.fixture(scope="module")
def real_batch1(real_sampler):
  """Greedy, 64 new tokens, each prompt on its own."""
  return [real_sampler.generate([p], max_new_tokens=64) for p in REAL_PROMPTS]


def _top2(logits):
  order = np.argsort(-logits)[:2]
  return [int(t) for t in order], float(logits[order[0]] - logits[order[1]])


def _explain_divergence(gemma270m, hf_model, ids, ours, ref):
  """(is a tie, message) for the first step where two greedy continuations differ."""
  import torch

  t = next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)
  context = list(ids) + list(ref[:t])
  tokens = jnp.asarray([context], jnp.int32)
  positions, mask = decoder.sequence_inputs(jnp.ones_like(tokens, bool))
  logits, _ = decoder.Decoder(gemma270m.config).apply({"params": gemma270m.params}, tokens,
                                                   positions, mask)
  our_top, our_gap = _top2(np.asarray(logits[0, -1], np.float32))
  with torch.no_grad():
    hf_logits = hf_model(torch.tensor([context])).logits[0, -1].float().numpy()
  hf_top, hf_gap = _top2(hf_logits)
  tie = (set(our_top) == set(hf_top) == {ours[t], ref[t]}
         and max(our_gap, hf_gap) < TIE_TOLERANCE)
  message = (f"diverged at new token {t}: ours {ours[t]}, transformers {ref[t]}; top-2 "
             f"ours {our_top} (gap {our_gap:.2e}), transformers {hf_top} (gap {hf_gap:.2e}): "
             + ("a tie within float noise" if tie else "NOT a tie"))
  return tie, message


@needs_transformers
def test_greedy_matches_transformers(gemma270m, hf_gguf_model, real_sampler, real_batch1):
  """4 prompts x 64 new tokens, each at batch 1 and all in one padded batch of mixed lengths
  (6-20 tokens), against transformers' greedy generate at batch 1."""
  import torch

  tok = gemma270m.tokenizer
  batch = real_sampler.generate(REAL_PROMPTS, max_new_tokens=64)
  ties = []
  for i, prompt in enumerate(REAL_PROMPTS):
    ids = tok.encode(prompt, add_bos=True)
    with torch.no_grad():
      out = hf_gguf_model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=64,
                                   eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    ref = out[0, len(ids):].tolist()
    for name, ours in (("batch 1", real_batch1[i].tokens[0]), ("batch 4", batch.tokens[i])):
      if ours == ref:
        continue
      tie, message = _explain_divergence(gemma270m, hf_gguf_model, ids, ours, ref)
      assert tie, f"{prompt!r} ({name}): {message}"
      ties.append(f"{prompt!r} ({name}): {message}")
  for t in ties:
    warnings.warn(t)
  print(f"{len(REAL_PROMPTS)} prompts x 64 tokens x (batch 1, batch 4): "
        f"{2 * len(REAL_PROMPTS) - len(ties)} identical rows, {len(ties)} tie divergences")


def test_stop_string_on_real_model(real_sampler, real_batch1):
  """The dialogue prompt runs into a new "\\n\\nHuman:" turn; generation stops before it."""
  stop = "\n\nHuman:"
  full = real_batch1[1]
  assert stop in full.texts[0]
  out = real_sampler.generate([REAL_PROMPTS[1]], max_new_tokens=64, stop=[stop])
  assert out.finish_reasons == ["stop"]
  assert out.texts[0] == full.texts[0][:full.texts[0].find(stop)]
  k = out.num_tokens[0]
  assert out.tokens[0] == full.tokens[0][:k]
  tok = real_sampler.tokenizer
  assert stop in tok.decode(out.tokens[0]) and stop not in tok.decode(out.tokens[0][:k - 1])


def test_stop_strings_that_tokenise_unusually(gemma270m):
  """Stop strings split across tokens, or starting inside one, on the real tokenizer."""
  tok = gemma270m.tokenizer
  sampler = Sampler(gemma270m.config, gemma270m.params, tok)
  text = "Sure, here it is.\n\nHuman: thanks"
  ids = np.asarray(tok.encode(text, add_bos=False))
  pieces = [tok.decode([i]) for i in ids]
  assert "\n\nHuman:" not in pieces  # the stop string spans several tokens
  for stop, before in (("\n\nHuman:", "Sure, here it is."), ("man:", "Sure, here it is.\n\nHu"),
                       ("re it", "Sure, he"), ("\n", "Sure, here it is.")):
    k, cut = sampler._find_stop(ids, [stop])
    assert cut == before
    assert stop in tok.decode(ids[:k]) and stop not in tok.decode(ids[:k - 1])
  assert sampler._find_stop(ids, ["Assistant:"]) is None


def test_prefix_cache_equals_uncached_real_model(gemma270m):
  """A ~200-token shared prefix, prefilled once, against the same token sequences uncached."""
  tok = gemma270m.tokenizer
  prefix_text = ("The following is a conversation between a curious person and a helpful, "
                 "honest and harmless AI assistant. The assistant answers questions clearly, "
                 "admits when it does not know something, and declines requests that could "
                 "hurt someone. ") * 5

  class SplitAtPrefix:
    """The real tokenizer, except that prefix + prompt encodes as prefix and prompt apart,
    which is what generation with a prefix cache sees."""
    bos_id, eos_id, start_ids = tok.bos_id, tok.eos_id, tok.start_ids
    decode = staticmethod(tok.decode)

    def encode(self, text, *, add_bos):
      return self.encode_batch([text], add_bos=add_bos)[0]

    def encode_batch(self, texts, *, add_bos):
      out = []
      for t in texts:
        if add_bos and t.startswith(prefix_text) and len(t) > len(prefix_text):
          out.append(tok.encode(prefix_text, add_bos=True)
                     + tok.encode(t[len(prefix_text):], add_bos=False))
        else:
          out.append(tok.encode(t, add_bos=add_bos))
      return out

  sampler = Sampler(gemma270m.config, gemma270m.params, SplitAtPrefix())
  prefix = sampler.prefill_prefix(prefix_text)
  assert 180 <= prefix.length <= 256
  prompts = ["\n\nHuman: What is the tallest mountain on Earth?\n\nAssistant:",
             "\n\nHuman: Can you help me write a poem?\n\nAssistant:",
             "\n\nHuman: hi\n\nAssistant:"]
  cached = sampler.generate(prompts, max_new_tokens=16, prefix=prefix)
  plain = sampler.generate([prefix_text + p for p in prompts], max_new_tokens=16)
  for p, a, b, la, lb in zip(prompts, cached.tokens, plain.tokens, cached.logprobs,
                             plain.logprobs):
    assert a == b, f"{p!r}: cached {a} vs uncached {b}"
    np.testing.assert_allclose(la, lb, atol=2e-3, err_msg=p)
  assert cached.texts == plain.texts


def _dot_generals(jaxpr):
  """Every dot_general equation of a jaxpr, including those inside nested (jit) jaxprs."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)
      if hasattr(inner, "eqns"):
        yield from _dot_generals(inner)


def test_benchmark_matmul_ceiling_reads_every_weight_once_per_step(tiny):
  """benchmarks/sampler.py's ceiling: one step holds exactly one matmul per parameter matrix
  (7 per layer and the vocabulary projection), and the timing runs."""
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "sampler.py")
  spec = importlib.util.spec_from_file_location("sampler_benchmark", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  config, params = tiny
  ceiling_sampler = Sampler(config, params, CharTokenizer(), eos_ids=())
  for rows in (1, 3):
    step = bench.matmul_chain(ceiling_sampler, rows)
    x = jnp.ones((rows, config.embed_dim), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x: step(0, x))(x).jaxpr  # noqa: B023 - called at once
    dots = list(_dot_generals(jaxpr))
    assert len(dots) == 7 * config.num_layers + 1
    weights = {tuple(e.invars[1].aval.shape) for e in dots} | {
        tuple(e.invars[0].aval.shape) for e in dots}
    assert (config.vocab_size, config.embed_dim) in weights or \
        (config.embed_dim, config.vocab_size) in weights
    seconds = bench.matmul_floor_step_s(ceiling_sampler, rows, steps=2)
    assert 0 < seconds < 10
