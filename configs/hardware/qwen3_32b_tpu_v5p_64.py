"""Qwen 3 32B, the Constitutional AI pipeline on a TPU v5p-64 slice (32 chips, 95 GB HBM each,
8 hosts of 4 chips), stage by stage as gemma3_27b_tpu_v5p_64.py's docstring describes:

    python -m cai_jax.main --config configs/hardware/qwen3_32b_tpu_v5p_64.py \
        --workdir /mnt/shared/cai_qwen32b --config.model.checkpoint=/path/to/Qwen3-32B \
        --config.pipeline.stages=STAGES

`model.checkpoint`: a local Hugging Face folder of Qwen/Qwen3-32B on every host (config.json,
*.safetensors, tokenizer.json, tokenizer_config.json). Mesh (fsdp=16 x tensor=2), trainer
batches, remat and dtypes are the 27B config's. On a v5p-8's 4 chips the sampling stages shard
the model (fsdp=2 x tensor=2; sl_generate about 24 GiB a chip); on one device they hold it
whole in bfloat16: about 74 GiB with sl_generate's cache at 1 row (more than 90% of an H100's
80 GB: an H200 then), eval about 71 GiB with 4 answers at a time. Per-device memory:
`python -m cai_jax.train.memory <this file>` (the fullest: rl_train, about 56% of a v5p chip).
"""

import os

from cai_jax import config_defaults

# The same machine, mesh, batches and remat as gemma3_27b_tpu_v5p_64.py (the estimates fit).
BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gemma3_27b_tpu_v5p_64.py")


def get_config():
  config = config_defaults.load_config_file(BASE)
  config.hardware.preset = "qwen3-32b"
  config.model.checkpoint = ""   # set: a local HF folder of Qwen 3 32B
  # 32.8B parameters (61 GiB in bfloat16) fit one device for the sampling stages with one row
  # in sl_generate and four answers at a time in eval (a v5p-8 shards them and has room).
  config.sl_generate.batch_size = 1
  config.eval.update(answer_batch_size=4)
  return config
