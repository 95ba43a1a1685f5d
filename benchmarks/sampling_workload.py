"""Sampling throughput on the pipeline's own workload: continuous vs lockstep batching.

python benchmarks/sampling_workload.py
The workload of `sl_generate`'s initial answers and `sample_pairs`: the first --prompts red-team
prompts shipped with cai_jax (`red_team`), each after the constitution's helpful exchanges
(conversation.policy_prefix = helpful_exchanges, prefilled once and cached), sampled at
temperature 1 with up to --new-tokens tokens, stopping at the response stop strings
("\n\nHuman:" ...) or the format's end ids, one key per prompt from its record id. Rows end at
very different lengths, which is what continuous batching is for.

Both samplers hold --slots row slots: "lockstep" decodes batches of that many prompts until the
slowest row is done, "continuous" refills a slot as soon as its row finishes. Their timed runs
alternate (--repeats of each after one untimed call that compiles), the fastest counts. Also
reported: the slots' utilisation (tokens generated / decode steps x slots), and the same prompts
decoded greedily by both, every prompt's tokens compared (the outputs must be identical).

The last line is one JSON object with continuous_rows_per_s, lockstep_rows_per_s and
continuous_speedup first.
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", default="gemma3-270m")
  parser.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/cai_jax"))
  parser.add_argument("--prompts", type=int, default=48)
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--slots", type=int, default=8)
  parser.add_argument("--chunk-size", type=int, default=16,
                      help="decode steps between stop-string checks (the jobs' default)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--no-greedy", action="store_true", help="skip the greedy comparison")
  args = parser.parse_args()

  import jax

  from cai_jax.checkpoints import loader
  from cai_jax.constitution import prompts as P
  from cai_jax.constitution.conversation_format import make_format
  from cai_jax.constitution.loading import load_constitution
  from cai_jax.constitution.policy_layout import PolicyLayout
  from cai_jax.data.sources import load_prompt_set
  from cai_jax.sampling.record_keys import record_keys
  from cai_jax.sampling.sampler import Sampler
  from cai_jax.sampling.strategies import Greedy, Sampling

  device = jax.devices()[0]
  print(f"JAX device: {device.platform} ({device.device_kind})", flush=True)
  model = loader.load(args.checkpoint, cache_dir=args.cache_dir)
  fmt = make_format("hh", model.tokenizer)
  layout = PolicyLayout(fmt, load_constitution("harmless"), "helpful_exchanges")
  records = load_prompt_set("red_team")[:args.prompts]
  if len(records) < args.prompts:
    raise SystemExit(f"only {len(records)} red-team prompts ship with cai_jax")
  rows = [layout.rest(r.prompt) for r in records]
  keys = record_keys(0, [r.id for r in records])
  samplers = {b: Sampler(model.config, model.params, model.tokenizer, max_batch=args.slots,
                         chunk_size=args.chunk_size, eos_ids=fmt.stop_ids, batching=b)
              for b in ("lockstep", "continuous")}
  prefixes = {b: layout.prefill(s) for b, s in samplers.items()}
  prefix_tokens = prefixes["continuous"].length

  def run(batching, strategy):
    s = samplers[batching]
    steps, tokens = s.slot_steps, s.tokens_generated
    start = time.perf_counter()
    out = s.generate(rows, max_new_tokens=args.new_tokens, strategy=strategy, keys=keys,
                     stop=P.RESPONSE_STOPS, prefix=prefixes[batching])
    seconds = time.perf_counter() - start
    return out, seconds, (s.tokens_generated - tokens) / max(1, s.slot_steps - steps)

  result = {"device": device.device_kind, "platform": device.platform,
            "checkpoint": args.checkpoint, "prompts": len(rows), "slots": args.slots,
            "new_tokens": args.new_tokens, "prefix_tokens": prefix_tokens,
            "chunk_size": args.chunk_size, "temperature": 1.0, "repeats": args.repeats}
  strategy = Sampling(temperature=1.0)
  outputs, times, utilisation = {}, {"lockstep": [], "continuous": []}, {}
  for b in ("lockstep", "continuous"):  # first calls: compile
    out, seconds, _ = run(b, strategy)
    result[f"{b}_first_call_s"] = round(seconds, 2)
  for r in range(args.repeats):
    for b in (("lockstep", "continuous") if r % 2 == 0 else ("continuous", "lockstep")):
      out, seconds, util = run(b, strategy)
      outputs[b], utilisation[b] = out, util
      times[b].append(seconds)
      print(f"{b}: {seconds:.1f} s, {len(rows) / seconds:.2f} rows/s, "
            f"{sum(out.num_tokens) / seconds:.1f} tok/s, slot utilisation {util:.2f}", flush=True)
  for b in ("lockstep", "continuous"):
    best = min(times[b])
    result[f"{b}_rows_per_s"] = round(len(rows) / best, 3)
    result[f"{b}_tokens_per_s"] = round(sum(outputs[b].num_tokens) / best, 1)
    result[f"{b}_slot_utilisation"] = round(utilisation[b], 3)
    result[f"{b}_seconds"] = [round(t, 2) for t in times[b]]
  result["continuous_speedup"] = round(
      result["continuous_rows_per_s"] / result["lockstep_rows_per_s"], 3)
  lock, cont = outputs["lockstep"], outputs["continuous"]
  result["sampled_tokens_identical"] = sum(a == b for a, b in zip(lock.tokens, cont.tokens))
  result["answer_tokens"] = {"mean": round(float(np.mean(lock.num_tokens)), 1),
                             "min": int(np.min(lock.num_tokens)),
                             "max": int(np.max(lock.num_tokens))}
  result["finish_reasons"] = {r: lock.finish_reasons.count(r) for r in set(lock.finish_reasons)}
  if not args.no_greedy:
    greedy = {b: run(b, Greedy())[0] for b in ("lockstep", "continuous")}
    result["greedy_tokens_identical"] = sum(
        a == b for a, b in zip(greedy["lockstep"].tokens, greedy["continuous"].tokens))
    result["greedy_texts_identical"] = sum(
        a == b for a, b in zip(greedy["lockstep"].texts, greedy["continuous"].texts))
  head = ("continuous_rows_per_s", "lockstep_rows_per_s", "continuous_speedup")
  print(json.dumps({**{k: result[k] for k in head},
                    **{k: v for k, v in result.items() if k not in head}}), flush=True)


if __name__ == "__main__":
  main()
