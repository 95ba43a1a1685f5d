"""RL-CAI: PPO's math (`ppo`), its rollout and scoring programs (`rollout`), the PPO trainer as
a stepper of the engine's loop (`ppo_trainer`), and preference optimisation on the feedback
model's soft labels (`po`: DPO, IPO, the hard-label DPO baseline)."""
