"""Qwen 3 32B, the Constitutional AI pipeline on a TPU v5p-64 slice (32 chips, 95 GB HBM each,
8 hosts of 4 chips).

Run the stages one at a time, in order, with the same command and WORKDIR (on storage every
machine sees: a GCS bucket through gcsfuse, NFS):

    python -m cai_jax.main --config configs/hardware/qwen3_32b_tpu_v5p_64.py \
        --workdir /mnt/shared/cai_qwen32b --config.model.checkpoint=/path/to/Qwen3-32B \
        --config.pipeline.stages=STAGES

  1. STAGES=sl_generate             on a machine of its own (below)
  2. STAGES=sl_train                on every host of the slice
  3. STAGES=sample_pairs,feedback   on a machine of its own
  4. STAGES=pm_train, then rl_train, then eval: on every host of the slice

The sampling stages (sl_generate, sample_pairs, feedback) take no mesh and start no
`jax.distributed`: one process, one device holding the whole model in bfloat16 (about 74 GiB
with sl_generate's cache at 1 row, by the estimate). JAX on one host of a multi-host slice expects the
other hosts' processes, so they run on a separate single-host machine that sees WORKDIR: a TPU
v5p-8 or an H200 (at 74 GiB, more than 90% of an H100's 80 GB). eval, too, samples its
answers (4 rows) and runs its judge on one device (about 71 GiB), and scores with the PM on the
whole mesh.

Set `model.checkpoint` to a local Hugging Face folder of Qwen/Qwen3-32B present on every host:
config.json, *.safetensors, tokenizer.json and tokenizer_config.json; nothing is downloaded at
run time. The folder must hold the architecture named
in `hardware.preset`. Mesh: fsdp=16 x tensor=2 (embed over fsdp; heads, mlp and vocabulary over
tensor), `distributed.auto` lets JAX find the 8 hosts. Per-device memory of every stage:
`python -m cai_jax.train.memory <this file>`; tests/test_hardware_configs.py checks each stays
under 90% of a chip's HBM.

Dtypes (config_defaults.mixed_precision): float32 master weights and AdamW moments with
bfloat16 matmuls in the trainers; bfloat16 weights in the sampling stages and in rl_train's
frozen reference and preference model.
"""

import os

from cai_jax import config_defaults

# The same machine, mesh, batches and remat as gemma3_27b_tpu_v5p_64.py (the estimates fit).
BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gemma3_27b_tpu_v5p_64.py")


def get_config():
  config = config_defaults.load_config_file(BASE)
  config.hardware.preset = "qwen3-32b"
  config.model.checkpoint = ""   # set: a local HF folder of Qwen 3 32B
  # 32.8B parameters (61 GiB in bfloat16) on one chip for the sampling stages: one row in
  # sl_generate, four answers at a time in eval.
  config.sl_generate.batch_size = 1
  config.eval.update(answer_batch_size=4)
  return config
