"""PPO's model passes with log-probs in the response window vs on the whole grid, same run.

python benchmarks/ppo_step.py [--rows 8 --minibatch 4 --response 32 --prompts red_team:train]

Gemma 3 270M (float32; policy, reference and value model all start from it, the value head at
0), one rollout batch as rl_train builds it (`rollout.grid_batch`): the first --rows prompts of
the prompt set, BOS included, each followed by --response random answer tokens, padded to the
power-of-two length rl_train uses (rl_train.min_length 32). Timed, each program's fastest of
--repeats after one warm-up call (compile excluded), the two forms alternating:
  score   rl_train's scoring pass (`rollout.make_score_fn`: policy log-probs + entropy,
          reference log-probs, values) on the rollout batch
  step    one PPO optimizer step (`ppo_trainer.make_programs`' train step: policy and value
          forward and backward, AdamW) on a --minibatch-row minibatch
with `window` (log-probs only at the response positions, what rl_train runs) and without it
(the vocabulary projection at every grid position). The log-probs of the two forms are
compared at the response positions (max |difference|). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=8)
  parser.add_argument("--minibatch", type=int, default=4)
  parser.add_argument("--response", type=int, default=32)
  parser.add_argument("--prompts", default="red_team:train")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--loss-chunk-tokens", type=int, default=1024)
  args = parser.parse_args()

  import ml_collections
  from cai_jax import config_defaults, parallel
  from cai_jax.checkpoints import loader
  from cai_jax.data import sources
  from cai_jax.rl import ppo_trainer, rollout as ro
  from cai_jax.train import engine, optim

  model = loader.load("gemma3-270m", cache_dir=os.path.expanduser("~/.cache/cai_jax"))
  cfg = model.config
  mesh = parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  records = sources.load_prompt_set(args.prompts)[:args.rows]
  prompts = [model.tokenizer.encode(r.prompt, add_bos=True) for r in records]
  rng = np.random.default_rng(0)
  responses = [list(rng.integers(10, cfg.vocab_size, args.response)) for _ in prompts]
  grid = ro.grid_batch(prompts, responses, [np.zeros(args.response, np.float32)] * len(prompts),
                       pad_id=model.tokenizer.pad_id, min_length=32, window=args.response)
  L = grid["tokens"].shape[1]

  c = ml_collections.ConfigDict(dict(
      loss_chunk_tokens=args.loss_chunk_tokens, clip_eps=0.2, clip_eps_value=0.2, vf_coef=0.1,
      ent_coef=0.0, micro_batches=1))
  opt_cfg = config_defaults.optim_config(1e-6, 0)
  opt_cfg.total_steps = 100
  optimizer = optim.make_optimizer(opt_cfg)
  shardings, _ = engine.state_shardings_for(ro.boxed_trainable(cfg, cfg), mesh, optimizer)
  value = {"decoder": jax.tree.map(jnp.copy, model.params), "head": ro.zero_head(cfg)}
  state = engine.new_state({"policy": jax.tree.map(jnp.copy, model.params), "value": value},
                           optimizer, jax.random.PRNGKey(0), shardings)
  score_fn, _, step_fn = ppo_trainer.make_programs(c, cfg, cfg, cfg, None, optimizer, opt_cfg,
                                                   mesh, shardings)

  keys = {"window": ("tokens", "valid", "targets", "window"),
          "full": ("tokens", "valid", "targets")}
  mb = args.minibatch
  extra = {"mask": grid["mask"][:mb], "old_logp": np.zeros((mb, L), np.float32),
           "old_values": np.zeros((mb, L), np.float32),
           "advantages": rng.normal(size=(mb, L)).astype(np.float32),
           "returns": rng.normal(size=(mb, L)).astype(np.float32)}

  def score(form):
    out = score_fn(state.params["policy"], model.params, state.params["value"],
                   parallel.global_batch({k: grid[k] for k in keys[form]}, mesh))
    return jax.block_until_ready(out)

  def step(form, st):
    batch = {**{k: grid[k][:mb] for k in keys[form]}, **extra}
    st, metrics = step_fn(st, parallel.global_batch(batch, mesh))
    jax.block_until_ready(metrics)
    return st

  times = {f"{p}_{f}": [] for p in ("score", "step") for f in keys}
  logp = {}
  for form in keys:  # warm-up (compiles); both forms see the same parameters
    logp[form] = np.asarray(score(form)["logp"])
  for form in keys:
    state = step(form, state)
  for r in range(args.repeats):
    for form in (("window", "full") if r % 2 == 0 else ("full", "window")):
      t = time.perf_counter()
      score(form)
      times[f"score_{form}"].append(time.perf_counter() - t)
      t = time.perf_counter()
      state = step(form, state)
      times[f"step_{form}"].append(time.perf_counter() - t)
  mask = grid["mask"] > 0
  best = {k: min(v) for k, v in times.items()}
  result = {
      "model": "gemma3-270m", "rows": args.rows, "minibatch": mb, "grid_length": L,
      "response_tokens": args.response, "backend": jax.default_backend(),
      **{f"{k}_s": round(v, 3) for k, v in best.items()},
      "score_speedup": round(best["score_full"] / best["score_window"], 3),
      "step_speedup": round(best["step_full"] / best["step_window"], 3),
      "logp_max_abs_diff": float(np.abs(logp["window"] - logp["full"])[mask].max()),
      "rounds_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
