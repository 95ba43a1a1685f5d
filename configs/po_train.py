"""Preference optimisation (RL-CAI without PPO): DPO on the feedback model's soft labels, IPO,
or DPO on hard labels for comparison, from the SL-CAI policy against a frozen reference.

python -m cai_jax.main --config configs/po_train.py --workdir runs/po \
    --config.model.checkpoint=runs/quick/sl_train/export_hf \
    --config.po_train.labels=runs/quick/feedback/labels.jsonl \
    --config.po_train.loss=dpo --config.po_train.steps=100
Resumes from WORKDIR/po_train/checkpoints when it holds a checkpoint; ends with the policy in
WORKDIR/po_train/export_hf.
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("po_train")
  config.mesh = config_defaults.mesh_config()
  config.distributed = config_defaults.distributed_config()
  config.optim = config_defaults.optim_config(learning_rate=1e-6, warmup_steps=10)
  config.po_train = dict(
      labels="",                # feedback labels jsonl (job feedback): p = p_first_better
      human_comparisons="",     # HH-RLHF {"chosen", "rejected"} jsonl(.gz): p = 1 for chosen
      loss=config_defaults.PO_DEFAULT_LOSS,  # dpo: BCE of sigmoid(margin) against the soft label p | ipo |
                                # hard: dpo on p rounded to 0/1, ties dropped
      beta=0.1,                 # implied reward = beta x (log pi - log pi_ref); ipo: tau
      label_smoothing=0.0,      # target (1 - eps) p + eps (1 - p) (conservative DPO at p = 1)
      reference="",             # '' = the initial policy (model.checkpoint)
      reference_logprobs="",    # '' = WORKDIR/po_train/reference_logprobs.json (computed once)
      heldout_fraction=0.1,     # share of the AI-labelled pairs held out (by a hash of the id)
      kl_prompts=16,            # held-out prompts the KL to the reference is measured on (0 = off;
                                # on, a reference that is the initial policy stays on device)
      kl_max_new_tokens=64,
      kl_stop=("\n\nHuman:",),  # stop strings of the KL answers (EOS always stops)
      batch_size=8,             # pairs per optimizer step (2 sequences each)
      micro_batches=1,
      max_length=512,           # longer sequences: prompt cut from the left first
      min_length=32,
      append_eos=True,          # answers end with the end id, as in sl_train
      steps=0,                  # optimizer steps; 0 = epochs over the training pairs
      epochs=1,
      loss_chunk_tokens=1024,
      remat='',
      checkpoint_every=100,
      keep_checkpoints=3,
      async_checkpoints=True,
      eval_every=0,             # steps between evaluations (0 = before the first step and at the
                                # end only)
      eval_batch_size=8,
      export_hf=True,           # write WORKDIR/po_train/export_hf at the end
      peak_flops=0.0,
      progress=True,
  )
  return config
