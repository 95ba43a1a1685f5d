"""The run report from a workdir's outputs: report.md plus PNG figures.

python -m cai_jax.main --config configs/report.py --workdir runs/cai
Writes WORKDIR/report/report.md, elo.png, pm_scores.png, pm_calibration.png, ppo_curves.png and
training_curves.png (each figure when its stage ran).
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("report")
  config.report = dict(
      output="",      # folder; '' = WORKDIR/report
      examples=3,     # example prompts per set in the answers table
      title="",       # report heading; '' = "Constitutional AI run"
  )
  return config
