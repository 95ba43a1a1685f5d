#!/usr/bin/env bash
# One-shot device check for a lent GPU machine, run from the repository root:
#   bash benchmarks/gpu_check.sh
# It needs two git-ignored folders that travel with the working tree:
#   .whl/         wheels the GPU image lacks (ml-collections, tensorboardX), installed with
#                 --no-deps into /tmp/site
#   .gpu_assets/  tokenizer.model of Gemma 3 270M (the GGUF is too big to travel, so the
#                 sampler benchmark runs the gemma3-270m architecture with random weights)
# Everything goes to $OUT (default /tmp/gpu_check_out): one log per step, the last JSON line of
# each benchmark in <name>.json, and status.txt with each step's exit code and duration.
# A failing or timed-out step does not stop the next one.

set -o pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
STATUS="$OUT/status.txt"
: > "$STATUS"

note() { echo "== $*" | tee -a "$STATUS"; }

# bench NAME SECONDS CMD...: runs CMD under `timeout SECONDS`, output to $OUT/NAME.log, the last
# JSON line to $OUT/NAME.json, exit code (124: timed out) and duration to status.txt.
bench() {
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  note "$name: start: $*"
  PYTHONUNBUFFERED=1 timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=$?
  grep '^{' "$OUT/$name.log" | tail -n 1 > "$OUT/$name.json"
  note "$name: rc=$rc, $((SECONDS - t0)) s"
  return 0
}

# ------------------------------------------------------------------------- environment
if compgen -G ".whl/*.whl" > /dev/null; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl; then
    note "wheels installed: $(cd .whl && ls *.whl | tr '\n' ' ')"
  else
    note "wheels: pip install FAILED (rc=$?)"
  fi
else
  note "wheels: none in .whl/"
fi
export PYTHONPATH=/tmp/site:$PWD
[ -f .gpu_assets/tokenizer.model ] || note "MISSING .gpu_assets/tokenizer.model"

{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  timeout 120 python3 -c "
import sys, jax, jaxlib
print('python', sys.version.split()[0])
print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'devices', jax.devices())
"
  timeout 120 python3 -c "
import torch, transformers, flax
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
print('transformers', transformers.__version__, 'flax', flax.__version__)
import ml_collections, tensorboardX
print('ml_collections', ml_collections.__file__, 'tensorboardX', tensorboardX.__version__)
"
} 2>&1 | tee "$OUT/env.txt"

# ------------------------------------------------------------------------- sampler benchmark
# Gemma 3 270M architecture, random weights, default sizes (batch 1 and 8 x 128 new tokens,
# ~1,500-token shared prefix + 16 prompts x 32 tokens), cai_jax vs transformers on the GPU.
# SAMPLER_ARGS (unset on the GPU) appends options, e.g. small sizes for a CPU dry run of this file.
SAMPLER=(python3 benchmarks/sampler.py --random-weights --tokenizer .gpu_assets/tokenizer.model)
# shellcheck disable=SC2206
EXTRA=(${SAMPLER_ARGS:-})
# Order: both float32 runs (sampler, train step) first, then both bfloat16 runs, so that a
# session cut short still has the float32 numbers. Limits: 150 + 150 + 100 + 100 s, under ~9
# minutes with the environment checks above; each run is independent (a timeout kills its whole
# process group, and the next run starts from scratch).
bench sampler_gpu_fp32 150 "${SAMPLER[@]}" --dtype float32 "${EXTRA[@]}"

# -------------------------------------------------------------------------
# TRAIN_STEP_BENCHMARK
# benchmarks/train_step.py: Gemma 3 270M architecture, random weights, global batch 8 x 512, one
# warm-up + 3 timed AdamW steps; cai_jax (1 micro-batch) vs transformers (--ref-micro-batches 0:
# 1 on CUDA), each in its own child process; float32 matmuls in TF32 on both sides (JAX's GPU
# default; the MFU peak is measured the same way). TRAIN_ARGS (unset on the GPU) appends
# options, e.g. small sizes for a CPU dry run of this file.
TRAIN=(python3 benchmarks/train_step.py --random-weights --tokenizer .gpu_assets/tokenizer.model
       --batch 8 --length 512 --ref-micro-batches 0)
# shellcheck disable=SC2206
TRAIN_EXTRA=(${TRAIN_ARGS:-})
bench train_step_gpu_fp32 150 "${TRAIN[@]}" --dtype float32 "${TRAIN_EXTRA[@]}"

bench sampler_gpu_bf16 100 "${SAMPLER[@]}" --dtype bfloat16 "${EXTRA[@]}"
bench train_step_gpu_bf16 100 "${TRAIN[@]}" --dtype bfloat16 "${TRAIN_EXTRA[@]}"
note "done"
