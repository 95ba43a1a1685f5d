"""Llama 3.1 70B, the Constitutional AI pipeline on a TPU v5p-128 slice (64 chips, 95 GB HBM
each, 16 hosts of 4 chips), stage by stage as gemma3_27b_tpu_v5p_64.py's docstring describes:

    python -m cai_jax.main --config configs/hardware/llama3_1_70b_tpu_v5p_128.py \
        --workdir /mnt/shared/cai_llama70b --config.model.checkpoint=/path/to/Llama-3.1-70B-Instruct \
        --config.pipeline.stages=STAGES

`model.checkpoint`: a local Hugging Face folder of meta-llama/Llama-3.1-70B(-Instruct) on every
host (config.json, *.safetensors, tokenizer.json, tokenizer_config.json); with the Instruct
checkpoint add `--config.conversation.format=chat` (its chat template, <|eot_id|> ends turns).
70.6B parameters: the trainers keep float32 master weights and AdamW moments (16 bytes a
parameter, 1.1 TB; rl_train trains a policy and a value model, 2.3 TB) sharded over all 64 chips
(fsdp=32 x tensor=2). The sampling stages split their records between the 16 hosts, each
sampling on its own 4 chips: 141 GB of bfloat16 weights do not fit one chip, so they are sharded
there too (fsdp=2 x tensor=2, `parallel.sampling_mesh_spec`), about 35 GB a chip.
Per-device memory of every stage: `python -m cai_jax.train.memory <this file>`;
tests/test_hardware_configs.py checks each stays under 90% of a chip's HBM.
"""

import os

from cai_jax import config_defaults

# The 27B slice config's stages, batches, remat and dtypes, on twice the chips.
BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gemma3_27b_tpu_v5p_64.py")


def get_config():
  config = config_defaults.load_config_file(BASE)
  config.hardware = config_defaults.hardware_config(
      name="TPU v5p-128 (64 chips, 16 hosts)", kind="tpu", num_devices=64, hosts=16,
      hbm_gib_per_device=88.5,   # 95 GB (10^9 bytes) per chip
      preset="llama3.1-70b")
  config.model.checkpoint = ""   # set: a local HF folder of Llama 3.1 70B on every host
  config.mesh.update(data=1, fsdp=32, tensor=2)
  return config
