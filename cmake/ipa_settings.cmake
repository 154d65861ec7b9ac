# SPDX-License-Identifier: MIT
# Private settings for ipa's own tests, examples and benches (never put on ipa::ipa itself).
add_library(ipa_warnings INTERFACE)
target_compile_options(ipa_warnings INTERFACE
  $<$<CXX_COMPILER_ID:GNU,Clang>:-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion>)
if(IPA_WERROR)
  target_compile_options(ipa_warnings INTERFACE $<$<CXX_COMPILER_ID:GNU,Clang>:-Werror>)
endif()
# -march=IPA_ARCH, unless the target asks for its own through the IPA_MARCH property (benches)
set(ipa_own_march "$<TARGET_PROPERTY:IPA_MARCH>")
if(IPA_ARCH)
  target_compile_options(ipa_warnings INTERFACE
    "$<IF:$<BOOL:${ipa_own_march}>,-march=${ipa_own_march},-march=${IPA_ARCH}>")
else()
  target_compile_options(ipa_warnings INTERFACE "$<$<BOOL:${ipa_own_march}>:-march=${ipa_own_march}>")
endif()
if(IPA_SANITIZE)
  target_compile_options(ipa_warnings INTERFACE -fsanitize=address,undefined -fno-omit-frame-pointer
                                                -fno-sanitize-recover=all)
  target_link_options(ipa_warnings INTERFACE -fsanitize=address,undefined)
endif()
