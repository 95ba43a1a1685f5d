"""The Flax Gemma 3 decoder on the tiny preset: against an independent float64 NumPy forward pass
(tests/numpy_reference.py, fed the HF-named state dict), padding, sliding windows, the KV cache,
hidden-state output, logical partitioning, bfloat16 compute, the config and parameter counts.

Errors are relative to the largest |logit| (or |hidden|) of the comparison. float32 Flax vs. the
float64 reference: < 1e-4 (measured ~2-3e-7). Padded rows vs. the reference of the unpadded row,
and cached decoding vs. the full forward pass: < 1e-5 (measured ~2e-7). bfloat16 compute vs.
float32: < 5e-2 (measured 3.5e-3, argmax unchanged at every position).

Speed: parameters are drawn with NumPy from `abstract_params` (no compiled init), and the tests
share a few jitted (config, shape) combinations; the whole file runs in ~25 s on 2 CPU cores.
"""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
from cai_jax.checkpoints import hf
from cai_jax.model import decoder, kv_cache
from cai_jax.model.config import GLOBAL, LOCAL, DecoderConfig
from cai_jax.model.families import PRESETS, preset

TINY = preset("tiny")
REF_RTOL = 1e-4     # float32 Flax vs. float64 NumPy, relative to max |logit|
SAME_RTOL = 1e-5    # float32 vs. float32, same maths in another batch/cache layout
BF16_RTOL = 5e-2    # bfloat16 matmuls vs. float32


def _is_box(x):
  return isinstance(x, nn.LogicallyPartitioned)


def random_params(config: DecoderConfig, seed: int = 0):
  """Random parameters in our layout, drawn with NumPy from `abstract_params` shapes (no
  compiled init): unit-variance embedding, 1/sqrt(fan_in) projections, and norm scales that are
  not zero, so the (1 + w) convention and every norm's placement matter in the comparisons."""
  rng = np.random.default_rng(seed)

  def draw(path, box):
    name = path[-1].key
    shape, dtype = box.value.shape, box.value.dtype
    if name == "embedding":
      std = 1.0
    elif name == "scale":
      std = 0.3
    elif name == "o_proj":
      std = (shape[0] * shape[1]) ** -0.5
    else:  # [in, ...] projections
      std = shape[0] ** -0.5
    return jnp.asarray(std * rng.standard_normal(shape), dtype)

  abstract = decoder.abstract_params(config)
  return jax.tree_util.tree_map_with_path(draw, abstract, is_leaf=_is_box)


@functools.lru_cache(maxsize=None)
def _forward_fn(config: DecoderConfig, return_hidden: bool = False):
  model = decoder.Decoder(config)

  @jax.jit
  def fn(params, tokens, valid):
    positions, mask = decoder.sequence_inputs(valid)
    out, _ = model.apply({"params": params}, tokens, positions, mask,
                         return_hidden=return_hidden)
    return out

  return fn


def forward(config, params, tokens, valid=None, return_hidden=False) -> np.ndarray:
  tokens = jnp.asarray(tokens, jnp.int32)
  if valid is None:
    valid = jnp.ones(tokens.shape, bool)
  return np.asarray(_forward_fn(config, return_hidden)(params, tokens, jnp.asarray(valid)))


def rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module")
def tiny_params():
  return random_params(TINY)


def _tokens(shape, seed=1, vocab=TINY.vocab_size):
  return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


TOKENS = _tokens((2, 20))  # longer than the window of 8; one shape shared to reuse compilations


# ----------------------------------------------------------------------------- reference


VARIANTS = {
    "tiny": {},
    "global_rope_scale_8": {"rope_scaling": "linear", "global_rope_scale": 8.0},
    # 27B-like shapes (heads * head_dim != embed_dim, query_pre_attn_scalar != head_dim) with
    # multi-query attention (one kv head for all four query heads).
    "wide_heads_mqa": {"head_dim": 32, "query_pre_attn_scalar": 24.0, "num_kv_heads": 1},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_numpy_reference(variant):
  config = TINY.replace(**VARIANTS[variant])
  assert config.layer_types == (LOCAL, GLOBAL, LOCAL, GLOBAL)
  params = random_params(config)
  got = forward(config, params, TOKENS)
  want = ref.forward(hf.hf_state_from_params(config, params), config, TOKENS)
  assert got.dtype == np.float32 and got.shape == (2, 20, config.vocab_size)
  assert rel_err(got, want) < REF_RTOL


def test_rope_scale_variant_is_distinguishable():
  """The scale-8 comparison is meaningful: the scale moves the logits far beyond tolerance."""
  params = random_params(TINY)
  base = forward(TINY, params, TOKENS)
  scaled = forward(TINY.replace(rope_scaling="linear", global_rope_scale=8.0), params, TOKENS)
  assert rel_err(scaled, base) > 100 * REF_RTOL


# ----------------------------------------------------------------------------- hidden states


def test_return_hidden_projects_to_logits(tiny_params):
  hidden = forward(TINY, tiny_params, TOKENS, return_hidden=True)
  logits = forward(TINY, tiny_params, TOKENS)
  assert hidden.shape == (2, 20, TINY.embed_dim)
  projected = decoder.Decoder(TINY).apply({"params": tiny_params}, jnp.asarray(hidden),
                                       method=decoder.Decoder.logits)
  assert rel_err(projected, logits) < 1e-6
  state = hf.hf_state_from_params(TINY, tiny_params)
  want = ref.forward_one(state, TINY, TOKENS[0], return_hidden=True)
  assert rel_err(hidden[0], want) < REF_RTOL


# ----------------------------------------------------------------------------- padding


def test_padded_rows_match_unpadded(tiny_params):
  """Right- and left-padded rows (random tokens in the padding) give, at their valid positions,
  the logits of the unpadded row (float64 reference, which (a) ties to the unpadded model)."""
  lengths = [20, 13, 5]
  L = max(lengths)
  rng = np.random.default_rng(3)
  rows = [rng.integers(0, TINY.vocab_size, n).astype(np.int32) for n in lengths]
  state = hf.hf_state_from_params(TINY, tiny_params)
  want = [ref.forward_one(state, TINY, row) for row in rows]
  for side in ("right", "left"):
    tokens = rng.integers(0, TINY.vocab_size, (len(rows), L)).astype(np.int32)
    valid = np.zeros((len(rows), L), bool)
    for r, row in enumerate(rows):
      sl = slice(0, len(row)) if side == "right" else slice(L - len(row), L)
      tokens[r, sl] = row
      valid[r, sl] = True
    got = forward(TINY, tiny_params, tokens, valid)
    assert np.all(np.isfinite(got))
    for r in range(len(rows)):
      assert rel_err(got[r][valid[r]], want[r]) < SAME_RTOL, (side, r)


# ----------------------------------------------------------------------------- sliding window


def _change_first_token(config, params, L=40):
  """Per-position max |logit change| when token 0 changes, and the logits' scale."""
  tokens = np.repeat(_tokens((1, L), seed=5), 2, axis=0)
  tokens[1, 0] = (tokens[1, 0] + 1) % config.vocab_size
  out = forward(config, params, tokens)
  return np.max(np.abs(out[0] - out[1]), axis=-1), np.max(np.abs(out[0]))


def test_sliding_window_limits_reach_on_all_local_model(tiny_params):
  config = TINY.replace(layer_types=(LOCAL,) * TINY.num_layers)
  delta, scale = _change_first_token(config, tiny_params)
  # Each local layer lets position p read p-(W-1)..p, so after N layers token 0 reaches exactly
  # the positions <= N * (W - 1): 28 for 4 layers and W = 8. Positions out of reach are
  # untouched (bitwise on CPU: masked keys get probability 0); the boundary position still sees
  # the change (q - k < W, not <=), attenuated by four hops of attention (~1.5e-4 here) but far
  # above rounding noise.
  reach = config.num_layers * (config.sliding_window - 1)
  noise = 1e-7 * scale
  assert np.all(delta[reach + 1:] <= noise), delta[reach + 1:].max()
  assert delta[reach] > noise
  assert np.all(delta[:reach + 1] > noise)


def test_global_layers_see_past_the_window(tiny_params):
  delta, scale = _change_first_token(TINY, tiny_params)
  assert np.all(delta > 1e-3 * scale)


def test_window_boundary_single_layer():
  """One local layer: query p sees key p - (W-1) but not p - W."""
  config = TINY.replace(num_layers=1, layer_types=(LOCAL,))
  W = config.sliding_window
  delta, scale = _change_first_token(config, random_params(config), L=W + 4)
  assert delta[W - 1] > 1e-3 * scale
  assert np.all(delta[W:] <= 1e-7 * scale)


# ----------------------------------------------------------------------------- KV cache


def test_kv_cache_prefill_and_decode_match_full_forward(tiny_params):
  config, model = TINY, decoder.Decoder(TINY)
  prompt_lens, steps = [12, 9], 10  # right-padded prompts, then 10 single-token steps each
  P, B = max(prompt_lens), len(prompt_lens)
  S = P + steps  # 22 slots, so decoding crosses the window of 8 on the local layers
  rng = np.random.default_rng(7)
  seqs = [rng.integers(0, config.vocab_size, n + steps).astype(np.int32) for n in prompt_lens]

  # The full forward pass of every whole sequence (a right-padded batch).
  full_tokens = np.zeros((B, S), np.int32)
  full_valid = np.zeros((B, S), bool)
  for r, seq in enumerate(seqs):
    full_tokens[r, :len(seq)] = seq
    full_valid[r, :len(seq)] = True
  full = forward(config, tiny_params, full_tokens, full_valid)

  @jax.jit
  def step(params, tokens, positions, slot_positions, cache, index):
    mask = decoder.causal_mask(positions, slot_positions)
    return model.apply({"params": params}, tokens, positions, mask, cache=cache,
                       cache_index=index)

  tokens = np.zeros((B, P), np.int32)
  positions = np.full((B, P), -1, np.int32)
  for r, (seq, n) in enumerate(zip(seqs, prompt_lens)):
    tokens[r, :n] = seq[:n]
    positions[r, :n] = np.arange(n)
  slot_positions = np.full((B, S), -1, np.int32)
  slot_positions[:, :P] = positions
  cache = kv_cache.init_cache(config, B, S)
  logits, cache = step(tiny_params, tokens, positions, slot_positions, cache, 0)
  assert len(cache) == config.num_layers
  np.testing.assert_array_equal(np.asarray(cache[0].positions_BS), slot_positions)
  for r, n in enumerate(prompt_lens):
    assert rel_err(np.asarray(logits)[r, :n], full[r, :n]) < SAME_RTOL

  for t in range(steps):
    pos = np.array([[n + t] for n in prompt_lens], np.int32)
    tok = np.array([[seq[n + t]] for seq, n in zip(seqs, prompt_lens)], np.int32)
    slot_positions[:, P + t] = pos[:, 0]
    logits, cache = step(tiny_params, tok, pos, slot_positions, cache, P + t)
    for r, n in enumerate(prompt_lens):
      assert rel_err(np.asarray(logits)[r, 0], full[r, n + t]) < SAME_RTOL, (r, t)
  np.testing.assert_array_equal(np.asarray(cache[-1].positions_BS), slot_positions)


# ----------------------------------------------------------------------------- partitioning

AXIS_NAMES = {"vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "norm"}


def _check_boxes(params_tree):
  boxed = jax.tree.leaves(params_tree, is_leaf=_is_box)
  assert len(boxed) == len(jax.tree.leaves(nn.unbox(params_tree)))
  for box in boxed:
    assert _is_box(box), type(box)
    assert len(box.names) == box.value.ndim, (box.names, box.value.shape)
    assert set(box.names) <= AXIS_NAMES, box.names
  return boxed


def test_every_parameter_has_logical_axis_names():
  # A real `init` (one layer: every kind of parameter, compiled once) ...
  config = TINY.replace(num_layers=1, layer_types=(GLOBAL,))
  tokens = jnp.zeros((1, 4), jnp.int32)
  positions, mask = decoder.sequence_inputs(jnp.ones((1, 4), bool))
  variables = jax.jit(decoder.Decoder(config).init)(jax.random.PRNGKey(0), tokens, positions, mask)
  boxed = _check_boxes(variables["params"])
  assert len(boxed) == 2 + 13

  specs = nn.get_partition_spec(variables)["params"]
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(flat_specs) == len(boxed)
  for spec, box in zip(flat_specs, boxed):
    assert isinstance(spec, jax.sharding.PartitionSpec)
    assert tuple(spec) == tuple(box.names)
  P = jax.sharding.PartitionSpec
  assert specs["embedder"]["embedding"] == P("vocab", "embed")
  assert specs["layer_0"]["attn"]["q_proj"] == P("embed", "heads", "head_dim")
  assert specs["layer_0"]["attn"]["k_proj"] == P("embed", "kv_heads", "head_dim")
  assert specs["layer_0"]["attn"]["o_proj"] == P("heads", "head_dim", "embed")
  assert specs["layer_0"]["mlp"]["down"] == P("mlp", "embed")
  assert specs["layer_0"]["attn"]["q_norm"]["scale"] == P("head_dim")
  assert specs["final_norm"]["scale"] == P("norm")

  # ... and the full tiny tree through abstract_params (eval_shape of the same init).
  abstract = _check_boxes(decoder.abstract_params(TINY))
  assert len(abstract) == 2 + 13 * TINY.num_layers
  assert [b.names for b in abstract[:len(boxed)]] == [b.names for b in boxed]


# ----------------------------------------------------------------------------- bfloat16


def test_bfloat16_compute_stays_close_to_float32(tiny_params):
  config = TINY.replace(dtype="bfloat16")
  got = forward(config, tiny_params, TOKENS)
  want = forward(TINY, tiny_params, TOKENS)
  assert got.dtype == jnp.bfloat16
  got = got.astype(np.float32)
  assert np.all(np.isfinite(got))
  assert rel_err(got, want) < BF16_RTOL
  # The top prediction mostly survives the rounding.
  assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.9


def test_bfloat16_parameter_dtype():
  abstract = decoder.abstract_params(TINY.replace(param_dtype="bfloat16"))
  dtypes = {b.value.dtype for b in jax.tree.leaves(abstract, is_leaf=_is_box)}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_dict_round_trip(name):
  config = PRESETS[name].replace(dtype="bfloat16", remat=True)
  assert DecoderConfig.from_dict(config.to_dict()) == config
  assert DecoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("overrides,match", [
    ({"layer_types": (LOCAL, GLOBAL)}, "layer_types"),
    ({"num_layers": 5}, "layer_types"),
    ({"num_heads": 3}, "multiple"),
    ({"num_kv_heads": 3}, "multiple"),
    ({"layer_types": (LOCAL, "chunked", LOCAL, GLOBAL)}, "unknown layer types"),
])
def test_bad_configs_raise(overrides, match):
  with pytest.raises(ValueError, match=match):
    TINY.replace(**overrides)


def test_from_dict_rejects_unknown_fields_and_presets():
  d = TINY.to_dict()
  d["rope_type"] = "yarn"
  with pytest.raises(ValueError, match="rope_type"):
    DecoderConfig.from_dict(d)
  with pytest.raises(ValueError, match="unknown model preset"):
    preset("gemma3-2b")


# ----------------------------------------------------------------------------- parameter counts


def test_num_params_matches_the_tree(tiny_params):
  assert sum(x.size for x in jax.tree.leaves(tiny_params)) == TINY.num_params()


# Published text-tower sizes (tied embedding counted once).
PUBLISHED = {"gemma3-270m": 268e6, "gemma3-1b": 1.0e9, "gemma3-4b": 3.9e9,
             "gemma3-12b": 11.8e9, "gemma3-27b": 27.0e9}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_parameter_counts(name):
  config = PRESETS[name]
  leaves = jax.tree.leaves(decoder.abstract_params(config), is_leaf=_is_box)  # nothing allocated
  count = sum(int(np.prod(b.value.shape)) for b in leaves)
  assert count == config.num_params()
  assert abs(count / PUBLISHED[name] - 1) < 0.05, count


def test_configs_saved_before_families_read_as_gemma3():
  """Checkpoint metadata written before DecoderConfig named its family (no `family`, no family
  fields; a RoPE scale other than 1 meant linear scaling) reads back as the Gemma 3 config."""
  from cai_jax.model import families

  for name in ("gemma3-270m", "gemma3-4b"):
    config = PRESETS[name]
    legacy = {k: v for k, v in config.to_dict().items()
              if k in ("vocab_size", "embed_dim", "mlp_dim", "num_layers", "num_heads",
                       "num_kv_heads", "head_dim", "query_pre_attn_scalar", "sliding_window",
                       "layer_types", "local_rope_base", "global_rope_base",
                       "global_rope_scale", "rms_norm_eps", "max_seq_len", "param_dtype",
                       "dtype", "remat")}
    assert families.config_from_dict(legacy) == config
    with pytest.raises(ValueError, match="family"):
      DecoderConfig.from_dict(legacy)
