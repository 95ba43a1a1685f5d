"""Evaluation suite: preference-model accuracy and calibration on comparison and HHH files, the
AI labeller against human labels, and multiple-choice accuracy.

python -m cai_jax.main --config configs/eval.py --workdir runs/pm \
    --config.eval.comparisons=harmless-base/test.jsonl.gz \
    --config.eval.hhh=hhh_harmless.jsonl \
    --config.eval.feedback_labels=runs/labels/feedback/labels.jsonl \
    --config.eval.human_file=harmless-base/test.jsonl.gz
Writes WORKDIR/eval/report.json and reliability diagrams (PNG) next to it.
"""

from cai_jax import config_defaults


def get_config():
  config = config_defaults.base_config("eval")  # config.model: the model eval.mc_files scores
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
      progress=True,
  )
  return config
