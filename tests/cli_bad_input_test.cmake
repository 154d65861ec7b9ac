# SPDX-License-Identifier: MIT
# The CLI against hostile input, table-driven: bad files (missing, a folder, a FIFO, a device,
# empty, garbage, truncated, a wrong magic) for every path option, bad values for every number
# and choice option, bad reward specs and misbehaving reward commands, corrupted checkpoints and
# model configs. Every case must end by itself (no signal, no timeout) with exit status 1 or 2,
# an "ipa: " message, and in it the name of the file or option at fault.
include(${CMAKE_CURRENT_LIST_DIR}/cli_common.cmake)
ipa_cli_test_needs(${MODEL_DIR}/stories260K.gguf)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(M ${MODEL_DIR}/stories260K.bin)
set(T ${MODEL_DIR}/tok512.bin)
set(P ${PROMPTS})
set(cases 0)

# refused(EXPECTED ARGS...): `ipa ARGS` must fail cleanly, naming EXPECTED
function(refused expected)
  execute_process(COMMAND ${IPA} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 30)
  string(REPLACE ";" " " shown "${ARGN}")
  if(NOT rc MATCHES "^[12]$")
    message(FATAL_ERROR "ipa ${shown}\n  ended with '${rc}' (expected exit status 1 or 2): ${err}")
  endif()
  string(FIND "${err}" "ipa: " at)
  string(FIND "${err}" "${expected}" named)
  if(NOT at EQUAL 0 OR named EQUAL -1)
    message(FATAL_ERROR "ipa ${shown}\n  should say 'ipa: ...${expected}...', said: ${err}")
  endif()
  math(EXPR n "${cases} + 1")
  set(cases ${n} PARENT_SCOPE)
endfunction()

# ---- files: every path option, every kind of bad file
file(MAKE_DIRECTORY ${WORK}/a_folder)
execute_process(COMMAND mkfifo ${WORK}/a_fifo RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "mkfifo failed")
endif()
file(WRITE ${WORK}/empty.bin "")
string(REPEAT "garbage " 200 garbage)
file(WRITE ${WORK}/garbage.bin "${garbage}")
execute_process(COMMAND head -c 1000 ${M} OUTPUT_FILE ${WORK}/truncated.bin)
execute_process(COMMAND head -c 5000 ${MODEL_DIR}/stories260K.gguf OUTPUT_FILE ${WORK}/truncated.gguf)
file(WRITE ${WORK}/magic.gguf "GGUX${garbage}")
set(bad_files ${WORK}/missing.bin ${WORK}/a_folder ${WORK}/a_fifo /dev/null ${WORK}/empty.bin ${WORK}/garbage.bin
              ${WORK}/truncated.bin ${WORK}/truncated.gguf ${WORK}/magic.gguf)
set(train_args --reward avoid:sad --prompts ${P} --out ${WORK}/run_bad --steps 1 --max-new-tokens 4)
set(eval_args --reward avoid:sad --prompts ${P} --samples 1 --max-new-tokens 4)
foreach(f IN LISTS bad_files)
  get_filename_component(name ${f} NAME)
  refused(${name} generate --base ${f} --tokenizer ${T} --prompt hi)
  refused(${name} generate --base ${M} --tokenizer ${f} --prompt hi)
  refused(${name} generate --base ${M} --tokenizer ${T} --adapter ${f} --prompt hi)
  refused(${name} train --base ${f} --tokenizer ${T} ${train_args})
  refused(${name} train --base ${M} --tokenizer ${f} ${train_args})
  refused(${name} train --base ${M} --tokenizer ${T} --adapter-init ${f} ${train_args})
  refused(${name} eval --base ${f} --tokenizer ${T} ${eval_args})
  refused(${name} eval --base ${M} --tokenizer ${f} ${eval_args})
  refused(${name} eval --base ${M} --tokenizer ${T} --adapter ${f} ${eval_args})
  refused(${name} eval --base ${M} --tokenizer ${T} --policy ${f} ${eval_args})
  refused(${name} convert --model ${f} --tokenizer ${T} --to gguf --out ${WORK}/converted.gguf)
  refused(${name} convert --model ${M} --tokenizer ${f} --to gguf --out ${WORK}/converted.gguf)
  refused(${name} tokenize --tokenizer ${f} --text hi)
endforeach()
foreach(f ${WORK}/missing.txt ${WORK}/a_folder ${WORK}/empty.bin /dev/zero ${WORK}/a_fifo)
  get_filename_component(name ${f} NAME)
  # (a pipe may hold prompts: one that nobody writes to is given up after --prompts-wait)
  refused(${name} generate --base ${M} --tokenizer ${T} --prompts-file ${f} --prompts-wait 0.5)
  refused(${name} train --base ${M} --tokenizer ${T} --reward avoid:sad --prompts ${f} --out ${WORK}/run_bad)
  refused(${name} train --base ${M} --tokenizer ${T} --reward avoid:sad --prompts ${P} --algo quark
          --control-check-prompts ${f} --out ${WORK}/run_bad)
  refused(${name} eval --base ${M} --tokenizer ${T} --reward avoid:sad --prompts ${f} --prompts-wait 0.5)
endforeach()
refused("nothing arrived from the pipe" generate --base ${M} --tokenizer ${T} --prompts-file ${WORK}/a_fifo
        --prompts-wait 0.5)
refused("--resume: save them to a file" train --base ${M} --tokenizer ${T} --reward avoid:sad --prompts ${WORK}/a_fifo
        --out ${WORK}/run_bad)

# an adapter with a smaller vocabulary of its own (the first 256 tokens of tok512.bin, zero
# weights in a llama2.c file beside it): a prompt token it lacks is named, with the adapter's path
file(MAKE_DIRECTORY ${WORK}/small)
execute_process(COMMAND sh -c "printf '\\010\\0\\0\\0\\010\\0\\0\\0\\001\\0\\0\\0\\001\\0\\0\\0\\001\\0\\0\\0\\0\\001\\0\\0\\020\\0\\0\\0' > adapter.bin && head -c 10592 /dev/zero >> adapter.bin && head -c 3586 ${T} > tokenizer.bin"
                WORKING_DIRECTORY ${WORK}/small RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "could not write the 256-token adapter")
endif()
refused("small/adapter.bin: prompt 0 holds token" generate --base ${M} --tokenizer ${T}
        --adapter ${WORK}/small/adapter.bin --prompt "Once upon a time")

# a NaN weight (token 15's embedding, which stories260K's classifier shares): the base read in
# place (generate) names it at the first step, the repacked base (train, eval) at load
execute_process(COMMAND sh -c "head -c 4028 ${M} > nan.bin && printf '\\377\\377\\377\\177' >> nan.bin && tail -c +4033 ${M} >> nan.bin"
                WORKING_DIRECTORY ${WORK} RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "could not write nan.bin")
endif()
refused("nan.bin: tensor 'tok_embeddings' holds a non-finite value (row 15)" generate --base ${WORK}/nan.bin
        --tokenizer ${T} --prompt hi)
refused("tok_embeddings" train --base ${WORK}/nan.bin --tokenizer ${T} ${train_args})
refused("tok_embeddings" eval --base ${WORK}/nan.bin --tokenizer ${T} ${eval_args})

# ---- numbers and choices: every option, values that are not numbers, out of range, NaN, overflow
set(generate_numbers --max-new-tokens --min-new-tokens --temperature --top-k --top-p --min-p --repetition-penalty
                     --seed --batch --base-top-k --base-give-up-after --prompts-wait)
set(train_numbers --steps --max-minutes --adapter-dim --adapter-layers --adapter-heads --lr --warmup --batch
                  --samples-per-prompt --max-new-tokens --temperature --top-p --kl-coef --kl-target --entropy-coef --bins
                  --quark-updates --quark-minibatch --quark-train-bins --control-check --adam-eps --max-grad-norm --pool --ppo-epochs --clip --gamma --lambda --micro-batch --save-every --seed
                  --reward-timeout --base-top-k --base-give-up-after --alpha)
set(eval_numbers --samples --max-new-tokens --temperature --top-p --seed --reward-timeout --base-top-k
                 --base-give-up-after --prompts-wait)
foreach(value x -1 nan 1e999 "")
  foreach(option IN LISTS generate_numbers)
    refused(${option} generate --base ${M} --tokenizer ${T} --prompt hi ${option} ${value})
  endforeach()
  foreach(option IN LISTS train_numbers)
    if(option STREQUAL "--alpha" AND value STREQUAL "-1")
      continue()  # a negative alpha is an anti-expert
    endif()
    refused(${option} train --base ${M} --tokenizer ${T} ${train_args} ${option} ${value})
  endforeach()
  foreach(option IN LISTS eval_numbers)
    refused(${option} eval --base ${M} --tokenizer ${T} ${eval_args} ${option} ${value})
  endforeach()
endforeach()
refused(--alpha generate --base ${M} --tokenizer ${T} --prompt hi --adapter ${M} --alpha inf)
refused("quark_train_bins must be in [0, quark_bins]" train --base ${M} --tokenizer ${T} ${train_args} --algo quark
        --bins 5 --quark-train-bins 6)
refused(--alpha generate --base ${M} --tokenizer ${T} --prompt hi --alpha 1)
refused(--algo train --base ${M} --tokenizer ${T} ${train_args} --algo sarsa)
refused(--decay train --base ${M} --tokenizer ${T} ${train_args} --decay exponential)
refused(--to convert --model ${M} --to onnx --out ${WORK}/x)
refused(--base-protocol generate --base ${M} --tokenizer ${T} --prompt hi --base-protocol grpc)
refused(--steps train --base ${M} --tokenizer ${T} ${train_args} --steps)
refused(--out train --base ${M} --tokenizer ${T} --reward avoid:sad --prompts ${P})
refused(--base generate --prompt hi)
refused(--policy eval --base ${M} --tokenizer ${T} ${eval_args} --policy ${M} --adapter ${M})

# ---- rewards: specs that do not parse, commands that misbehave
foreach(spec " " "nope:1" "avoid:" "avoid:a +" "x*avoid:a" "length:0" "length:1.5" "distinct:-1" "keywords:"
             "cmd:" "cmd:   " "1e999*avoid:a" "avoid:a + + keywords:b" ":" "*:a")
  refused("reward" train --base ${M} --tokenizer ${T} --reward "${spec}" --prompts ${P} --out ${WORK}/run_bad)
  refused("reward" eval --base ${M} --tokenizer ${T} --reward "${spec}" --prompts ${P})
endforeach()
# (a shell's ';' would split a CMake list: the commands separate their parts with newlines)
foreach(case "exit 3|exited with status 3" "sleep 100|no answer within" "cat >/dev/null\necho 1|answered 1 line"
             "while read -r l\ndo echo 1e308\ndone|answered '1e308'"
             "while read -r l\ndo echo nan\ndone|answered 'nan'"
             "while read -r l\ndo echo 0\necho 7\ndone|answered 8 line"
             "kill -9 $$|killed by signal 9")
  string(REGEX REPLACE "\\|.*" "" command "${case}")
  string(REGEX REPLACE "^[^|]*\\|" "" expected "${case}")
  refused("${expected}" train --base ${M} --tokenizer ${T} --reward "cmd:${command}" --prompts ${P}
          --out ${WORK}/run_bad --steps 1 --batch 4 --algo reinforce --max-new-tokens 4 --reward-timeout 0.5)
endforeach()

# ---- checkpoints: one good run, then copies with one thing broken each
execute_process(COMMAND ${IPA} train --base ${M} --tokenizer ${T} --reward avoid:sad --prompts ${P} --out ${WORK}/good
                        --steps 1 --max-new-tokens 4 --algo quark RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "the good run failed: ${err}")
endif()
file(READ ${WORK}/good/latest latest)
string(STRIP "${latest}" latest)
file(READ ${WORK}/good/${latest}/trainer.json state)
set(k 0)
macro(broken_copy)
  math(EXPR k "${k} + 1")
  set(copy ${WORK}/broken${k})
  file(REMOVE_RECURSE ${copy})
  file(COPY ${WORK}/good/ DESTINATION ${copy})
endmacro()
foreach(edit "step;-5" "step;1.5" "adam_steps;\"x\"" "prompt_cursor;-1" "rng;[1,2]" "prompt_order;[0,0,999]"
             "kl_coef;\"high\"" "run;{\"algo\":\"sarsa\",\"base\":\"${M}\",\"tokenizer\":\"${T}\",\"reward\":\"avoid:a\",\"prompts\":\"${P}\"}")
  string(REPLACE ";" "|" edit "${edit}")
  string(REGEX REPLACE "\\|.*" "" key "${edit}")
  string(REGEX REPLACE "^[^|]*\\|" "" value "${edit}")
  broken_copy()
  string(JSON edited SET "${state}" ${key} "${value}")
  file(WRITE ${copy}/${latest}/trainer.json "${edited}")
  refused(broken${k} train --out ${copy} --resume --steps 2)
endforeach()
broken_copy()
file(WRITE ${copy}/${latest}/trainer.json "{\"step\": 1,")
refused(broken${k} train --out ${copy} --resume --steps 2)
broken_copy()
file(WRITE ${copy}/latest "../../etc\n")
refused(broken${k} train --out ${copy} --resume --steps 2)
broken_copy()
file(WRITE ${copy}/latest "checkpoint-999999\n")
refused(broken${k} train --out ${copy} --resume --steps 2)
foreach(part adapter/model.safetensors optimizer.safetensors pool.safetensors adapter/config.json)
  broken_copy()
  file(WRITE ${copy}/${latest}/${part} "${garbage}")
  refused(broken${k} train --out ${copy} --resume --steps 2)
  broken_copy()
  file(REMOVE ${copy}/${latest}/${part})
  refused(broken${k} train --out ${copy} --resume --steps 2)
endforeach()
refused(no_run train --out ${WORK}/no_run --resume)
refused("already holds a run" train --base ${M} --tokenizer ${T} --reward avoid:sad --prompts ${P} --out ${WORK}/good)

# ---- model configs: Hugging Face folders with one setting broken each
execute_process(COMMAND ${IPA} convert --model ${M} --to hf --out ${WORK}/hf RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "convert --to hf failed: ${err}")
endif()
file(READ ${WORK}/hf/config.json config)
set(k 0)
foreach(edit "hidden_act;\"gelu\"" "rope_scaling;{\"type\":\"linear\",\"factor\":4}" "hidden_size;64.5"
             "num_hidden_layers;1099511627776" "vocab_size;\"512\"" "attention_bias;true" "head_dim;16"
             "rms_norm_eps;-1" "num_attention_heads;0" "intermediate_size;null" "max_position_embeddings;-3")
  string(REPLACE ";" "|" edit "${edit}")
  string(REGEX REPLACE "\\|.*" "" key "${edit}")
  string(REGEX REPLACE "^[^|]*\\|" "" value "${edit}")
  math(EXPR k "${k} + 1")
  file(COPY ${WORK}/hf/ DESTINATION ${WORK}/hf${k})
  if(value STREQUAL "null")
    string(JSON edited REMOVE "${config}" ${key})
  else()
    string(JSON edited SET "${config}" ${key} "${value}")
  endif()
  file(WRITE ${WORK}/hf${k}/config.json "${edited}")
  refused("${key}" generate --base ${WORK}/hf${k} --tokenizer ${T} --prompt hi)
endforeach()
foreach(text "[]" "{" "null" "7")
  math(EXPR k "${k} + 1")
  file(COPY ${WORK}/hf/ DESTINATION ${WORK}/hf${k})
  file(WRITE ${WORK}/hf${k}/config.json "${text}")
  refused("hf${k}/config.json" generate --base ${WORK}/hf${k} --tokenizer ${T} --prompt hi)
endforeach()

message("${cases} bad inputs, each refused cleanly and by name")
if(cases LESS 150)
  message(FATAL_ERROR "only ${cases} cases ran")
endif()
file(REMOVE_RECURSE ${WORK})
