# SPDX-License-Identifier: MIT
# Shared by the CLI test scripts: where the model files are, and what a missing one means.
if(DEFINED ENV{IPA_MODEL_DIR})
  set(MODEL_DIR $ENV{IPA_MODEL_DIR})
endif()
if(DEFINED ENV{IPA_GOLDEN_DIR})
  set(GOLDEN_DIR $ENV{IPA_GOLDEN_DIR})
endif()

# ipa_cli_test_needs(FILE): without FILE the calling script stops, saying SKIPPED; under CI=true
# that is a failure. (A macro, so that its return() ends the caller.)
macro(ipa_cli_test_needs file)
  if(NOT EXISTS ${file})
    if("$ENV{CI}" STREQUAL "true")
      message(FATAL_ERROR "missing ${file} (set IPA_MODEL_DIR)")
    endif()
    message("SKIPPED: missing ${file} (set IPA_MODEL_DIR)")
    return()
  endif()
endmacro()
