"""One temperature-1 draw per row: the sampler's inverse-CDF draw vs Gumbel noise, same run.

python benchmarks/sampling_draw.py [--rows 8 --vocab 262144 --repeats 10]

Random float32 logits [rows, vocab] (Gemma 3's vocabulary by default), one PRNG key per row as
the sampler passes them. Timed, jitted, each side's fastest of --repeats after a warm-up call:
  ours    strategies.Sampling().sample (one uniform per row, the cumulative distribution
          inverted: strategies.inverse_cdf_draw) and its log-prob
  gumbel  jax.random.categorical's recipe: Gumbel noise for every vocabulary entry of every
          row, argmax (what Sampling did before), and the same log-prob
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=8)
  parser.add_argument("--vocab", type=int, default=262144)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()

  from cai_jax.sampling import strategies

  keys = jax.random.split(jax.random.PRNGKey(0), args.rows)
  logits = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (args.rows, args.vocab))

  @jax.jit
  def ours(keys, logits):
    return strategies.Sampling().sample(logits, keys)

  @jax.jit
  def gumbel(keys, logits):
    noise = jax.vmap(lambda k: jax.random.gumbel(k, logits.shape[1:], jnp.float32))(keys)
    tokens = strategies.argmax(logits + noise)
    return tokens, strategies.logprob_of(logits, tokens)

  best = {}
  for name, fn in (("ours", ours), ("gumbel", gumbel)):
    jax.block_until_ready(fn(keys, logits))
  for r in range(args.repeats):
    for name, fn in ((("ours", ours), ("gumbel", gumbel)) if r % 2 == 0 else
                     (("gumbel", gumbel), ("ours", ours))):
      t = time.perf_counter()
      jax.block_until_ready(fn(keys, logits))
      best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
  print(json.dumps({"rows": args.rows, "vocab": args.vocab, "backend": jax.default_backend(),
                    "ours_ms": round(best["ours"] * 1e3, 2),
                    "gumbel_ms": round(best["gumbel"] * 1e3, 2),
                    "speedup": round(best["gumbel"] / best["ours"], 2)}))


if __name__ == "__main__":
  main()
