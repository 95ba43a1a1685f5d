"""What a model family is: its mapping between checkpoint formats and `DecoderConfig`.

A family module (`families/<name>.py`) defines one `Family`: which HF `model_type`s and GGUF
architectures it reads, how their config fields become a `DecoderConfig` and back, the HF names
of its layer norms, how llama.cpp changed its tensors on conversion (undone on import), and the
presets of its published sizes. Everything else (the model, the weight layout, the formats'
readers and writers) is shared.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np

from cai_jax.model.config import GLOBAL, LOCAL, DecoderConfig


class CheckpointError(ValueError):
  """A checkpoint file or folder that cai_jax cannot read; the message names it."""


# Norms inside one block: our parameter names -> the HF module names of the pre-norm families
# (Llama, Mistral, Qwen). Post-norm families name four.
PRE_NORM_NAMES = {"pre_attn_norm": "input_layernorm", "pre_ffw_norm": "post_attention_layernorm"}
FOUR_NORM_NAMES = {
    "pre_attn_norm": "input_layernorm",
    "post_attn_norm": "post_attention_layernorm",
    "pre_ffw_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  hf_model_types: tuple[str, ...]          # config.json `model_type`s this family reads
  hf_architecture: str                     # `architectures[0]` of the folders it writes
  config_from_hf: Callable[[Mapping[str, Any], str], DecoderConfig]
  config_to_hf: Callable[[DecoderConfig], dict[str, Any]]   # without the special token ids
  hf_norm_names: Mapping[str, str]
  presets: Mapping[str, DecoderConfig]
  gguf_architectures: tuple[str, ...] = ()
  # (GgufMetadata) -> DecoderConfig
  config_from_gguf: Callable[[Any], DecoderConfig] | None = None
  # (HF tensor name, float32 array, config) -> array: undoes llama.cpp's conversion of a tensor.
  from_gguf_tensor: Callable[[str, np.ndarray, DecoderConfig], np.ndarray] | None = None
  # Extra GGUF tensor names (besides the HF-named decoder weights) to skip without an error.
  gguf_ignored: tuple[str, ...] = ()
  # bos/eos/pad ids of the family's usual vocabulary, for a folder saved without a tokenizer.
  special_ids: Mapping[str, int] = dataclasses.field(default_factory=dict)
  # transformers' class for a SentencePiece tokenizer.model of this family (an export's
  # tokenizer_config.json); byte-level BPE tokenizers write tokenizer.json instead.
  sentencepiece_class: str = "LlamaTokenizer"


# ----------------------------------------------------------------------------- HF config helpers


def require(d: Mapping[str, Any], key: str, where: str):
  if d.get(key) is None:
    raise CheckpointError(f"{where}: config is missing field {key!r}")
  return d[key]


def head_dim_of(d: Mapping[str, Any], where: str) -> int:
  """`head_dim` when given (and not null), else hidden_size / num_attention_heads."""
  if d.get("head_dim"):
    return int(d["head_dim"])
  return int(require(d, "hidden_size", where)) // int(require(d, "num_attention_heads", where))


def rope_fields(d: Mapping[str, Any], where: str, default_base: float = 10_000.0
                ) -> dict[str, Any]:
  """DecoderConfig RoPE fields of a single-base family (every layer rotates alike), from the
  legacy keys (`rope_theta`, `rope_scaling`) or transformers 5's `rope_parameters`."""
  params = d.get("rope_parameters")
  if isinstance(params, Mapping) and ("rope_theta" in params or "rope_type" in params):
    base = float(params.get("rope_theta", d.get("rope_theta", default_base)))
    scaling = params if params.get("rope_type", "default") != "default" else None
  else:
    base = float(d.get("rope_theta", default_base))
    scaling = d.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
      scaling = None
  out: dict[str, Any] = {"local_rope_base": base, "global_rope_base": base}
  out.update(rope_scaling_fields(scaling, where))
  return out


def rope_scaling_fields(scaling: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
  if not scaling:
    return {}
  kind = scaling.get("rope_type", scaling.get("type"))
  if kind == "linear":
    return {"rope_scaling": "linear", "global_rope_scale": float(scaling["factor"])}
  if kind == "llama3":
    return {"rope_scaling": "llama3", "global_rope_scale": float(scaling["factor"]),
            "rope_low_freq_factor": float(scaling["low_freq_factor"]),
            "rope_high_freq_factor": float(scaling["high_freq_factor"]),
            "rope_original_max_len": int(scaling["original_max_position_embeddings"])}
  if kind == "yarn":
    if scaling.get("mscale") or scaling.get("mscale_all_dim"):
      raise CheckpointError(f"{where}: YaRN with mscale / mscale_all_dim is not supported")
    factor = float(scaling["factor"])
    attention = scaling.get("attention_factor")
    if attention is None:  # the YaRN paper's temperature, 0.1 ln(factor) + 1
      attention = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return {"rope_scaling": "yarn", "global_rope_scale": factor,
            "rope_original_max_len": int(scaling["original_max_position_embeddings"]),
            "rope_beta_fast": float(scaling.get("beta_fast") or 32.0),
            "rope_beta_slow": float(scaling.get("beta_slow") or 1.0),
            "rope_truncate": bool(scaling.get("truncate", True)),
            "rope_attention_factor": float(attention)}
  raise CheckpointError(f"{where}: RoPE scaling type {kind!r} is not supported "
                        "(supported: none, linear, llama3, yarn)")


def rope_to_hf(c: DecoderConfig) -> dict[str, Any]:
  """Legacy RoPE keys (rope_theta, rope_scaling), which transformers 4.5x and 5.x both read."""
  scaling = None
  if c.rope_scaling == "linear":
    scaling = {"rope_type": "linear", "factor": c.global_rope_scale}
  elif c.rope_scaling == "llama3":
    scaling = {"rope_type": "llama3", "factor": c.global_rope_scale,
               "low_freq_factor": c.rope_low_freq_factor,
               "high_freq_factor": c.rope_high_freq_factor,
               "original_max_position_embeddings": c.rope_original_max_len}
  elif c.rope_scaling == "yarn":
    scaling = {"rope_type": "yarn", "factor": c.global_rope_scale,
               "original_max_position_embeddings": c.rope_original_max_len,
               "beta_fast": c.rope_beta_fast, "beta_slow": c.rope_beta_slow,
               "truncate": c.rope_truncate, "attention_factor": c.rope_attention_factor}
  return {"rope_theta": c.global_rope_base, "rope_scaling": scaling}


def int_if_integral(x: float):
  """transformers' strict configs want an int wherever the value is integral."""
  return int(x) if float(x).is_integer() else x


def common_to_hf(c: DecoderConfig) -> dict[str, Any]:
  """config.json keys that every family writes the same way."""
  return {
      "vocab_size": c.vocab_size,
      "hidden_size": c.embed_dim,
      "intermediate_size": c.mlp_dim,
      "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads,
      "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_dim,
      "rms_norm_eps": c.rms_norm_eps,
      "max_position_embeddings": c.max_seq_len,
      "tie_word_embeddings": c.tie_embeddings,
      "attention_dropout": 0.0,
      "torch_dtype": c.param_dtype,
      "use_cache": True,
  }


# ----------------------------------------------------------------------------- GGUF helpers


class GgufMetadata:
  """Typed access to a GGUF's metadata for one architecture; missing fields name the file."""

  def __init__(self, reader, path: str):
    self.reader, self.path = reader, path
    self.arch = self.get_raw("general.architecture")
    self._shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}

  def get_raw(self, key: str, default=None):
    """The field's value; `default` when it is missing and a default is given (not None)."""
    field = self.reader.fields.get(key)
    if field is None:
      if default is not None:
        return default
      raise CheckpointError(f"{self.path}: GGUF metadata field {key!r} is missing")
    return field.contents()

  def get(self, key: str, default=None):
    """`<architecture>.<key>`."""
    return self.get_raw(f"{self.arch}.{key}", default)

  def has(self, key: str) -> bool:
    return f"{self.arch}.{key}" in self.reader.fields

  def f32(self, key: str, default=None) -> float:
    """GGUF stores float32: 1e-6 comes back as 9.99999997e-07. Read it as it was written."""
    return float(str(np.float32(self.get(key, default))))

  def tensor_values(self, name: str) -> np.ndarray | None:
    """A (small, unquantized) tensor's values as float32, None when the file has none."""
    for t in self.reader.tensors:
      if t.name == name:
        return np.asarray(t.data, np.float32).reshape(-1)
    return None

  def tensor_shape(self, name: str) -> tuple[int, ...] | None:
    """numpy (row-major) shape of a tensor, None when the file has none of that name."""
    return self._shapes.get(name)

  def vocab_size(self) -> int:
    shape = self.tensor_shape("token_embd.weight")
    if shape is None:
      raise CheckpointError(f"{self.path}: tensor 'token_embd.weight' is missing")
    return shape[0]

  def linear_rope_scaling(self) -> dict[str, Any]:
    """DecoderConfig fields of `rope.scaling.type` (none or linear; others are errors)."""
    kind = self.get("rope.scaling.type") if self.has("rope.scaling.type") else "none"
    if kind in ("none", ""):
      return {}
    if kind != "linear":
      raise CheckpointError(f"{self.path}: GGUF RoPE scaling {kind!r} is not supported; "
                            "use the HF folder of this checkpoint")
    return {"rope_scaling": "linear", "global_rope_scale": self.f32("rope.scaling.factor")}


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's converter reorders each head's q / k rows from the half-split RoPE layout to
  interleaved pairs (its `permute`) for the Llama architecture; this puts them back."""
  rows = w.shape[0]
  return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


HF_LAYER_TYPES = {"sliding_attention": LOCAL, "full_attention": GLOBAL}


def layer_types_to_hf(c: DecoderConfig) -> list[str]:
  """`layer_types` of an HF config (the inverse of HF_LAYER_TYPES)."""
  return ["sliding_attention" if t == LOCAL else "full_attention" for t in c.layer_types]


def hf_layer_types(d: Mapping[str, Any], num_layers: int, where: str,
                   window_everywhere: bool = False) -> tuple[str, ...]:
  """Layer kinds from `layer_types` (transformers 5), else: all sliding when the config has a
  window that applies to every layer (Mistral; Qwen with use_sliding_window), else all global."""
  if d.get("layer_types"):
    try:
      kinds = tuple(HF_LAYER_TYPES[t] for t in d["layer_types"])
    except KeyError as e:
      raise CheckpointError(f"{where}: unknown layer type {e.args[0]!r} in layer_types") from None
    if len(kinds) != num_layers:
      raise CheckpointError(f"{where}: layer_types has {len(kinds)} entries for "
                            f"{num_layers} layers")
    if not d.get("sliding_window"):
      kinds = (GLOBAL,) * num_layers
    return kinds
  kind = LOCAL if window_everywhere and d.get("sliding_window") else GLOBAL
  return (kind,) * num_layers


def unused_window_dropped(d: Mapping[str, Any], where: str) -> dict[str, Any]:
  """Qwen configs name a `sliding_window` that applies only with `use_sliding_window`; without
  it the window is dropped, with it `layer_types` must say which layers use it."""
  d = dict(d)
  if not d.get("use_sliding_window"):
    d["sliding_window"] = None
  elif not d.get("layer_types"):
    raise CheckpointError(f"{where}: use_sliding_window=true without layer_types "
                          "(max_window_layers) is not supported")
  return d


def pre_norm_config_from_hf(d: Mapping[str, Any], where: str, *, family: str,
                            qkv_bias: bool, qk_norm: bool,
                            window_everywhere: bool = False) -> DecoderConfig:
  """The config of a pre-norm SwiGLU family (Llama, Mistral, Qwen 2 / 3)."""
  act = d.get("hidden_act", "silu")
  if act != "silu":
    raise CheckpointError(f"{where}: hidden_act {act!r} is not supported for {family} (silu)")
  if d.get("mlp_bias"):
    raise CheckpointError(f"{where}: mlp_bias=true is not supported")
  num_layers = int(require(d, "num_hidden_layers", where))
  layer_types = hf_layer_types(d, num_layers, where, window_everywhere)
  head_dim = head_dim_of(d, where)
  num_heads = int(require(d, "num_attention_heads", where))
  return DecoderConfig(
      family=family,
      vocab_size=int(require(d, "vocab_size", where)),
      embed_dim=int(require(d, "hidden_size", where)),
      mlp_dim=int(require(d, "intermediate_size", where)),
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
      head_dim=head_dim,
      query_pre_attn_scalar=float(head_dim),
      layer_types=layer_types,
      sliding_window=int(d.get("sliding_window") or 0) if LOCAL in layer_types else 0,
      rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
      max_seq_len=int(d.get("max_position_embeddings", 4096)),
      tie_embeddings=bool(d.get("tie_word_embeddings", False)),
      qkv_bias=qkv_bias, qk_norm=qk_norm,
      **rope_fields(d, where))


# Llama 3's RoPE scaling as the published configs set it: factor 8 (3.1) or 32 (3.2), low and
# high frequency factors 1 and 4, original context 8,192.
LLAMA3_ROPE_FACTORS = (8.0, 32.0)
LLAMA3_ROPE = dict(rope_scaling="llama3", rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                   rope_original_max_len=8192)


def rope_freqs_scaling(m: GgufMetadata, config: DecoderConfig) -> DecoderConfig:
  """llama.cpp writes Llama 3's RoPE scaling as a tensor of per-frequency divisors
  (`rope_freqs.weight`) rather than as its parameters: the config with the Llama 3 scaling whose
  divisors equal the file's (rtol 1e-5), or a CheckpointError showing the file's divisors."""
  divisors = m.tensor_values("rope_freqs.weight")
  if divisors is None:
    return config
  from cai_jax.model import decoder
  plain = np.asarray(decoder.rope_inverse_frequencies(config, True), np.float64)
  for factor in LLAMA3_ROPE_FACTORS:
    candidate = config.replace(global_rope_scale=factor, **LLAMA3_ROPE)
    scaled = np.asarray(decoder.rope_inverse_frequencies(candidate, True), np.float64)
    if divisors.shape == plain.shape and np.allclose(plain / scaled, divisors, rtol=1e-5):
      return candidate
  raise CheckpointError(
      f"{m.path}: rope_freqs.weight holds per-frequency RoPE divisors "
      f"{np.round(divisors[[0, len(divisors) // 2, -1]], 4).tolist()} (first, middle, last) that "
      f"match no Llama 3 scaling (factor {' or '.join(map(str, LLAMA3_ROPE_FACTORS))}, low 1, "
      "high 4, original 8192); use the HF folder of this checkpoint")


def pre_norm_config_from_gguf(m: GgufMetadata, *, family: str, qkv_bias: bool, qk_norm: bool
                              ) -> DecoderConfig:
  """The config of a pre-norm SwiGLU family from llama.cpp metadata (Llama 3's RoPE scaling read
  back from its per-frequency divisors, `rope_freqs_scaling`)."""
  num_layers = int(m.get("block_count"))
  num_heads = int(m.get("attention.head_count"))
  embed_dim = int(m.get("embedding_length"))
  head_dim = int(m.get("attention.key_length", embed_dim // num_heads))
  window = int(m.get("attention.sliding_window", 0))
  rope_base = m.f32("rope.freq_base", 10_000.0)
  config = DecoderConfig(
      family=family,
      vocab_size=m.vocab_size(),
      embed_dim=embed_dim,
      mlp_dim=int(m.get("feed_forward_length")),
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=int(m.get("attention.head_count_kv", num_heads)),
      head_dim=head_dim,
      query_pre_attn_scalar=float(head_dim),
      layer_types=(LOCAL if window else GLOBAL,) * num_layers,
      sliding_window=window,
      local_rope_base=rope_base, global_rope_base=rope_base,
      rms_norm_eps=m.f32("attention.layer_norm_rms_epsilon"),
      max_seq_len=int(m.get("context_length")),
      tie_embeddings=m.tensor_shape("output.weight") is None,
      qkv_bias=qkv_bias, qk_norm=qk_norm, **m.linear_rope_scaling())
  return rope_freqs_scaling(m, config)


def pre_norm_config_to_hf(c: DecoderConfig, architecture: str, model_type: str
                          ) -> dict[str, Any]:
  out = {"architectures": [architecture], "model_type": model_type, **common_to_hf(c),
         "hidden_act": "silu", **rope_to_hf(c)}
  if c.window is not None:
    out["sliding_window"] = c.sliding_window
    out["layer_types"] = layer_types_to_hf(c)
  return out


def tiny(family: str, **kw) -> DecoderConfig:
  """A few-hundred-KB model of a family for unit tests (GQA, 4 layers; a 32,768-token context,
  since tests feed it the constitution's few-shot prompts at about one token per character)."""
  fields = dict(vocab_size=512, embed_dim=64, mlp_dim=128, num_layers=4, num_heads=4,
                num_kv_heads=2, head_dim=16, query_pre_attn_scalar=16,
                layer_types=(GLOBAL,) * 4, max_seq_len=32_768, family=family)
  fields.update(kw)
  return DecoderConfig(**fields)
