"""Gemma 3 1B, the whole Constitutional AI pipeline on a TPU v5e-8 (v5litepod-8: one host,
8 chips, 16 GiB HBM each).

    python -m cai_jax.main --config configs/hardware/gemma3_1b_tpu_v5e_8.py \
        --workdir runs/cai_1b --config.model.checkpoint=/path/to/gemma-3-1b-it

Set `model.checkpoint` to a local Hugging Face folder of google/gemma-3-1b-it (or -pt):
config.json, *.safetensors and tokenizer.model; nothing is downloaded at run time. The folder
must hold the architecture named in `hardware.preset`. One process drives the 8 chips: the
trainers shard parameters, gradients and AdamW moments over all 8 (fsdp=8) and rematerialise
each block; the sampling stages (sl_generate, sample_pairs, feedback and eval's answers and
judge) run on one chip. Per-device memory of every stage:
`python -m cai_jax.train.memory <this file>`; tests/test_hardware_configs.py checks each stays
under 90% of a chip's HBM (the fullest: sl_generate, about 58%).

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
      name="TPU v5e-8 (v5litepod-8: 8 chips, one host)", kind="tpu", num_devices=8, hosts=1,
      hbm_gib_per_device=16.0,
      preset="gemma3-1b")
  config.model.checkpoint = ""   # set: a local HF folder of Gemma 3 1B
  config_defaults.mixed_precision(config)  # fp32 master weights, bf16 matmuls and sampling
  config.model.scan_layers = True  # one compiled layer group, not one copy per layer
  config.mesh.update(data=1, fsdp=8, tensor=1)

  config.sl_generate.batch_size = 8
  config.sample_pairs.batch_size = 8
  config.feedback.tokens_per_batch = 4096

  config.sl_train.update(batch_size=64, micro_batches=2, max_length=1024, loss_chunk_tokens=2048,
                         remat="full", eval_batch_size=16)
  config.pm_train.update(batch_size=64, micro_batches=2, max_length=1024, remat="full",
                         eval_batch_size=16)
  config.rl_train.update(batch_size=64, minibatch_size=32, micro_batches=2, sampler_batch=64,
                         max_prompt_tokens=512, max_new_tokens=256, loss_chunk_tokens=2048,
                         remat="full")
  config.eval.batch_size = 16
  return config
