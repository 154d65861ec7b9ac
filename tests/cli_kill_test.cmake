# SPDX-License-Identifier: MIT
# `ipa train` killed (SIGKILL) again and again, many times during a save, then resumed: the run
# ends exactly as an uninterrupted one (same rewards and losses at every step, the same adapter),
# metrics.jsonl holds each step once and no torn line, no temporary file is left, and a second
# run on the same folder is refused while one holds it.
include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)
ipa_cli_test_needs(${MODEL_DIR}/stories260K.bin)
find_program(TIMEOUT timeout REQUIRED)  # coreutils
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(steps 120)
set(run --base ${MODEL_DIR}/stories260K.bin --tokenizer ${MODEL_DIR}/tok512.bin --reward "avoid:sad,cry"
        --prompts ${PROMPTS} --algo rloo --batch 8 --max-new-tokens 48 --save-every 1)

execute_process(COMMAND ${IPA} train ${run} --out ${WORK}/whole --steps ${steps} RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "the uninterrupted run failed: ${err}")
endif()

# the killed run: one step to create it, then kills at staggered moments, then to the end
execute_process(COMMAND ${IPA} train ${run} --out ${WORK}/killed --steps 1 RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "the first step failed: ${err}")
endif()
set(kills 0)
foreach(i RANGE 1 14)
  math(EXPR ms "120 + 37 * ${i}")
  if(ms LESS 1000)
    set(seconds 0.${ms})
  else()
    set(seconds 1.0)
  endif()
  execute_process(COMMAND ${TIMEOUT} -s KILL ${seconds} ${IPA} train --out ${WORK}/killed --resume --steps ${steps}
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(rc MATCHES "killed|137")
    math(EXPR kills "${kills} + 1")
  elseif(rc)
    message(FATAL_ERROR "resume ${i} failed (rc=${rc}): ${err}")
  endif()
endforeach()
if(kills LESS 10)
  message(FATAL_ERROR "only ${kills} of 14 runs were killed; the steps are too fast for this test's clock")
endif()

execute_process(COMMAND ${IPA} train --out ${WORK}/killed --resume --steps ${steps} RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "the last resume failed: ${err}")
endif()

# every step once, in order, each line JSON, with the uninterrupted run's reward and loss
foreach(name whole killed)
  file(STRINGS ${WORK}/${name}/metrics.jsonl lines_${name})
  list(LENGTH lines_${name} n)
  if(NOT n EQUAL steps)
    message(FATAL_ERROR "${name}/metrics.jsonl holds ${n} lines for ${steps} steps:\n${lines_${name}}")
  endif()
endforeach()
math(EXPR last "${steps} - 1")
foreach(k RANGE 0 ${last})
  list(GET lines_whole ${k} a)
  list(GET lines_killed ${k} b)
  foreach(field step reward loss kl)
    string(JSON va GET "${a}" ${field})
    string(JSON vb ERROR_VARIABLE bad GET "${b}" ${field})
    if(bad OR NOT va STREQUAL vb)
      message(FATAL_ERROR "step ${k}: ${field} ${vb} after kills, ${va} uninterrupted (${bad})\n${b}\n${a}")
    endif()
  endforeach()
endforeach()
file(SHA256 ${WORK}/whole/adapter/model.safetensors whole_sha)
file(SHA256 ${WORK}/killed/adapter/model.safetensors killed_sha)
if(NOT whole_sha STREQUAL killed_sha)
  message(FATAL_ERROR "the adapter after ${kills} kills differs from the uninterrupted run's")
endif()
file(GLOB leftovers LIST_DIRECTORIES true ${WORK}/killed/*.tmp-* ${WORK}/killed/.tmp-* ${WORK}/killed/.adapter-link)
file(GLOB checkpoints LIST_DIRECTORIES true ${WORK}/killed/checkpoint-*)
list(LENGTH checkpoints n_checkpoints)
if(leftovers OR NOT n_checkpoints EQUAL 1)
  message(FATAL_ERROR "left behind: ${leftovers} ${checkpoints}")
endif()
# a second run on a folder in use: refused, naming the holder (here a run that goes on and on)
execute_process(COMMAND sh -c "'${IPA}' train --out '${WORK}/whole' --resume --steps 100000 >/dev/null 2>&1 &
                               holder=$!; sleep 0.5
                               '${IPA}' train --out '${WORK}/whole' --resume --steps 100000; rc=$?
                               kill -9 $holder; wait $holder; exit $rc"
                ERROR_VARIABLE err RESULT_VARIABLE rc TIMEOUT 60)
if(rc EQUAL 0 OR NOT err MATCHES "whole is in use by another process \\(pid [0-9]+")
  message(FATAL_ERROR "a second run on a folder in use should be refused clearly: rc=${rc}: ${err}")
endif()
message("${kills} kills, resumed exactly")
file(REMOVE_RECURSE ${WORK})
