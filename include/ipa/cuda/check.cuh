// SPDX-License-Identifier: MIT
// Checked CUDA and cuBLAS calls: a failure becomes ipa::cuda_error naming the call, the file,
// the line and the status. Reached only from the consumer's .cu files (never from ipa/ipa.hpp).
#pragma once
#define IPA_CUDA_HEADER 1
#include <string>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "ipa/core/error.hpp"

namespace ipa {

/// A CUDA runtime or cuBLAS failure.
struct cuda_error : error {
  using error::error;
};

namespace cuda_detail {

inline const char* cublas_name(cublasStatus_t s) noexcept {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_(unknown)";
  }
}

inline void check(cudaError_t e, const char* call, const char* file, int line) {
  if (e != cudaSuccess)
    throw cuda_error(std::string(file) + ":" + std::to_string(line) + ": " + call + " failed: " + cudaGetErrorName(e) +
                     " (" + cudaGetErrorString(e) + ")");
}
inline void check(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw cuda_error(std::string(file) + ":" + std::to_string(line) + ": " + call + " failed: " + cublas_name(s));
}

}  // namespace cuda_detail
}  // namespace ipa

/// Throws ipa::cuda_error (call, file, line, status name) unless `call` succeeds; takes a
/// cudaError_t or a cublasStatus_t.
#define IPA_CUDA_CHECK(call) ::ipa::cuda_detail::check((call), #call, __FILE__, __LINE__)
