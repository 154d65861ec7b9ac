#!/usr/bin/env bash
# How story_openings_train.txt was made: its first 40 lines are written by hand; the other 360 are
# the first sentences of stories that stories260K itself samples from BOS (temperature 1, seeds
# 1001..1016, 50 stories each), keeping sentences of 4-16 words that start with a capital, hold no
# quote, none of the demo's avoid words or its keyword, and repeat no earlier line or held-out
# prompt. More training prompts keep the adapter from learning its 40 prompts by heart: with the
# 40 alone, a PPO adapter scored 0.92 on them and 0.79 on the held-out prompts (keyword task).
#
# usage: examples/data/sample_openings.sh > /tmp/openings.txt   (from the repository root, after
#        building; needs python3 for the filter)
set -euo pipefail
BUILD=${BUILD:-build} M=${IPA_MODEL_DIR:-../shared/models}
empty=(); for _ in $(seq 50); do empty+=(--prompt ""); done
for s in $(seq 1001 1016); do
  "$BUILD/examples/ipa" generate --base "$M/stories260K.bin" --tokenizer "$M/tok512.bin" "${empty[@]}" \
    --temperature 1 --max-new-tokens 40 --seed "$s" --json
done | python3 -c '
import json, re, sys
hand = [l.strip() for l in open("examples/data/story_openings_train.txt") if l.strip()][:40]
held = {l.strip() for l in open("examples/data/story_openings_heldout.txt")}
banned = re.compile(r"\b(sad|scared|cry|angry|hurt|bad|mad|dogs?)\b", re.I)
seen, out = set(hand) | held, []
for line in sys.stdin:
    m = re.match(r"(.+?[.!?])(\s|$)", json.loads(line)["text"].strip())
    if not m: continue
    s = m.group(1)
    if not 4 <= len(s.split()) <= 16 or banned.search(s) or s in seen or not s[0].isupper() or "\"" in s:
        continue
    seen.add(s)
    out.append(s)
print("\n".join(hand + out[:360]))
'
