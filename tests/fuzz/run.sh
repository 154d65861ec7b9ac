#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for SECONDS (default 30), seeded with the
# project's real files. A crash, leak or sanitizer finding fails the script and leaves the input
# in build-fuzz/findings/. usage (from the repository root): tests/fuzz/run.sh [SECONDS [TARGET...]]
set -euo pipefail
SECONDS_EACH=${1:-30}
ONLY=("${@:2}")
M=${IPA_MODEL_DIR:-$(pwd)/../shared/models}
G=${IPA_GOLDEN_DIR:-$(pwd)/../shared/golden}
cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DIPA_BUILD_FUZZERS=ON -DIPA_ENABLE_CUDA=OFF -DIPA_BUILD_TESTS=OFF -DIPA_BUILD_EXAMPLES=OFF -DIPA_BUILD_BENCH=OFF -DIPA_INSTALL=OFF \
      -DIPA_MODEL_DIR="$M" -DIPA_GOLDEN_DIR="$G" >/dev/null
cmake --build build-fuzz -j2
mkdir -p build-fuzz/findings
seed() {  # a fresh corpus folder holding the given seed files
  local dir=build-fuzz/corpus/$1; shift
  mkdir -p "$dir"
  for f in "$@"; do [ -f "$f" ] && cp -f "$f" "$dir/"; done
  echo "$dir"
}
tmp=$(mktemp -d)
./build/examples/ipa convert --model "$M/stories260K.bin" --to hf --out "$tmp/hf" 2>/dev/null || true
./build/examples/ipa convert --model "$G/gpt2_tiny" --to gguf --out "$tmp/gpt2_tiny.gguf" 2>/dev/null || true
run() {  # target corpus max_len
  local target=$1 corpus=$2 max_len=$3
  if [ ${#ONLY[@]} -gt 0 ] && [[ ! " ${ONLY[*]} " == *" $target "* ]]; then return; fi
  echo "== $target (${SECONDS_EACH}s, inputs up to $max_len bytes)"
  OMP_NUM_THREADS=1 IPA_MODEL_DIR=$M IPA_GOLDEN_DIR=$G "build-fuzz/tests/fuzz/$target" "$corpus" \
    -max_total_time="$SECONDS_EACH" -max_len="$max_len" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix=build-fuzz/findings/"$target"- 2>&1 | tail -5
}
# the file readers get whole files; the tokenizers get texts of up to 8 KiB (65 KiB inputs ran
# at 4 executions per second: too few to explore)
run fuzz_safetensors "$(seed safetensors "$tmp/hf/model.safetensors" "$G/gpt2_tiny/model.safetensors")" 65536
./build/examples/ipa convert --model "$M/stories260K.bin" --tokenizer "$M/tok512.bin" --to gguf-q8_0 \
  --out "$tmp/q8_0.gguf" 2>/dev/null || true
run fuzz_gguf "$(seed gguf "$M/stories260K.gguf" "$tmp/gpt2_tiny.gguf" "$tmp/q8_0.gguf")" 65536
run fuzz_llama2c "$(seed llama2c "$M/tok512.bin")" 65536
run fuzz_tokenizers "$(seed tokenizers "$G/gpt2_bpe/gpt2_encode.jsonl" "$G/tok512/tok512_encode.jsonl")" 8192
# --reward specs; a checkpoint's trainer.json (from a one-step run shaped like the target's own)
printf '%s' 'avoid:sad,cry + 0.5*keywords:dog|dogs,cat + 2*length:40 + distinct:2' >"$tmp/spec1.txt"
printf '%s' 'keywords-all:a,b|c + -1*avoid:x + cmd:echo 1' >"$tmp/spec2.txt"
run fuzz_reward_spec "$(seed reward_spec "$tmp/spec1.txt" "$tmp/spec2.txt")" 1024
printf 'Once\nTom\n' >"$tmp/two.txt"
./build/examples/ipa train --base "$M/stories260K.bin" --tokenizer "$M/tok512.bin" --reward avoid:sad \
  --prompts "$tmp/two.txt" --out "$tmp/run" --algo quark --batch 2 --max-new-tokens 4 --steps 1 \
  --adapter-dim 16 --adapter-layers 1 --adapter-heads 2 >/dev/null 2>&1 || true
run fuzz_checkpoint "$(seed checkpoint "$tmp/run/checkpoint-000001/trainer.json")" 16384
rm -rf "$tmp"
if ls build-fuzz/findings/* >/dev/null 2>&1; then echo "fuzz findings in build-fuzz/findings" >&2; exit 1; fi
echo "no findings"
