// SPDX-License-Identifier: MIT
// out = x * w^T for the transformer's projections, batch- and thread-invariant: every output
// element is one FMA chain computed the same way whatever the batch size, the tile it lands in
// or the number of threads. So a prompt decodes to the same bits alone or inside a batch.
#pragma once
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <tuple>
#include <utility>
#include <vector>

#include "ipa/core/huge_pages.hpp"
#include "ipa/core/parallel.hpp"
#include "ipa/core/vector_abi.hpp"

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
        for (std::size_t j = 0; j < k_; ++j)
          data_[(r / panel) * panel * k_ + j * panel + r % panel] = b.w[i * b.ld + j];
  }
  std::size_t rows() const noexcept { return m_; }
  std::size_t cols() const noexcept { return k_; }
  std::size_t panels() const noexcept { return (m_ + panel - 1) / panel; }
  const float* panel_data(std::size_t p) const noexcept { return data_.data() + p * panel * k_; }

 private:
  std::size_t m_ = 0, k_ = 0;
  std::vector<float, detail::huge_page_allocator<float>> data_;
};

namespace detail {

inline v8f broadcast8(float a) noexcept { return v8f{a, a, a, a, a, a, a, a}; }

// The eight lanes of v added in one fixed order; or eight registers, lane by lane in the same
// order (the group tiles keep a row tile's lanes as registers): ggml_vec_dot_f32's
// order.
template <class Eight>
inline auto sum8(const Eight& v) noexcept {
  const auto a = (v[0] + v[4]) + (v[1] + v[5]), b = (v[2] + v[6]) + (v[3] + v[7]);
  return a + b;
}

// The eight lanes of v (or eight registers, lane by lane) added as ggml's hsum_float_8 adds them,
// ((0+4)+(2+6))+((1+5)+(3+7)): the K-quants' vec_dot ends with it.
template <class Eight>
inline auto ggml_hsum8(const Eight& v) noexcept {
  const auto a = (v[0] + v[4]) + (v[2] + v[6]), b = (v[1] + v[5]) + (v[3] + v[7]);
  return a + b;
}

// The 8-wide kernels (AVX2, or SSE pairs): a 16-wide panel is two 8-lane halves per row.

// Weight prefetch distance of the 8-wide kernels, in steps of p (one 64-byte line per panel
// each): 8 KiB ahead, since Intel's hardware streamer stops at 4 KiB pages (measured on the
// project's Xeon VM: 2x at batch 1 on a 98 MB matrix, bench/RESULTS.md).
inline constexpr std::size_t prefetch_steps8 = 128;

// The same for a few rows of a streamed matrix, which is bound by the memory stream alone: none
// on AMD, whose prefetchers keep up without help (Zen 3, batch 1, four panels at once: 1.04-1.09x
// the bytes per second without the prefetches in five runs; 6+ rows, whose tiles compute longer
// per line, still gain from them: 1.2x at batch 16).
inline std::size_t stream_prefetch_steps8() noexcept {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  static const std::size_t steps = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") ? std::size_t{0} : prefetch_steps8;
  }();
  return steps;
#else
  return prefetch_steps8;
#endif
}

// out[v * ldo + u] = in[u * ldi + v] for u, v < 8: three rounds of shuffles (pairs, quads, halves).
inline void transpose8x8(const float* in, std::size_t ldi, float* out, std::size_t ldo) noexcept {
  v8f r[8], t[8], s[8];
  for (std::size_t u = 0; u < 8; ++u) r[u] = load8(in + u * ldi);
  for (int u = 0; u < 8; u += 2) {  // t[u], t[u+1]: rows u and u+1 interleaved (low and high pairs of each half)
    t[u] = __builtin_shufflevector(r[u], r[u + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[u + 1] = __builtin_shufflevector(r[u], r[u + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int u = 0; u < 8; u += 4)  // s[u + c]: columns c and c + 4 of rows u .. u + 3
    for (int h = 0; h < 2; ++h) {
      s[u + 2 * h] = __builtin_shufflevector(t[u + h], t[u + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      s[u + 2 * h + 1] = __builtin_shufflevector(t[u + h], t[u + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int c = 0; c < 4; ++c) {  // column c from rows 0 .. 3 and 4 .. 7
    const v8f lo = __builtin_shufflevector(s[c], s[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    const v8f hi = __builtin_shufflevector(s[c], s[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    std::memcpy(out + std::size_t(c) * ldo, &lo, sizeof lo);
    std::memcpy(out + std::size_t(c + 4) * ldo, &hi, sizeof hi);
  }
}

template <int NP, int NR>
inline void copy_acc8(const v8f (&from)[NP][NR][2], v8f (&to)[NP][NR][2]) noexcept {
  for (int q = 0; q < NP; ++q)
    for (int j = 0; j < NR; ++j) to[q][j][0] = from[q][j][0], to[q][j][1] = from[q][j][1];
}

// Steps [p0, p1) of the reduction for NR rows of x against NP consecutive panels (panel q at
// P + 16kq), accumulated into acc (two 8-lane halves per panel and row): each output adds
// x[j][p] * w[c][p] over p in order, one FMA chain per output, the same chain whatever NP, NR
// or the blocking (batch invariance). x[j][p] is at x[j * ldx + p], or with KMajor (rows packed
// by pack_rows) at x[j + p * ldx].
template <int NP, int NR, bool KMajor = false>
inline void panel_steps8(const float* x, std::size_t ldx, const float* P, std::size_t k, std::size_t p0, std::size_t p1,
                         v8f (&acc_out)[NP][NR][2], std::size_t prefetch) noexcept {
  // a local copy: x and P may alias acc_out (float and vectors of float), so without it an
  // out-of-line copy of this loop stores every accumulator every step. Copied vector by vector:
  // where GCC left this function out of line it made a memcpy of this size a library call (6%
  // of a batch-16 decoding step in that build's profile).
  v8f acc[NP][NR][2];
  copy_acc8(acc_out, acc);
  for (std::size_t p = p0; p < p1; ++p) {
    v8f w[NP][2];
    IPA_UNROLL(4)
    for (int q = 0; q < NP; ++q) {
      if (prefetch) __builtin_prefetch(P + q * 16 * k + (p + prefetch) * 16);
      w[q][0] = load8(P + q * 16 * k + p * 16);
      w[q][1] = load8(P + q * 16 * k + p * 16 + 8);
    }
    IPA_UNROLL(6)
    for (int j = 0; j < NR; ++j) {
      const v8f xb = broadcast8(KMajor ? x[j + p * ldx] : x[j * ldx + p]);
      IPA_UNROLL(4)
      for (int q = 0; q < NP; ++q) {
        acc[q][j][0] += xb * w[q][0];
        acc[q][j][1] += xb * w[q][1];
      }
    }
  }
  copy_acc8(acc, acc_out);
}

// acc to out (row j of panel q at out + j * ldo + 16q); the last panel writes last_width columns.
template <int NP, int NR>
inline void store_tile8(const v8f (&acc)[NP][NR][2], float* out, std::size_t ldo, std::size_t last_width) noexcept {
  for (int q = 0; q < NP; ++q) {
    const std::size_t width = q + 1 == NP ? last_width : 16;
    for (int j = 0; j < NR; ++j) {
      float* o = out + j * ldo + q * 16;
      if (width == 16) {
        std::memcpy(o, &acc[q][j][0], sizeof(v8f));
        std::memcpy(o + 8, &acc[q][j][1], sizeof(v8f));
      } else {
        float tmp[16];
        std::memcpy(tmp, &acc[q][j][0], sizeof(v8f));
        std::memcpy(tmp + 8, &acc[q][j][1], sizeof(v8f));
        std::memcpy(o, tmp, width * sizeof(float));
      }
    }
  }
}

// NR rows against panels [0, np), NP panels at a time (the rest fewer at a time). With one row
// and one panel only two chains are in flight: too few to hide the FMA latency of a cached matrix,
// or to keep enough of a streamed one's lines in flight. Four panels at once read 29.6 GB/s where
// one read 25.4 on 110M-shape matrices at batch 1 (AMD Zen 3, bench/RESULTS.md).
template <int NP, int NR>
inline void panels_tiles8(const float* x, std::size_t ldx, const float* P, std::size_t np, std::size_t k, float* out,
                          std::size_t ldo, std::size_t last_width, std::size_t prefetch) noexcept {
  std::size_t q = 0;
  for (; q + NP <= np; q += NP) {
    v8f acc[NP][NR][2] = {};
    panel_steps8<NP, NR>(x, ldx, P + q * 16 * k, k, 0, k, acc, prefetch);
    store_tile8<NP, NR>(acc, out + q * 16, ldo, q + NP == np ? last_width : 16);
  }
  if constexpr (NP > 1)
    if (q < np) panels_tiles8<NP / 2, NR>(x, ldx, P + q * 16 * k, np - q, k, out + q * 16, ldo, last_width, prefetch);
}

// n < 6 rows against panels [0, np): up to MaxPanels panels at a time, as many as keep the
// accumulators at eight (one row: four panels; two rows: two; three to five rows: one).
template <int MaxPanels>
inline void panels_few_rows8(const float* x, std::size_t ldx, std::size_t n, const float* P, std::size_t np,
                             std::size_t k, float* out, std::size_t ldo, std::size_t last_width,
                             std::size_t prefetch) noexcept {
  constexpr int two = MaxPanels < 2 ? MaxPanels : 2;
  switch (n) {
    case 1: return panels_tiles8<MaxPanels, 1>(x, ldx, P, np, k, out, ldo, last_width, prefetch);
    case 2: return panels_tiles8<two, 2>(x, ldx, P, np, k, out, ldo, last_width, prefetch);
    case 3: return panels_tiles8<1, 3>(x, ldx, P, np, k, out, ldo, last_width, prefetch);
    case 4: return panels_tiles8<1, 4>(x, ldx, P, np, k, out, ldo, last_width, prefetch);
    case 5: return panels_tiles8<1, 5>(x, ldx, P, np, k, out, ldo, last_width, prefetch);
    default: return;
  }
}

// The 8-wide many-row tiles take rows in groups of 18.
inline constexpr std::size_t row_group8 = 18;

// Whether pack_rows lays n rows out k-major, as the 8-wide many-row tiles read them (the AVX-512
// tiles read row-major rows).
constexpr bool packs_k_major([[maybe_unused]] std::size_t n) noexcept {
#if defined(__AVX512F__)
  return false;
#else
  return n >= 6;
#endif
}

#if !defined(__AVX512F__)
// Tiles of NR... rows of x (consecutive, in this order) against one panel. For a streamed matrix
// they take turns over blocks of 32 steps: each block is read from memory by the first tile
// (which prefetches) and from L1 by the others, so the weight stream never waits for a whole
// pass of the later tiles (16 rows as 6 + 6 + 4 in turns: 1.23x three whole passes on the 110M
// shape's matrices, AMD Zen 3, 2 threads). A cached matrix takes whole passes, without
// prefetches (1.15x the turns on stories260K's). A tile of 6 rows is 12 accumulators, 2 weights
// and a broadcast: 15 of the 16 AVX registers. The order of every FMA chain is unchanged.
//
// The prefetch runs 32 KiB ahead of a streamed matrix, and the rows come packed k-major
// (pack_rows: all rows' x[.][p] in one line, one stream instead of one per row). Together
// they ran the 110M shape's products 1.25-1.28x as fast at n = 16 as 8 KiB ahead over row-major
// rows (medians; AMD Zen 3, 2 threads, alternated in one process); either alone 1.05-1.13x.
inline constexpr std::size_t many_rows_prefetch_steps8 = 512;

template <int NR>
struct tile_acc8 {
  v8f acc[1][NR][2] = {};
};

// The first row of each tile of NR... rows.
template <int... NR>
constexpr std::array<std::size_t, sizeof...(NR)> tile_first_rows() noexcept {
  const std::size_t rows[] = {std::size_t(NR)...};
  std::array<std::size_t, sizeof...(NR)> first{};
  for (std::size_t i = 1; i < first.size(); ++i) first[i] = first[i - 1] + rows[i - 1];
  return first;
}

template <bool KMajor, int... NR>
inline void panel_turns8(const float* x, std::size_t ldx, const float* P, std::size_t k, float* out, std::size_t ldo,
                         std::size_t width, bool cached) noexcept {
  const std::size_t block = cached ? k : 32, prefetch = cached ? 0 : many_rows_prefetch_steps8;
  constexpr std::array<std::size_t, sizeof...(NR)> first_row = tile_first_rows<NR...>();
  std::tuple<tile_acc8<NR>...> tiles;
  const auto in_turns = [&]<std::size_t... I>(std::index_sequence<I...>) {
    for (std::size_t p0 = 0; p0 < k; p0 += block) {
      const std::size_t p1 = std::min(k, p0 + block);
      (panel_steps8<1, NR, KMajor>(x + first_row[I] * (KMajor ? 1 : ldx), ldx, P, k, p0, p1, std::get<I>(tiles).acc,
                                   I == 0 ? prefetch : 0),
       ...);
    }
    (store_tile8<1, NR>(std::get<I>(tiles).acc, out + first_row[I] * ldo, ldo, width), ...);
  };
  in_turns(std::index_sequence_for<tile_acc8<NR>...>{});
}

// R rows (1 <= R <= 18) against one panel: 6-row tiles and one smaller tile, in turns.
template <bool KMajor, int R>
inline void panel_rows_in_turns8(const float* x, std::size_t ldx, const float* P, std::size_t k, float* out,
                                 std::size_t ldo, std::size_t width, bool cached) noexcept {
  if constexpr (R <= 6) panel_turns8<KMajor, R>(x, ldx, P, k, out, ldo, width, cached);
  else if constexpr (R <= 12) panel_turns8<KMajor, 6, R - 6>(x, ldx, P, k, out, ldo, width, cached);
  else panel_turns8<KMajor, 6, 6, R - 12>(x, ldx, P, k, out, ldo, width, cached);
}

template <bool KMajor, int... R>
inline void panel_rest_in_turns8(std::size_t rows, const float* x, std::size_t ldx, const float* P, std::size_t k,
                                 float* out, std::size_t ldo, std::size_t width, bool cached,
                                 std::integer_sequence<int, R...>) noexcept {
  ((rows == std::size_t(R) + 1 ? panel_rows_in_turns8<KMajor, R + 1>(x, ldx, P, k, out, ldo, width, cached) : void()),
   ...);
}

// n >= 6 rows against panels [0, np), one panel at a time: groups of 18 rows in turns, then the
// rest. Row-major x (leading dimension ldx), or with KMajor packed by pack_rows (ldx unused).
template <bool KMajor>
inline void panels_many_rows8(const float* x, std::size_t ldx, std::size_t n, const float* P, std::size_t np,
                              std::size_t k, float* out, std::size_t ldo, std::size_t last_width,
                              bool cached) noexcept {
  constexpr std::size_t G = row_group8;
  for (std::size_t q = 0; q < np; ++q) {
    const float* Pq = P + q * 16 * k;
    const std::size_t width = q + 1 == np ? last_width : 16;
    std::size_t i = 0;
    // a packed group of R rows starts at x + i k, its steps R floats apart
    for (; i + G <= n; i += G)
      panel_rows_in_turns8<KMajor, G>(KMajor ? x + i * k : x + i * ldx, KMajor ? G : ldx, Pq, k, out + i * ldo + q * 16,
                                      ldo, width, cached);
    if (i < n)
      panel_rest_in_turns8<KMajor>(n - i, KMajor ? x + i * k : x + i * ldx, KMajor ? n - i : ldx, Pq, k,
                                   out + i * ldo + q * 16, ldo, width, cached,
                                   std::make_integer_sequence<int, int(G) - 1>{});
  }
}
#endif

#if defined(__AVX512F__)
// With 32 vector registers a 16-wide panel is one register, and two panels by eight rows fit
// (16 accumulators + 2 weights; the broadcast folds into the FMA): each x load feeds two FMAs
// and each weight load eight, where one panel by 16 rows fed one and 16. Each lane is the same
// FMA chain as in the 8-wide tile: the same bits.
using v16f = float __attribute__((vector_size(64)));

// Weight prefetch distance of the AVX-512 tiles, in steps of p (one 64-byte line per panel
// each): far ahead for a few rows, where decoding is bound by the memory stream (8 KiB ahead
// doubled batch-1 streaming, as in panel_tile); close for 6+ rows, where the tile computes
// longer per line (2 KiB beat 4-16 KiB on streamed matrices at n = 16).
inline constexpr std::size_t prefetch_steps(std::size_t rows) noexcept { return rows < 6 ? 128 : 32; }

// NR rows of x, rows [p0, p1) of the reduction, against NP consecutive panels (panel q at
// P + q * 16k), accumulating into acc.
template <int NP, int NR>
inline void panel_group_steps(const float* x, std::size_t ldx, const float* P, std::size_t k, std::size_t p0,
                              std::size_t p1, v16f (&acc)[NP][NR], std::size_t prefetch) noexcept {
  for (std::size_t p = p0; p < p1; ++p) {
    v16f w[NP];
    IPA_UNROLL(8)
    for (int q = 0; q < NP; ++q) {
      if (prefetch) __builtin_prefetch(P + q * 16 * k + (p + prefetch) * 16);
      std::memcpy(&w[q], P + q * 16 * k + p * 16, sizeof(v16f));
    }
    IPA_UNROLL(16)
    for (int j = 0; j < NR; ++j) {
      const float xv = x[j * ldx + p];
      IPA_UNROLL(8)
      for (int q = 0; q < NP; ++q) acc[q][j] += xv * w[q];
    }
  }
}

template <int NP, int NR>
inline void store_group(const v16f (&acc)[NP][NR], float* out, std::size_t ldo, std::size_t last_width) noexcept {
  for (int q = 0; q < NP; ++q) {
    const std::size_t width = q + 1 == NP ? last_width : 16;
    for (int j = 0; j < NR; ++j) std::memcpy(out + j * ldo + q * 16, &acc[q][j], width * sizeof(float));
  }
}

// NR rows of x against NP consecutive panels; the last panel writes last_width columns.
template <int NP, int NR>
inline void panel_group_tile(const float* x, std::size_t ldx, const float* P, std::size_t k, float* out,
                             std::size_t ldo, std::size_t last_width) noexcept {
  v16f acc[NP][NR] = {};
  panel_group_steps<NP, NR>(x, ldx, P, k, 0, k, acc, prefetch_steps(NR));
  store_group<NP, NR>(acc, out, ldo, last_width);
}

// 16 rows as two halves of 8 that take turns over blocks of 32 steps: the second half reads the
// block from L1 while the first half's prefetches keep the weight stream from memory going.
// Two whole passes (first half, then second) left memory idle during the second and ran
// 1.15-1.2x slower on 16 streamed 2304 x 768 matrices (n = 16, 2 threads). The order of every
// FMA chain is unchanged.
template <int NP>
inline void panel_group_tile16(const float* x, std::size_t ldx, const float* P, std::size_t k, float* out,
                               std::size_t ldo, std::size_t last_width) noexcept {
  constexpr std::size_t block = 32;
  v16f first[NP][8] = {}, second[NP][8] = {};
  for (std::size_t p0 = 0; p0 < k; p0 += block) {
    const std::size_t p1 = std::min(k, p0 + block);
    panel_group_steps<NP, 8>(x, ldx, P, k, p0, p1, first, prefetch_steps(16));
    panel_group_steps<NP, 8>(x + 8 * ldx, ldx, P, k, p0, p1, second, 0);
  }
  store_group<NP, 8>(first, out, ldo, last_width);
  store_group<NP, 8>(second, out + 8 * ldo, ldo, last_width);
}

template <int NP, int... NR>
inline void panel_group_tail(std::size_t rows, const float* x, std::size_t ldx, const float* P, std::size_t k,
                             float* out, std::size_t ldo, std::size_t last_width,
                             std::integer_sequence<int, NR...>) noexcept {
  ((rows == std::size_t(NR) + 1 ? panel_group_tile<NP, NR + 1>(x, ldx, P, k, out, ldo, last_width) : void()), ...);
}

template <int NP>
inline void panel_group_rows(const float* x, std::size_t ldx, std::size_t n, const float* P, std::size_t k, float* out,
                             std::size_t ldo, std::size_t last_width) noexcept {
  constexpr std::size_t NR = 8;
  std::size_t i = 0;
  for (; i + 2 * NR <= n; i += 2 * NR) panel_group_tile16<NP>(x + i * ldx, ldx, P, k, out + i * ldo, ldo, last_width);
  for (; i + NR <= n; i += NR) panel_group_tile<NP, NR>(x + i * ldx, ldx, P, k, out + i * ldo, ldo, last_width);
  if (i < n)
    panel_group_tail<NP>(n - i, x + i * ldx, ldx, P, k, out + i * ldo, ldo, last_width,
                         std::make_integer_sequence<int, NR - 1>{});
}

// n < 6 rows of a cached matrix against panels [0, np), up to NP panels at a time: such a product
// is bound by the FMA latency (4 cycles, two FMAs a cycle), so it wants eight independent chains,
// n * NP. Same chain per output as every other tile: the same bits.
template <int NP>
inline void panels_few_rows(const float* x, std::size_t ldx, std::size_t n, const float* P, std::size_t np,
                            std::size_t k, float* out, std::size_t ldo, std::size_t last_width) noexcept {
  std::size_t q = 0;
  for (; q + NP <= np; q += NP)
    panel_group_tail<NP>(n, x, ldx, P + q * 16 * k, k, out + q * 16, ldo, q + NP == np ? last_width : 16,
                         std::make_integer_sequence<int, 5>{});
  if constexpr (NP > 1)
    if (q < np) panels_few_rows<NP / 2>(x, ldx, n, P + q * 16 * k, np - q, k, out + q * 16, ldo, last_width);
}

// n rows against panels [0, np) starting at P; `cached`: the matrix fits in L2. pack_rows keeps
// rows row-major in this build, so k_major never holds.
inline void panels_rows(const float* x, std::size_t ldx, std::size_t n, const float* P, std::size_t np, std::size_t k,
                        float* out, std::size_t ldo, std::size_t last_width, bool cached,
                        [[maybe_unused]] bool k_major = false) noexcept {
  // A few rows of a streamed matrix: two 8-wide chains per row and panel, one panel at a time,
  // the path measured at 90%+ of the memory bandwidth on the AVX-512 VM. A cached one is bound by
  // the FMA latency or the L2 instead, so it takes up to 8 / n panels at once for eight
  // independent chains (stories260K's 128 x 64 .. 512 x 64 products at n = 1: two panels at once
  // gave 1.1-2.2x over the 8-wide chains, one thread).
  if (n < 6 && !cached) return panels_few_rows8<1>(x, ldx, n, P, np, k, out, ldo, last_width, prefetch_steps8);
  if (n < 6) {
    if (n == 1) return panels_few_rows<8>(x, ldx, n, P, np, k, out, ldo, last_width);
    if (n <= 3) return panels_few_rows<4>(x, ldx, n, P, np, k, out, ldo, last_width);
    return panels_few_rows<2>(x, ldx, n, P, np, k, out, ldo, last_width);
  }
  for (std::size_t q = 0; q < np; q += 2) {
    const std::size_t w = q + 2 >= np ? last_width : 16;
    if (q + 2 <= np) panel_group_rows<2>(x, ldx, n, P + q * 16 * k, k, out + q * 16, ldo, w);
    else panel_group_rows<1>(x, ldx, n, P + q * 16 * k, k, out + q * 16, ldo, w);
  }
}
#else
// Cached or streamed alike: a few rows take several panels at once, more rows take turns.
// k_major: x was packed by pack_rows (a few rows stay row-major there, with ldx = k).
inline void panels_rows(const float* x, std::size_t ldx, std::size_t n, const float* P, std::size_t np, std::size_t k,
                        float* out, std::size_t ldo, std::size_t last_width, bool cached,
                        bool k_major = false) noexcept {
  if (n < 6)
    return panels_few_rows8<4>(x, ldx, n, P, np, k, out, ldo, last_width, cached ? 0 : stream_prefetch_steps8());
  if (k_major) return panels_many_rows8<true>(x, ldx, n, P, np, k, out, ldo, last_width, cached);
  panels_many_rows8<false>(x, ldx, n, P, np, k, out, ldo, last_width, cached);
}
#endif

inline std::pair<std::size_t, std::size_t> product_panels(float* out, std::size_t ldo, const float* x, std::size_t ldx,
                                                          std::size_t n, const packed_matrix& w, std::size_t p0,
                                                          std::size_t p1, bool k_major) noexcept {
  const std::size_t m = w.rows(), k = w.cols();
  const bool cached = m * k * sizeof(float) <= (std::size_t{256} << 10);
  if (p0 < p1) {
    const std::size_t last_width = std::min(packed_matrix::panel, m - (p1 - 1) * packed_matrix::panel);
    panels_rows(x, ldx, n, w.panel_data(p0), p1 - p0, k, out + p0 * packed_matrix::panel, ldo, last_width, cached,
                k_major);
  }
  return {std::min(m, p0 * packed_matrix::panel), std::min(m, p1 * packed_matrix::panel)};
}
}  // namespace detail

/// Output columns [16 p0, min(16 p1, m)) of out(n, m) = x(n, k) * w(m, k)^T: panels [p0, p1) of
/// w, on the calling thread. Columns written: the caller may add them to a residual stream.
inline std::pair<std::size_t, std::size_t> matmul_panels(float* out, std::size_t ldo, const float* x, std::size_t ldx,
                                                         std::size_t n, const packed_matrix& w, std::size_t p0,
                                                         std::size_t p1) noexcept {
  return detail::product_panels(out, ldo, x, ldx, n, w, p0, p1, false);
}

/// Writes the rows x(n, k) (row-major, leading dimension ldx) to out (n * k floats) as the
/// product's tiles read them, for matmul_packed_panels: a product whose threads each take many
/// panels packs its rows once instead of every tile striding over them. With six or more rows
/// (and 8-wide kernels) groups of 18 rows, each k-major (group g of R rows holds x[18g + j][p]
/// at 18gk + pR + j); otherwise row-major. The values are unchanged: the same bits.
inline void pack_rows(const float* x, std::size_t ldx, std::size_t n, std::size_t k, float* out) noexcept {
  if (!detail::packs_k_major(n)) {
    for (std::size_t i = 0; i < n; ++i) std::copy_n(x + i * ldx, k, out + i * k);
    return;
  }
  constexpr std::size_t G = detail::row_group8;
  for (std::size_t i = 0; i < n; i += G) {
    const std::size_t rows = std::min(G, n - i), rows8 = rows / 8 * 8, k8 = k / 8 * 8;
    const float* xi = x + i * ldx;
    float* group = out + i * k;
    // 8 x 8 blocks through registers (each thread packs before every product; 16 x 2048 floats
    // in cache: 11.4 us, the element loop 15.8), then the last rows and steps one by one
    for (std::size_t p = 0; p < k8; p += 8)
      for (std::size_t j = 0; j < rows8; j += 8)
        detail::transpose8x8(xi + j * ldx + p, ldx, group + p * rows + j, rows);
    for (std::size_t p = 0; p < k; ++p)
      for (std::size_t j = p < k8 ? rows8 : 0; j < rows; ++j) group[p * rows + j] = xi[j * ldx + p];
  }
}

/// matmul_panels over rows packed by pack_rows (xp holds n rows of w.cols()).
inline std::pair<std::size_t, std::size_t> matmul_packed_panels(float* out, std::size_t ldo, const float* xp,
                                                                std::size_t n, const packed_matrix& w, std::size_t p0,
                                                                std::size_t p1) noexcept {
  return detail::product_panels(out, ldo, xp, w.cols(), n, w, p0, p1, detail::packs_k_major(n));
}

/// out(n, m) = x(n, k) * w(m, k)^T with w packed; out and x row-major (leading dims ldo, ldx).
/// Panels are spread over the threads in fixed chunks when the product pays for the fork; every
/// output is one fixed FMA chain, so the result never depends on n, the chunking or the threads.
inline void matmul(float* out, std::size_t ldo, const float* x, std::size_t ldx, std::size_t n,
                   const packed_matrix& w) {
  const std::size_t panels = w.panels();
  const bool worth_threads = n * w.rows() * w.cols() >= (std::size_t{1} << 17);
  // two panels per task when threads share the work; one task for all of them otherwise
  const std::size_t panels_per_chunk = worth_threads ? 2 : std::max<std::size_t>(panels, 1);
  const std::size_t chunks = (panels + panels_per_chunk - 1) / panels_per_chunk;
  parallel_for(
      chunks,
      [&](std::size_t c) {
        const std::size_t p0 = c * panels_per_chunk;
        matmul_panels(out, ldo, x, ldx, n, w, p0, std::min(panels, p0 + panels_per_chunk));
      },
      worth_threads);
}

/// out(n, m) = x(n, k) * w(m, k)^T for a plain row-major w (packs it first; for one-off products).
inline void matmul_nt(float* out, std::size_t ldo, const float* x, std::size_t ldx, std::size_t n, const float* w,
                      std::size_t ldw, std::size_t m, std::size_t k) {
  matmul(out, ldo, x, ldx, n, packed_matrix(w, ldw, m, k));
}

/// The plain reference for matmul_nt (double accumulation), for tests.
inline void matmul_nt_reference(float* out, std::size_t ldo, const float* x, std::size_t ldx, std::size_t n,
                                const float* w, std::size_t ldw, std::size_t m, std::size_t k) noexcept {
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t r = 0; r < m; ++r) {
      double s = 0.0;
      for (std::size_t p = 0; p < k; ++p) s += double(x[i * ldx + p]) * w[r * ldw + p];
      out[i * ldo + r] = static_cast<float>(s);
    }
}

}  // namespace ipa
