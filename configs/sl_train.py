"""Supervised finetuning on an SL jsonl ({"prompt", "completion"}): the SL-CAI stage's trainer.

python -m cai_jax.main --config configs/sl_train.py --workdir runs/sl \
    --config.sl_train.data=revisions.jsonl --config.sl_train.steps=200
Resumes from WORKDIR/sl_train/checkpoints when it holds a checkpoint; ends with an HF export
in WORKDIR/sl_train/export_hf.
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("sl_train")
  config.mesh = config_defaults.mesh_config()
  config.distributed = config_defaults.distributed_config()
  config.optim = config_defaults.optim_config(learning_rate=1e-5, warmup_steps=10)
  config.sl_train = dict(
      data="",                  # training jsonl: {"prompt": str, "completion": str, ...}
      eval_data="",             # optional held-out jsonl in the same format
      batch_size=8,             # global batch (examples per optimizer step)
      micro_batches=1,          # gradient accumulation inside the jitted step
      max_length=512,           # longer examples: prompt cut from the left, then completion tail
      min_length=32,            # smallest padded length bucket
      append_eos=True,          # train the model to end its answer with <eos>
      steps=0,                  # optimizer steps; 0 = epochs over the data
      epochs=1,
      loss_chunk_tokens=1024,   # tokens per vocabulary-projection chunk of the loss (1024 x 262,144 f32 logits = 1 GiB)
      remat='',                 # '' | 'dots' (keep matmul outputs, recompute the rest) | 'full'
      checkpoint_every=100,
      keep_checkpoints=3,
      async_checkpoints=True,
      eval_every=0,             # steps between held-out evaluations (0 = only at the end)
      eval_batch_size=8,
      export_hf=True,           # write WORKDIR/sl_train/export_hf at the end
      peak_flops=0.0,           # for the MFU metric; 0 = measure a float32 matmul at start
      progress=True,
  )
  return config
