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

Dtypes (config_defaults.mixed_precision): float32 master weights and AdamW moments with
bfloat16 matmuls in the trainers; bfloat16 weights in the sampling stages and in rl_train's
frozen reference and preference model.
"""

import os

from cai_jax import config_defaults

PIPELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pipeline.py")


def get_config():
  config = config_defaults.load_config_file(PIPELINE)
  config.hardware = config_defaults.hardware_config(
      name="TPU v5p-8 (4 chips, one host)", kind="tpu", num_devices=4, hosts=1,
      hbm_gib_per_device=88.5,   # 95 GB (10^9 bytes) per chip
      preset="gemma3-4b")
  config.model.checkpoint = ""   # set: a local HF folder of Gemma 3 4B
  config_defaults.mixed_precision(config)  # fp32 master weights, bf16 matmuls and sampling
  config.model.scan_layers = True  # one compiled layer group, not one copy per layer
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
                         remat="dots")
  config.eval.batch_size = 16
  return config
