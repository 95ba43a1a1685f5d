"""Generation throughput: cai_jax's KV-cache sampler vs transformers' generate, same prompts.

python benchmarks/sampler.py
(a) Gemma 3 270M float32, greedy, 128 new tokens (all of them: cai_jax without EOS ids,
    transformers with min_new_tokens), at batch 1 and batch 8; tokens/s, and the fraction of the
    machine's memory read bandwidth that batch-1 decoding reaches (every step reads all float32
    parameters: 4 * num_params bytes; bandwidth measured here by summing a 1 GB float32 array).
(b) a ~1,500-token shared prefix + 16 short prompts, 32 new tokens, with and without prefix
    caching (the prefix prefill is part of the timed work).
Each cai_jax case runs twice: the first call's extra time is compilation, reported separately.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cai_jax.checkpoints import loader  # noqa: E402
from cai_jax.sampling.sampler import Sampler  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "Human: How do I bake bread at home?\n\nAssistant:",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "The three most important things to remember when learning a new language are",
    "Write a short poem about the moon.",
    "Human: What causes the seasons on Earth?\n\nAssistant:",
    "In 1969, the first humans",
]
QUESTIONS = [
    "What is the boiling point of water?", "How do plants make food?",
    "Can you recommend a good book?", "Why do cats purr?", "What is a prime number?",
    "How far away is the Moon?", "How do I tie a bowline knot?", "What is inflation?",
    "Who wrote Hamlet?", "Why is the sky blue?", "How do vaccines work?",
    "What should I cook tonight?", "How do airplanes fly?", "What is machine learning?",
    "How can I sleep better?", "What is the speed of light?",
]


def timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def read_bandwidth_gb_s(gigabytes: float = 1.0) -> dict:
  """Best of 5 full reads of a float32 array: numpy's sum (one thread) and XLA's (all cores)."""
  import jax
  import jax.numpy as jnp

  a = np.ones(int(gigabytes * 2**30) // 4, np.float32)
  best_np = min(timed(lambda: float(a.sum()))[1] for _ in range(5))
  x = jnp.asarray(a)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  best_jax = min(timed(lambda: total(x).block_until_ready())[1] for _ in range(5))
  del x
  return {"numpy_sum_gb_s": a.nbytes / best_np / 1e9, "xla_sum_gb_s": a.nbytes / best_jax / 1e9}


def ours_twice(fn):
  """(result, first-call seconds, second-call seconds)."""
  _, first = timed(fn)
  out, second = timed(fn)
  return out, first, second


def prefix_text(tok, target_tokens: int) -> str:
  lines = ["The following principles guide an AI assistant that is helpful, honest and harmless."]
  i = 0
  while len(tok.encode("\n".join(lines), add_bos=True)) < target_tokens:
    i += 1
    lines.append(f"Principle {i}: Among the possible responses, choose the one that is most "
                 f"{['helpful', 'honest', 'harmless', 'careful', 'respectful'][i % 5]} and least "
                 f"{['evasive', 'preachy', 'dangerous', 'misleading', 'condescending'][i % 5]}, "
                 f"and explain the reasoning in plain language where it helps the person.")
  return "\n".join(lines) + "\n\nWhat follows is a conversation with the assistant."


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/cai_jax"))
  parser.add_argument("--new_tokens", type=int, default=128)
  args = parser.parse_args()
  n_new = args.new_tokens

  bw = read_bandwidth_gb_s()
  bandwidth = max(bw.values())
  print(f"read bandwidth: numpy {bw['numpy_sum_gb_s']:.1f} GB/s, XLA {bw['xla_sum_gb_s']:.1f} "
        f"GB/s", flush=True)

  model = loader.load("gemma3-270m", cache_dir=args.cache_dir)
  tok = model.tokenizer
  num_params = model.config.num_params()
  # No EOS ids: every row generates all n_new tokens, as transformers does with min_new_tokens.
  sampler = Sampler(model.config, model.params, tok, eos_ids=())
  out = {"device": "cpu", "num_params": num_params, "new_tokens": n_new, **bw}

  # ------------------------------------------------------------------ (a) batch 1 and batch 8
  for batch in (1, 8):
    prompts = PROMPTS[:batch]
    res, first, second = ours_twice(lambda: sampler.generate(prompts, max_new_tokens=n_new))
    assert sum(res.num_tokens) == batch * n_new
    out[f"ours_batch{batch}_tok_s"] = batch * n_new / second
    out[f"ours_batch{batch}_compile_s"] = first - second
    print(f"cai_jax batch {batch}: {batch * n_new / second:.1f} tok/s ({second:.2f} s; first "
          f"call {first:.2f} s)", flush=True)
  steps_per_s = out["ours_batch1_tok_s"]  # one token per decode step at batch 1
  achieved = 4 * num_params * steps_per_s / 1e9
  out["batch1_param_read_gb_s"] = achieved
  out["batch1_bandwidth_fraction"] = achieved / bandwidth
  print(f"batch-1 decode reads {achieved:.1f} GB/s of parameters = "
        f"{100 * achieved / bandwidth:.0f}% of the measured {bandwidth:.1f} GB/s", flush=True)

  # ------------------------------------------------------------------ (b) prefix caching
  prefix = prefix_text(tok, 1500)
  prompts = [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS]
  out["prefix_tokens"] = len(tok.encode(prefix, add_bos=True))

  def with_cache():
    pc = sampler.prefill_prefix(prefix)
    return sampler.generate(prompts, max_new_tokens=32, prefix=pc)

  def without_cache():
    return sampler.generate([prefix + p for p in prompts], max_new_tokens=32)

  _, first_c, second_c = ours_twice(with_cache)
  print(f"prefix cached: {second_c:.2f} s (first call {first_c:.2f} s)", flush=True)
  _, first_u, second_u = ours_twice(without_cache)
  print(f"no prefix cache: {second_u:.2f} s (first call {first_u:.2f} s)", flush=True)
  out.update(prefix_cached_s=second_c, prefix_cached_compile_s=first_c - second_c,
             prefix_uncached_s=second_u, prefix_uncached_compile_s=first_u - second_u,
             prefix_cached_tok_s=16 * 32 / second_c, prefix_uncached_tok_s=16 * 32 / second_u,
             prefix_cache_speedup=second_u / second_c)

  # ------------------------------------------------------------------ transformers
  try:
    import torch
    from transformers import AutoModelForCausalLM
  except ImportError:
    print(json.dumps(out))
    return
  del sampler
  hf = AutoModelForCausalLM.from_pretrained(model.source, dtype=torch.float32).eval()
  out["torch_threads"] = torch.get_num_threads()

  def hf_generate(prompts, new):
    ids = [tok.encode(p, add_bos=True) for p in prompts]
    width = max(map(len, ids))  # left-padded, as transformers generates from padded batches
    input_ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in ids])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    with torch.no_grad():
      gen = hf.generate(input_ids, attention_mask=mask, do_sample=False, max_new_tokens=new,
                        min_new_tokens=new, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
    assert gen.shape[1] - width == new
    return gen

  hf_generate(PROMPTS[:1], 4)  # warm-up
  for batch in (1, 8):
    _, secs = timed(lambda: hf_generate(PROMPTS[:batch], n_new))
    out[f"hf_batch{batch}_tok_s"] = batch * n_new / secs
    print(f"transformers batch {batch}: {batch * n_new / secs:.1f} tok/s ({secs:.2f} s)",
          flush=True)
  out["batch1_speedup"] = out["ours_batch1_tok_s"] / out["hf_batch1_tok_s"]
  out["batch8_speedup"] = out["ours_batch8_tok_s"] / out["hf_batch8_tok_s"]
  keys = ["batch1_speedup", "batch8_speedup", "prefix_cache_speedup"]
  print(json.dumps({**{k: out[k] for k in keys}, **{k: v for k, v in out.items()
                                                     if k not in keys}}))


if __name__ == "__main__":
  main()
