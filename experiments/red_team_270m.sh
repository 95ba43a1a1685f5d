#!/bin/bash
# Red teaming against the policy on Gemma 3 270M (docs/beyond_paper.md): the base model proposes
# red-team prompts once; the SL-CAI policy and each round's PPO policy of a two-round online run
# answer the same proposals; the last round's PM scores every answer. Usage:
#   bash experiments/red_team_270m.sh RUN OUT
# where RUN is a finished `pipeline.rounds=2` workdir (RUN/sl_train, RUN/rl_train,
# RUN/round_2/rl_train, RUN/round_2/pm_train/pm).
set -euo pipefail
RUN=${1:-runs/quick}
OUT=${2:-runs/red_team}
python -m cai_jax.main --config configs/red_team_generate.py --workdir "$OUT/proposals" \
  --config.red_team_generate.num_prompts=24 --config.red_team_generate.batch_size=8
for stage in sl:sl_train rl:rl_train rl_2:round_2/rl_train; do
  name=${stage%%:*}
  python -m cai_jax.main --config configs/red_team_attack.py --workdir "$OUT/$name" \
    --config.model.checkpoint="$RUN/${stage#*:}/export_hf" \
    --config.red_team_attack.candidates="$OUT/proposals/red_team_generate/prompts.jsonl" \
    --config.red_team_attack.pm="$RUN/round_2/pm_train/pm" \
    --config.red_team_attack.reference_count=16 --config.red_team_attack.keep=8
done
python - "$OUT" <<'PY'
import json, sys
for name in ("sl", "rl", "rl_2"):
  r = json.load(open(f"{sys.argv[1]}/{name}/red_team_attack/report.json"))
  print(f"{name:5s} attack success {r['attack_success_rate']:.3f} (reference "
        f"{r['reference_success_rate']:.3f}), threshold {r['threshold']:+.3f}, mean score "
        f"candidates {r['candidate_score_mean']:+.3f} reference {r['reference_score_mean']:+.3f}"
        f" kept {r['kept_score_mean']:+.3f}")
PY
