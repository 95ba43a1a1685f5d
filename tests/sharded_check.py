"""Run as a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller): trains the
tiny preset for 3 steps on one device and on several meshes, and prints one JSON object with
each mesh's loss and parameter differences from the single-device run, and the shardings."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import optax

from cai_jax import parallel
from cai_jax.data import sl
from cai_jax.model import families
from cai_jax.model import decoder, kv_cache
from cai_jax.train import engine, lm

MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2)]


def batch_and_params():
  cfg = families.preset("tiny")
  rng = np.random.default_rng(0)
  examples = [sl.Example(rng.integers(3, cfg.vocab_size, n).astype(np.int32), np.arange(n) > n // 3)
              for n in rng.integers(5, 64, 16)]
  return cfg, sl.make_batch(examples, 64), decoder.init_params(cfg, jax.random.PRNGKey(0))


def train(cfg, batch, params0, mesh, micro_batches=1, steps=3):
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(1e-3, b2=0.95, weight_decay=0.1))
  shardings, _ = engine.state_shardings(cfg, mesh, optimizer)
  params = parallel.shard_host_tree(jax.tree.map(np.asarray, params0), shardings.params)
  state = engine.new_state(params, optimizer, jax.random.PRNGKey(1), shardings)
  step = engine.compile_step(engine.make_train_step(
      lm.make_lm_loss(cfg, chunk_tokens=128), optimizer, micro_batches=micro_batches, mesh=mesh),
      shardings, mesh)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return losses, state


def flat(params):
  return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(params)])


def main():
  assert jax.device_count() == 8, jax.devices()
  cfg, batch, params0 = batch_and_params()
  one = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  ref_losses, ref_state = train(cfg, batch, params0, one)
  ref = flat(jax.device_get(ref_state.params))
  out = {"reference_losses": ref_losses, "meshes": {}}
  for shape in MESHES:
    mesh = parallel.make_mesh(dict(zip(parallel.MESH_AXES, shape)))
    for micro in ((1, 4) if shape == (2, 2, 2) else (1,)):
      losses, state = train(cfg, batch, params0, mesh, micro_batches=micro)
      got = flat(jax.device_get(state.params))
      q = state.params["layer_0"]["attn"]["q_proj"]
      emb = state.params["embedder"]["embedding"]
      mu = state.opt_state[1][0].mu["layer_0"]["mlp"]["gate"]
      out["meshes"][f"{shape}/micro{micro}"] = {
          "losses": losses,
          "max_abs_diff": float(np.max(np.abs(got - ref))),
          "max_excess": float(np.max(np.abs(got - ref) - (1e-5 * np.abs(ref) + 1e-5))),
          "rel_norm_diff": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
          "q_proj_spec": str(q.sharding.spec), "q_proj_shard": list(q.addressable_shards[0].data.shape),
          "embedding_spec": str(emb.sharding.spec),
          "embedding_shard": list(emb.addressable_shards[0].data.shape),
          "adam_mu_gate_spec": str(mu.sharding.spec),
          "adam_mu_gate_shard": list(mu.addressable_shards[0].data.shape),
      }
  out["sampler"] = sampler_check()
  print(json.dumps(out))


def sampler_check():
  """Greedy and sampled generation with parameters sharded as in training equal the
  single-device sampler's tokens (with and without a shared prefix)."""
  import tiny_model
  from cai_jax.sampling.sampler import Sampler
  from cai_jax.sampling.strategies import Sampling

  tok = tiny_model.small_tokenizer()
  cfg = tiny_model.tiny_config(tok)
  params = tiny_model.varied_params(decoder.init_params(cfg, jax.random.PRNGKey(3)))
  prompts = ["Human: hello there", "x", "Why is the sky blue? Because", "ok", "a b c d e f"]

  def generate(sampler):
    prefix = sampler.prefill_prefix("A conversation with a helpful assistant.")
    return [sampler.generate(prompts, max_new_tokens=12, stop=("zz",)).tokens,
            sampler.generate(prompts, max_new_tokens=12, prefix=prefix).tokens,
            sampler.generate(prompts, max_new_tokens=12, strategy=Sampling(temperature=1.0),
                             key=jax.random.PRNGKey(5)).tokens]

  reference = generate(Sampler(cfg, params, tok, max_batch=8))
  # how often a greedy row changes token: a model that repeats one token (0 changes) would make
  # the comparison below vacuous
  changes = sum(int(a != b) for row in reference[0] for a, b in zip(row, row[1:]))
  # Every KV cache the sampler makes: created inside a trace (so never whole on one device
  # first) or eagerly, and with which rows on the first device.
  made = []
  init_cache = kv_cache.init_cache

  def recording_init_cache(*args, **kwargs):
    cache = init_cache(*args, **kwargs)
    made.append(isinstance(cache[0].k_BSKH, jax.core.Tracer))
    return cache

  kv_cache.init_cache = recording_init_cache
  result = {}
  try:
    for shape in [(8, 1, 1), (2, 2, 2)]:
      mesh = parallel.make_mesh(dict(zip(parallel.MESH_AXES, shape)))
      sharded = parallel.shard_host_tree(jax.tree.map(np.asarray, params),
                                         engine.model_shardings(cfg, mesh))
      sampler = Sampler(cfg, sharded, tok, max_batch=8, mesh=mesh)
      made.clear()
      got = generate(sampler)
      cache = sampler._new_cache(8, 64)  # noqa: SLF001 - the cache generate() starts from
      result[str(shape)] = {
          "equal": got == reference,
          "param_spec": str(sharded["layer_0"]["mlp"]["gate"].sharding.spec),
          "caches_made": len(made), "caches_traced": sum(made),
          "cache_rows_on_device_0": cache[0].k_BSKH.addressable_shards[0].data.shape[0]}
  finally:
    kv_cache.init_cache = init_cache
  return {"meshes": result, "greedy_token_changes": changes}


if __name__ == "__main__":
  sys.exit(main())
