# SPDX-License-Identifier: MIT
# Private settings for ipa's own tests, examples and benches (never put on ipa::ipa itself).
add_library(ipa_warnings INTERFACE)
target_compile_options(ipa_warnings INTERFACE
  $<$<CXX_COMPILER_ID:GNU,Clang>:-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion>)
if(IPA_WERROR)
  target_compile_options(ipa_warnings INTERFACE $<$<CXX_COMPILER_ID:GNU,Clang>:-Werror>)
endif()
if(IPA_ARCH)
  target_compile_options(ipa_warnings INTERFACE -march=${IPA_ARCH})
endif()
if(IPA_SANITIZE)
  target_compile_options(ipa_warnings INTERFACE -fsanitize=address,undefined -fno-omit-frame-pointer
                                                -fno-sanitize-recover=all)
  target_link_options(ipa_warnings INTERFACE -fsanitize=address,undefined)
endif()
