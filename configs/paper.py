"""The method settings of the Constitutional AI paper (Bai et al. 2022, "Constitutional AI:
Harmlessness from AI Feedback", arXiv:2212.08073) on top of configs/pipeline.py.

python -m cai_jax.main --config configs/paper.py --workdir runs/paper \
    [--config.model.checkpoint=CKPT] [--config.sl_generate.limit=N] [--config.rl_train.iterations=N]

This preset fixes how each stage works, as the paper states it: four critique -> revision rounds
per red-team prompt, every round's revision trained on, helpful answers mixed into the SL data in
the paper's proportion, a constant SL learning rate for one epoch, one randomly drawn principle per
AI label with its few-shot examples under independently drawn principles, soft labels, the PM
trained for one pass, PPO with the small fixed KL coefficient of the RLHF setup the paper reuses
(its section 4.2 points to Bai et al. 2022a, "Training a Helpful and Harmless Assistant with
RLHF", appendix B.1), and RL prompts from both the red-team and the helpfulness sets in the
paper's mix. docs/paper_settings.md ("The paper's settings (`configs/paper.py`)") lists every setting
with the paper's section and says where and why this file differs.

The scale is the user's: the model (the paper's were 52B), the prompt counts (`limit` fields),
steps, iterations, batch sizes, sequence lengths and learning rates (the paper gives them relative
to its own pretraining rate) keep configs/pipeline.py's values. Set them with --config.* flags,
or base a configs/hardware/ config on this file instead of pipeline.py.

Two of the paper's inputs do not ship with cai_jax:
- its 135,296 human helpfulness comparisons for the PM: pass HH-RLHF's helpful-base with
  --config.pm_train.human_comparisons=PATH/helpful-base/train.jsonl.gz and, to drop the AI
  helpfulness labels that stand in for them here, --config.sample_pairs.helpful_prompts='';
- its constitution: ours (`harmless`) has the same shape (16 critique/revision principles, 16
  multiple-choice principles, 5 + 5 + 6 few-shot examples) in our own words; a folder with the
  paper's five prompt files runs the paper's exact text: --config.constitution=PATH.
"""

import os

from cai_jax import config_defaults

# Counts the paper states, from which the mixing ratios below are computed.
RED_TEAM_PROMPTS = 182_831      # section 3.2: 42,496 human-written + 140,335 model-generated
HELPFUL_PROMPTS = 135_296       # section 3.2: human-written helpfulness prompts
HELPFUL_SAMPLES_PER_PROMPT = 2  # section 3.2: answers sampled per helpfulness prompt
RL_EXTRA_RED_TEAM = 491_142     # section 4.2: model-generated prompts added for RL only
RL_EXTRA_HELPFUL = 474_300      # section 4.2: likewise, helpfulness

# SL data: 2 helpful answers per helpfulness prompt against the red-team prompts (each of which
# gives 4 revisions). sl_generate samples one answer per helpfulness prompt, so the ratio of
# answers keeps the paper's mix: 270,592 helpful rows beside 731,324 revisions.
SL_HELPFUL_RATIO = round(HELPFUL_SAMPLES_PER_PROMPT * HELPFUL_PROMPTS / RED_TEAM_PROMPTS, 2)
# RL prompts: all SL-CAI prompts plus the extra ones, so the helpfulness share of the pool is
# (135,296 + 474,300) / (182,831 + 491,142 + 135,296 + 474,300).
RL_HELPFUL_FRACTION = round(
    (HELPFUL_PROMPTS + RL_EXTRA_HELPFUL)
    / (RED_TEAM_PROMPTS + RL_EXTRA_RED_TEAM + HELPFUL_PROMPTS + RL_EXTRA_HELPFUL), 3)


def _set_existing(section, **values):
  """Sets those of `values` that `section` has: fields newer than some configs/<stage>.py
  (rl_train.helpful_prompts, helpful_fraction; pm_train.axis_fractions), so that this file
  loads with the stage configs from before they existed too."""
  for name, value in values.items():
    if name in section:
      section[name] = value


def get_config():
  config = config_defaults.load_config_file(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline.py"))
  config.constitution = "harmless"
  config.conversation.format = "hh"          # the paper's Human:/Assistant: layout
  config.conversation.policy_prefix = "none"  # the policy reads the prompt alone

  g = config.sl_generate  # section 3
  g.prompts = "red_team:train"
  g.helpful_prompts = "helpful:train"
  g.rounds = 4                   # 4 critique-revision pairs per red-team prompt (3.2)
  g.targets = "all_revisions"    # finetune on the revisions of every step (3.1)
  g.skip_critique = False        # critiqued revisions for the main results (3.5)
  g.continue_transcript = True   # sequential revisions (3.1, appendix A), one transcript
  g.temperature = 1.0            # "We always sample at temperature T = 1" (3.2)
  g.top_k, g.top_p = 0, 1.0
  g.helpful_ratio = SL_HELPFUL_RATIO  # 1.48

  t = config.sl_train  # one epoch at a constant learning rate (3.2)
  t.epochs, t.steps = 1, 0
  config.optim.sl_train.end_factor = 1.0
  config.optim.sl_train.warmup_steps = 0

  p = config.sample_pairs  # two answers per prompt from the SL-CAI model (4.1)
  p.prompts = "red_team:train"
  p.helpful_prompts = "helpful:train"  # stand-in for the human helpfulness comparisons
  p.temperature = 1.0

  f = config.feedback  # section 4.1, 4.3
  f.mode = "mc"                  # RL-CAI; mode='cot' gives RL-CAI w/ CoT (clamped below)
  f.num_principles = 1           # one principle drawn at random per comparison label
  f.few_shot_principles = "independent"  # each few-shot example under its own drawn principle
  f.label = "soft"               # normalised probabilities as targets (soft beat hard, 4.3)
  f.clamp_low, f.clamp_high = 0.4, 0.6  # CoT probabilities clamped to 40-60% (4.1, 4.3)
  f.helpful_constitution = "helpful"

  pm = config.pm_train  # human helpfulness + AI harmlessness comparisons (4.2)
  pm.epochs, pm.steps = 1, 0     # one pass over the data (2022a, appendix A.2)
  pm.append_eos = True           # score read at an end-of-context token (2022a, A.2)
  pm.human_fraction = -1.0       # every comparison of both sources once, as in the paper
  _set_existing(pm, axis_fractions="")

  rl = config.rl_train  # the RLHF hyperparameters of 2022a, appendix B.1 (4.2)
  rl.kl_coef = 0.001             # lambda_KL, fixed
  rl.adaptive_kl = False
  rl.clip_eps = 0.2
  rl.gamma = 1.0
  rl.ent_coef = 0.0              # no entropy bonus
  rl.normalize_reward = False    # the reward is the PM score itself (2022a, 4.1)
  rl.max_new_tokens = 128        # response limit outside 2022a's robustness studies
  rl.temperature, rl.top_k, rl.top_p = 1.0, 0, 1.0
  rl.prompts = "red_team:train"
  _set_existing(rl, helpful_prompts="helpful:train", helpful_fraction=RL_HELPFUL_FRACTION)
  return config
