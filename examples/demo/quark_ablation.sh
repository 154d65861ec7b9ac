#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Issue 25: short one-seed ablations of Quark's recipe on a demo task. Each setting is
# run_demo.sh's Quark run (600 steps, 14-minute cap, lr 3e-3, KL 0.05, no entropy bonus, 4 updates
# per rollout) with some options changed, then the same held-out `ipa eval`; one JSON line per
# setting (its label, the options, the minutes trained) goes to OUT/ablation.jsonl.
#   examples/demo/quark_ablation.sh OUT_DIR [LABEL=OPTIONS ...]
#   env: TASK (keyword | avoid, default keyword), SEED (1), JOBS (2, one thread each), BUILD, IPA_MODEL_DIR
# Without settings it runs the table of examples/README.md.
set -euo pipefail
OUT=${1:?usage: quark_ablation.sh OUT_DIR [LABEL=OPTIONS ...]}; shift
export OUT TASK=${TASK:-keyword} SEED=${SEED:-1} IPA=${BUILD:-build}/examples/ipa M=${IPA_MODEL_DIR:-../shared/models}
settings=("$@")
if [ ${#settings[@]} -eq 0 ]; then
  settings=("demo recipe="
            "pool minibatch 128=--quark-minibatch 128"
            "KL 0=--kl-coef 0"
            "training top-p 0.6=--top-p 0.6"
            "Adam eps 1e-5, no clipping=--adam-eps 1e-5 --max-grad-norm 0"
            "warm-up 60, linear decay=--warmup 60 --decay linear"
            "official recipe=--quark-minibatch 128 --kl-coef 0 --top-p 0.6 --adam-eps 1e-5 --max-grad-norm 0 --warmup 60 --decay linear"
            "adapter from the base=--adapter-init base --lr 1e-4"
            "adapter dim 128, 4 layers=--adapter-dim 128 --adapter-layers 4 --lr 1e-3"
            "best bin only=--quark-train-bins 1")
fi
mkdir -p "$OUT"

run_one() {
  local label=${1%%=*} options=${1#*=} reward
  case $TASK in
    avoid) reward="avoid:sad,scared,cry,angry,hurt,bad,mad" ;;
    keyword) reward="keywords:dog|dogs" ;;
    *) echo "unknown task $TASK" >&2; return 2 ;;
  esac
  local run="$OUT/$TASK-$(echo "$label" | tr -c 'a-zA-Z0-9\n' '_')-$SEED" model=(--base "$M/stories260K.bin" --tokenizer "$M/tok512.bin")
  rm -rf "$run"
  local start=$SECONDS
  # shellcheck disable=SC2086  # the options are words
  "$IPA" train "${model[@]}" --reward "$reward" --prompts examples/data/story_openings_train.txt --out "$run" \
    --seed "$SEED" --max-new-tokens 128 --save-every 0 --algo quark --steps 600 --max-minutes 14 --lr 3e-3 \
    --kl-coef 0.05 --entropy-coef 0 --quark-updates 4 $options 2>"$run.log"
  local minutes; minutes=$(awk "BEGIN { printf \"%.1f\", ($SECONDS - $start) / 60 }")
  local result; result=$("$IPA" eval "${model[@]}" --reward "$reward" --prompts examples/data/story_openings_heldout.txt \
    --samples 16 --seed "$((SEED + 100))" --max-new-tokens 128 --json --adapter "$run/adapter")
  echo "{\"task\":\"$TASK\",\"setting\":\"$label\",\"options\":\"$options\",\"seed\":$SEED,\"minutes\":$minutes,${result#\{}" \
    | tee -a "$OUT/ablation.jsonl"
}
export -f run_one
printf '%s\n' "${settings[@]}" | OMP_NUM_THREADS=1 xargs -P "${JOBS:-2}" -I{} bash -c 'run_one "$1"' _ {}
