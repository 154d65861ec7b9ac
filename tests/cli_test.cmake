# SPDX-License-Identifier: MIT
# `ipa generate` / `ipa tokenize` as a user runs them, against llama2.c's run.c output.
include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)
ipa_cli_test_needs(${MODEL_DIR}/stories260K.bin)
set(golden "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily\n")
set(common --base ${MODEL_DIR}/stories260K.bin --tokenizer ${MODEL_DIR}/tok512.bin --temperature 0 --max-new-tokens 60)

execute_process(COMMAND ${IPA} generate ${common} --prompt "Once upon a time" OUTPUT_VARIABLE out RESULT_VARIABLE rc)
if(rc OR NOT out STREQUAL golden)
  message(FATAL_ERROR "ipa generate (greedy) printed:\n${out}\nexpected:\n${golden}")
endif()

# a temperature so small that logits / t overflow: greedy decoding, log-probs never null
foreach(t 1e-40 5e-324)
  execute_process(COMMAND ${IPA} generate ${common} --prompt "Once upon a time" --temperature ${t}
                  OUTPUT_VARIABLE out RESULT_VARIABLE rc ERROR_VARIABLE err)
  execute_process(COMMAND ${IPA} generate ${common} --prompt "Once upon a time" --temperature ${t} --json
                  OUTPUT_VARIABLE json RESULT_VARIABLE rc2)
  if(rc OR rc2 OR NOT out STREQUAL golden OR json MATCHES "null")
    message(FATAL_ERROR "--temperature ${t} should decode greedily:\n${out}${err}\n${json}")
  endif()
endforeach()

# inside a batch of prompts of different lengths: the same text for the same prompt
execute_process(COMMAND ${IPA} generate ${common} --prompt "Tom" --prompt "Once upon a time"
                        --prompt "The little bird could not fly over the tall tree" OUTPUT_VARIABLE out RESULT_VARIABLE rc)
string(FIND "${out}" "${golden}" at)
if(rc OR at EQUAL -1)
  message(FATAL_ERROR "the golden text is missing from the batched run:\n${out}")
endif()

execute_process(COMMAND ${IPA} generate ${common} --prompt "" --json OUTPUT_VARIABLE out RESULT_VARIABLE rc)
foreach(key prompt text prompt_ids ids logprobs tailored_logprobs)
  string(FIND "${out}" "\"${key}\":" at)
  if(rc OR at EQUAL -1)
    message(FATAL_ERROR "--json output lacks ${key}:\n${out}")
  endif()
endforeach()
if(NOT out MATCHES "\"prompt_ids\":\\[1\\]")
  message(FATAL_ERROR "an empty prompt must be [BOS]:\n${out}")
endif()

execute_process(COMMAND ${IPA} tokenize --tokenizer ${MODEL_DIR}/tok512.bin --text "Once upon a time" OUTPUT_VARIABLE out RESULT_VARIABLE rc)
if(rc OR NOT out STREQUAL "1 403 407 261 378\n")
  message(FATAL_ERROR "ipa tokenize printed '${out}'")
endif()

# The parser: help for ipa and every subcommand, the version, and a bad value of each kind
# (bad value -> "ipa: <option>: <what was expected>, found '<value>'" and exit status 2).
execute_process(COMMAND ${IPA} --version OUTPUT_VARIABLE out RESULT_VARIABLE rc)
if(rc OR NOT out STREQUAL "ipa ${VERSION}\n")
  message(FATAL_ERROR "ipa --version printed '${out}' (rc=${rc}), expected 'ipa ${VERSION}'")
endif()
execute_process(COMMAND ${IPA} --help OUTPUT_VARIABLE out RESULT_VARIABLE rc)
foreach(sub generate train eval convert tokenize)
  if(rc OR NOT out MATCHES "\n  ${sub} ")
    message(FATAL_ERROR "ipa --help (rc=${rc}) does not list ${sub}:\n${out}")
  endif()
endforeach()
foreach(case "generate;--max-new-tokens;--base-top-k;MODEL is" "train;--kl-coef;--resume;Reward SPEC"
             "eval;--samples;--ban-words;Reward SPEC" "convert;--to;--out;gguf-f16" "tokenize;--text;--tokenizer;TOK")
  list(GET case 0 sub)
  list(SUBLIST case 1 -1 expected)
  execute_process(COMMAND ${IPA} ${sub} --help OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "ipa ${sub} --help: rc=${rc}")
  endif()
  foreach(text ${expected})
    string(FIND "${out}" "${text}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "ipa ${sub} --help does not mention ${text}:\n${out}")
    endif()
  endforeach()
endforeach()
execute_process(COMMAND ${IPA} ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 2 OR NOT err MATCHES "subcommand is required")
  message(FATAL_ERROR "ipa alone: rc=${rc}: ${err}")
endif()

foreach(case  # option;value;what the message must say
    "--max-new-tokens;x;--max-new-tokens: expects a whole number in \\[0, 16777216\\], found 'x'"
    "--max-new-tokens;-1;--max-new-tokens: expects a whole number in .*, found '-1'"
    "--max-new-tokens;1.5;--max-new-tokens: .*found '1.5'"
    "--seed;18446744073709551616;--seed: expects a whole number >= 0, found '18446744073709551616'"
    "--top-p;1.5;--top-p: expects a finite number in \\(0, 1\\], found '1.5'"
    "--top-p;0;--top-p: expects a finite number in \\(0, 1\\], found '0'"
    "--temperature;-1;--temperature: expects a finite number in \\[0, .*found '-1'"
    "--temperature;nan;--temperature: expects a finite number"
    "--temperature;1e39;--temperature: .*found '1e39'"
    "--min-p;abc;--min-p: expects a number, found 'abc'"
    "--alpha;1;--alpha must follow the --adapter it weights"
    "--base-protocol;grpc;--base-protocol: grpc not in {llama,openai}"
    "--kv-cache;q8;--kv-cache: q8 not in {f32,f16}"
    "--prompts-file;/no/such/file;--prompts-file: File does not exist: /no/such/file"
    "--no-such-option;1;The following arguments? w.* not expected: .*--no-such-option")
  list(GET case 0 option)
  list(GET case 1 value)
  list(GET case 2 expected)
  execute_process(COMMAND ${IPA} generate ${common} --prompt "Hi" ${option} ${value} ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 2 OR NOT err MATCHES "^ipa: ${expected}")
    message(FATAL_ERROR "ipa generate ${option} ${value}: expected exit 2 and 'ipa: ${expected}', got rc=${rc}: ${err}")
  endif()
endforeach()
foreach(case "generate;--prompt;x;--base is required" "convert;--model;m;--to is required"
             "convert;--to;onnx;--to: onnx not in {gguf,gguf-f16,gguf-q8_0,hf,hf-f16,hf-bf16}" "train;--steps;5;--out is required"
             "eval;--samples;0;--samples: expects a whole number in \\[1, ")
  list(GET case 0 sub)
  list(GET case 1 option)
  list(GET case 2 value)
  list(GET case 3 expected)
  execute_process(COMMAND ${IPA} ${sub} ${option} ${value} ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 2 OR NOT err MATCHES "^ipa: ${expected}.*Run 'ipa ${sub} --help'")
    message(FATAL_ERROR "ipa ${sub} ${option} ${value}: expected exit 2 and 'ipa: ${expected}', got rc=${rc}: ${err}")
  endif()
endforeach()
# numbers at the edges of their types parse as numbers
execute_process(COMMAND ${IPA} generate ${common} --prompt "Hi" --min-p 5e-324 --seed 18446744073709551615
                        --max-new-tokens 4 OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(rc OR out STREQUAL "")
  message(FATAL_ERROR "--min-p 5e-324 --seed 18446744073709551615 should run: rc=${rc}: ${err}")
endif()

# A prompts file: empty -> a clear error naming it; long -> decoded batch by batch with progress
# on stderr, stdout clean, memory bounded, the same greedy text whatever the batch size.
file(WRITE ${WORK}/empty.txt "")
execute_process(COMMAND ${IPA} generate ${common} --prompts-file ${WORK}/empty.txt ERROR_VARIABLE err RESULT_VARIABLE rc)
if(rc EQUAL 0 OR NOT err MATCHES "--prompts-file .*empty.txt: the file is empty")
  message(FATAL_ERROR "an empty prompts file should fail clearly: rc=${rc}: ${err}")
endif()
file(WRITE ${WORK}/three.txt "Once upon a time\nTom\n\n")
execute_process(COMMAND ${IPA} generate ${common} --prompts-file ${WORK}/three.txt --batch 2
                OUTPUT_VARIABLE by_two ERROR_VARIABLE err RESULT_VARIABLE rc1)
execute_process(COMMAND ${IPA} generate ${common} --prompts-file ${WORK}/three.txt OUTPUT_VARIABLE at_once RESULT_VARIABLE rc2)
string(FIND "${by_two}" "${golden}" at)
if(rc1 OR rc2 OR NOT at EQUAL 0 OR NOT by_two STREQUAL at_once OR NOT err MATCHES "generate: 3/3 prompts")
  message(FATAL_ERROR "batches of 2 and one batch differ (or no progress):\n${by_two}\n--\n${at_once}\n--\n${err}")
endif()
if(PEAK_RSS)
  set(words Tom Lily the dog a big red ball ran saw happy sun)
  set(lines "")
  foreach(i RANGE 1 10000)
    math(EXPR a "${i} % 12")
    math(EXPR b "(${i} * 7) % 12")
    list(GET words ${a} wa)
    list(GET words ${b} wb)
    string(APPEND lines "${wa} ${wb}\n")
    if(i EQUAL 100)
      file(WRITE ${WORK}/prompts100.txt "${lines}")
    endif()
  endforeach()
  file(WRITE ${WORK}/prompts10000.txt "${lines}")
  foreach(n 100 10000)
    execute_process(COMMAND ${PEAK_RSS} ${WORK}/rss${n} ${IPA} generate --base ${MODEL_DIR}/stories260K.bin
                            --tokenizer ${MODEL_DIR}/tok512.bin --prompts-file ${WORK}/prompts${n}.txt --max-new-tokens 8
                    OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
    file(READ ${WORK}/rss${n} rss${n})
    string(STRIP "${rss${n}}" rss${n})
    if(rc OR NOT err MATCHES "generate: ${n}/${n} prompts" OR out MATCHES "generate:")
      message(FATAL_ERROR "${n} prompts: rc=${rc}, progress on stderr expected, stdout clean:\n${err}")
    endif()
  endforeach()
  math(EXPR bound "2 * ${rss100}")
  message("peak RSS: 100 prompts ${rss100} KiB, 10000 prompts ${rss10000} KiB")
  if(rss10000 GREATER bound)
    message(FATAL_ERROR "10000 prompts took ${rss10000} KiB, over twice the ${rss100} KiB of 100")
  endif()
endif()
execute_process(COMMAND ${IPA} generate ${common} --prompt "Hi" --adapter ${MODEL_DIR}/stories260K.bin --alpha nan
                ERROR_VARIABLE err RESULT_VARIABLE rc)
if(rc EQUAL 0 OR NOT err MATCHES "finite")
  message(FATAL_ERROR "alpha nan should fail: ${err}")
endif()

# GPT-2 byte-level BPE from the original OpenAI files (no BOS)
if(EXISTS ${GOLDEN_DIR}/gpt2_bpe/encoder.json)
  execute_process(COMMAND ${IPA} tokenize --tokenizer ${GOLDEN_DIR}/gpt2_bpe --text "Hello world" OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  if(rc OR NOT out STREQUAL "15496 995\n")
    message(FATAL_ERROR "ipa tokenize (GPT-2) printed '${out}'")
  endif()
elseif("$ENV{CI}" STREQUAL "true")
  message(FATAL_ERROR "missing ${GOLDEN_DIR}/gpt2_bpe (set IPA_GOLDEN_DIR)")
endif()

# The same model converted to GGUF by llama.cpp, with the tokenizer from its metadata: same text
if(EXISTS ${MODEL_DIR}/stories260K.gguf)
  execute_process(COMMAND ${IPA} generate --base ${MODEL_DIR}/stories260K.gguf --prompt "Once upon a time"
                          --temperature 0 --max-new-tokens 60 OUTPUT_VARIABLE out RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(rc OR NOT out STREQUAL golden)
    message(FATAL_ERROR "ipa generate on stories260K.gguf printed:\n${out}${err}\nexpected:\n${golden}")
  endif()
  # keys and values kept as halves (llama.cpp's default cache, which llama-cli prints this text
  # with too): the same greedy text, log-probs a little apart
  set(gguf_args --base ${MODEL_DIR}/stories260K.gguf --prompt "Once upon a time" --temperature 0 --max-new-tokens 60)
  execute_process(COMMAND ${IPA} generate ${gguf_args} --kv-cache f16 OUTPUT_VARIABLE out RESULT_VARIABLE rc ERROR_VARIABLE err)
  execute_process(COMMAND ${IPA} generate ${gguf_args} --kv-cache f16 --json OUTPUT_VARIABLE json16 RESULT_VARIABLE rc2)
  execute_process(COMMAND ${IPA} generate ${gguf_args} --json OUTPUT_VARIABLE json32 RESULT_VARIABLE rc3)
  if(rc OR rc2 OR rc3 OR NOT out STREQUAL golden OR json16 STREQUAL json32)
    message(FATAL_ERROR "--kv-cache f16 printed:\n${out}${err}\n(json: ${json16})\nexpected the golden text, other log-probs")
  endif()
  # as an adapter, the GGUF's own token table is checked against the base's (tok512.bin): the
  # same tables, so the same text as the adapter without a stored tokenizer
  set(adapter_args --base ${MODEL_DIR}/stories260K.bin --tokenizer ${MODEL_DIR}/tok512.bin --prompt "Once upon a time"
                   --temperature 0.8 --seed 5 --max-new-tokens 40)
  execute_process(COMMAND ${IPA} generate ${adapter_args} --adapter ${MODEL_DIR}/stories260K.gguf --alpha 0.5
                  OUTPUT_VARIABLE with_table RESULT_VARIABLE rc1 ERROR_VARIABLE err1)
  execute_process(COMMAND ${IPA} generate ${adapter_args} --adapter ${MODEL_DIR}/stories260K.bin --alpha 0.5
                  OUTPUT_VARIABLE without_table RESULT_VARIABLE rc2 ERROR_VARIABLE err2)
  if(rc1 OR rc2 OR with_table STREQUAL "" OR NOT with_table STREQUAL without_table)
    message(FATAL_ERROR "a GGUF adapter (token table checked) and the .bin adapter differ:\n${with_table}${err1}\n${without_table}${err2}")
  endif()
elseif("$ENV{CI}" STREQUAL "true")
  message(FATAL_ERROR "missing ${MODEL_DIR}/stories260K.gguf")
endif()

# convert to GGUF (F32; F16 and Q8_0, read in place) and to Hugging Face folders (F32; F16 and
# BF16, read in place with RoPE on halves), then generate
# from each: the same greedy text
foreach(to gguf gguf-f16 gguf-q8_0 hf hf-f16 hf-bf16)
  execute_process(COMMAND ${IPA} convert --model ${MODEL_DIR}/stories260K.bin --tokenizer ${MODEL_DIR}/tok512.bin
                          --to ${to} --out ${WORK}/converted.${to} RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(rc)
    message(FATAL_ERROR "ipa convert --to ${to} failed: ${err}")
  endif()
  execute_process(COMMAND ${IPA} generate --base ${WORK}/converted.${to} --tokenizer ${MODEL_DIR}/tok512.bin
                          --prompt "Once upon a time" --temperature 0 --max-new-tokens 60 OUTPUT_VARIABLE out RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(rc OR NOT out STREQUAL golden)
    message(FATAL_ERROR "ipa generate on the converted ${to} printed:\n${out}${err}")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK}/converted.gguf ${WORK}/converted.gguf-f16 ${WORK}/converted.gguf-q8_0 ${WORK}/converted.hf
     ${WORK}/converted.hf-f16 ${WORK}/converted.hf-bf16)

# GPT-2: a Hugging Face folder and the GGUF `ipa convert` writes from it decode to the same ids
# (the tiny golden model has a 512-token vocabulary: tok512.bin stands in for its tokenizer)
set(gpt2 ${GOLDEN_DIR}/gpt2_tiny)
if(NOT EXISTS ${gpt2}/model.safetensors)
  message(FATAL_ERROR "missing ${gpt2} (set IPA_GOLDEN_DIR)")
endif()
execute_process(COMMAND ${IPA} convert --model ${gpt2} --to gguf --out ${WORK}/gpt2_tiny.gguf RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "ipa convert (GPT-2 -> GGUF) failed: ${err}")
endif()
set(gpt2_args --tokenizer ${MODEL_DIR}/tok512.bin --temperature 0 --max-new-tokens 12 --prompt "Once upon a time" --json)
execute_process(COMMAND ${IPA} generate --base ${gpt2} ${gpt2_args} OUTPUT_VARIABLE from_hf RESULT_VARIABLE rc1)
execute_process(COMMAND ${IPA} generate --base ${WORK}/gpt2_tiny.gguf ${gpt2_args} OUTPUT_VARIABLE from_gguf RESULT_VARIABLE rc2)
string(REGEX MATCH "\"ids\":\\[[0-9,]+\\]" ids_hf "${from_hf}")
string(REGEX MATCH "\"ids\":\\[[0-9,]+\\]" ids_gguf "${from_gguf}")
if(rc1 OR rc2 OR ids_hf STREQUAL "" OR NOT ids_hf STREQUAL ids_gguf)
  message(FATAL_ERROR "GPT-2 from HF and from GGUF differ:\n${from_hf}\n${from_gguf}")
endif()
execute_process(COMMAND ${IPA} generate --base ${gpt2} --prompt "Hi" ERROR_VARIABLE err RESULT_VARIABLE rc)
if(rc EQUAL 0 OR NOT err MATCHES "no GPT-2 tokenizer")
  message(FATAL_ERROR "a GPT-2 base without a tokenizer should fail clearly: ${err}")
endif()
execute_process(COMMAND ${IPA} generate --base ${gpt2} --tokenizer ${GOLDEN_DIR}/gpt2_bpe --prompt "Hi"
                ERROR_VARIABLE err RESULT_VARIABLE rc)
if(rc EQUAL 0 OR NOT err MATCHES "50257 tokens, the model 512")
  message(FATAL_ERROR "a vocabulary mismatch should fail clearly: ${err}")
endif()
