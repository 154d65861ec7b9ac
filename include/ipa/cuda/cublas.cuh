// SPDX-License-Identifier: MIT
// cuBLAS for ipa's row-major projections: out(n, m) = x(n, k) w(m, k)^T, the GPU twin of
// ipa::matmul_nt (core/matmul.hpp).
#pragma once
#include "ipa/cuda/check.cuh"

namespace ipa::cuda {

/// An owned cuBLAS handle bound to a stream.
class cublas {
 public:
  explicit cublas(cudaStream_t s = nullptr) {
    IPA_CUDA_CHECK(cublasCreate(&h_));
    IPA_CUDA_CHECK(cublasSetStream(h_, s));
  }
  cublas(const cublas&) = delete;
  cublas& operator=(const cublas&) = delete;
  ~cublas() {
    if (h_) (void)cublasDestroy(h_);
  }
  cublasHandle_t get() const noexcept { return h_; }

  /// out(n, m) = x(n, k) * w(m, k)^T, all row-major on the device. Row-major (n, m) is
  /// column-major (m, n): out^T = w x^T, i.e. one SGEMM with w transposed.
  void matmul_nt(float* out, const float* x, const float* w, int n, int m, int k) const {
    if (n <= 0 || m <= 0 || k <= 0)
      throw shape_error("cuda::cublas::matmul_nt: sizes must be positive, found n=" + std::to_string(n) +
                        " m=" + std::to_string(m) + " k=" + std::to_string(k));
    const float one = 1.0f, zero = 0.0f;
    IPA_CUDA_CHECK(cublasSgemm(h_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, w, k, x, k, &zero, out, m));
  }

 private:
  cublasHandle_t h_ = nullptr;
};

}  // namespace ipa::cuda
