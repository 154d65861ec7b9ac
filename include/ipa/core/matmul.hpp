// SPDX-License-Identifier: MIT
// out = x * w^T for the transformer's projections, batch- and thread-invariant: every output
// element is one dot product computed the same way whatever the batch size, the tile it lands in
// or the number of threads. So a prompt decodes to the same bits alone or inside a batch.
#pragma once
#include <cstddef>
#include <cstring>

#include "ipa/core/parallel.hpp"

namespace ipa {
namespace detail {

// Eight floats; GCC/Clang lower it to one AVX register, or two SSE ones without AVX.
using v8f = float __attribute__((vector_size(32)));

inline v8f load8(const float* p) noexcept {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Horizontal sum in one fixed order (part of the batch-invariance contract).
inline float hsum8(v8f v) noexcept { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// MR rows of w against NR rows of x: MR*NR independent dot products of length k.
template <int MR, int NR>
inline void dot_tile(const float* x, std::size_t ldx, const float* w, std::size_t ldw, std::size_t k,
                     float* out, std::size_t ldo) noexcept {
  v8f acc[NR][MR] = {};
  const std::size_t k8 = k - k % 8;
  for (std::size_t p = 0; p < k8; p += 8) {
    v8f wv[MR];
    for (int r = 0; r < MR; ++r) wv[r] = load8(w + r * ldw + p);
    for (int j = 0; j < NR; ++j) {
      const v8f xv = load8(x + j * ldx + p);
      for (int r = 0; r < MR; ++r) acc[j][r] += xv * wv[r];
    }
  }
  for (int j = 0; j < NR; ++j)
    for (int r = 0; r < MR; ++r) {
      float tail = 0.0f;
      for (std::size_t p = k8; p < k; ++p) tail += x[j * ldx + p] * w[r * ldw + p];
      out[j * ldo + r] = hsum8(acc[j][r]) + tail;
    }
}

template <int MR>
inline void dot_rows(const float* x, std::size_t ldx, std::size_t n, const float* w, std::size_t ldw,
                     std::size_t k, float* out, std::size_t ldo) noexcept {
  constexpr int NR = MR == 1 ? 4 : 3;  // keep accumulators + operands within 16 AVX registers
  std::size_t i = 0;
  for (; i + NR <= n; i += NR) dot_tile<MR, NR>(x + i * ldx, ldx, w, ldw, k, out + i * ldo, ldo);
  for (; i < n; ++i) dot_tile<MR, 1>(x + i * ldx, ldx, w, ldw, k, out + i * ldo, ldo);
}

}  // namespace detail

/// out(n, m) = x(n, k) * w(m, k)^T, all row-major with leading dimensions ldx, ldw, ldo.
/// Splits the m rows of w into fixed chunks spread over the threads (when the product is big
/// enough to pay for the fork); the result never depends on n, the chunking or the threads.
inline void matmul_nt(float* out, std::size_t ldo, const float* x, std::size_t ldx, std::size_t n,
                      const float* w, std::size_t ldw, std::size_t m, std::size_t k) {
  constexpr std::size_t chunk_rows = 32;
  const std::size_t chunks = (m + chunk_rows - 1) / chunk_rows;
  const bool worth_threads = n * m * k >= (std::size_t{1} << 17);
  parallel_for(
      chunks,
      [&](std::size_t c) {
        const std::size_t r0 = c * chunk_rows;
        const std::size_t r1 = r0 + chunk_rows < m ? r0 + chunk_rows : m;
        std::size_t r = r0;
        for (; r + 4 <= r1; r += 4)
          detail::dot_rows<4>(x, ldx, n, w + r * ldw, ldw, k, out + r, ldo);
        for (; r < r1; ++r) detail::dot_rows<1>(x, ldx, n, w + r * ldw, ldw, k, out + r, ldo);
      },
      worth_threads);
}

/// The plain reference for matmul_nt (double accumulation), for tests.
inline void matmul_nt_reference(float* out, std::size_t ldo, const float* x, std::size_t ldx,
                                std::size_t n, const float* w, std::size_t ldw, std::size_t m,
                                std::size_t k) noexcept {
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t r = 0; r < m; ++r) {
      double s = 0.0;
      for (std::size_t p = 0; p < k; ++p) s += double(x[i * ldx + p]) * w[r * ldw + p];
      out[i * ldo + r] = static_cast<float>(s);
    }
}

}  // namespace ipa
