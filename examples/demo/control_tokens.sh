#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Issue 25: does a Quark adapter use its control token? Each run folder of run_demo.sh
# (TASK-quark-SEED) is evaluated on the held-out prompts as run_demo.sh evaluates it, once with
# its best reward bin's token (0, as trained) and once with the worst (BINS - 1).
#   examples/demo/control_tokens.sh RUN_DIR...        (BUILD, IPA_MODEL_DIR, BINS=5)
set -euo pipefail
M=${IPA_MODEL_DIR:-../shared/models}; IPA=${BUILD:-build}/examples/ipa; H=examples/data/story_openings_heldout.txt
for run in "$@"; do
  case $(basename "$run") in
    keyword-*) r="keywords:dog|dogs" ;;
    avoid-*) r="avoid:sad,scared,cry,angry,hurt,bad,mad" ;;
    *) echo "$run: not a TASK-quark-SEED folder" >&2; exit 2 ;;
  esac
  seed=${run##*-}
  for bin in 0 $((${BINS:-5} - 1)); do
    echo "$(basename "$run") bin $bin $("$IPA" eval --base "$M/stories260K.bin" --tokenizer "$M/tok512.bin" \
      --reward "$r" --prompts "$H" --samples 16 --seed $((seed + 100)) --max-new-tokens 128 --json \
      --adapter "$run/adapter" --control-bin "$bin")"
  done
done
