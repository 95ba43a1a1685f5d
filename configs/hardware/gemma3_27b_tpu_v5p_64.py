"""Gemma 3 27B, the Constitutional AI pipeline on a TPU v5p-64 slice (32 chips, 95 GB HBM each,
8 hosts of 4 chips).

Run the stages one at a time, in order, with the same command and WORKDIR (on storage every
machine sees: a GCS bucket through gcsfuse, NFS), on every host of the slice:

    python -m cai_jax.main --config configs/hardware/gemma3_27b_tpu_v5p_64.py \
        --workdir /mnt/shared/cai_27b --config.model.checkpoint=/path/to/gemma-3-27b-it \
        --config.pipeline.stages=STAGES

  1. STAGES=sl_generate
  2. STAGES=sl_train
  3. STAGES=sample_pairs,feedback
  4. STAGES=pm_train, then rl_train, then eval

`distributed.auto` lets JAX find the 8 hosts. The trainers run on the whole mesh. The sampling
stages (sl_generate, sample_pairs, feedback, eval's answers and judge) split their records
between the 8 processes (`cai_jax.jobs.record_split`): each samples its share on its own host's
4 chips, which hold the model sharded as in training (fsdp=2 x tensor=2,
`parallel.sampling_mesh_spec`; about 20 GiB a chip by the estimate), and process 0 merges the
records; a restart with any number of hosts resumes them. eval scores with the PM on the whole
mesh. The same stages also run on a single machine (a TPU v5p-8, or one H100 / H200 holding the
model whole in bfloat16: about 64 GiB with sl_generate's cache).

Set `model.checkpoint` to a local Hugging Face folder of google/gemma-3-27b-it (or -pt; the
multimodal folder's text tower is read) present on every host: config.json, *.safetensors and
tokenizer.model; nothing is downloaded at run time. The folder must hold the architecture named
in `hardware.preset`. Mesh: fsdp=16 x tensor=2 (embed over fsdp; heads, mlp and vocabulary over
tensor). Per-device memory of every stage:
`python -m cai_jax.train.memory <this file>`; tests/test_hardware_configs.py checks each stays
under 90% of a chip's HBM (and the one-device stages under 90% of an H100's 80 GB too).

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
      name="TPU v5p-64 (32 chips, 8 hosts)", kind="tpu", num_devices=32, hosts=8,
      hbm_gib_per_device=88.5,   # 95 GB (10^9 bytes) per chip
      preset="gemma3-27b")
  config.model.checkpoint = ""   # set: a local HF folder of Gemma 3 27B on every host
  config_defaults.mixed_precision(config)  # fp32 master weights, bf16 matmuls and sampling
  config.model.scan_layers = True  # one compiled layer group, not one copy per layer
  config.mesh.update(data=1, fsdp=16, tensor=2)
  config.distributed.auto = True

  config.sl_generate.batch_size = 2
  config.sample_pairs.batch_size = 2
  config.feedback.tokens_per_batch = 4096

  config.sl_train.update(batch_size=128, micro_batches=1, max_length=1024, loss_chunk_tokens=4096,
                         remat="full", eval_batch_size=32)
  config.pm_train.update(batch_size=128, micro_batches=1, max_length=1024, remat="full",
                         eval_batch_size=32)
  config.rl_train.update(batch_size=128, minibatch_size=64, micro_batches=1, sampler_batch=32,
                         max_prompt_tokens=512, max_new_tokens=256, loss_chunk_tokens=4096,
                         remat="full")
  config.eval.batch_size = 32
  return config
