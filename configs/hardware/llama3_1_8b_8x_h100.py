"""Llama 3.1 8B, the whole Constitutional AI pipeline on 8 NVIDIA H100 (80 GB) of one machine.

    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python -m cai_jax.main \
        --config configs/hardware/llama3_1_8b_8x_h100.py --workdir runs/cai_llama8b \
        --config.model.checkpoint=/path/to/Llama-3.1-8B-Instruct

`model.checkpoint`: a local Hugging Face folder of meta-llama/Llama-3.1-8B-Instruct (or the base model) (config.json,
*.safetensors, tokenizer.json, tokenizer_config.json). Machine, mesh (fsdp=8), batches, remat
and dtypes are gemma3_12b_8x_h100.py's, whose docstring explains them. Per-device memory:
`python -m cai_jax.train.memory <this file>` (the fullest: sl_generate, about 81%: the 128,256-token vocabulary's prefill logits; rl_train about 58%).
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
