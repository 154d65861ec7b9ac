// SPDX-License-Identifier: MIT
// out = x * w^T for the transformer's projections, batch- and thread-invariant: every output
// element is one FMA chain computed the same way whatever the batch size, the tile it lands in
// or the number of threads. So a prompt decodes to the same bits alone or inside a batch.
#pragma once
#include <cstddef>
#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <vector>

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

}  // namespace detail

/// A weight matrix w(m, k) repacked for matmul: panels of 16 output rows, each stored k-major
/// (panel p holds w[16p + c][j] at [p][j][c]; rows past m are zero). One panel is one
/// contiguous stream, which is what batch-1 decoding (memory-bound) wants.
class packed_matrix {
 public:
  static constexpr std::size_t panel = 16;
  /// Rows [0, m) of a row-major matrix with leading dimension ld.
  struct block {
    const float* w;
    std::size_t ld, m;
  };
  packed_matrix() = default;
  packed_matrix(const float* w, std::size_t ldw, std::size_t m, std::size_t k) : packed_matrix({{w, ldw, m}}, k) {}
  /// Stacks the blocks' rows into one matrix: fuses projections that read the same input
  /// (Q|K|V, W1|W3) into one product.
  packed_matrix(std::initializer_list<block> blocks, std::size_t k) : k_(k) {
    for (const block& b : blocks) m_ += b.m;
    data_.assign(panels() * panel * k_, 0.0f);
    std::size_t r = 0;
    for (const block& b : blocks)
      for (std::size_t i = 0; i < b.m; ++i, ++r)
        for (std::size_t j = 0; j < k_; ++j) data_[(r / panel) * panel * k_ + j * panel + r % panel] = b.w[i * b.ld + j];
  }
  std::size_t rows() const noexcept { return m_; }
  std::size_t cols() const noexcept { return k_; }
  std::size_t panels() const noexcept { return (m_ + panel - 1) / panel; }
  const float* panel_data(std::size_t p) const noexcept { return data_.data() + p * panel * k_; }

 private:
  std::size_t m_ = 0, k_ = 0;
  std::vector<float> data_;
};

namespace detail {

inline v8f broadcast8(float a) noexcept { return v8f{a, a, a, a, a, a, a, a}; }

// NR rows of x against one 16-wide panel: each output accumulates x[j][p] * w[c][p] over p in
// order, one FMA chain per output, the same chain whatever NR is (batch invariance).
template <int NR>
inline void panel_tile(const float* x, std::size_t ldx, const float* P, std::size_t k, float* out,
                       std::size_t ldo, std::size_t width) noexcept {
  v8f acc[NR][2] = {};
  for (std::size_t p = 0; p < k; ++p) {
    // 8 KiB ahead: the hardware streamer stops at 4 KiB pages (measured: 2x at batch 1 on
    // a 98 MB matrix, bench/RESULTS.md)
    __builtin_prefetch(P + (p + 128) * 16);
    const v8f w0 = load8(P + p * 16), w1 = load8(P + p * 16 + 8);
    for (int j = 0; j < NR; ++j) {
      const v8f xb = broadcast8(x[j * ldx + p]);
      acc[j][0] += xb * w0;
      acc[j][1] += xb * w1;
    }
  }
  for (int j = 0; j < NR; ++j) {
    if (width == 16) {
      std::memcpy(out + j * ldo, &acc[j][0], sizeof(v8f));
      std::memcpy(out + j * ldo + 8, &acc[j][1], sizeof(v8f));
    } else {
      float tmp[16];
      std::memcpy(tmp, &acc[j][0], sizeof(v8f));
      std::memcpy(tmp + 8, &acc[j][1], sizeof(v8f));
      std::memcpy(out + j * ldo, tmp, width * sizeof(float));
    }
  }
}

// NR = 6: 12 accumulators + 2 weights + 1 broadcast = 15 AVX registers
inline void panel_rows8(const float* x, std::size_t ldx, std::size_t n, const float* P, std::size_t k, float* out,
                        std::size_t ldo, std::size_t width) noexcept {
  constexpr std::size_t NR = 6;
  std::size_t i = 0;
  for (; i + NR <= n; i += NR) panel_tile<NR>(x + i * ldx, ldx, P, k, out + i * ldo, ldo, width);
  const float* xr = x + i * ldx;
  float* o = out + i * ldo;
  switch (n - i) {
    case 5: panel_tile<5>(xr, ldx, P, k, o, ldo, width); break;
    case 4: panel_tile<4>(xr, ldx, P, k, o, ldo, width); break;
    case 3: panel_tile<3>(xr, ldx, P, k, o, ldo, width); break;
    case 2: panel_tile<2>(xr, ldx, P, k, o, ldo, width); break;
    case 1: panel_tile<1>(xr, ldx, P, k, o, ldo, width); break;
    default: break;
  }
}

#if defined(__AVX512F__)
// With 32 vector registers a whole 16-wide panel is one register: up to 16 rows share each load,
// so a batch of 16 reads every panel once (16 accumulators + 1 weight; the broadcast folds into
// the FMA). Each lane is the same FMA chain as in the 8-wide tile: the same bits.
using v16f = float __attribute__((vector_size(64)));

template <int NR>
inline void panel_tile16(const float* x, std::size_t ldx, const float* P, std::size_t k, float* out,
                         std::size_t ldo, std::size_t width) noexcept {
  v16f acc[NR] = {};
  for (std::size_t p = 0; p < k; ++p) {
    __builtin_prefetch(P + (p + 128) * 16);  // 8 KiB ahead, as panel_tile
    v16f w;
    std::memcpy(&w, P + p * 16, sizeof w);
    for (int j = 0; j < NR; ++j) acc[j] += x[j * ldx + p] * w;
  }
  for (int j = 0; j < NR; ++j) std::memcpy(out + j * ldo, &acc[j], width * sizeof(float));
}

template <int... NR>
inline void panel_tail16(std::size_t rows, const float* x, std::size_t ldx, const float* P, std::size_t k, float* out,
                         std::size_t ldo, std::size_t width, std::integer_sequence<int, NR...>) noexcept {
  ((rows == std::size_t(NR) + 1 ? panel_tile16<NR + 1>(x, ldx, P, k, out, ldo, width) : void()), ...);
}

inline void panel_rows(const float* x, std::size_t ldx, std::size_t n, const float* P, std::size_t k, float* out,
                       std::size_t ldo, std::size_t width) noexcept {
  constexpr std::size_t NR = 16;
  // a few rows: two 8-wide chains per row keep more FMAs in flight than one 16-wide chain
  if (n < 6) return panel_rows8(x, ldx, n, P, k, out, ldo, width);
  std::size_t i = 0;
  for (; i + NR <= n; i += NR) panel_tile16<NR>(x + i * ldx, ldx, P, k, out + i * ldo, ldo, width);
  if (i < n) panel_tail16(n - i, x + i * ldx, ldx, P, k, out + i * ldo, ldo, width, std::make_integer_sequence<int, NR - 1>{});
}
#else
inline void panel_rows(const float* x, std::size_t ldx, std::size_t n, const float* P, std::size_t k, float* out,
                       std::size_t ldo, std::size_t width) noexcept {
  panel_rows8(x, ldx, n, P, k, out, ldo, width);
}
#endif

}  // namespace detail

/// out(n, m) = x(n, k) * w(m, k)^T with w packed; out and x row-major (leading dims ldo, ldx).
/// Panels are spread over the threads in fixed chunks when the product pays for the fork; every
/// output is one fixed FMA chain, so the result never depends on n, the chunking or the threads.
inline void matmul(float* out, std::size_t ldo, const float* x, std::size_t ldx, std::size_t n,
                   const packed_matrix& w) {
  const std::size_t m = w.rows(), k = w.cols(), panels = w.panels();
  constexpr std::size_t panels_per_chunk = 2;
  const std::size_t chunks = (panels + panels_per_chunk - 1) / panels_per_chunk;
  const bool worth_threads = n * m * k >= (std::size_t{1} << 17);
  parallel_for(
      chunks,
      [&](std::size_t c) {
        const std::size_t p1 = std::min(panels, (c + 1) * panels_per_chunk);
        for (std::size_t p = c * panels_per_chunk; p < p1; ++p) {
          const std::size_t width = std::min(packed_matrix::panel, m - p * packed_matrix::panel);
          detail::panel_rows(x, ldx, n, w.panel_data(p), k, out + p * packed_matrix::panel, ldo, width);
        }
      },
      worth_threads);
}

/// out(n, m) = x(n, k) * w(m, k)^T for a plain row-major w (packs it first; for one-off products).
inline void matmul_nt(float* out, std::size_t ldo, const float* x, std::size_t ldx, std::size_t n,
                      const float* w, std::size_t ldw, std::size_t m, std::size_t k) {
  matmul(out, ldo, x, ldx, n, packed_matrix(w, ldw, m, k));
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
