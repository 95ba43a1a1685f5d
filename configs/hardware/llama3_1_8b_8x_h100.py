"""Llama 3.1 8B, the whole Constitutional AI pipeline on 8 NVIDIA H100 (80 GB) of one machine.

    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python -m cai_jax.main \
        --config configs/hardware/llama3_1_8b_8x_h100.py --workdir runs/cai_llama8b \
        --config.model.checkpoint=/path/to/Llama-3.1-8B-Instruct

Set `model.checkpoint` to a local Hugging Face folder of meta-llama/Llama-3.1-8B-Instruct (or the base model): config.json,
*.safetensors, tokenizer.json and tokenizer_config.json; nothing is downloaded at run time. The
folder must hold the architecture named in `hardware.preset`. One process drives the 8 GPUs.
The trainers shard parameters, gradients and AdamW moments over all 8 (fsdp=8); pm_train and
rl_train rematerialise each block in the backward pass, sl_train keeps the matmul outputs
(remat=dots) and accumulates 2 micro-batches. The sampling stages (sl_generate, sample_pairs,
feedback and eval's answers and judge) run on one GPU; eval's PM scores are sharded like the
trainers. JAX preallocates 75% of a GPU by default: the memory fraction above lets it use the
card. Per-device memory of every stage: `python -m cai_jax.train.memory <this file>`;
tests/test_hardware_configs.py checks each stays under 90% of a card (the fullest: sl_generate, about 81%, the
128,256-token vocabulary's prefill logits; rl_train about 58%).

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
      name="8x NVIDIA H100 80GB (one machine)", kind="gpu", num_devices=8, hosts=1,
      hbm_gib_per_device=79.6,   # 81,559 MiB as nvidia-smi reports it
      preset="llama3.1-8b")
  config.model.checkpoint = ""   # set: a local HF folder of Llama 3.1 8B
  config_defaults.mixed_precision(config)  # fp32 master weights, bf16 matmuls and sampling
  config.mesh.update(data=1, fsdp=8, tensor=1)

  config.sl_generate.batch_size = 8
  config.sample_pairs.batch_size = 8
  config.feedback.tokens_per_batch = 8192

  config.sl_train.update(batch_size=64, micro_batches=2, max_length=1024, loss_chunk_tokens=2048,
                         remat="dots", eval_batch_size=16)
  config.pm_train.update(batch_size=64, micro_batches=1, max_length=1024, remat="full",
                         eval_batch_size=16)
  # one micro-batch: accumulating float32 gradients would cost another 11 GiB a device
  config.rl_train.update(batch_size=64, minibatch_size=32, micro_batches=1, sampler_batch=64,
                         max_prompt_tokens=512, max_new_tokens=256, loss_chunk_tokens=2048,
                         remat="full")
  config.eval.batch_size = 16
  return config
