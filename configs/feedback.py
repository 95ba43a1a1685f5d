"""RLAIF step 2: AI preference labels for the answer pairs of sample_pairs.

python -m cai_jax.main --config configs/feedback.py --workdir runs/slcai \
    [--config.feedback.mode=cot] [--config.feedback.num_principles=4]
Outputs in WORKDIR/feedback/: labels.jsonl (read with cai_jax.cai.feedback.read_feedback_file),
report.json (position bias, skipped flagged pairs, speed).
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("feedback")
  config.mesh = config_defaults.mesh_config()  # each process samples over its own devices
  config.distributed = config_defaults.distributed_config()  # several processes: records split
  # The feedback model is the pretrained base model (config.model.checkpoint='gemma3-270m').
  # Principles and labelled examples: a name in constitutions/, a .json file, or the paper's
  # prompt folder (its exact multiple-choice principles and few-shot examples).
  # Pairs of axis 'harmless' (red-team prompts) and untagged pairs are judged under this one.
  config.constitution = "harmless"
  config.feedback = dict(
      helpful_constitution="helpful",  # judges pairs of axis 'helpful' (helpfulness prompts)
      pairs="",                   # pairs jsonl; default WORKDIR/sample_pairs/pairs.jsonl
      output="",                  # labels jsonl; default WORKDIR/feedback/labels.jsonl
      limit=0,                    # pairs to label (0 = all)
      mode="mc",                  # 'mc': answer directly; 'cot': reason first, then answer
      num_principles=4,           # principles per pair (drawn without replacement), averaged
      both_orders=True,           # ask with (A)/(B) swapped too and average (position debiasing)
      label="soft",               # 'soft': the ensemble probability (the paper's choice);
                                  # 'hard': rounded to 0 / 1 (the paper's ablation; p_soft kept)
      few_shot_principles="same",  # 'same': the labelled examples under the question's
                                  # principle (one cached prefix per principle); 'independent':
                                  # each example under its own drawn principle (the paper's
                                  # procedure; no shared prefix, so slower)
      clamp_low=0.4,              # cot only: P(A) clamped to [clamp_low, clamp_high];
      clamp_high=0.6,             #   0 and 1 disable the clamp
      max_reasoning_tokens=128,   # cot only: budget of the written reasoning
      cot_temperature=0.0,        # cot only: 0 = greedy reasoning
      cot_top_k=0,
      cot_top_p=1.0,
      batch_size=8,               # pairs per batch (num_principles x 2 questions each)
      max_length=4096,            # scorer: longer contexts lose tokens on the left (counted)
      tokens_per_batch=4096,      # scorer: rows per batch = tokens_per_batch // padded length
      max_prompt_length=4096,     # cot sampler: budget per row after the cached few-shot prefix
      sampler_batch=16,           # cot sampler: rows per decode batch
      chunk_size=16,              # cot: stop-string check interval, for stops ending in whitespace
  )
  return config
