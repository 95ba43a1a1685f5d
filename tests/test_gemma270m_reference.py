"""cai_jax on the real Gemma 3 270M against Hugging Face transformers (an implementation we did
not write), fed the same dequantized GGUF weights, both in float32.

Criteria (log-probs after log_softmax, every position of every prompt):
  * identical argmax at every position;
  * short prompts: max |log-prob difference| over the whole vocabulary <= 2e-3;
  * the long prompt (> 1,024 tokens, so the 512-token sliding window matters): <= 2e-3 for every
    token with reference log-prob >= -10, and <= 5e-3 over the whole vocabulary.
Why the last bound is looser: on the long prompt, a few positions amplify float32 rounding by
~100x (from layer 4 on, in both implementations). Against a float64 run of cai_jax, our float32
log-probs differ by at most 2.8e-4 there while transformers' float32 differ by 3.6e-3 (measured
on the 1,793-token variant of the prompt): the residual gap is transformers' own rounding, in the
deep tail (log-probs below -30).

Without transformers the same prompts are checked against tests/golden/gemma3_270m_logits.npz
(transformers' token ids, reference argmax + top-8 log-probs, written by
tests/golden/make_logits_golden.py).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax.model import decoder
from conftest import needs_transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
from reference_texts import SHORT_PROMPTS, long_prompt  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "gemma3_270m_logits.npz")
PROMPTS = SHORT_PROMPTS + [long_prompt()]


@pytest.fixture(scope="module")
def our_logprobs(gemma270m):
  """log_softmax of cai_jax's logits per prompt: short prompts in one padded batch."""
  model = decoder.Decoder(gemma270m.config)

  @jax.jit
  def logprobs(params, tokens, valid):
    positions, mask = decoder.sequence_inputs(valid)
    logits, _ = model.apply({"params": params}, tokens, positions, mask)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

  ids = [gemma270m.tokenizer.encode(p, add_bos=True) for p in PROMPTS]
  short = ids[:-1]
  tokens = np.zeros((len(short), 64), np.int32)
  valid = np.zeros((len(short), 64), bool)
  for r, row in enumerate(short):
    tokens[r, :len(row)], valid[r, :len(row)] = row, True
  out = np.asarray(logprobs(gemma270m.params, tokens, valid))
  result = [out[r, :len(row)] for r, row in enumerate(short)]
  long_ids = np.asarray([ids[-1]], np.int32)
  result.append(np.asarray(logprobs(gemma270m.params, long_ids, np.ones_like(long_ids, bool)))[0])
  return ids, result


def test_long_prompt_crosses_the_sliding_window(our_logprobs):
  ids, _ = our_logprobs
  assert len(ids[-1]) > 1024


@needs_transformers
def test_logits_match_transformers(our_logprobs, hf_gguf_model):
  import torch

  ids, ours = our_logprobs
  report = []
  for i, (row, mine) in enumerate(zip(ids, ours)):
    with torch.no_grad():
      logits = hf_gguf_model(torch.tensor([row])).logits[0].float()
    ref = torch.log_softmax(logits, dim=-1).numpy()
    diff = np.abs(mine - ref)
    report.append((len(row), float(diff.max()), float(diff[ref >= -10].max())))
    np.testing.assert_array_equal(mine.argmax(-1), ref.argmax(-1), err_msg=f"prompt {i}")
    # bounds just above the errors measured (README "Correctness, measured"): short prompts
    # 1.2e-4 over the whole vocabulary; the 1,153-token prompt 7.6e-4 for log-probs >= -10 and
    # 3.8e-3 in the deep tail (transformers' own float32 rounding, see the module docstring)
    if i < len(SHORT_PROMPTS):
      assert diff.max() <= 2e-4, report
    else:
      assert diff[ref >= -10].max() <= 1e-3, report
      assert diff.max() <= 5e-3, report
  print("tokens, max |dlogp| (all vocab), max |dlogp| (logp >= -10):", report)


def test_logits_match_golden(our_logprobs):
  """The committed reference (transformers' argmax and top-8 log-probs) holds without torch."""
  ids, ours = our_logprobs
  golden = np.load(GOLDEN)
  for i, (row, mine) in enumerate(zip(ids, ours)):
    # the ids of transformers' tokenizer: our tokenization checked by another implementation
    np.testing.assert_array_equal(row, golden[f"ids_{i}"], err_msg=f"prompt {i}: token ids")
    top_ids, top_logp = golden[f"top_ids_{i}"], golden[f"top_logp_{i}"]
    np.testing.assert_array_equal(mine.argmax(-1), top_ids[:, 0], err_msg=f"prompt {i}")
    # the bounds used against transformers itself for the short prompts and for log-probs >= -10
    np.testing.assert_allclose(np.take_along_axis(mine, top_ids, axis=-1), top_logp,
                               atol=2e-4 if i < len(SHORT_PROMPTS) else 1e-3, rtol=0,
                               err_msg=f"prompt {i}")


def test_scanned_layers_match_the_golden_logits(gemma270m, our_logprobs):
  """Gemma 3 270M with its 18 layers scanned as 3 groups of 6 (`model.scan_layers`, the TPU
  configs' setting) meets the same reference bounds on the short prompts, and agrees with the
  unrolled model's log-probs to float rounding."""
  from cai_jax.model import layer_scan
  cfg = gemma270m.config.replace(scan_layers=True)
  params = layer_scan.stack(gemma270m.params, cfg.layer_types)
  model = decoder.Decoder(cfg)
  ids, ours = our_logprobs
  short = ids[:len(SHORT_PROMPTS)]
  tokens = np.zeros((len(short), 64), np.int32)
  valid = np.zeros((len(short), 64), bool)
  for r, row in enumerate(short):
    tokens[r, :len(row)], valid[r, :len(row)] = row, True

  @jax.jit
  def logprobs(params, tokens, valid):
    positions, mask = decoder.sequence_inputs(valid)
    logits, _ = model.apply({"params": params}, tokens, positions, mask)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

  out = np.asarray(logprobs(params, tokens, valid))
  golden = np.load(GOLDEN)
  for i, row in enumerate(short):
    mine = out[i, :len(row)]
    top_ids, top_logp = golden[f"top_ids_{i}"], golden[f"top_logp_{i}"]
    np.testing.assert_array_equal(mine.argmax(-1), top_ids[:, 0], err_msg=f"prompt {i}")
    np.testing.assert_allclose(np.take_along_axis(mine, top_ids, axis=-1), top_logp,
                               atol=2e-4, rtol=0, err_msg=f"prompt {i}")
    print(f"prompt {i}: scanned vs unrolled max |dlogp| {np.abs(mine - ours[i]).max():.2e}")
