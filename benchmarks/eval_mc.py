"""Multiple-choice scoring throughput: cai_jax's packed scorer vs transformers, same items.

python benchmarks/eval_mc.py [--repeat 4]
transformers scores each option with its own forward pass over prompt + option (batch 1, full
logits), the straightforward way; cai_jax packs each item's prompt and options into one row.
Compile time is reported separately. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cai_jax.checkpoints import loader  # noqa: E402
from cai_jax.eval import mc  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeat", type=int, default=4, help="copies of the 7-item fixture")
  parser.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/cai_jax"))
  args = parser.parse_args()
  items = mc.read_mc_file(os.path.join(ROOT, "tests", "fixtures", "mc_paper_format.jsonl"))
  items = items * args.repeat
  model = loader.load("gemma3-270m", cache_dir=args.cache_dir)
  scorer = mc.MCScorer(model.config, model.params, model.tokenizer)

  t0 = time.perf_counter()
  scorer.score(items)  # compiles every bucket this set needs
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  result = scorer.score(items)
  ours = time.perf_counter() - t0
  out = {"items": len(items), "items_per_s": len(items) / ours,
         "compile_and_first_pass_s": first, "accuracy": result.accuracy}

  try:
    import torch
    from transformers import AutoModelForCausalLM
  except ImportError:
    print(json.dumps(out))
    return
  hf = AutoModelForCausalLM.from_pretrained(model.source, dtype=torch.float32).eval()
  tok = model.tokenizer
  t0 = time.perf_counter()
  with torch.no_grad():
    for item in items:
      prompt = tok.encode(item.prompt, add_bos=True)
      for option in item.options:
        ids = prompt + tok.encode(option, add_bos=False)
        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
        sum(float(logp[k - 1, ids[k]]) for k in range(len(prompt), len(ids)))
  ref = time.perf_counter() - t0
  out.update(ref_items_per_s=len(items) / ref, speedup=ref / ours)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
