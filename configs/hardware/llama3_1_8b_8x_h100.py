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

# The same machine, mesh, batches and remat as gemma3_12b_8x_h100.py (the estimates fit).
BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gemma3_12b_8x_h100.py")


def get_config():
  config = config_defaults.load_config_file(BASE)
  config.hardware.preset = "llama3.1-8b"
  config.model.checkpoint = ""   # set: a local HF folder of Llama 3.1 8B
  return config
