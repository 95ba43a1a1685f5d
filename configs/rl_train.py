"""RL-CAI: PPO on the SL-CAI policy against the preference model, with a KL penalty to the
frozen SL-CAI model.

python -m cai_jax.main --config configs/rl_train.py --workdir runs/cai \
    --config.rl_train.prompts=red_team:train --config.rl_train.iterations=200
With the workdir of the earlier stages the policy is WORKDIR/sl_train/export_hf and the
preference model WORKDIR/pm_train/pm; elsewhere set --config.model.checkpoint=... and
--config.rl_train.pm=.... Resumes from WORKDIR/rl_train/checkpoints; ends with the policy in
WORKDIR/rl_train/export_hf.
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("rl_train")
  # '' = the SL-CAI model exported by sl_train in this workdir: WORKDIR/sl_train/export_hf.
  config.model.checkpoint = ""
  # With conversation.policy_prefix='helpful_exchanges', the exchanges the policy reads before
  # each prompt come from this constitution (as in sample_pairs and eval).
  config.constitution = "harmless"
  config.mesh = config_defaults.mesh_config()
  config.distributed = config_defaults.distributed_config()
  # One AdamW for the policy and the value model together (one global-norm clip over both);
  # constant learning rate by default (end_factor 1). total_steps is filled in by the job:
  # iterations x ppo_epochs x batch_size / minibatch_size.
  config.optim = config_defaults.optim_config(learning_rate=1e-6, warmup_steps=0)
  config.optim.end_factor = 1.0
  config.rl_train = dict(
      # ---- models
      pm="",                    # preference-model folder (pm_train); '' = WORKDIR/pm_train/pm
      reward="pm",              # 'pm' | 'target_token' (programmatic, for tests: the fraction
                                # of response tokens equal to target_token_id)
      target_token_id=-1,
      value_init="pm",          # 'pm' (decoder + head of the PM) | 'policy' (head zero-init)
      frozen_dtype="float32",   # storage of the frozen reference and PM: 'float32' | 'bfloat16'
                                # (halves their memory; matmuls still run in model.dtype)
      # ---- rollouts
      prompts="red_team:train", # red-team prompts: 'red_team', 'helpful' (ours; :train / :test
                                # for a split) or a prompts jsonl; '' = none
      helpful_prompts="helpful:train",  # helpfulness prompts ('' = none): RL on both sets keeps
                                # the policy helpful, not only harmless (the paper's RL prompts)
      helpful_fraction=-1.0,    # share of each rollout batch from helpful_prompts; < 0: both
                                # sets drawn together, in proportion to their sizes
      long_prompts="error",     # prompts over max_prompt_tokens: 'error' (before compute) | 'skip'
      iterations=100,           # PPO iterations (rollout + update); resumed runs continue to it
      batch_size=16,            # prompts (rollout rows) per iteration
      max_prompt_tokens=256,    # BOS + prompt budget (never truncated)
      max_new_tokens=64,
      stop=("\n\nHuman:",),     # stop strings (EOS always stops)
      temperature=1.0,          # sample the raw policy: T != 1, top_k or top_p < 1 bias the KL
      top_k=0,                  # and the policy gradient (the usual cause of negative or
      top_p=1.0,                # exploding KL); allowed, with a warning
      sampler_batch=16,         # rows per sampler call (continuous batching: row slots)
      sampler_param_dtype="",   # rollout weights ('' = the policy's; 'bfloat16': a narrow copy
                                # per iteration, old log-probs still from the trainer's weights;
                                # the metric sampler_logprob_gap shows the difference)
      chunk_size=16,            # stop-string check interval, for stops ending in whitespace
      min_length=32,            # smallest padded length bucket for scoring / updates
      # ---- reward
      missing_end_penalty=-1.0,  # added to the score of rows cut at max_new_tokens (0 = off)
      normalize_reward=False,   # scores -> (score - running mean) / running std (all seen)
      kl_estimator="k1",        # per-token KL in the reward: 'k1' | 'k2' | 'k3'
      kl_coef=0.05,             # initial (fixed) KL coefficient
      adaptive_kl=False,        # lm-human-preferences' controller: kl_coef moves toward target_kl
      target_kl=6.0,            # nats per sequence
      kl_horizon=10000,         # episodes to close the gap
      # ---- PPO update
      ppo_epochs=2,             # passes over the rollout batch per iteration
      minibatch_size=8,         # rows per optimizer step (must divide batch_size)
      micro_batches=1,          # gradient accumulation inside each step
      gamma=1.0,
      lam=0.95,
      clip_eps=0.2,             # policy ratio clip
      clip_eps_value=0.2,       # value clip around the old values
      vf_coef=0.1,
      ent_coef=0.0,             # entropy bonus; > 0 adds a chunked entropy to the update
                                # (the rollout's entropy is always measured, at scoring)
      loss_chunk_tokens=1024,   # tokens per vocabulary-projection chunk
      remat='',                 # '' | 'dots' | 'full'
      # ---- guards
      kl_ceiling=100.0,         # stop when the mean per-sequence KL exceeds it (0 = off)
      min_response_tokens=1,    # collapse: mean answer length (the trimmed answer text
                                # re-encoded: stop string and EOS excluded) below this ...
      collapse_patience=3,      # ... for this many iterations in a row stops the run (0 = off)
      # ---- probe: greedy answers to fixed held-out prompts, scored by the PM (probe_score)
      probe_prompts="red_team:test",  # must not share ids with `prompts`
      probe_count=8,            # prompts in the probe (0 = no probe)
      probe_every=0,            # iterations between probes; the starting policy and the last
                                # iteration are always probed
      # ---- outputs
      checkpoint_every=10,
      keep_checkpoints=3,
      async_checkpoints=True,
      sample_every=10,          # iterations between sample tables (console + samples.jsonl;
                                # also after a run's first iteration); 0 = never
      num_samples=4,
      export_hf=True,           # write WORKDIR/rl_train/export_hf at the end
      progress=True,
  )
  return config
