#!/usr/bin/env bash
# Preference model on Gemma 3 270M, CPU-sized: pm_train for a few steps on AI labels (from
# experiments/feedback_270m.py) mixed with human comparisons, then `eval` loads the exported PM
# and scores held-out human comparisons and the AI labeller against the human labels.
#   bash experiments/pm_270m.sh AI_LABELS HUMAN_LABELS HH_FILE [WORKDIR]
# AI_LABELS: labels.jsonl of the feedback job on SL-CAI pairs; HUMAN_LABELS: labels.jsonl of the
# feedback job on pairs made from HH_FILE's first comparisons; HH_FILE: HH-RLHF chosen/rejected.
set -euo pipefail
AI_LABELS=$1; HUMAN_LABELS=$2; HH=$3; W=${4:-runs/pm_270m}
mkdir -p "$W"
head -n 16 "$HH" > "$W/hh_first16.jsonl"          # the pairs HUMAN_LABELS were made from
sed -n '17,48p' "$HH" > "$W/hh_train32.jsonl"      # human comparisons for training
sed -n '49,64p' "$HH" > "$W/hh_heldout16.jsonl"    # held out for eval
python -m cai_jax.main --config configs/pm_train.py --workdir "$W" \
  --config.pm_train.ai_labels="$AI_LABELS" --config.pm_train.human_comparisons="$W/hh_train32.jsonl" \
  --config.pm_train.human_fraction=0.5 --config.pm_train.batch_size=4 \
  --config.pm_train.steps=4 --config.pm_train.max_length=384 --config.optim.warmup_steps=1
python -m cai_jax.main --config configs/eval.py --workdir "$W" \
  --config.eval.comparisons="$W/hh_heldout16.jsonl" \
  --config.eval.feedback_labels="$HUMAN_LABELS" --config.eval.human_file="$W/hh_first16.jsonl" \
  --config.eval.num_bins=5
