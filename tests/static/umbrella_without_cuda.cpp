// SPDX-License-Identifier: MIT
// The CPU umbrella never reaches CUDA: this file fails to compile if ipa/ipa.hpp pulls in any
// ipa/cuda/ header, the CUDA runtime or cuBLAS.
#include <ipa/ipa.hpp>

#if defined(IPA_CUDA_HEADER) || defined(__CUDA_RUNTIME_H__) || defined(CUBLAS_API_H_) || defined(__CUDACC__)
#error "ipa/ipa.hpp must not include CUDA headers"
#endif
