"""Job `convert` on Gemma 3 270M: the HF folder loads in transformers without missing or
unexpected keys and gives the same logits; the orbax checkpoint restores bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cai_jax import main
from cai_jax.checkpoints import loader
from conftest import needs_transformers
from configs_loader import load_config

PROMPT = "\n\nHuman: Name three rivers in Africa.\n\nAssistant:"


@pytest.fixture(scope="module")
def exported(gemma270m, model_cache_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("export")
  config = load_config("convert", **{"model.cache_dir": model_cache_dir})
  return main.run(config, str(workdir))


def test_orbax_export_restores_bitwise(exported, gemma270m, model_cache_dir):
  restored = loader.load(exported["orbax"], cache_dir=model_cache_dir)
  assert restored.config == gemma270m.config
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(gemma270m.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ids = gemma270m.tokenizer.encode(PROMPT, add_bos=True)
  assert restored.tokenizer.encode(PROMPT, add_bos=True) == ids


def test_hf_export_reloads_in_cai_jax(exported, gemma270m, model_cache_dir):
  again = loader.load(exported["hf"], cache_dir=model_cache_dir)
  assert again.config == gemma270m.config
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(gemma270m.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs_transformers
def test_hf_export_loads_in_transformers(exported, gemma270m, hf_gguf_model):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  model, info = AutoModelForCausalLM.from_pretrained(exported["hf"], dtype=torch.float32,
                                                     output_loading_info=True)
  assert info["missing_keys"] == set() or not info["missing_keys"], info
  assert not info["unexpected_keys"] and not info["mismatched_keys"], info
  ids = gemma270m.tokenizer.encode(PROMPT, add_bos=True)
  with torch.no_grad():
    got = model(torch.tensor([ids])).logits[0]
    ref = hf_gguf_model(torch.tensor([ids])).logits[0]
  # Same weights, same implementation: the export loses nothing.
  assert float((got - ref).abs().max()) == 0.0
  hf_tok = AutoTokenizer.from_pretrained(exported["hf"])
  assert hf_tok(PROMPT)["input_ids"] == ids
