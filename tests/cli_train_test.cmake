# SPDX-License-Identifier: MIT
# `ipa train` -> `ipa train --resume` -> `ipa generate --adapter` -> `ipa eval`, as a user runs them.
include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)
ipa_cli_test_needs(${MODEL_DIR}/stories260K.bin)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(model --base ${MODEL_DIR}/stories260K.bin --tokenizer ${MODEL_DIR}/tok512.bin)
set(run ${model} --reward "avoid:sad,cry + 0.5*keywords:dog" --prompts ${PROMPTS} --out ${WORK}/run
        --algo quark --batch 4 --max-new-tokens 24 --save-every 2)

execute_process(COMMAND ${IPA} train ${run} --steps 3 RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "ipa train failed: ${err}")
endif()
file(STRINGS ${WORK}/run/metrics.jsonl lines)
list(LENGTH lines n)
if(NOT n EQUAL 3 OR NOT EXISTS ${WORK}/run/adapter/config.json OR NOT EXISTS ${WORK}/run/latest)
  message(FATAL_ERROR "expected 3 metric lines, an adapter and a latest checkpoint; found ${n} lines:\n${err}")
endif()
# a Quark run closes by checking whether its adapter follows its control token (issue 25)
if(NOT err MATCHES "control tokens \\(256 samples of the training prompts each\\): reward [0-9.]+ with the best bin's"
   OR NOT EXISTS ${WORK}/run/control_tokens.json)
  message(FATAL_ERROR "a Quark run should report its control-token check: ${err}")
endif()
file(READ ${WORK}/run/control_tokens.json report)
string(JSON follows GET "${report}" follows_control_token)
string(JSON n GET "${report}" best_bin samples)
if(NOT n EQUAL 256 OR NOT (follows STREQUAL "ON" OR follows STREQUAL "OFF"))
  message(FATAL_ERROR "control_tokens.json: expected 256 samples and a verdict, found ${report}")
endif()
foreach(key step reward kl tokens_per_second conditioning_bin bin_sizes bin_mean_rewards)  # (Quark's bins too)
  if(NOT lines MATCHES "\"${key}\":")
    message(FATAL_ERROR "metrics.jsonl lacks ${key}")
  endif()
endforeach()

# a second run into the same folder without --resume must refuse, not overwrite
execute_process(COMMAND ${IPA} train ${run} --steps 3 RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "already holds a run")
  message(FATAL_ERROR "train into a used --out should refuse: rc=${rc} ${err}")
endif()
execute_process(COMMAND ${IPA} train --out ${WORK}/run --resume --steps 5 RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc OR NOT err MATCHES "resumed from .*checkpoint-000003 at step 3")
  message(FATAL_ERROR "ipa train --resume failed: ${err}")
endif()
file(STRINGS ${WORK}/run/metrics.jsonl lines)
list(LENGTH lines n)
if(NOT n EQUAL 5 OR NOT EXISTS ${WORK}/run/checkpoint-000005)
  message(FATAL_ERROR "after --resume to 5 steps expected 5 metric lines and checkpoint-000005, found ${n}")
endif()

# resuming a finished run trains nothing and writes no second checkpoint of the same step
file(READ ${WORK}/run/latest latest_before)
execute_process(COMMAND ${IPA} train --out ${WORK}/run --resume RESULT_VARIABLE rc ERROR_VARIABLE err)
file(READ ${WORK}/run/latest latest_after)
file(GLOB again ${WORK}/run/checkpoint-000005.*)
if(rc OR again OR NOT latest_before STREQUAL latest_after)
  message(FATAL_ERROR "resuming a finished run should change nothing: ${err} ${again} ${latest_after}")
endif()

# the control-token check on prompts of its own
file(WRITE ${WORK}/check.txt "Once upon a time\nTom had a dog.\n")
execute_process(COMMAND ${IPA} train ${model} --reward avoid:sad --prompts ${PROMPTS} --out ${WORK}/check --algo quark
                        --batch 2 --max-new-tokens 8 --steps 1 --control-check 8 --control-check-prompts
                        ${WORK}/check.txt RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc OR NOT err MATCHES "control tokens \\(8 samples of [^ ]*check.txt each\\)")
  message(FATAL_ERROR "--control-check 8 --control-check-prompts should check 8 samples of that file: ${err}")
endif()
file(READ ${WORK}/check/control_tokens.json report)
string(JSON n GET "${report}" worst_bin samples)
string(JSON prompts GET "${report}" prompts)
if(NOT n EQUAL 8 OR NOT prompts MATCHES "check.txt$")
  message(FATAL_ERROR "control_tokens.json should hold 8 samples of check.txt: ${report}")
endif()

# a copied run resumes in its new folder and leaves the original alone
file(COPY ${WORK}/run/ DESTINATION ${WORK}/copy)
execute_process(COMMAND ${IPA} train --out ${WORK}/copy --resume --steps 6 RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc OR NOT EXISTS ${WORK}/copy/checkpoint-000006 OR EXISTS ${WORK}/run/checkpoint-000006)
  message(FATAL_ERROR "ipa train --resume of a copied run should write to the copy: ${err}")
endif()

execute_process(COMMAND ${IPA} generate ${model} --adapter ${WORK}/run/adapter --prompt "Once upon a time"
                        --max-new-tokens 20 --json OUTPUT_VARIABLE out RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc OR NOT out MATCHES "\"text\":")
  message(FATAL_ERROR "ipa generate --adapter failed: ${err}${out}")
endif()

execute_process(COMMAND ${IPA} eval ${model} --adapter ${WORK}/run/adapter --reward "avoid:sad" --prompts ${PROMPTS}
                        --samples 2 --max-new-tokens 24 --json OUTPUT_VARIABLE out RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc OR NOT out MATCHES "\"base_perplexity\":" OR NOT out MATCHES "\"distinct_2\":" OR NOT out MATCHES "\"reward\":")
  message(FATAL_ERROR "ipa eval failed: ${err}${out}")
endif()

# the same adapter conditioned on its worst reward bin's control token (issue 25's check that an
# adapter uses its control token): other log-probs from the same seed; bins past the trained five
# and adapters without control tokens are usage errors
set(gen generate ${model} --prompt "Once upon a time" --max-new-tokens 20 --seed 3 --json)
execute_process(COMMAND ${IPA} ${gen} --adapter ${WORK}/run/adapter OUTPUT_VARIABLE best RESULT_VARIABLE rc)
execute_process(COMMAND ${IPA} ${gen} --adapter ${WORK}/run/adapter --control-bin 4 OUTPUT_VARIABLE worst
                RESULT_VARIABLE rc4 ERROR_VARIABLE err)
if(rc OR rc4 OR best STREQUAL worst)
  message(FATAL_ERROR "--control-bin 4 should run and change the log-probs: ${err}\n${best}\n${worst}")
endif()
execute_process(COMMAND ${IPA} ${gen} --adapter ${WORK}/run/adapter --control-bin 5 RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "trained with 5 reward bins")
  message(FATAL_ERROR "--control-bin 5 of 5 bins should be a usage error: rc=${rc} ${err}")
endif()
execute_process(COMMAND ${IPA} ${gen} --adapter ${MODEL_DIR}/stories260K.bin --control-bin 1 RESULT_VARIABLE rc
                ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "needs an adapter trained with Quark")
  message(FATAL_ERROR "--control-bin without a Quark adapter should be a usage error: rc=${rc} ${err}")
endif()

# bad input: a clear message, non-zero exit
foreach(bad "--reward;nope:1" "--algo;sarsa" "--lr;abc")
  execute_process(COMMAND ${IPA} train ${run} --out ${WORK}/bad --steps 1 ${bad} RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(rc EQUAL 0 OR NOT err MATCHES "ipa:")
    message(FATAL_ERROR "ipa train ${bad} should fail with a message: rc=${rc} ${err}")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK})
