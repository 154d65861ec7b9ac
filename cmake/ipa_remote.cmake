# SPDX-License-Identifier: MIT
# The optional remote base (a base model behind an inference server): IPA_ENABLE_REMOTE = AUTO
# (build it when libcurl's development files are found), ON (fail at configure time without
# them), OFF. Defines IPA_HAVE_REMOTE and, when ON, the INTERFACE target ipa::remote (ipa::ipa +
# libcurl + threads) for users of <ipa/remote/remote_base.hpp>; ipa::ipa alone never needs curl.
set(IPA_ENABLE_REMOTE AUTO CACHE STRING "Build the remote base ipa::remote (libcurl): AUTO, ON or OFF")
set_property(CACHE IPA_ENABLE_REMOTE PROPERTY STRINGS AUTO ON OFF)
if(NOT IPA_ENABLE_REMOTE MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "IPA_ENABLE_REMOTE must be AUTO, ON or OFF, found '${IPA_ENABLE_REMOTE}'")
endif()

set(IPA_HAVE_REMOTE OFF)
if(NOT IPA_ENABLE_REMOTE STREQUAL "OFF")
  if(IPA_ENABLE_REMOTE STREQUAL "ON")
    find_package(CURL 7.68 REQUIRED)  # curl_multi_wakeup
  else()
    find_package(CURL 7.68)
  endif()
  find_package(Threads REQUIRED)
  if(CURL_FOUND)
    set(IPA_HAVE_REMOTE ON)
    add_library(ipa_remote INTERFACE)
    add_library(ipa::remote ALIAS ipa_remote)
    set_target_properties(ipa_remote PROPERTIES EXPORT_NAME remote)
    target_link_libraries(ipa_remote INTERFACE ipa CURL::libcurl Threads::Threads)
    message(STATUS "ipa: remote base on (libcurl ${CURL_VERSION_STRING})")
  elseif("$ENV{CI}" STREQUAL "true" AND PROJECT_IS_TOP_LEVEL)
    message(FATAL_ERROR "ipa: CI=true, but libcurl was not found: the remote base and its tests would be skipped "
                        "(install libcurl4-openssl-dev)")
  else()
    message(STATUS "ipa: libcurl not found (Debian: libcurl4-openssl-dev); the remote base is not built")
  endif()
endif()
