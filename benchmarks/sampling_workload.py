"""Sampling throughput on the pipeline's own workload: continuous vs lockstep batching.

python benchmarks/sampling_workload.py
The workload of `sl_generate`'s initial answers and `sample_pairs`: the first --prompts red-team
prompts shipped with cai_jax (`red_team`), each after the constitution's helpful exchanges
(conversation.policy_prefix = helpful_exchanges, prefilled once and cached), sampled at
temperature 1 with up to --new-tokens tokens, stopping at the response stop strings
("\n\nHuman:" ...) or the format's end ids, one key per prompt from its record id. Decode
loops end at tokens that may complete a stop string (--stop-checks chunks: every --chunk-size
steps instead). Rows end at very different lengths, which is what continuous batching is for.

Both samplers hold --slots row slots: "lockstep" decodes batches of that many prompts until the
slowest row is done, "continuous" refills a slot as soon as its row finishes. Each runs with
the checkpoint's float32 weights and, for each of --narrow (default bfloat16; '' for none),
with a narrow copy of them fed to the matmuls as stored (`Sampler(param_dtype=...)`). The timed
runs of all samplers alternate (--repeats of each after one untimed call that compiles), the
fastest counts. Also reported: the slots' utilisation (tokens generated / decode steps x
slots); how the fastest call's time splits between admissions (prefilling prompts into slots:
`Sampler._admit_prompts`, timed here to its result, a benchmark-only wrapper) and the decode
loops with everything else; and the same prompts decoded greedily by both batchings, every
prompt's tokens compared (the outputs must be identical); for narrow weights, how many prompts'
greedy answers equal the float32 ones.

The last line is one JSON object with continuous_rows_per_s, lockstep_rows_per_s and
continuous_speedup (float32 weights) first; the narrow runs' keys start with the dtype.
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
  parser.add_argument("--stop-checks", choices=("device", "chunks"), default="device",
                      help="end decode loops at tokens that may complete a stop string "
                           "(device, the default) or check stop strings only every "
                           "--chunk-size steps (chunks, the sampler before 2026-12-06)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--narrow", default="bfloat16",
                      help="comma-separated sampling weight dtypes to run beside float32")
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
  dtypes = ["float32"] + [d for d in args.narrow.split(",") if d]
  batchings = ("lockstep", "continuous")
  cases = [(d, b) for d in dtypes for b in batchings]
  samplers = {(d, b): Sampler(model.config, model.params, model.tokenizer, max_batch=args.slots,
                              chunk_size=args.chunk_size, eos_ids=fmt.stop_ids, batching=b,
                              param_dtype=None if d == "float32" else d,
                              stop_on_device=args.stop_checks == "device")
              for d, b in cases}
  prefixes = {case: layout.prefill(s) for case, s in samplers.items()}
  prefix_tokens = prefixes[cases[0]].length

  admissions = {case: [0, 0.0] for case in cases}  # this call's (count, seconds)

  def timed_admissions(case):
    """Wraps the sampler's admission step so that its time (to its result) is counted."""
    s = samplers[case]
    admit = s._admit_prompts  # noqa: SLF001 - a diagnostic of this benchmark only

    def wrapper(*a, **k):
      start = time.perf_counter()
      state = jax.block_until_ready(admit(*a, **k))
      admissions[case][0] += 1
      admissions[case][1] += time.perf_counter() - start
      return state
    s._admit_prompts = wrapper  # noqa: SLF001

  for case in cases:
    timed_admissions(case)

  def run(case, strategy):
    s = samplers[case]
    steps, tokens = s.slot_steps, s.tokens_generated
    admissions[case] = [0, 0.0]
    start = time.perf_counter()
    out = s.generate(rows, max_new_tokens=args.new_tokens, strategy=strategy, keys=keys,
                     stop=P.RESPONSE_STOPS, prefix=prefixes[case])
    seconds = time.perf_counter() - start
    return out, seconds, (s.tokens_generated - tokens) / max(1, s.slot_steps - steps)

  def name(case, key):  # float32 keys as they were; narrow ones prefixed with the dtype
    return key if case[0] == "float32" else f"{case[0]}_{key}"

  result = {"device": device.device_kind, "platform": device.platform,
            "checkpoint": args.checkpoint, "prompts": len(rows), "slots": args.slots,
            "new_tokens": args.new_tokens, "prefix_tokens": prefix_tokens,
            "chunk_size": args.chunk_size, "stop_checks": args.stop_checks, "temperature": 1.0,
            "repeats": args.repeats, "dtypes": dtypes}
  strategy = Sampling(temperature=1.0)
  outputs, utilisation = {}, {}
  times = {case: [] for case in cases}
  split = {}  # case -> (admissions, their seconds) of its fastest call
  for case in cases:  # first calls: compile
    _, seconds, _ = run(case, strategy)
    result[name(case, f"{case[1]}_first_call_s")] = round(seconds, 2)
  for r in range(args.repeats):
    for case in (cases if r % 2 == 0 else cases[::-1]):
      out, seconds, util = run(case, strategy)
      outputs[case], utilisation[case] = out, util
      if not times[case] or seconds < min(times[case]):
        split[case] = tuple(admissions[case])
      times[case].append(seconds)
      print(f"{case[0]} {case[1]}: {seconds:.1f} s, {len(rows) / seconds:.2f} rows/s, "
            f"{sum(out.num_tokens) / seconds:.1f} tok/s, slot utilisation {util:.2f}", flush=True)
  for case in cases:
    best, b = min(times[case]), case[1]
    result[name(case, f"{b}_rows_per_s")] = round(len(rows) / best, 3)
    result[name(case, f"{b}_tokens_per_s")] = round(sum(outputs[case].num_tokens) / best, 1)
    result[name(case, f"{b}_slot_utilisation")] = round(utilisation[case], 3)
    result[name(case, f"{b}_seconds")] = [round(t, 2) for t in times[case]]
    result[name(case, f"{b}_admissions")] = split[case][0]
    result[name(case, f"{b}_admission_s")] = round(split[case][1], 2)
    result[name(case, f"{b}_decode_s")] = round(best - split[case][1], 2)
  for d in dtypes:
    lock, cont = outputs[d, "lockstep"], outputs[d, "continuous"]
    result[name((d,), "continuous_speedup")] = round(
        result[name((d,), "continuous_rows_per_s")] / result[name((d,), "lockstep_rows_per_s")], 3)
    result[name((d,), "continuous_decode_speedup")] = round(  # admissions left out
        result[name((d,), "lockstep_decode_s")] / result[name((d,), "continuous_decode_s")], 3)
    result[name((d,), "sampled_tokens_identical")] = sum(
        a == b for a, b in zip(lock.tokens, cont.tokens))
  lock = outputs["float32", "lockstep"]
  result["answer_tokens"] = {"mean": round(float(np.mean(lock.num_tokens)), 1),
                             "min": int(np.min(lock.num_tokens)),
                             "max": int(np.max(lock.num_tokens))}
  result["finish_reasons"] = {r: lock.finish_reasons.count(r) for r in set(lock.finish_reasons)}
  if not args.no_greedy:
    greedy = {case: run(case, Greedy())[0] for case in cases}
    for d in dtypes:
      lock, cont = greedy[d, "lockstep"], greedy[d, "continuous"]
      result[name((d,), "greedy_tokens_identical")] = sum(
          a == b for a, b in zip(lock.tokens, cont.tokens))
      result[name((d,), "greedy_texts_identical")] = sum(
          a == b for a, b in zip(lock.texts, cont.texts))
      if d != "float32":  # narrow weights against float32, continuous batching both
        ref = greedy["float32", "continuous"]
        result[f"{d}_greedy_answers_equal_float32"] = sum(
            a == b for a, b in zip(cont.tokens, ref.tokens))
  head = ("continuous_rows_per_s", "lockstep_rows_per_s", "continuous_speedup")
  print(json.dumps({**{k: result[k] for k in head},
                    **{k: v for k, v in result.items() if k not in head}}), flush=True)


if __name__ == "__main__":
  main()
