"""Gemma 3 4B, the whole Constitutional AI pipeline on a TPU v5p-8 (one host, 4 chips, 95 GB HBM
each).

    python -m cai_jax.main --config configs/hardware/gemma3_4b_tpu_v5p_8.py \
        --workdir runs/cai_4b --config.model.checkpoint=/path/to/gemma-3-4b-it

Set `model.checkpoint` to a local Hugging Face folder of google/gemma-3-4b-it (or -pt; the
multimodal folder's text tower is read): config.json, *.safetensors and tokenizer.model; nothing
is downloaded at run time. The folder must hold the architecture named in `hardware.preset`.
One process drives the 4 chips: the trainers shard parameters, gradients and AdamW moments over
all 4 (fsdp=4), keep the matmul outputs for the backward pass (remat=dots) and accumulate 2
micro-batches; the sampling stages (sl_generate, sample_pairs, feedback and eval's answers and
judge) run on one chip. Per-device memory of every stage:
`python -m cai_jax.train.memory <this file>`; tests/test_hardware_configs.py checks each stays
under 90% of a chip's HBM (the fullest: rl_train, about 74%).

Why not a TPU v4-8 (4 chips of 32 GiB, this config's earlier machine): with float32 master
weights rl_train's two trained models alone (parameters, AdamW moments and gradients: 16 bytes
a parameter, 2 x 3.9B parameters) take 29 GiB of each of 4 chips. 8 chips of 32 GiB fit by the
estimate with fsdp=8, remat=full everywhere and rl_train.micro_batches=1 (rl_train about 82%),
e.g. a v4-16; that slice spans 2 hosts, so the sampling stages then run on a machine of their
own, as in gemma3_27b_tpu_v5p_64.py.

Dtypes: the trainers (sl_train, pm_train, rl_train) keep float32 master weights and float32
AdamW moments (model.param_dtype) and run their matmuls in bfloat16 (model.dtype); a bfloat16
weight would lose every AdamW update smaller than half its bfloat16 step (at lr 1e-5, most of
them). The sampling stages (sl_generate, sample_pairs, feedback, eval) store their weights in
bfloat16 (pipeline.sampling_param_dtype), and so does rl_train for its frozen reference and
preference model (rl_train.frozen_dtype): they never take an update.
"""

import importlib.util
import os

import ml_collections


def _pipeline_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pipeline.py")
  spec = importlib.util.spec_from_file_location("cai_jax_configs_pipeline", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _pipeline_config()
  config.hardware = ml_collections.ConfigDict(dict(
      name="TPU v5p-8 (4 chips, one host)", kind="tpu", num_devices=4, hosts=1,
      hbm_gib_per_device=88.5,   # 95 GB (10^9 bytes) per chip
      preset="gemma3-4b"))
  config.model.checkpoint = ""   # set: a local HF folder of Gemma 3 4B
  config.model.param_dtype = "float32"          # the trainers' master weights and AdamW moments
  config.model.dtype = "bfloat16"               # matmuls and activations
  config.pipeline.sampling_param_dtype = "bfloat16"  # sl_generate, sample_pairs, feedback, eval
  config.mesh.update(data=1, fsdp=4, tensor=1)

  config.sl_generate.batch_size = 16
  config.sample_pairs.batch_size = 16
  config.feedback.tokens_per_batch = 8192

  config.sl_train.update(batch_size=64, micro_batches=2, max_length=1024, loss_chunk_tokens=2048,
                         remat="dots", eval_batch_size=16)
  config.pm_train.update(batch_size=64, micro_batches=2, max_length=1024, remat="dots",
                         eval_batch_size=16)
  config.rl_train.update(batch_size=64, minibatch_size=32, micro_batches=2, sampler_batch=64,
                         max_prompt_tokens=512, max_new_tokens=256, loss_chunk_tokens=2048,
                         remat="dots", frozen_dtype="bfloat16")
  config.eval.batch_size = 16
  return config
