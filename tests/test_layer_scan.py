"""Scanned decoder layers (`DecoderConfig.scan_layers`, cai_jax/model/layer_scan.py) compute what
the unrolled layers compute: logits, gradients and cached decoding (linear and ring caches) on a
model whose layer pattern leaves unscanned remainder layers, with recomputation on; the stacked
layout converts both ways and every checkpoint format holds the unrolled one."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cai_jax import parallel
from cai_jax.checkpoints import hf, loader, orbax_io
from cai_jax.model import decoder, families, kv_cache, layer_scan
from cai_jax.model.config import GLOBAL, LOCAL, layer_types_from_pattern
import tiny_model

# Scanned and unrolled layers are two XLA programs of the same arithmetic, so they may round
# differently; a difference counts as rounding when it is no larger than twice the one between
# the unrolled model run jitted and run op by op (measured on the model below: forward 1.39e-5
# against 1.30e-5 relative, the model's varied norm scales amplify rounding; with its random
# initial scales the two jitted programs agree to the bit).
ROUNDING_FACTOR = 2.0


def seven_layers(**overrides):
  """Pattern of 3 (two window layers, one global) over 7 layers: two scanned groups + 1 more."""
  return families.preset("tiny", num_layers=7, layer_types=layer_types_from_pattern(7, 3),
                         **overrides)


@pytest.mark.parametrize("types, want", [
    ((GLOBAL,) * 5, (1, 5)),
    (layer_types_from_pattern(26, 6), (6, 4)),   # Gemma 3 1B: 2 layers after the groups
    (layer_types_from_pattern(18, 6), (6, 3)),   # Gemma 3 270M
    (layer_types_from_pattern(7, 3), (3, 2)),
    ((GLOBAL, LOCAL, LOCAL), (3, 1)),            # nothing repeats
    ((LOCAL,), (1, 1)),
])
def test_groups(types, want):
  assert layer_scan.groups(types) == want


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(a).max()


@pytest.fixture(scope="module")
def models():
  cfg = seven_layers(remat="full")
  params = tiny_model.varied_params(decoder.init_params(cfg, jax.random.PRNGKey(0)))
  return cfg, params, cfg.replace(scan_layers=True), layer_scan.stack(params, cfg.layer_types)


def batch(cfg, B=2, L=20):
  tokens = jax.random.randint(jax.random.PRNGKey(1), (B, L), 0, cfg.vocab_size)
  valid = jnp.ones((B, L), bool).at[1, 15:].set(False)
  return (tokens,) + decoder.sequence_inputs(valid)


def test_layout_round_trip_and_abstract_params(models):
  cfg, params, scfg, sparams = models
  assert set(sparams) == {"embedder", "final_norm", "scan", "layer_6"}
  assert sparams["scan"]["layer_1"]["mlp"]["up"].shape == (2,) + params["layer_1"]["mlp"]["up"].shape
  np.testing.assert_array_equal(sparams["scan"]["layer_1"]["mlp"]["up"][1],
                                params["layer_4"]["mlp"]["up"])
  back = layer_scan.unstack(sparams, cfg.layer_types)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))
  boxed = decoder.abstract_params(scfg)
  assert (jax.tree.structure(parallel.unbox(boxed)) == jax.tree.structure(sparams))
  up = boxed["scan"]["layer_0"]["mlp"]["up"]
  assert up.names == ("layers", "embed", "mlp")
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  assert parallel.logical_to_spec(up.names, up.value.shape, mesh)[0] is None  # never sharded
  with pytest.raises(ValueError, match="already"):
    layer_scan.stack(sparams, cfg.layer_types)


def rounding_check(fn, cfg, params, scfg, sparams, to_unrolled=lambda x: x):
  """fn(config, params) -> array or tree: scanned (jitted) against unrolled (jitted), bounded by
  the unrolled model's own jitted-vs-op-by-op difference. Returns both errors."""
  want = fn(cfg, params)
  eager = jax.disable_jit()
  with eager:
    op_by_op = fn(cfg, params)
  got = to_unrolled(fn(scfg, sparams))
  pairs = list(zip(jax.tree.leaves(want), jax.tree.leaves(got), jax.tree.leaves(op_by_op)))
  err = max(rel_err(a, b) for a, b, _ in pairs)
  noise = max(rel_err(a, c) for a, _, c in pairs)
  assert 0 < noise and err <= ROUNDING_FACTOR * noise, (err, noise)
  return err, noise


def test_logits_and_gradients_equal_the_unrolled_layers(models):
  cfg, params, scfg, sparams = models
  tokens, positions, mask = batch(cfg)

  @functools.partial(jax.jit, static_argnums=0)
  def logits(c, p):
    return decoder.Decoder(c).apply({"params": p}, tokens, positions, mask)[0]

  @functools.partial(jax.jit, static_argnums=0)
  def grads(c, p):
    loss = lambda q: jnp.mean(jax.nn.log_softmax(logits(c, q))[:, :, :7] ** 2)  # noqa: E731
    return jax.grad(loss)(p)

  print("logits", rounding_check(logits, cfg, params, scfg, sparams))
  print("grads", rounding_check(grads, cfg, params, scfg, sparams,
                                lambda g: layer_scan.unstack(g, cfg.layer_types)))
  # The check can fail: a group's layers in the wrong order changes the logits.
  swapped = dict(sparams, scan={"layer_0": sparams["scan"]["layer_1"],
                                "layer_1": sparams["scan"]["layer_0"],
                                "layer_2": sparams["scan"]["layer_2"]})
  assert rel_err(logits(cfg, params), logits(scfg, swapped)) > 1e-2


@pytest.mark.parametrize("ring", [False, True])
def test_cached_decoding_equals_the_unrolled_layers(models, ring):
  cfg, params, scfg, sparams = models
  tokens, positions, _ = batch(cfg)

  @functools.partial(jax.jit, static_argnums=0)
  def decode(c, p):
    model = decoder.Decoder(c)
    cache = kv_cache.init_cache(c, 2, 32, ring=ring)
    logits, cache = model.apply({"params": p}, tokens[:, :12], positions[:, :12], None,
                                cache=cache, cache_index=0)
    steps = [logits]
    for t in range(12, 18):  # past the window of 8: ring slots are reused
      logits, cache = model.apply({"params": p}, tokens[:, t:t + 1], positions[:, t:t + 1],
                                  None, cache=cache, cache_index=t)
      steps.append(logits)
    return jnp.concatenate(steps, axis=1), [(c.k_BSKH, c.v_BSKH) for c in cache]

  def per_layer(out):  # the scanned layout's cache as one entry per layer
    logits, cache = out
    period, reps = layer_scan.groups(cfg.layer_types)
    layers = [(k[g], v[g]) for g in range(reps) for k, v in cache[:period]]
    return logits, layers + cache[period:]

  print(rounding_check(decode, cfg, params, scfg, sparams, per_layer))
  _, cache = decode(scfg, sparams)
  assert len(cache) == 3 + 1  # the group's three stacked caches and the last layer's own
  assert [k.shape for k, _ in per_layer((None, cache))[1]] == [
      k.shape for k, _ in decode(cfg, params)[1]]


@pytest.mark.parametrize("kind", ["hf", "orbax"])
def test_checkpoints_load_in_either_layout(tmp_path, kind):
  """Files written from scanned parameters hold what unrolled ones do; the loader gives either
  layout from either file."""
  tok = tiny_model.small_tokenizer()
  cfg = seven_layers(vocab_size=tok.vocab_size)  # the tokenizer's vocabulary: a loadable folder
  params = decoder.init_params(cfg, jax.random.PRNGKey(3))
  scfg, sparams = cfg.replace(scan_layers=True), layer_scan.stack(params, cfg.layer_types)
  folder = str(tmp_path / kind)
  if kind == "hf":
    hf.save_hf_folder(folder, scfg, sparams, tok)
  else:
    orbax_io.save(folder, scfg, sparams, tok)
    assert not orbax_io.read_config(folder).scan_layers  # folders hold the unrolled layout
  for scanned, want in ((False, params), (True, sparams)):
    got = loader.load(folder, cache_dir=str(tmp_path), scan_layers=scanned)
    assert got.config.scan_layers is scanned
    assert jax.tree.structure(got.params) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
