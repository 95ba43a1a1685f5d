#!/bin/bash
# PPO's sampler-vs-trainer log-prob gap (metric sampler_logprob_gap: mean |log p_sampler -
# log p_trainer| per answer token) with float32 and with bfloat16 rollout weights
# (rl_train.sampler_param_dtype): Gemma 3 270M as policy, the target-token reward (no PM), one
# iteration of 8 rows x 32 tokens. Usage: bash experiments/ppo_sampler_gap.sh [WORKDIR_PREFIX]
set -e
prefix=${1:-/tmp/ppo_sampler_gap}
cd "$(dirname "$0")/.."
for d in float32 bfloat16; do
  w=${prefix}_$d; rm -rf "$w"
  sampler_dtype=$d; [ "$d" = float32 ] && sampler_dtype=
  python -m cai_jax.main --config configs/rl_train.py --workdir "$w" \
    --config.model.checkpoint=gemma3-270m --config.rl_train.reward=target_token \
    --config.rl_train.target_token_id=236787 --config.rl_train.pm= \
    --config.rl_train.value_init=policy --config.rl_train.iterations=1 \
    --config.rl_train.batch_size=8 --config.rl_train.minibatch_size=4 \
    --config.rl_train.sampler_batch=8 --config.rl_train.max_new_tokens=32 \
    --config.rl_train.probe_count=0 --config.rl_train.helpful_prompts= \
    --config.rl_train.sampler_param_dtype=$sampler_dtype > "$w.log" 2>&1
  python -c "import json, sys; r = json.loads(open(sys.argv[1]).readline()); \
print(sys.argv[2], 'sampler_logprob_gap', r['sampler_logprob_gap'])" \
    "$w/rl_train/metrics.jsonl" "$d"
done
