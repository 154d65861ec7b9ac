#!/usr/bin/env bash
# The demonstration of examples/README.md: stories260K as the frozen base, two tasks, three
# seeds, the base alone, a decoding-time baseline, IPA adapters trained with Quark, PPO and RLOO,
# and PPO fine-tuning the base itself. Every training run is one `ipa train`, every number one
# `ipa eval` on the held-out prompts. Quark runs twice: as the paper's (every reward bin) and
# trained on its pool's best bin alone (quark-best-bin, issue 25). Method quark-large, not in
# the default list, is Quark with a 4x larger adapter (dim 128, 4 layers), lr 1e-3, KL weight 0.
#
# usage: examples/demo/run_demo.sh [OUT_DIR]      (from the repository root, after building)
# env:   BUILD (default build), IPA_MODEL_DIR (default ../shared/models), SEEDS (default "1 2 3"),
#        TASKS (default "avoid keyword"),
#        METHODS (default "base baseline quark quark-best-bin ppo rloo ppo-tune-base"),
#        JOBS (default 1): runs at once, each on one thread (OMP_NUM_THREADS=1) when JOBS > 1,
#        PPO_KL (default 0.05): the KL weight of method ppo (another value labels its rows)
set -euo pipefail
OUT=${1:-demo_runs}
export OUT BUILD=${BUILD:-build} M=${IPA_MODEL_DIR:-../shared/models}
SEEDS=${SEEDS:-1 2 3}
TASKS=${TASKS:-avoid keyword}
METHODS=${METHODS:-base baseline quark quark-best-bin ppo rloo ppo-tune-base}
JOBS=${JOBS:-1}
export PPO_KL=${PPO_KL:-0.05}
mkdir -p "$OUT"

# One (task, seed, method): train if the method trains, evaluate on the held-out prompts, and
# append one JSON line to $OUT/results.jsonl.
run_one() {
  local task=$1 seed=$2 method=$3
  local IPA=$BUILD/examples/ipa TRAIN=examples/data/story_openings_train.txt HELD=examples/data/story_openings_heldout.txt
  local model=(--base "$M/stories260K.bin" --tokenizer "$M/tok512.bin") gen=(--max-new-tokens 128)
  local reward baseline
  case $task in
    avoid) reward="avoid:sad,scared,cry,angry,hurt,bad,mad"
           baseline=(--ban-words sad,scared,cry,angry,hurt,bad,mad) ;;
    keyword) reward="keywords:dog|dogs"
             baseline=(--prompt-suffix " She saw a dog.") ;;
    *) echo "unknown task $task" >&2; return 2 ;;
  esac
  local run="$OUT/$task-$method-$seed" result label=$method
  if [ "$method" = ppo ] && [ "$PPO_KL" != 0.05 ]; then run="$OUT/$task-ppo-kl$PPO_KL-$seed" label="ppo (KL $PPO_KL)"; fi
  local train=(train "${model[@]}" --reward "$reward" --prompts "$TRAIN" --out "$run" --seed "$seed" "${gen[@]}"
               --save-every 0)
  local evaluate=(eval "${model[@]}" --reward "$reward" --prompts "$HELD" --samples 16 --seed "$((seed + 100))"
                  "${gen[@]}" --json)
  case $method in
    base) result=$("$IPA" "${evaluate[@]}") ;;
    baseline) result=$("$IPA" "${evaluate[@]}" "${baseline[@]}") ;;
    quark) rm -rf "$run"; "$IPA" "${train[@]}" --algo quark --steps 600 --max-minutes 14 --lr 3e-3 --entropy-coef 0 \
             --quark-updates 4 2>"$run.log"
           result=$("$IPA" "${evaluate[@]}" --adapter "$run/adapter") ;;
    quark-large) rm -rf "$run"; "$IPA" "${train[@]}" --algo quark --steps 600 --max-minutes 14 --lr 1e-3 --entropy-coef 0 \
                   --quark-updates 4 --kl-coef 0 --adapter-dim 128 --adapter-layers 4 2>"$run.log"
                 result=$("$IPA" "${evaluate[@]}" --adapter "$run/adapter") ;;
    quark-best-bin) rm -rf "$run"; "$IPA" "${train[@]}" --algo quark --steps 600 --max-minutes 14 --lr 3e-3 \
                      --entropy-coef 0 --quark-updates 4 --quark-train-bins 1 2>"$run.log"
                    result=$("$IPA" "${evaluate[@]}" --adapter "$run/adapter") ;;
    ppo) rm -rf "$run"; "$IPA" "${train[@]}" --algo ppo --steps 300 --max-minutes 14 --kl-coef "$PPO_KL" 2>"$run.log"
         result=$("$IPA" "${evaluate[@]}" --adapter "$run/adapter") ;;
    rloo) rm -rf "$run"; "$IPA" "${train[@]}" --algo rloo --steps 500 --max-minutes 14 2>"$run.log"
          result=$("$IPA" "${evaluate[@]}" --adapter "$run/adapter") ;;
    ppo-tune-base) rm -rf "$run"; "$IPA" "${train[@]}" --algo ppo --steps 300 --max-minutes 14 --kl-coef 0.05 --tune-base \
                     --lr 3e-5 2>"$run.log"
                   result=$("$IPA" "${evaluate[@]}" --policy "$run/adapter") ;;
    *) echo "unknown method $method" >&2; return 2 ;;
  esac
  echo "{\"task\":\"$task\",\"method\":\"$label\",\"seed\":$seed,${result#\{}" | tee -a "$OUT/results.jsonl"
}
export -f run_one

jobs_list=()
for task in $TASKS; do for seed in $SEEDS; do for method in $METHODS; do jobs_list+=("$task $seed $method"); done; done; done
if [ "$JOBS" -gt 1 ]; then
  printf '%s\n' "${jobs_list[@]}" | OMP_NUM_THREADS=1 xargs -P "$JOBS" -L 1 bash -c 'run_one "$@"' _
else
  for job in "${jobs_list[@]}"; do run_one $job; done
fi
"$BUILD/examples/03_plot_curves" --table "$OUT/results.jsonl" | tee "$OUT/table.md"
