"""RL-CAI algorithms beyond PPO: preference optimisation on the feedback model's soft labels
(`po`: DPO, IPO, the hard-label DPO baseline). PPO's math and rollout still live in `cai_jax.cai`
(`ppo.py`, `rollout.py`)."""
