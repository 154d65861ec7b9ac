#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Issue 20, acceptance 2: the README's avoid task trained with RLOO (500 steps, seed 1) on
# stories260K.gguf loaded locally and on the same GGUF behind llama-server, then both adapters
# evaluated on the held-out prompts, locally and through the server. Writes OUT/results.txt.
#   examples/demo/remote_vs_local.sh [OUT]        (~25 minutes on the 2-core machine; STEPS, SAMPLES)
set -euo pipefail
OUT=${1:-demo_runs/remote_vs_local}
M=${IPA_MODEL_DIR:-../shared/models}; PEERS=${IPA_PEERS_DIR:-../shared/peers}
IPA=${BUILD:-build}/examples/ipa; R="avoid:sad,scared,cry,angry,hurt,bad,mad"; PORT=${PORT:-8094}
TRAIN=examples/data/story_openings_train.txt; HELD=examples/data/story_openings_heldout.txt
mkdir -p "$OUT"; rm -rf "$OUT/local" "$OUT/remote"
"$PEERS/llama.cpp/bin/llama-server" -m "$M/stories260K.gguf" --host 127.0.0.1 --port "$PORT" -np 16 -c 2048 -t 1 \
  -ctk f32 -ctv f32 >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER' EXIT
until curl -sf "127.0.0.1:$PORT/health" >/dev/null; do sleep 0.2; done
URL=http://127.0.0.1:$PORT
train=(train --algo rloo --reward "$R" --prompts "$TRAIN" --steps "${STEPS:-500}" --seed 1 --save-every 0)
evaluate=(eval --reward "$R" --prompts "$HELD" --samples "${SAMPLES:-16}" --seed 101 --json)
/usr/bin/time -f "local train %e s" "$IPA" "${train[@]}" --base "$M/stories260K.gguf" --out "$OUT/local" 2>"$OUT/local.log"
/usr/bin/time -f "remote train %e s" "$IPA" "${train[@]}" --base "$URL" --tokenizer "$M/tok512.bin" \
  --out "$OUT/remote" 2>"$OUT/remote.log"
{
  for a in local remote; do
    echo "$a adapter, local base: $("$IPA" "${evaluate[@]}" --base "$M/stories260K.gguf" --adapter "$OUT/$a/adapter")"
    echo "$a adapter, served base: $("$IPA" "${evaluate[@]}" --base "$URL" --tokenizer "$M/tok512.bin" \
      --adapter "$OUT/$a/adapter")"
  done
  echo "no adapter, local base: $("$IPA" "${evaluate[@]}" --base "$M/stories260K.gguf")"
  tail -n 1 "$OUT/local.log" "$OUT/remote.log"
} | tee "$OUT/results.txt"
