# SPDX-License-Identifier: MIT
# The optional CUDA backend: IPA_ENABLE_CUDA = AUTO (build it when nvcc is found), ON (fail at
# configure time without nvcc), OFF. Defines IPA_HAVE_CUDA and, when ON, the INTERFACE target
# ipa::cuda (ipa::ipa + the CUDA runtime + cuBLAS) for the consumer's .cu files.
set(IPA_ENABLE_CUDA AUTO CACHE STRING "Build the CUDA backend ipa::cuda and its tests/benches: AUTO, ON or OFF")
set_property(CACHE IPA_ENABLE_CUDA PROPERTY STRINGS AUTO ON OFF)
if(NOT IPA_ENABLE_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "IPA_ENABLE_CUDA must be AUTO, ON or OFF, found '${IPA_ENABLE_CUDA}'")
endif()

set(IPA_HAVE_CUDA OFF)
if(NOT IPA_ENABLE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)  # A100, H100/H200
    endif()
    enable_language(CUDA)
    # CMake 3.25 does not know nvcc's C++20 flag
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION -std=c++20)
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION -std=c++20)
    find_package(CUDAToolkit REQUIRED)
    set(IPA_HAVE_CUDA ON)
    message(STATUS "ipa: CUDA backend on (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
  elseif(IPA_ENABLE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "IPA_ENABLE_CUDA=ON, but no CUDA compiler was found: install the CUDA toolkit, put nvcc "
                        "on PATH or set CMAKE_CUDA_COMPILER, or configure with -DIPA_ENABLE_CUDA=AUTO or OFF")
  else()
    message(STATUS "ipa: no CUDA compiler found; the CUDA backend is not built (IPA_ENABLE_CUDA=AUTO)")
  endif()
endif()

if(IPA_HAVE_CUDA)
  add_library(ipa_cuda INTERFACE)
  add_library(ipa::cuda ALIAS ipa_cuda)
  set_target_properties(ipa_cuda PROPERTIES EXPORT_NAME cuda)
  # CMake 3.25 has no cuda_std_20 feature for nvcc 13: the flag itself
  target_compile_options(ipa_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
  target_link_libraries(ipa_cuda INTERFACE ipa CUDA::cudart CUDA::cublas)
endif()
