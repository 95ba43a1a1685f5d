"""Model-written red-team prompts, few-shot from our seed set, deduplicated and tagged.

python -m cai_jax.main --config configs/red_team_generate.py --workdir runs/rt \
    --config.red_team_generate.num_prompts=200
Writes WORKDIR/red_team_generate/attempts.jsonl (every attempt, kept or not, and why) and
prompts.jsonl (the kept ones, in the prompt-set schema: usable as sl_generate.prompts).
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("red_team_generate")
  config.mesh = config_defaults.mesh_config()  # sampling over every device (one process)
  config.red_team_generate = dict(
      seeds="red_team",       # prompt set whose first Human turns serve as examples
      num_prompts=100,        # kept prompts to reach
      max_attempts=0,         # give up after this many attempts (0 = 4 x num_prompts)
      shots=6,                # examples per attempt, all of one category
      temperature=1.0,
      top_p=0.95,
      max_new_tokens=64,
      batch_size=8,
      min_words=4,
      max_words=80,
  )
  return config
