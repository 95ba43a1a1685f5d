"""Gemma 3 1B, the whole Constitutional AI pipeline on ONE NVIDIA H100 (80 GB).

    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python -m cai_jax.main \
        --config configs/hardware/gemma3_1b_1x_h100.py --workdir runs/cai_1b \
        --config.model.checkpoint=/path/to/gemma-3-1b-it

Set `model.checkpoint` to a local Hugging Face folder of google/gemma-3-1b-it (or -pt):
config.json, *.safetensors and tokenizer.model; nothing is downloaded at run time. The folder
must hold the architecture named in `hardware.preset` (the memory test reads the preset, not
the weights). JAX preallocates 75% of a GPU by default: the memory fraction above lets it use
the card. Per-device memory of every stage: `python -m cai_jax.train.memory <this file>`;
tests/test_hardware_configs.py checks each stays under 90% of the card (the fullest: rl_train,
about 79%, which holds four models: policy and value model with their AdamW moments, the
frozen reference and the preference model).

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
      name="1x NVIDIA H100 80GB", kind="gpu", num_devices=1, hosts=1,
      hbm_gib_per_device=79.6,   # 81,559 MiB as nvidia-smi reports it
      preset="gemma3-1b")
  config.model.checkpoint = ""   # set: a local HF folder of Gemma 3 1B
  config_defaults.mixed_precision(config)  # fp32 master weights, bf16 matmuls and sampling
  config.mesh.update(data=1, fsdp=1, tensor=1)

  config.sl_generate.batch_size = 32
  config.sample_pairs.batch_size = 16
  config.feedback.tokens_per_batch = 16384

  config.sl_train.update(batch_size=32, micro_batches=2, max_length=1024, loss_chunk_tokens=2048,
                         remat="dots", eval_batch_size=16)
  config.pm_train.update(batch_size=32, micro_batches=2, max_length=1024, remat="dots",
                         eval_batch_size=16)
  config.rl_train.update(batch_size=64, minibatch_size=16, micro_batches=2, sampler_batch=64,
                         max_prompt_tokens=512, max_new_tokens=256, loss_chunk_tokens=2048,
                         remat="dots")
  config.eval.batch_size = 16
  return config
