"""Run as a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller): for the tiny
preset of every model family, two AdamW steps on one device and on a (data 2, fsdp 2, tensor 2)
mesh; prints one JSON object {family: {losses, reference_losses, rel_norm_diff, max_abs_diff}}."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import optax

from cai_jax import parallel
from cai_jax.data import sl
from cai_jax.model import decoder, families
from cai_jax.train import engine, lm

PRESETS = ["tiny", "tiny-gemma2", "tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"]


def train(cfg, batch, params0, mesh, steps=2):
  optimizer = optax.adamw(1e-3, b2=0.95, weight_decay=0.1)
  shardings, _ = engine.state_shardings(cfg, mesh, optimizer)
  params = parallel.shard_host_tree(jax.tree.map(np.asarray, params0), shardings.params)
  state = engine.new_state(params, optimizer, jax.random.PRNGKey(1), shardings)
  step = engine.compile_step(engine.make_train_step(
      lm.make_lm_loss(cfg, chunk_tokens=128), optimizer, micro_batches=1, mesh=mesh),
      shardings, mesh)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return losses, np.concatenate([np.asarray(x).ravel()
                                 for x in jax.tree.leaves(jax.device_get(state.params))])


def main():
  assert jax.device_count() == 8, jax.devices()
  out = {}
  for name in PRESETS:
    cfg = families.preset(name)
    rng = np.random.default_rng(0)
    examples = [sl.Example(rng.integers(3, cfg.vocab_size, n).astype(np.int32),
                           np.arange(n) > n // 3) for n in rng.integers(5, 40, 8)]
    batch = sl.make_batch(examples, 40)  # longer than the tiny windows (8)
    params0 = decoder.init_params(cfg, jax.random.PRNGKey(0))
    ref_losses, ref = train(cfg, batch, params0,
                            parallel.make_mesh({"data": 1}, devices=jax.devices()[:1]))
    mesh = parallel.make_mesh(dict(zip(parallel.MESH_AXES, (2, 2, 2))))
    losses, got = train(cfg, batch, params0, mesh)
    init = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(params0)])
    out[cfg.family] = {
        "preset": name, "losses": losses, "reference_losses": ref_losses,
        "rel_norm_diff": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
        "max_abs_diff": float(np.max(np.abs(got - ref))),
        "moved": float(np.max(np.abs(ref - init)))}
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
