"""Evaluation suite: preference-model accuracy and calibration on comparison and HHH files, the
AI labeller against human labels, and multiple-choice accuracy.

python -m cai_jax.main --config configs/eval.py --workdir runs/pm \
    --config.eval.comparisons=harmless-base/test.jsonl.gz \
    --config.eval.hhh=hhh_harmless.jsonl \
    --config.eval.feedback_labels=runs/labels/feedback/labels.jsonl \
    --config.eval.human_file=harmless-base/test.jsonl.gz

Checkpoints against each other (Elo, win rates, PM scores on held-out prompts):
python -m cai_jax.main --config configs/eval.py --workdir runs/cai \
    --config.eval.stages=base=gemma3-270m,sl=runs/cai/sl_train/export_hf,rl=runs/cai/rl_train/export_hf \
    --config.eval.num_prompts=8
Writes WORKDIR/eval/report.json and reliability diagrams (PNG) next to it.
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("eval")  # config.model: the model eval.mc_files scores
  # With conversation.policy_prefix='helpful_exchanges', the stages answer after this
  # constitution's helpful exchanges (the layout sample_pairs and rl_train use).
  config.constitution = "harmless"
  config.mesh = config_defaults.mesh_config()
  config.distributed = config_defaults.distributed_config()
  config.eval = dict(
      pm="",                    # preference-model folder; '' = WORKDIR/pm_train/pm
      comparisons="",           # comma-separated HH-RLHF chosen/rejected jsonl(.gz) files
      hhh="",                   # comma-separated MC files with text_correct / text_incorrect
      feedback_labels="",       # AI labels (job feedback) made on the pairs of human_file
      human_file="",            # chosen/rejected file the labels are scored against
      mc_files="",              # comma-separated prompt/corrects/incorrects files (config.model)
      num_bins=10,              # equal-width calibration bins over [0, 1]
      batch_size=8,             # pairs per PM batch
      max_length=0,             # PM sequence length; 0 = the length the PM was trained with
      min_length=32,
      mc_max_length=4096,
      mc_tokens_per_batch=4096,
      # stage comparison (eval.stages); see cai_jax/jobs/eval.py
      stages="",                # 'NAME=CHECKPOINT,...'; the first is the Elo reference (0)
      red_team_prompts="red_team:test",  # harmlessness set (held out from the training stages)
      helpful_prompts="helpful:test",    # helpfulness set
      num_prompts=0,            # prompts per set (0 = all); categories interleaved
      answer_max_tokens=128,
      answer_temperature=0.0,   # 0 = greedy
      answer_top_k=0,
      answer_top_p=1.0,
      answer_batch_size=8,      # sampler row slots (continuous batching refills them)
      answer_block_size=32,     # answers per sampler call and per appended block
      max_prompt_length=1024,
      chunk_size=16,
      judge="",                 # judge (feedback) model; '' = config.model.checkpoint
      harmless_constitution="harmless",
      helpful_constitution="helpful",
      judge_principles=4,       # principles per comparison (ensemble), both orders each
      judge_batch_size=8,       # answer pairs per judge call
      num_bootstrap=1000,       # bootstrap resamplings of the prompts for the intervals
      confidence=0.95,
      progress=True,
  )
  return config
