#!/bin/bash
# po_train on Gemma 3 270M: soft-label DPO and hard-label DPO on the quickstart's AI labels, from
# its SL-CAI policy (docs/beyond_paper.md). Usage: bash experiments/po_270m.sh RUN OUT
# where RUN is a finished quickstart workdir (RUN/sl_train/export_hf, RUN/feedback/labels.jsonl).
set -euo pipefail
RUN=${1:-runs/quick}
OUT=${2:-runs/po_270m}
for loss in dpo hard; do
  python -m cai_jax.main --config configs/po_train.py --workdir "$OUT/$loss" \
    --config.model.checkpoint="$RUN/sl_train/export_hf" \
    --config.po_train.labels="$RUN/feedback/labels.jsonl" \
    --config.po_train.loss=$loss --config.po_train.steps=20 --config.po_train.beta=0.1 \
    --config.optim.learning_rate=2e-6 --config.optim.warmup_steps=2 \
    --config.po_train.eval_every=10 --config.po_train.kl_prompts=8 \
    --config.po_train.checkpoint_every=10
done
