"""Scanned vs unrolled decoder layers (`model.scan_layers`) on Gemma 3 270M, same run.

python benchmarks/scan_layers.py [--rows 8 --new-tokens 64 --train-rows 4 --train-length 256]

For each layout (18 layers unrolled, or scanned as 3 groups of 6), on this machine's default
device with JAX's persistent compilation cache off:
  compile    seconds to lower and compile an SL training step (forward + backward of the token
             cross-entropy and an AdamW update) and the sampler's decode program
  train      the training step's fastest of --repeats calls on --train-rows x --train-length
  sample     greedy sampling of --rows red-team prompts, --new-tokens each (all of them: no EOS),
             tokens per second, fastest of --repeats
The two layouts' timed calls alternate. Also reported: whether the greedy tokens are identical and
the largest relative difference of the training losses. The last line is one JSON object.
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
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--train-rows", type=int, default=4)
  parser.add_argument("--train-length", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--prompts", default="red_team:train")
  args = parser.parse_args()
  jax.config.update("jax_enable_compilation_cache", False)

  from cai_jax.checkpoints import loader
  from cai_jax.data import sources
  from cai_jax.model import decoder, layer_scan
  from cai_jax.sampling.sampler import Sampler
  from cai_jax.train import optim
  from cai_jax import config_defaults

  model = loader.load("gemma3-270m", cache_dir=os.path.expanduser("~/.cache/cai_jax"))
  base = model.config
  layouts = {"unrolled": (base, model.params),
             "scanned": (base.replace(scan_layers=True),
                         layer_scan.stack(model.params, base.layer_types))}
  prompts = [r.prompt for r in sources.load_prompt_set(args.prompts)[:args.rows]]
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(10, base.vocab_size, (args.train_rows, args.train_length)),
                       jnp.int32)
  positions, mask = decoder.sequence_inputs(jnp.ones(tokens.shape, bool))
  opt_cfg = config_defaults.optim_config(1e-5, 0)
  opt_cfg.total_steps = 100
  optimizer = optim.make_optimizer(opt_cfg)

  def train_step_for(cfg):
    net = decoder.Decoder(cfg)

    def loss_fn(params):
      logits, _ = net.apply({"params": params}, tokens[:, :-1], positions[:, :-1],
                            mask[:, :-1, :-1])
      logp = jax.nn.log_softmax(logits.astype(jnp.float32))
      return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    def step(params, opt_state):
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return jax.tree.map(jnp.add, params, updates), opt_state, loss
    return jax.jit(step)

  compile_s, programs, samplers, states = {}, {}, {}, {}
  for name, (cfg, params) in layouts.items():
    opt_state = optimizer.init(params)
    t = time.perf_counter()
    programs[name] = train_step_for(cfg).lower(params, opt_state).compile()
    compile_s[f"train_{name}"] = time.perf_counter() - t
    states[name] = (jax.tree.map(jnp.copy, params), opt_state)
    samplers[name] = Sampler(cfg, params, model.tokenizer, max_batch=args.rows, eos_ids=())
    t = time.perf_counter()
    samplers[name].generate(prompts, max_new_tokens=args.new_tokens)  # prefill + decode compile
    compile_s[f"first_sample_{name}"] = time.perf_counter() - t

  times = {f"{k}_{n}": [] for k in ("train", "sample") for n in layouts}
  losses = {n: [] for n in layouts}
  texts = {}
  for r in range(args.repeats):
    for name in (("unrolled", "scanned") if r % 2 == 0 else ("scanned", "unrolled")):
      params, opt_state = states[name]
      t = time.perf_counter()
      params, opt_state, loss = programs[name](params, opt_state)
      jax.block_until_ready(loss)
      times[f"train_{name}"].append(time.perf_counter() - t)
      states[name] = (params, opt_state)
      losses[name].append(float(loss))
      t = time.perf_counter()
      out = samplers[name].generate(prompts, max_new_tokens=args.new_tokens)
      times[f"sample_{name}"].append(time.perf_counter() - t)
      texts[name] = out.tokens
  best = {k: min(v) for k, v in times.items()}
  new_tokens = args.rows * args.new_tokens
  result = {
      "model": "gemma3-270m", "backend": jax.default_backend(), "rows": args.rows,
      "new_tokens": args.new_tokens, "train_shape": [args.train_rows, args.train_length],
      **{f"compile_{k}_s": round(v, 2) for k, v in compile_s.items()},
      "train_unrolled_s": round(best["train_unrolled"], 3),
      "train_scanned_s": round(best["train_scanned"], 3),
      "sample_unrolled_tok_s": round(new_tokens / best["sample_unrolled"], 1),
      "sample_scanned_tok_s": round(new_tokens / best["sample_scanned"], 1),
      "train_scanned_over_unrolled": round(best["train_scanned"] / best["train_unrolled"], 3),
      "sample_scanned_over_unrolled": round(best["sample_scanned"] / best["sample_unrolled"], 3),
      "greedy_identical": texts["scanned"] == texts["unrolled"],
      "loss_max_rel_diff": float(np.max(np.abs(np.subtract(losses["scanned"], losses["unrolled"]))
                                        / np.abs(losses["unrolled"]))),
      "rounds_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
