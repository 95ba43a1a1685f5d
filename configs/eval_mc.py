"""Multiple-choice scoring: summed option log-probabilities after each prompt.

python -m cai_jax.main --config configs/eval_mc.py --workdir runs/mc \
    --config.eval.files=tests/fixtures/mc_paper_format.jsonl
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("eval_mc")
  config.mesh = config_defaults.mesh_config()  # sampling over every device (one process)
  config.eval = dict(
      files="",                # comma-separated jsonl files with prompt / corrects / incorrects
      max_length=4096,         # packed prompt + options; longer prompts are left-truncated
      tokens_per_batch=4096,   # rows per batch = tokens_per_batch // padded length
  )
  return config
