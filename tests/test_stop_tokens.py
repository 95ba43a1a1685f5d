"""Tokens that may complete a stop string (`cai_jax.sampling.stop_tokens`): on real tokenizers
(Gemma 3's SentencePiece, SmolLM2's byte-level BPE) and a byte-fallback one, for every way of
cutting a text into two separately encoded halves, the token at which a stop string first
appears in the decoded text is always one the mask marks; and the sampler, which ends its
decode loops at such tokens, returns what a check after every step returns, in fewer steps than
a check every 16 steps."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cai_jax.constitution import prompts as P
from cai_jax.model import decoder, families
from cai_jax.sampling import stop_tokens
from cai_jax.sampling.sampler import Sampler
from cai_jax.sampling.strategies import Sampling
import tiny_model

STOPS = tuple(dict.fromkeys(P.RESPONSE_STOPS + P.CRITIQUE_STOPS + P.REVISION_STOPS
                            + P.COT_STOPS + ("re it", "é:", "日本", "😀!", ")")))
TEXTS = [
    "Sure, here it is.\n\nHuman: thanks\n\nAssistant: You're welcome :)",
    "Step 1: mix.\n\nCritiqueRequest: Identify harm.\n\nRevisionRequest: Rewrite it.",
    "Café: é:é: 日本語 😀! (a) or (b)?\n\nAssistant:",
    "x\n\n\nHuman:\n\nHuman:: and\n\n Human: again",
]


def _completing_tokens(tok, ids, stop):
  """Indices k of the tokens whose text first completes `stop` (decode of ids[:k + 1] holds it,
  of ids[:k] not), searching again after each hit."""
  out, start = [], 0
  for k in range(len(ids)):
    if stop in tok.decode(ids[start:k + 1]):
      out.append(k)
      start = k + 1
  return out


def _splits(tok, text):
  """The text's token ids, and those of the text cut at every character into two halves
  encoded separately (other tokenizations of the same text)."""
  yield tok.encode(text, add_bos=False)
  for c in range(1, len(text)):
    yield tok.encode(text[:c], add_bos=False) + tok.encode(text[c:], add_bos=False)


def _check_tokenizer(tok, vocab, real=True):
  texts = stop_tokens.token_texts(tok, vocab)
  assert len(texts) == vocab
  mask = stop_tokens.may_complete(texts, STOPS)
  assert mask.shape == (vocab,)
  if real:  # The pipeline's stop strings all end in ":": few tokens end a decode loop.
    assert stop_tokens.may_complete(texts, P.RESPONSE_STOPS).mean() < 0.01  # 0.15%, 0.8%
  hits = 0
  for text in TEXTS:
    for ids in _splits(tok, text):
      for stop in STOPS:
        for k in _completing_tokens(tok, ids, stop):
          hits += 1
          assert mask[ids[k]], (text, stop, ids, k, tok.decode([ids[k]]))
  return hits


def test_gemma_tokenizer(gguf_path):
  from gguf import GGUFReader
  from cai_jax.tokenizer import tokenizer_from_gguf_reader
  tok = tokenizer_from_gguf_reader(GGUFReader(gguf_path), gguf_path)
  assert _check_tokenizer(tok, tok.vocab_size) > 500  # (stop, token) cases checked


def test_byte_level_bpe_tokenizer(smollm2_path):
  from gguf import GGUFReader
  from cai_jax.tokenizer import tokenizer_from_gguf_reader
  tok = tokenizer_from_gguf_reader(GGUFReader(smollm2_path), smollm2_path)
  assert _check_tokenizer(tok, tok.vocab_size) > 500  # (stop, token) cases checked


def test_byte_fallback_tokenizer():
  """ASCII pieces only: é, 日本 and 😀 are spelled in byte tokens, so the character that
  completes those stop strings is split over several tokens."""
  tok = tiny_model.small_tokenizer()
  assert len(tok.encode("é", add_bos=False)) == 2
  assert _check_tokenizer(tok, tok.vocab_size + 5, real=False) > 500  # ids past the tokenizer: marked


def test_rule_does_not_apply_to_stops_ending_in_whitespace():
  texts = ["a", "b:", " ", "\ufffd", "", None]
  assert stop_tokens.may_complete(texts, ("x\n",)) is None
  assert stop_tokens.may_complete(texts, ("a:", "x ")) is None
  np.testing.assert_array_equal(stop_tokens.may_complete(texts, ("q:",)),
                                [False, True, False, True, True, True])
  np.testing.assert_array_equal(stop_tokens.may_complete(texts, ("q:", "za")),
                                [True, True, False, True, True, True])


class PairTokenizer:
  """Test double for the tiny model: id i decodes to two letters of eight, so stop strings
  start and end inside tokens (BOS = 2)."""
  start_ids = [2]
  eos_id = 1

  @staticmethod
  def piece(i):
    return "abcdefgh"[int(i) % 8] + "abcdefgh"[int(i) // 8 % 8]

  def encode(self, text, *, add_bos):
    return [2] * add_bos + [3 + ord(c) % 500 for c in text]

  def encode_batch(self, texts, *, add_bos):
    return [self.encode(t, add_bos=add_bos) for t in texts]

  def decode(self, ids):
    return "".join(self.piece(i) for i in ids)


def test_sampler_ends_loops_at_stop_tokens():
  """12 prompts sampled (temperature 1) with stop strings that end rows at many steps: ending
  the decode loop at marked tokens gives the tokens, texts, finish reasons and log-probs of a
  host check after every step, for lockstep and continuous batching, in as many slot-steps;
  continuous batching runs fewer than with a check every 16 steps."""
  config = families.preset("tiny")
  params = tiny_model.varied_params(
      jax.jit(decoder.init_params, static_argnums=0)(config, jax.random.PRNGKey(2)))
  tok = PairTokenizer()
  prompts = [f"prompt {i}: " + "abc" * i for i in range(12)]
  stop = ("abc", "hh", "gfe")
  for batching in ("lockstep", "continuous"):
    runs = {}
    for name, on_device, chunk in (("device", True, 16), ("every step", False, 1),
                                   ("chunks", False, 16)):
      s = Sampler(config, params, tok, eos_ids=(), max_batch=4, chunk_size=chunk,
                  batching=batching, stop_on_device=on_device)
      runs[name] = s, s.generate(prompts, max_new_tokens=40, strategy=Sampling(),
                                 key=jax.random.PRNGKey(3), stop=stop)
    device, every = runs["device"][1], runs["every step"][1]
    assert device.tokens == every.tokens and device.texts == every.texts
    assert device.finish_reasons == every.finish_reasons
    for a, b in zip(device.logprobs, every.logprobs):
      np.testing.assert_array_equal(a, b)
    assert 3 <= device.finish_reasons.count("stop") <= 11, device.finish_reasons
    assert len(set(device.num_tokens)) >= 5, device.num_tokens
    steps = {name: s.slot_steps for name, (s, _) in runs.items()}
    assert steps["device"] == steps["every step"], steps
    # A lockstep batch waits for its longest row anyway (here one that runs to the budget).
    assert (steps["device"] < steps["chunks"]) == (batching == "continuous"), steps
