"""Preference model (RLAIF): soft-label Bradley-Terry on AI-labelled pairs mixed with human
comparisons, from a decoder checkpoint plus a scalar head.

python -m cai_jax.main --config configs/pm_train.py --workdir runs/pm \
    --config.pm_train.ai_labels=runs/rlaif/feedback/labels.jsonl \
    --config.pm_train.human_comparisons=helpful-base/train.jsonl.gz \
    --config.pm_train.human_fraction=0.5 --config.pm_train.steps=500
Resumes from WORKDIR/pm_train/checkpoints when it holds a checkpoint; ends with the preference
model in WORKDIR/pm_train/pm (read by the `eval` job).
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("pm_train")
  config.mesh = config_defaults.mesh_config()
  config.distributed = config_defaults.distributed_config()
  config.optim = config_defaults.optim_config(learning_rate=1e-5, warmup_steps=10)
  config.pm_train = dict(
      ai_labels="",             # feedback labels jsonl (job feedback): p = p_first_better
      human_comparisons="",     # HH-RLHF {"chosen", "rejected"} jsonl(.gz): p = 1 for chosen
      human_fraction=-1.0,      # share of each batch from human comparisons; < 0: proportional
                                # to the two sets' sizes
      axis_fractions="",        # AI labels of several axes: how their rows split, e.g.
                                # 'harmless=1,helpful=1'; '' = in proportion to their counts
      eval_ai_labels="",        # optional held-out labels (eval_ai_loss / eval_ai_accuracy)
      heldout_fraction=0.0,     # without eval_ai_labels: this share of the AI-labelled pairs (by
                                # a hash of the pair id) is held out and evaluated as eval_ai_*
      eval_comparisons="",      # optional held-out comparisons (eval_human_loss / _accuracy)
      batch_size=8,             # global batch (pairs per optimizer step; 2 sequences each)
      micro_batches=1,          # gradient accumulation inside the jitted step
      max_length=512,           # longer sequences lose tokens from the left (BOS kept)
      min_length=32,            # smallest padded length bucket
      append_eos=True,          # end every sequence with <eos>; the reward is read there
      steps=0,                  # optimizer steps; 0 = `epochs` over every source
      epochs=1,
      head_init_scale=0.0,      # head kernel ~ N(0, (scale / sqrt(embed_dim + 1))^2); 0 = zeros:
                                # every reward gap starts at 0 (loss log 2, "no preference")
      head_lr_scale=1.0,        # the head's learning rate = optim.learning_rate x this
      remat='',                 # '' | 'dots' | 'full'
      checkpoint_every=100,
      keep_checkpoints=3,
      async_checkpoints=True,
      eval_every=0,             # steps between held-out evaluations (0 = only before the first
                                # step and at the end)
      eval_batch_size=8,
      export=True,              # write WORKDIR/pm_train/pm at the end
      peak_flops=0.0,           # for the MFU metric; 0 = measure a float32 matmul at start
      progress=True,
  )
  return config
