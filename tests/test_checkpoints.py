"""Checkpoint formats on tiny models: HF folders (our export read back, and read by transformers;
transformers' own bf16 sharded export; the multimodal layout), GGUF files written here with
gguf.GGUFWriter (F32, F16, Q8_0), the GGUF -> HF conversion cache of `loader.load`, orbax folders,
and the error (CheckpointError naming the path) for each kind of unreadable input.

Nothing here touches the real 270M model. GGUF tensor names come from gguf's own TensorNameMap
(the llama.cpp convention), not from cai_jax's table, so the importer is checked against it.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import shutil

import flax.linen as nn
import gguf
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from cai_jax.checkpoints import gguf as gguf_io
from cai_jax.checkpoints import hf, loader, orbax_io
from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.model import decoder
from cai_jax.model.config import DecoderConfig, layer_types_from_pattern
from cai_jax.model.families import PRESETS, preset
from cai_jax.tokenizer import Tokenizer
from fake_gguf import FakeReader


TINY = preset("tiny")
# GGUF files do not store the layer pattern, the query scale or the local RoPE base: the importer
# fills in Gemma 3's (5 local + 1 global, head_dim, 10k), so GGUF test models follow them.
GGUF_TINY = TINY.replace(num_layers=6, layer_types=layer_types_from_pattern(6, 6))
TOKENS = np.random.default_rng(1).integers(0, TINY.vocab_size, (2, 20)).astype(np.int32)


def _is_box(x):
  return isinstance(x, nn.LogicallyPartitioned)


def random_params(config: DecoderConfig, seed: int = 0):
  """Random float32 parameters (NumPy, shapes from abstract_params). Norm scales are multiples of
  2**-10 in (-1, 1), so llama.cpp's stored (1 + w) converts back to w exactly."""
  rng = np.random.default_rng(seed)

  def draw(path, box):
    shape = box.value.shape
    if path[-1].key == "scale":
      x = np.round(rng.uniform(-0.5, 0.5, shape) * 1024) / 1024
    else:
      x = rng.standard_normal(shape) * (1.0 if path[-1].key == "embedding" else 0.125)
    return jnp.asarray(x, box.value.dtype)

  return jax.tree_util.tree_map_with_path(draw, decoder.abstract_params(config), is_leaf=_is_box)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for path, x in jax.tree_util.tree_leaves_with_path(a):
    y = b
    for k in path:
      y = y[k.key]
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape and x.dtype == y.dtype, (jax.tree_util.keystr(path), x.dtype, y.dtype)
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def our_logits(config, params, tokens=TOKENS) -> np.ndarray:
  positions, mask = decoder.sequence_inputs(jnp.ones(tokens.shape, bool))
  fn = jax.jit(lambda p, t: decoder.Decoder(config).apply({"params": p}, t, positions, mask)[0])
  return np.asarray(fn(params, jnp.asarray(tokens)))


def rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _have_transformers() -> bool:
  return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


needs_transformers = pytest.mark.skipif(not _have_transformers(),
                                        reason="transformers/torch not installed")


@pytest.fixture(scope="module")
def tiny_params():
  return random_params(TINY)


# ----------------------------------------------------------------------------- tiny vocabulary

WS = "\u2581"
VOCAB = (["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
          "\n", WS, "h", "i", "hi", WS + "hi"]
         + [f"<0x{b:02X}>" for b in range(256)])
VOCAB_TYPES = [3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1] + [6] * 256
VOCAB_SCORES = [0.0] * 7 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0] + [0.0] * 256




def tiny_tokenizer() -> Tokenizer:
  return Tokenizer.from_gguf_reader(FakeReader({
      "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": VOCAB,
      "tokenizer.ggml.scores": VOCAB_SCORES, "tokenizer.ggml.token_type": VOCAB_TYPES,
      "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
      "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
      "tokenizer.ggml.add_space_prefix": False}), "tiny-vocab")


# ----------------------------------------------------------------------------- HF folders


def test_hf_state_round_trip_is_bitwise(tiny_params):
  state = hf.hf_state_from_params(TINY, tiny_params)
  assert len(state) == 2 + 13 * TINY.num_layers
  assert state["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 16, 64)  # [out, in]
  assert state["model.layers.0.self_attn.o_proj.weight"].shape == (64, 4 * 16)
  assert state["model.layers.0.mlp.down_proj.weight"].shape == (64, 128)
  back = hf.params_from_hf_state(TINY, state, "<memory>")
  assert_trees_equal(back, jax.tree.map(np.asarray, tiny_params))


def test_hf_state_shape_mismatch_names_the_tensor(tiny_params):
  state = hf.hf_state_from_params(TINY, tiny_params)
  state["model.layers.2.mlp.up_proj.weight"] = state["model.layers.2.mlp.up_proj.weight"][:5]
  with pytest.raises(CheckpointError, match="up_proj.*shape"):
    hf.params_from_hf_state(TINY, state, "x")
  del state["model.norm.weight"]
  with pytest.raises(CheckpointError, match="model.norm.weight"):
    hf.params_from_hf_state(TINY, state, "x")


def test_save_and_load_hf_folder(tmp_path, tiny_params):
  from safetensors.numpy import load_file

  folder = str(tmp_path / "hf")
  hf.save_hf_folder(folder, TINY, tiny_params)
  assert hf.is_hf_folder(folder)
  config, params = hf.load_hf_folder(folder)
  assert config == TINY
  assert_trees_equal(params, jax.tree.map(np.asarray, tiny_params))
  # The file is standard safetensors: the reference reader sees the same tensors.
  on_disk = load_file(os.path.join(folder, "model.safetensors"))
  expected = hf.hf_state_from_params(TINY, tiny_params)
  assert set(on_disk) == set(expected)
  for name, x in expected.items():
    assert on_disk[name].dtype == np.float32
    np.testing.assert_array_equal(on_disk[name], x, err_msg=name)
  with open(os.path.join(folder, "config.json")) as f:
    raw = json.load(f)
  assert raw["model_type"] == "gemma3_text" and raw["tie_word_embeddings"] is True
  with open(os.path.join(folder, "generation_config.json")) as f:
    assert json.load(f)["eos_token_id"] == [1]


def test_save_hf_folder_with_tokenizer(tmp_path, tiny_params):
  tok = tiny_tokenizer()
  folder = str(tmp_path / "hf")
  hf.save_hf_folder(folder, TINY, tiny_params, tok)
  assert Tokenizer.from_file(os.path.join(folder, "tokenizer.model")).serialized_proto() == (
      tok.serialized_proto())
  with open(os.path.join(folder, "generation_config.json")) as f:
    assert json.load(f)["eos_token_id"] == [1, VOCAB.index("<end_of_turn>")]
  loaded = loader.load(folder, cache_dir=str(tmp_path / "cache"))
  assert loaded.config == TINY and loaded.source == folder
  assert_trees_equal(jax.tree.map(np.asarray, loaded.params),
                     jax.tree.map(np.asarray, tiny_params))


def test_loaded_hf_params_do_not_alias_the_file(tmp_path, tiny_params):
  """load_hf_folder must return arrays of its own, not views into the memory-mapped safetensors
  file: with views, re-saving to the same folder (save_hf_folder truncates model.safetensors
  while reading the arrays) dies with SIGBUS, and any rewrite of the file changes the loaded
  parameters under the caller. Shown here without a crash: overwrite the file in place.
  (Fails until hf.params_from_hf_state copies: np.array(x, dtype=dtype).)"""
  folder = str(tmp_path / "hf")
  hf.save_hf_folder(folder, TINY, tiny_params)
  _, params = hf.load_hf_folder(folder)
  path = os.path.join(folder, "model.safetensors")
  size = os.path.getsize(path)
  with open(path, "r+b") as f:  # same length: no truncation, so no SIGBUS
    header_len = int.from_bytes(f.read(8), "little")
    f.seek(8 + header_len)
    f.write(b"\0" * (size - 8 - header_len))
  assert_trees_equal(params, jax.tree.map(np.asarray, tiny_params))


def test_loader_hf_folder_without_tokenizer(tmp_path, tiny_params):
  """An HF folder without tokenizer.model is a checkpoint cai_jax cannot use: CheckpointError
  (which main.py reports cleanly), naming the missing file. (Fails until loader.load turns the
  tokenizer's ValueError into CheckpointError.)"""
  folder = str(tmp_path / "hf")
  hf.save_hf_folder(folder, TINY, tiny_params)  # no tokenizer
  _raises_naming(os.path.join(folder, "tokenizer.model"), loader.load, folder,
                 cache_dir=str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, tiny_params):
  """Our export of TINY (and its global_rope_scale=8 variant) read by transformers."""
  if not _have_transformers():
    pytest.skip("transformers/torch not installed")
  import torch
  import transformers

  out = {}
  for scale in (1.0, 8.0):
    config = TINY.replace(global_rope_scale=scale, rope_scaling="linear" if scale != 1 else "none")
    folder = str(tmp_path_factory.mktemp(f"hf_export_scale{scale:g}"))
    hf.save_hf_folder(folder, config, tiny_params)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, output_loading_info=True, dtype=torch.float32)
    out[scale] = (config, model.eval(), info)
  return out


@needs_transformers
@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_transformers_reads_our_export(hf_models, tiny_params, scale):
  import torch

  config, model, info = hf_models[scale]
  assert type(model).__name__ == "Gemma3ForCausalLM"
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert not info["mismatched_keys"] and not info.get("error_msgs")
  with torch.no_grad():
    theirs = model(torch.tensor(TOKENS, dtype=torch.long)).logits.float().numpy()
  ours = our_logits(config, tiny_params)
  assert rel_err(ours, theirs) < 1e-4  # measured ~2e-7
  if scale != 1.0:  # the RoPE fields matter: transformers' unscaled model differs
    _, base_model, _ = hf_models[1.0]
    with torch.no_grad():
      unscaled = base_model(torch.tensor(TOKENS, dtype=torch.long)).logits.float().numpy()
    assert rel_err(unscaled, theirs) > 1e-2


@needs_transformers
def test_transformers_bf16_sharded_folder_loads(hf_models, tmp_path, tiny_params):
  import torch

  _, model, _ = hf_models[8.0]
  folder = str(tmp_path / "bf16")
  model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="100KB")
  model.to(torch.float32)
  shards = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
  assert len(shards) > 1 and os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
  assert hf.read_safetensors(os.path.join(folder, shards[0])).popitem()[1].dtype == (
      ml_dtypes.bfloat16)
  config, params = hf.load_hf_folder(folder)
  assert config == TINY.replace(rope_scaling="linear", global_rope_scale=8.0)  # transformers-5 rope_parameters read
  as_bf16 = jax.tree.map(
      lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), tiny_params)
  assert_trees_equal(params, as_bf16)
  config16, params16 = hf.load_hf_folder(folder, param_dtype="bfloat16")
  assert config16.param_dtype == "bfloat16"
  assert {np.asarray(x).dtype for x in jax.tree.leaves(params16)} == {
      np.dtype(ml_dtypes.bfloat16)}


def _text_config_dict(config: DecoderConfig) -> dict:
  d = hf.config_to_hf(config)
  del d["architectures"]
  return d


@pytest.mark.parametrize("prefix", ["model.language_model.", "language_model.model."])
def test_multimodal_folder_loads_the_text_tower(tmp_path, tiny_params, prefix):
  from safetensors.numpy import save_file

  config = TINY.replace(rope_scaling="linear", global_rope_scale=8.0)
  raw = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
         "text_config": _text_config_dict(config),
         "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8},
         "mm_tokens_per_image": 4}
  state = {prefix + k[len("model."):]: v
           for k, v in hf.hf_state_from_params(config, tiny_params).items()}
  state["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.ones(
      (8, 3, 2, 2), np.float32)
  state["model.multi_modal_projector.mm_input_projection_weight"] = np.zeros((8, 64), np.float32)
  (tmp_path / "config.json").write_text(json.dumps(raw))
  save_file(state, str(tmp_path / "model.safetensors"))
  loaded_config, params = hf.load_hf_folder(str(tmp_path))
  assert loaded_config == config
  assert_trees_equal(params, jax.tree.map(np.asarray, tiny_params))


def test_published_4b_multimodal_config_uses_hf_defaults():
  """google/gemma-3-4b-it's config.json lists only what differs from Gemma3TextConfig's defaults
  in text_config (no num_attention_heads / num_key_value_heads: 8 and 4 by default). transformers
  fills the defaults; cai_jax must read the same architecture (the 4B preset). (Fails until
  hf.config_from_hf defaults the head counts like Gemma3TextConfig: 8 and 4.)"""
  raw = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
         "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                         "model_type": "gemma3_text", "num_hidden_layers": 34,
                         "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                         "sliding_window": 1024},
         "vision_config": {"model_type": "siglip_vision_model"}}
  if _have_transformers():
    import transformers
    text = transformers.Gemma3Config(**raw).text_config
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (8, 4, 256)
  assert hf.config_from_hf(raw, "config.json") == PRESETS["gemma3-4b"]


def test_llama_folder_is_rejected_naming_the_file(tmp_path, tiny_params):
  from safetensors.numpy import save_file

  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 4}))
  save_file({"model.embed_tokens.weight": np.zeros((8, 4), np.float32)},
            str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match="llama") as e:
    hf.load_hf_folder(str(tmp_path))
  assert str(tmp_path / "config.json") in str(e.value)


def test_corrupt_safetensors_names_the_file(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(_text_config_dict(TINY)))
  (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
  with pytest.raises(CheckpointError) as e:
    hf.load_hf_folder(str(tmp_path))
  assert str(tmp_path / "model.safetensors") in str(e.value)


# ----------------------------------------------------------------------------- GGUF files


def write_gguf(path, config: DecoderConfig, params, weights: str = "f32", arch: str = "gemma3",
               tokenizer: bool = True) -> None:
  """A Gemma 3 GGUF as llama.cpp's converter writes it: HF tensors ([out, in], stored with
  reversed dims), norms as (1 + w), 2-D weights in `weights` (f32, f16 or q8_0)."""
  c = config
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(c.num_layers)
  writer.add_context_length(c.max_seq_len)
  writer.add_embedding_length(c.embed_dim)
  writer.add_feed_forward_length(c.mlp_dim)
  writer.add_head_count(c.num_heads)
  writer.add_head_count_kv(c.num_kv_heads)
  writer.add_key_length(c.head_dim)
  writer.add_value_length(c.head_dim)
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_sliding_window(c.sliding_window)
  writer.add_rope_freq_base(c.global_rope_base)
  if c.global_rope_scale != 1.0:
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(c.global_rope_scale)
  if tokenizer:
    writer.add_tokenizer_model("llama")
    writer.add_token_list(VOCAB)
    writer.add_token_scores(VOCAB_SCORES)
    writer.add_token_types(VOCAB_TYPES)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_space_prefix(False)
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, c.num_layers)
  for hf_name, x in hf.hf_state_from_params(c, params).items():
    name = names.get_name(hf_name, try_suffixes=(".weight",))
    assert name is not None, hf_name
    if hf_name.endswith("norm.weight"):
      writer.add_tensor(name, (x + 1.0).astype(np.float32))
    elif weights == "f16":
      writer.add_tensor(name, x.astype(np.float16))
    elif weights == "q8_0":
      q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
      writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      writer.add_tensor(name, x)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.fixture(scope="module")
def gguf_params():
  return random_params(GGUF_TINY, seed=3)


@pytest.fixture(scope="module")
def gguf_f32(tmp_path_factory, gguf_params) -> str:
  path = str(tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")
  write_gguf(path, GGUF_TINY, gguf_params)
  return path


def assert_gguf_config(got: DecoderConfig, want: DecoderConfig):
  """Equal, except that GGUF stores rms_norm_eps as float32 (see the test that wants it exact)."""
  assert got.rms_norm_eps == pytest.approx(want.rms_norm_eps, rel=1e-6)
  assert got.replace(rms_norm_eps=want.rms_norm_eps) == want


@pytest.mark.parametrize("weights,scale", [("f32", 1.0), ("f16", 1.0), ("q8_0", 8.0)])
def test_load_gguf(tmp_path, gguf_params, weights, scale):
  config = GGUF_TINY.replace(global_rope_scale=scale, rope_scaling="linear" if scale != 1 else "none")
  path = str(tmp_path / f"tiny-{weights}.gguf")
  write_gguf(path, config, gguf_params, weights)
  loaded_config, state, tokenizer = gguf_io.load_gguf(path)
  assert_gguf_config(loaded_config, config)
  assert tokenizer.vocab_size == len(VOCAB)
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id, tokenizer.pad_id) == (2, 1, 3, 0)
  assert tokenizer.encode("hi hi", add_bos=True) == [2, VOCAB.index("hi"), VOCAB.index(WS + "hi")]
  params = hf.params_from_hf_state(loaded_config, state, path)
  want = jax.tree.map(np.asarray, gguf_params)
  if weights == "f32":
    assert_trees_equal(params, want)
    return
  for path_, x in jax.tree_util.tree_leaves_with_path(want):
    got = params
    for k in path_:
      got = got[k.key]
    where = jax.tree_util.keystr(path_)
    if x.ndim == 1 or weights == "f16":  # norms stay F32; F16 is exact float16 rounding
      expected = x if x.ndim == 1 else x.astype(np.float16).astype(np.float32)
      np.testing.assert_array_equal(got, expected, err_msg=where)
    else:  # Q8_0: blocks of 32 with one scale, error <= half a step (max|block| / 254)
      err = np.max(np.abs(got - x))
      assert 0 < err <= np.max(np.abs(x)) / 200, (where, err)


def test_gguf_float_metadata_reads_as_written(gguf_f32):
  """GGUF keeps float metadata as float32; 1e-6 comes back as 9.99999997e-07 unless the importer
  rounds to float32's shortest decimal, so a converted model's config (config.json, orbax marker,
  comparisons with the presets) would carry float32 noise. (Fails until
  gguf.config_from_reader reads float metadata as float(str(np.float32(x))).)"""
  config, _, _ = gguf_io.load_gguf(gguf_f32)
  assert config.rms_norm_eps == 1e-6
  assert config.global_rope_base == 1e6


def test_loader_converts_gguf_once(tmp_path, gguf_f32, gguf_params, monkeypatch):
  cache = str(tmp_path / "cache")
  first = loader.load(gguf_f32, cache_dir=cache)
  assert_gguf_config(first.config, GGUF_TINY)
  assert os.path.dirname(first.source) == cache and hf.is_hf_folder(first.source)
  assert not [f for f in os.listdir(cache) if f.startswith(".partial")]
  want = jax.tree.map(np.asarray, gguf_params)
  assert_trees_equal(jax.tree.map(np.asarray, first.params), want)
  assert first.tokenizer.vocab_size == len(VOCAB)

  def no_second_conversion(path):
    raise AssertionError(f"load_gguf({path}) called again")

  monkeypatch.setattr(gguf_io, "load_gguf", no_second_conversion)
  second = loader.load(gguf_f32, cache_dir=cache, dtype="bfloat16")
  assert second.source == first.source
  assert second.config == first.config.replace(dtype="bfloat16")
  assert_trees_equal(jax.tree.map(np.asarray, second.params), want)
  assert second.tokenizer.serialized_proto() == first.tokenizer.serialized_proto()


# ----------------------------------------------------------------------------- bad inputs


def _raises_naming(path, fn, *args, match=None, **kwargs):
  with pytest.raises(CheckpointError, match=match) as e:
    fn(*args, **kwargs)
  assert str(path) in str(e.value), str(e.value)
  return e.value


def test_missing_gguf(tmp_path):
  path = tmp_path / "missing.gguf"
  _raises_naming(path, gguf_io.load_gguf, str(path), match="not found")
  _raises_naming(path, loader.load, str(path), cache_dir=str(tmp_path / "cache"))


def test_truncated_gguf(tmp_path, gguf_f32):
  data = open(gguf_f32, "rb").read()
  path = tmp_path / "truncated.gguf"
  path.write_bytes(data[:len(data) // 2])
  _raises_naming(path, gguf_io.load_gguf, str(path))
  cache = tmp_path / "cache"
  _raises_naming(path, loader.load, str(path), cache_dir=str(cache))
  assert not cache.exists() or not os.listdir(cache)  # nothing half-converted left behind


def test_gguf_of_another_architecture(tmp_path, gguf_params):
  path = tmp_path / "llama.gguf"
  write_gguf(path, GGUF_TINY, gguf_params, arch="llama")
  _raises_naming(path, gguf_io.load_gguf, str(path), match="llama")


def test_gguf_without_tokenizer(tmp_path, gguf_params):
  # Fails until gguf.load_gguf turns the tokenizer's ValueError into CheckpointError.
  path = tmp_path / "no-vocab.gguf"
  write_gguf(path, GGUF_TINY, gguf_params, tokenizer=False)
  _raises_naming(path, gguf_io.load_gguf, str(path), match="tokenizer")


def test_random_bytes_named_gguf(tmp_path):
  path = tmp_path / "x.gguf"
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  _raises_naming(path, gguf_io.load_gguf, str(path))
  _raises_naming(path, loader.load, str(path), cache_dir=str(tmp_path / "cache"))


def test_directory_that_is_no_checkpoint(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  _raises_naming(tmp_path, loader.load, str(tmp_path), cache_dir=str(tmp_path / "cache"),
                 match="neither")
  missing = tmp_path / "nowhere"
  _raises_naming(missing, loader.load, str(missing), cache_dir=str(tmp_path / "cache"))


def test_empty_spec():
  with pytest.raises(CheckpointError, match="no checkpoint"):
    loader.load("", cache_dir="/nonexistent")


# ----------------------------------------------------------------------------- orbax


@pytest.fixture(scope="module")
def orbax_folder(tmp_path_factory, tiny_params) -> str:
  folder = str(tmp_path_factory.mktemp("orbax") / "ckpt")
  orbax_io.save(folder, TINY, tiny_params, tiny_tokenizer())
  return folder


def test_orbax_round_trip(orbax_folder, tiny_params):
  assert orbax_io.is_orbax_folder(orbax_folder)
  config, params = orbax_io.load(orbax_folder)
  assert config == TINY
  assert_trees_equal(jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, tiny_params))
  config16, params16 = orbax_io.load(orbax_folder, param_dtype="bfloat16")
  assert config16 == TINY.replace(param_dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(params16)} == {jnp.dtype(jnp.bfloat16)}


def test_loader_recognises_orbax_folder(orbax_folder, tiny_params, tmp_path):
  loaded = loader.load(orbax_folder, cache_dir=str(tmp_path / "cache"))
  assert loaded.source == orbax_folder and loaded.config == TINY
  assert loaded.tokenizer.serialized_proto() == tiny_tokenizer().serialized_proto()
  assert_trees_equal(jax.tree.map(np.asarray, loaded.params),
                     jax.tree.map(np.asarray, tiny_params))


def _copy_with_config(src, dst, **model_config) -> str:
  shutil.copytree(src, dst)
  marker = os.path.join(dst, orbax_io.MARKER)
  with open(marker) as f:
    meta = json.load(f)
  meta["model_config"].update(model_config)
  with open(marker, "w") as f:
    json.dump(meta, f)
  return str(dst)


@pytest.mark.parametrize("change", [
    {"embed_dim": 32},                                           # same tree, other shapes
    {"num_layers": 2, "layer_types": ["local", "global"]},      # fewer layers
    {"num_layers": 6, "layer_types": ["local", "global"] * 3},  # more layers
])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_orbax_marker_of_another_shape(orbax_folder, tmp_path, change):
  folder = _copy_with_config(orbax_folder, tmp_path / "other", **change)
  _raises_naming(folder, orbax_io.load, folder, match="cannot restore parameters")
  # orbax abandons its pending shard reads on the error; collect them here, so their "coroutine
  # never awaited" noise is attributed to (and filtered for) this test, not printed at exit.
  gc.collect()


def test_orbax_marker_with_an_invalid_config(orbax_folder, tmp_path):
  # A marker written by a newer cai_jax (an unknown field) or edited by hand (inconsistent):
  # still a checkpoint we cannot read, so CheckpointError naming the marker file. (Fails until
  # orbax_io.read_config also catches DecoderConfig.from_dict's ValueError.)
  for i, change in enumerate([{"attention_sinks": 4}, {"num_layers": 3}]):
    folder = _copy_with_config(orbax_folder, tmp_path / f"bad{i}", **change)
    _raises_naming(os.path.join(folder, orbax_io.MARKER), orbax_io.load, folder)


def test_loader_rejects_a_tokenizer_larger_than_the_embedding(tmp_path, tiny_params):
  """A tokenizer with more tokens than the model has embedding rows belongs to another model:
  CheckpointError naming the folder and both sizes, before any stage runs."""
  small = TINY.replace(vocab_size=200)
  params = dict(tiny_params)
  params["embedder"] = {"embedding": np.asarray(tiny_params["embedder"]["embedding"])[:200]}
  folder = str(tmp_path / "hf")
  hf.save_hf_folder(folder, small, params, tiny_tokenizer())  # 269 tokens, 200 rows
  with pytest.raises(CheckpointError, match=r"hf: the tokenizer has 269 tokens but the model's "
                                            r"embedding has 200 rows"):
    loader.load(folder, cache_dir=str(tmp_path / "cache"))
