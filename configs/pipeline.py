"""The whole Constitutional AI run in one workdir: sl_generate -> sl_train -> sample_pairs ->
feedback -> pm_train -> rl_train (PPO) and/or po_train (DPO / IPO; pipeline.rl.algorithm) ->
eval -> report, each stage skipped when its finished output exists.

python -m cai_jax.main --config configs/pipeline.py --workdir runs/cai \
    --config.sl_generate.limit=16 --config.sl_train.steps=50 --config.rl_train.iterations=20 \
    [--config.pipeline.stages=sl_generate,sl_train] [--config.pipeline.rerun_from=pm_train]

Layout: the shared fields (seed, model = the base model, constitution, mesh, distributed) plus,
per stage, that stage's own section with the defaults of configs/<stage>.py
(--config.<stage>.<field>=...), and config.optim.<stage> for the trainers. The pipeline
wires the stages' paths itself (sl_train.data, the policies, the PM, the labels) unless a path is
set explicitly. Each stage's full config is recorded in WORKDIR/<stage>/config.json; the run's
status in WORKDIR/pipeline/status.json.
"""

import os

from cai_jax import config_defaults

STAGES = ("sl_generate", "sl_train", "sample_pairs", "feedback", "pm_train", "rl_train",
          "po_train", "eval", "report")
TRAINERS = ("sl_train", "pm_train", "rl_train", "po_train")


def stage_config(stage: str):
  """configs/<stage>.py's get_config(), loaded from the folder this file is in."""
  return config_defaults.load_config_file(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{stage}.py"))


def get_config():
  config = config_defaults.base_config("pipeline")  # model: the base model (every stage's start)
  config.constitution = "harmless"
  config.mesh = config_defaults.mesh_config()
  config.distributed = config_defaults.distributed_config()
  config.pipeline = dict(
      stages="",          # comma-separated subset of the stages to consider ('' = all, in order)
      stop_after="",      # stage after which the run stops ('' = run to the end)
      rerun_from="",      # stage whose folder WORKDIR/<stage> and every later stage's folder
                          # are deleted before running, so they run again from scratch
      pm_init="",         # decoder the preference model starts from ('' = config.model.checkpoint)
      compare_stages=True,  # eval compares base / sl / rl answers (unless eval.stages is set)
      rounds=1,           # iterated online RLAIF: rounds 2..N sample, label, continue the PM and
                          # run the RL stage again from the previous round's policy
      rl=dict(algorithm="ppo"),  # the RL-CAI stage: ppo (rl_train against the PM), dpo or
                                 # ipo (po_train on the AI labels), or e.g. 'ppo,dpo' for both;
                                 # eval compares them as 'rl' and 'dpo' / 'ipo'
      red_team=dict(attacks=0, keep=16),  # rounds 2..N: propose `attacks` red-team prompts,
                          # answer them with the previous round's policy, score with the round's
                          # PM, add the `keep` worst to PPO's prompts (0 = off)
      sampling_param_dtype="",  # weights of sl_generate, sample_pairs, feedback and eval
                                # ('' = model.param_dtype): e.g. 'bfloat16' beside float32
                                # master weights in the trainers
  )
  optim = {}
  for stage in STAGES:
    c = stage_config(stage)
    config[stage] = c[stage]  # the stage's own section, with its defaults
    if stage in TRAINERS:
      optim[stage] = c.optim
  config.optim = optim
  for stage in ("red_team_generate", "red_team_attack"):  # run in rounds 2..N when red teaming
    config[stage] = stage_config(stage)[stage]
  # Held-out data from the run's own outputs, so every trainer reports a loss on examples it
  # did not train on: revisions (sl_train's eval loss before and after) and AI-labelled pairs
  # (the PM's held-out loss and accuracy).
  config.sl_generate.heldout_fraction = 0.1
  config.pm_train.heldout_fraction = 0.1
  config.po_train.heldout_fraction = 0.1
  return config
