"""The decoder-only transformer of every supported family, as a pure-functional Flax module.

`Decoder(config).apply(params, tokens_BL, positions_BL, mask_BLS)` -> (logits_BLV or hidden_BLD,
cache). A `DecoderConfig` names the family's choices (norm convention, post-norms, q/k-norm,
q/k/v biases, activation, embedding scale, tied head, RoPE and its scaling, windows, soft-caps);
nothing here depends on which family set them.
Masks are explicit booleans over keys (query i may read key j), so padded batches, packed
multiple-choice options and cached decoding all use the same code; sliding-window layers
additionally require `query_pos - key_pos < sliding_window`, computed from positions.

Every parameter carries logical axis names (vocab, embed, mlp, heads, kv_heads, head_dim, norm)
for `cai_jax.parallel` to map onto a mesh. Parameters are stored in `param_dtype`, matmuls run in
`dtype`; RMSNorm, RoPE and the softmax run in float32 as in the reference implementation.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cai_jax.model import kv_cache, layer_scan
from cai_jax.model.config import GLOBAL, DecoderConfig

# Large finite negative instead of -inf: a fully masked row (padding) softmaxes to uniform
# weights rather than NaN, and never leaks into valid rows.
_MASK_VALUE = -2.3819763e38


def _param(module: nn.Module, name: str, init, shape, names: tuple[str, ...], dtype):
  return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


def causal_mask(q_positions_BL: jax.Array, kv_positions_BS: jax.Array) -> jax.Array:
  """Key j is visible to query i when it is a real token at or before i's position."""
  q = q_positions_BL[:, :, None]
  k = kv_positions_BS[:, None, :]
  return (k >= 0) & (k <= q)


def sequence_inputs(valid_BL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Positions and causal mask for right-padded rows (`valid_BL` marks real tokens)."""
  valid_BL = jnp.asarray(valid_BL, bool)
  positions = jnp.cumsum(valid_BL, axis=-1, dtype=jnp.int32) - 1
  positions = jnp.where(valid_BL, positions, -1)
  return positions, causal_mask(positions, positions)


def rope_inverse_frequencies(config: DecoderConfig, is_global: bool) -> jax.Array:
  """float32 [head_dim / 2]: a layer's rotation frequencies, its RoPE scaling applied, computed
  in float32 in the reference implementations' order (their roundings are ours)."""
  head_dim = config.head_dim
  base = config.global_rope_base if is_global else config.local_rope_base
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv_freq = 1.0 / (base ** exponents)
  kind = config.rope_scaling if is_global else "none"
  factor = config.global_rope_scale
  if kind == "linear":
    return inv_freq / factor
  if kind == "llama3":
    old = float(config.rope_original_max_len)
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    wavelen = 2 * np.pi / inv_freq
    scaled = jnp.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return jnp.where(medium, smoothed, scaled)
  if kind == "yarn":
    # YaRN: interpolated frequencies (1 / factor) below the dimension turning beta_slow times over
    # the original context, the original ones above the one turning beta_fast times, a linear
    # ramp between them.
    old = float(config.rope_original_max_len)
    corr = lambda rot: head_dim * math.log(old / (rot * 2 * math.pi)) / (2 * math.log(base))  # noqa
    low, high = corr(config.rope_beta_fast), corr(config.rope_beta_slow)
    if config.rope_truncate:
      low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    high = high + 0.001 if low == high else high
    ramp = jnp.clip((jnp.arange(head_dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # the share of the original (extrapolated) frequency
    return inv_freq / factor * (1 - keep) + inv_freq * keep
  return inv_freq


def rope_attention_factor(config: DecoderConfig, is_global: bool) -> float:
  """What cos and sin are multiplied by (YaRN's attention temperature; 1 otherwise)."""
  return config.rope_attention_factor if is_global and config.rope_scaling == "yarn" else 1.0


def rope(x_BLNH: jax.Array, positions_BL: jax.Array, inv_freq: jax.Array,
         scale: float = 1.0) -> jax.Array:
  """Rotary embedding, half-split ("rotate_half") layout, at the given frequencies; cos and sin
  times `scale` (YaRN)."""
  angles = positions_BL.astype(jnp.float32)[..., None] * inv_freq  # [B, L, H/2]
  compute = jnp.promote_types(x_BLNH.dtype, jnp.float32)
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  if scale != 1.0:
    sin, cos = sin * scale, cos * scale
  sin = sin[:, :, None, :].astype(compute)
  cos = cos[:, :, None, :].astype(compute)
  x = x_BLNH.astype(compute)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BLNH.dtype)


class RMSNorm(nn.Module):
  """RMSNorm times (offset + scale), computed in float32. offset 1 starts the scale at
  zeros, offset 0 at ones: every norm starts as the identity map."""
  eps: float
  param_dtype: str
  axis_name: str = "norm"
  offset: float = 1.0

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros_init() if self.offset else nn.initializers.ones_init()
    scale = _param(self, "scale", init, (x.shape[-1],), (self.axis_name,),
                   jnp.dtype(self.param_dtype))
    compute = jnp.promote_types(x.dtype, jnp.float32)
    x32 = x.astype(compute)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    if self.offset:
      return (y * (self.offset + scale.astype(compute))).astype(x.dtype)
    return (y * scale.astype(compute)).astype(x.dtype)


def _norm(c: DecoderConfig, name: str, axis_name: str = "norm") -> RMSNorm:
  return RMSNorm(c.rms_norm_eps, c.param_dtype, axis_name, c.norm_offset, name=name)


def softcap(x: jax.Array, cap: float) -> jax.Array:
  """cap * tanh(x / cap) (logit soft-capping); the identity for cap 0."""
  if not cap:
    return x
  return jnp.tanh(x / cap) * cap


class Embedder(nn.Module):
  """Token embedding (times sqrt(embed_dim) where the family scales it) and the output head: the
  same table when tied, else a separate `lm_head` table of the same [V, D] shape."""
  config: DecoderConfig

  def setup(self):
    c = self.config
    self.embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                            (c.vocab_size, c.embed_dim), ("vocab", "embed"),
                            jnp.dtype(c.param_dtype))
    if not c.tie_embeddings:
      self.lm_head = _param(self, "lm_head", nn.initializers.normal(stddev=c.embed_dim ** -0.5),
                            (c.vocab_size, c.embed_dim), ("vocab", "embed"),
                            jnp.dtype(c.param_dtype))

  @property
  def output_table(self):
    """[V, D]: the table that projects hidden states to logits."""
    return self.embedding if self.config.tie_embeddings else self.lm_head

  def encode(self, tokens_BL):
    dtype = jnp.dtype(self.config.dtype)
    x = jnp.take(self.embedding, tokens_BL, axis=0).astype(dtype)
    if not self.config.embed_scale:
      return x
    return x * jnp.asarray(np.sqrt(self.config.embed_dim), dtype)

  def decode(self, hidden_BLD, embedding_DV=None):
    """Logits [B, L, V]; with `embedding_DV`, a [D, V] copy of the table (`decode_embedding`),
    as [B*L, D] x [D, V]: the same values up to float rounding, ~1.5x faster on CPU for one row."""
    if embedding_DV is not None:
      hidden, table, acc = matmul_operands(self.config, hidden_BLD, embedding_DV)
      logits = jnp.einsum("BLD,DV->BLV", hidden, table, preferred_element_type=acc)
    else:
      hidden, table, acc = matmul_operands(self.config, hidden_BLD, self.output_table)
      logits = jnp.einsum("BLD,VD->BLV", hidden, table, preferred_element_type=acc)
    return softcap(logits, self.config.final_softcap)


def visible(q_positions_BL, kv_positions_BS, window: int | None):
  """[B, L, S]: key j is a real token at or before query i's position (and, with a window,
  less than `window` positions before it)."""
  distance = q_positions_BL[:, :, None] - kv_positions_BS[:, None, :]
  mask = (kv_positions_BS[:, None, :] >= 0) & (distance >= 0)
  return mask if window is None else mask & (distance < window)


def _attend(q_BLNH, k_BSKH, v_BSKH, mask_BLS, cap: float = 0.0):
  """softmax(q k / masked) v for grouped queries: [B, L, N, H]."""
  B, L, N, H = q_BLNH.shape
  S, K = k_BSKH.shape[1:3]
  G = N // K
  dt = q_BLNH.dtype
  f32 = jnp.promote_types(dt, jnp.float32)
  if K == 1:
    # One KV head (e.g. the default 270M model): plain batched matmuls over [B, L*G, ...] with
    # no size-1 axes, which XLA lays out without transposing the cache every step.
    q = q_BLNH.reshape(B, L * G, H)
    logits = softcap(jnp.einsum("BMH,BSH->BMS", q, k_BSKH[:, :, 0]).astype(f32), cap)
    mask = jnp.broadcast_to(mask_BLS[:, :, None], (B, L, G, S)).reshape(B, L * G, S)
    probs = jax.nn.softmax(jnp.where(mask, logits, _MASK_VALUE), axis=-1).astype(dt)
    return jnp.einsum("BMS,BSH->BMH", probs, v_BSKH[:, :, 0]).reshape(B, L, N, H)
  return _attend_grouped(q_BLNH, k_BSKH, v_BSKH, mask_BLS, cap)


def _attend_grouped(q_BLNH, k_BSKH, v_BSKH, mask_BLS, cap: float = 0.0):
  """The general form of `_attend` (any number of KV heads); training uses it directly."""
  B, L, N, H = q_BLNH.shape
  K = k_BSKH.shape[2]
  dt = q_BLNH.dtype
  q = q_BLNH.reshape(B, L, K, N // K, H)
  logits = jnp.einsum("BLKGH,BSKH->BKGLS", q, k_BSKH)
  logits = softcap(logits.astype(jnp.promote_types(dt, jnp.float32)), cap)
  logits = jnp.where(mask_BLS[:, None, None], logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(dt)
  return jnp.einsum("BKGLS,BSKH->BLKGH", probs, v_BSKH).reshape(B, L, N, H)


def cached_attention(q_BLNH, k_BLKH, v_BLKH, positions_BL, cache: kv_cache.LayerCache,
                     cache_index, window: int | None, cap: float = 0.0):
  """Attention of L new tokens over the cache and each other, masks from positions, and the
  cache with the new keys and values written (ring caches: at position % slots; linear ones:
  at slots [cache_index, +L), which must be empty).

  The new entries are written first and the updated cache is read, except for a chunk (L > 1)
  going into a ring: its later tokens may evict slots that its earlier queries still see, so it
  attends over the old slots plus its own keys and is written afterwards. For one token, a
  ring slot it takes held position p - slots, outside the window already."""
  dt = q_BLNH.dtype
  if cache.ring and q_BLNH.shape[1] > 1:
    keys = jnp.concatenate([cache.k_BSKH.astype(dt), k_BLKH.astype(dt)], axis=1)
    values = jnp.concatenate([cache.v_BSKH.astype(dt), v_BLKH.astype(dt)], axis=1)
    mask = jnp.concatenate([visible(positions_BL, cache.positions_BS, window),
                            visible(positions_BL, positions_BL, window)], axis=-1)
    return (_attend(q_BLNH, keys, values, mask, cap),
            kv_cache.write_ring(cache, k_BLKH, v_BLKH, positions_BL))
  if q_BLNH.shape[1] == 1:
    cache = kv_cache.write_step(cache, k_BLKH, v_BLKH, positions_BL, cache_index)
  else:
    cache = kv_cache.write(cache, k_BLKH, v_BLKH, positions_BL, cache_index)
  out = _attend(q_BLNH, cache.k_BSKH.astype(dt), cache.v_BSKH.astype(dt),
                visible(positions_BL, cache.positions_BS, window), cap)
  return out, cache


class Attention(nn.Module):
  """Grouped-query attention with RoPE, and as the family asks: q/k/v biases, q/k-norm, a
  sliding window, soft-capped logits."""
  config: DecoderConfig
  is_global: bool

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask_BLS, cache: kv_cache.LayerCache | None,
               cache_index):
    c = self.config
    pdt, dt = jnp.dtype(c.param_dtype), jnp.dtype(c.dtype)
    init_in = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                               in_axis=0, out_axis=(1, 2))
    init_out = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                in_axis=(0, 1), out_axis=2)
    D, N, K, H = c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim
    wq = _param(self, "q_proj", init_in, (D, N, H), ("embed", "heads", "head_dim"), pdt)
    wk = _param(self, "k_proj", init_in, (D, K, H), ("embed", "kv_heads", "head_dim"), pdt)
    wv = _param(self, "v_proj", init_in, (D, K, H), ("embed", "kv_heads", "head_dim"), pdt)
    wo = _param(self, "o_proj", init_out, (N, H, D), ("heads", "head_dim", "embed"), pdt)

    B, L = x_BLD.shape[:2]
    x_TD = x_BLD.astype(dt).reshape(B * L, D)
    q = _weight_matmul(c, x_TD, wq).reshape(B, L, N, H)
    k = _weight_matmul(c, x_TD, wk).reshape(B, L, K, H)
    v = _weight_matmul(c, x_TD, wv).reshape(B, L, K, H)
    if c.qkv_bias:
      zeros = nn.initializers.zeros_init()
      q = q + _param(self, "q_bias", zeros, (N, H), ("heads", "head_dim"), pdt).astype(dt)
      k = k + _param(self, "k_bias", zeros, (K, H), ("kv_heads", "head_dim"), pdt).astype(dt)
      v = v + _param(self, "v_bias", zeros, (K, H), ("kv_heads", "head_dim"), pdt).astype(dt)
    if c.qk_norm:
      q = _norm(c, "q_norm", "head_dim")(q)
      k = _norm(c, "k_norm", "head_dim")(k)
    inv_freq = rope_inverse_frequencies(c, self.is_global)
    scale = rope_attention_factor(c, self.is_global)
    q = rope(q, positions_BL, inv_freq, scale)
    k = rope(k, positions_BL, inv_freq, scale)
    q = q * jnp.asarray(c.query_pre_attn_scalar ** -0.5, dt)

    if cache is not None and mask_BLS is None:
      out, cache = cached_attention(q, k, v, positions_BL, cache, cache_index,
                                    None if self.is_global else c.sliding_window, c.attn_softcap)
    else:
      if cache is not None:
        if cache.ring:
          raise ValueError("a ring-buffer cache needs mask_BLS=None (masks from positions)")
        cache = kv_cache.write(cache, k, v, positions_BL, cache_index)
        k, v = cache.k_BSKH.astype(dt), cache.v_BSKH.astype(dt)
        kv_positions = cache.positions_BS
      else:
        kv_positions = positions_BL
      if not self.is_global:
        distance = positions_BL[:, :, None] - kv_positions[:, None, :]
        mask_BLS = mask_BLS & (distance < c.sliding_window)
      out = _attend_grouped(q, k, v, mask_BLS, c.attn_softcap)
    return _weight_matmul(c, out.reshape(B * L, N * H), wo).reshape(B, L, D), cache


def _flat_matmul(x_TI: jax.Array, w: jax.Array, preferred=None) -> jax.Array:
  """[tokens, in] @ w, where w's leading axes make up `in` and the rest `out`: [tokens, out].

  Every projection is one 2-D matmul over flattened tokens because of how XLA's CPU backend
  compiles the alternatives. Over [batch, length] the weight gradient contracts two axes, and
  XLA fused a transpose into the elementwise pass before it (the gelu backward, written column
  by column): on the default 270M model one 512-token forward + backward spent 0.71 s of 6.7 s
  in such copies, 0.32 s of 6.4 s flattened (jax.profiler). In decoding, o_proj as an einsum over
  (heads, head_dim) made XLA transpose the weight at every step."""
  n_in = x_TI.shape[-1]
  w_IO = w.reshape(n_in, -1)
  return jnp.matmul(x_TI, w_IO, preferred_element_type=preferred)


def matmul_operands(c: DecoderConfig, x: jax.Array, w: jax.Array):
  """(x, w, accumulation dtype or None) as a matmul of activations x with weight w takes them:
  both in `dtype`, or with `narrow_matmuls` and a weight stored narrower than `dtype`, the
  weight as stored, x cast down to it, and products accumulated in `dtype`."""
  dt = jnp.dtype(c.dtype)
  if c.narrow_matmuls and jnp.dtype(w.dtype).itemsize < dt.itemsize:
    return x.astype(w.dtype), w, dt
  return x.astype(dt), w.astype(dt), None


def _weight_matmul(c: DecoderConfig, x_TI: jax.Array, w: jax.Array) -> jax.Array:
  return _flat_matmul(*matmul_operands(c, x_TI, w))


class MLP(nn.Module):
  """Gated feed-forward: down(act(gate(x)) * up(x)), act = SiLU (SwiGLU) or tanh-GELU (GeGLU)."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, x_BLD):
    c = self.config
    pdt, dt = jnp.dtype(c.param_dtype), jnp.dtype(c.dtype)
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    w_gate = _param(self, "gate", init, (c.embed_dim, c.mlp_dim), ("embed", "mlp"), pdt)
    w_up = _param(self, "up", init, (c.embed_dim, c.mlp_dim), ("embed", "mlp"), pdt)
    w_down = _param(self, "down", init, (c.mlp_dim, c.embed_dim), ("mlp", "embed"), pdt)
    B, L, D = x_BLD.shape
    x_TD = x_BLD.astype(dt).reshape(B * L, D)
    gate = _weight_matmul(c, x_TD, w_gate)
    if c.activation == "gelu_tanh":
      gate = jax.nn.gelu(gate, approximate=True)
    else:
      gate = jax.nn.silu(gate)
    h = gate * _weight_matmul(c, x_TD, w_up)
    h = nn.with_logical_constraint(h.reshape(B, L, -1), ("batch", "length", "mlp"))
    return _weight_matmul(c, h.reshape(B * L, -1), w_down).reshape(B, L, D)


class Block(nn.Module):
  """Pre-normed (and with post_norms, post-normed) attention and MLP, each added to the residual
  stream."""
  config: DecoderConfig
  is_global: bool

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask_BLS, cache, cache_index):
    c = self.config
    post = (lambda name, h: _norm(c, name)(h)) if c.post_norms else (lambda name, h: h)
    h, cache = Attention(c, self.is_global, name="attn")(
        _norm(c, "pre_attn_norm")(x_BLD), positions_BL, mask_BLS, cache, cache_index)
    x = x_BLD + post("post_attn_norm", h)
    h = MLP(c, name="mlp")(_norm(c, "pre_ffw_norm")(x))
    x = x + post("post_ffw_norm", h)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache


def _block_class(c: DecoderConfig):
  """Block, or Block recomputed in the backward pass as `remat` asks."""
  if not c.remat:
    return Block
  policies = {True: None, "full": None,
              "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
  if c.remat not in policies:
    raise ValueError(f"remat={c.remat!r}: use False, 'full' or 'dots'")
  return nn.remat(Block, policy=policies[c.remat])


class LayerGroup(nn.Module):
  """One period of layers (`layer_scan.groups`), the body that `Decoder` scans when
  `scan_layers`: the residual stream is the carry, each layer's cache slice the scanned input."""
  config: DecoderConfig
  kinds: tuple[bool, ...]  # is_global of each layer in the group

  @nn.compact
  def __call__(self, x_BLD, caches, positions_BL, mask_BLS, cache_index):
    block = _block_class(self.config)
    new = []
    for j, is_global in enumerate(self.kinds):
      x_BLD, c = block(self.config, is_global, name=f"layer_{j}")(
          x_BLD, positions_BL, mask_BLS, None if caches is None else caches[j], cache_index)
      new.append(c)
    return x_BLD, None if caches is None else tuple(new)


class Decoder(nn.Module):
  """The decoder. Returns logits (or the final-normed hidden states) and the updated cache."""
  config: DecoderConfig

  def setup(self):
    c = self.config
    block = _block_class(c)
    self.embedder = Embedder(c)
    first = 0
    if c.scan_layers:
      period, reps = layer_scan.groups(c.layer_types)
      first = period * reps
      scanned = nn.scan(LayerGroup, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=reps,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      self.groups = scanned(c, tuple(t == GLOBAL for t in c.layer_types[:period]),
                            name=layer_scan.SCAN)
    self.layers = [block(c, c.layer_types[i] == GLOBAL, name=f"layer_{i}")
                   for i in range(first, c.num_layers)]
    self.final_norm = _norm(c, None)

  def __call__(self, tokens_BL, positions_BL, mask_BLS,
               cache: Sequence[kv_cache.LayerCache] | None = None, cache_index=0,
               return_hidden: bool = False):
    """tokens_BL, positions_BL: int32 [B, L]; mask_BLS: bool [B, L, S] with S = L, or S = cache
    length when `cache` is given (the new keys are written at slots [cache_index, +L)).

    Decoding: with `cache` and mask_BLS=None, every layer derives its mask from the positions
    (causal, real keys, its window) over its cache slots plus the L new tokens
    (`cached_attention`); ring-buffer caches (`kv_cache.init_cache(..., ring=True)`) need this.
    With `scan_layers` the cache is in the scanned layout (`kv_cache.init_cache`): the scan reads
    and writes each group position's stacked cache in place, the remaining layers their own."""
    if mask_BLS is None and cache is None:
      raise ValueError("mask_BLS=None needs a cache")
    x = self.embedder.encode(tokens_BL)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    new_cache = [] if cache is not None else None
    first = 0  # the index in `cache` of self.layers[0]
    if self.config.scan_layers:
      first, _ = layer_scan.groups(self.config.layer_types)
      x, stacked = self.groups(x, None if cache is None else tuple(cache[:first]), positions_BL,
                               mask_BLS, cache_index)
      if cache is not None:
        new_cache = list(stacked)
    for i, layer in enumerate(self.layers, start=first):
      x, layer_cache = layer(x, positions_BL, mask_BLS,
                             None if cache is None else cache[i], cache_index)
      if cache is not None:
        new_cache.append(layer_cache)
    hidden = self.final_norm(x)
    if return_hidden:
      return hidden, new_cache
    return self.embedder.decode(hidden), new_cache

  def logits(self, hidden_BLD, embedding_DV=None):
    """Projects hidden states to vocabulary logits (soft-capped where the family caps them);
    use via `method=`."""
    return self.embedder.decode(hidden_BLD, embedding_DV)

  def vocab_major_logits(self, hidden_BD):
    """float32 logits [V, B] as [V, D] x [D, B]: for a few rows, about twice as fast as
    `logits` on CPU (the same values up to float rounding)."""
    hidden, table, acc = matmul_operands(self.config, hidden_BD, self.embedder.output_table)
    logits = jnp.einsum("VD,BD->VB", table, hidden, preferred_element_type=acc)
    logits = logits.astype(jnp.float32)
    return softcap(logits, self.config.final_softcap)


def output_table(params) -> jax.Array:
  """[V, D]: the table that maps final hidden states to logits (the tied embedding, or the
  separate head of an untied model). Losses that never build full logits read it."""
  embedder = params["embedder"]
  return embedder["lm_head"] if "lm_head" in embedder else embedder["embedding"]


def decode_embedding(params) -> jax.Array:
  """The [D, V] (transposed) copy of the output table for `Decoder.logits(embedding_DV=...)`."""
  return jnp.transpose(output_table(params))


def init_params(config: DecoderConfig, rng: jax.Array):
  """Randomly initialised (unboxed) parameters."""
  tokens = jnp.zeros((1, 4), jnp.int32)
  positions, mask = sequence_inputs(jnp.ones((1, 4), bool))
  variables = Decoder(config).init(rng, tokens, positions, mask)
  return nn.unbox(variables["params"])


def abstract_params(config: DecoderConfig):
  """Shapes/dtypes of the parameters, with logical partitioning boxes, computed without memory."""
  tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 4, 4), jnp.bool_)
  return jax.eval_shape(
      lambda t, p, m: Decoder(config).init(jax.random.PRNGKey(0), t, p, m)["params"],
      tokens, tokens, mask)
