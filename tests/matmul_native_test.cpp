// SPDX-License-Identifier: MIT
// matmul built for this CPU (-march=native, as the benches build it: the 2-panel x 8-row AVX-512
// tile where the CPU has it; otherwise the 8-wide tiles, several panels at once for a few rows and
// 6-row tiles taking turns over 32-step blocks for more, over row-major rows or rows packed
// k-major by pack_rows), against the plain reference and against itself: every output is the same FMA chain whatever
// the batch size, so a row alone and inside any batch gives the same bits. No Eigen in this program (g++ 12 + AVX-512 +
// Eigen + -Werror is a known false-warning trap).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <ipa/core/matmul.hpp>

TEST_CASE("matmul (native build): reference, FMA chain, batch invariance") {
#if defined(__AVX512F__)
  std::puts("matmul_native_test: AVX-512 tile (2 panels x 8 rows)");
#else
  std::puts("matmul_native_test: this CPU/compiler has no AVX-512: the 8-wide tiles are tested");
#endif
  std::mt19937 gen(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // 20: a panel pair whose second panel is partial; 300 and 1100 panels that leave 3 and 1 after
  // groups of four; 1100 x 67 is over 256 KiB, the streamed path (the smaller ones take the
  // cached path). k = 67: two 32-step blocks and a partial one. n up to 40: 18-row groups, every
  // tail tile.
  for (const std::size_t m : {1, 16, 20, 37, 300, 1100}) {
    const std::size_t k = 67, n_max = 40;
    std::vector<float> w(m * k), x(n_max * k);
    for (auto& v : w) v = normal(gen);
    for (auto& v : x) v = normal(gen);
    const ipa::packed_matrix packed(w.data(), k, m, k);
    std::vector<float> all(n_max * m), ref(n_max * m);
    ipa::matmul(all.data(), m, x.data(), k, n_max, packed);
    ipa::matmul_nt_reference(ref.data(), m, x.data(), k, n_max, w.data(), k, m, k);
    for (std::size_t i = 0; i < all.size(); ++i)
      REQUIRE(std::fabs(all[i] - ref[i]) <= 1e-4f * (1.0f + std::fabs(ref[i])));
#if defined(__FMA__) && defined(__OPTIMIZE__)
    // one fused multiply-add per term, in order: exactly this chain (GCC forms the FMAs when
    // optimising; an -O0 build multiplies and adds, which the reference check above covers)
    for (std::size_t i = 0; i < n_max; ++i)
      for (std::size_t r = 0; r < m; ++r) {
        float acc = 0.0f;
        for (std::size_t p = 0; p < k; ++p) acc = std::fma(x[i * k + p], w[r * k + p], acc);
        REQUIRE(all[i * m + r] == acc);
      }
#endif
    // every batch size (every tail tile) gives each row the same bits, also from rows packed by
    // pack_rows (k-major groups of 18 for 6+ rows), over panel ranges split at an odd panel
    std::vector<float> xp(n_max * k);
    for (std::size_t n = 1; n <= n_max; ++n) {
      std::vector<float> part(n * m), from_packed(n * m, -1.0f);
      ipa::matmul(part.data(), m, x.data(), k, n, packed);
      for (std::size_t i = 0; i < n * m; ++i) REQUIRE(part[i] == all[i]);
      ipa::pack_rows(x.data(), k, n, k, xp.data());
      constexpr std::size_t G = ipa::detail::row_group8;  // 18
      if (ipa::detail::packs_k_major(n))  // the layout itself: group g of R rows holds x[Gg + j][p] at Ggk + pR + j
        for (std::size_t g = 0; g * G < n; ++g) {
          const std::size_t rows = std::min(G, n - g * G);
          for (std::size_t p = 0; p < k; ++p)
            for (std::size_t j = 0; j < rows; ++j) REQUIRE(xp[g * G * k + p * rows + j] == x[(g * G + j) * k + p]);
        }
      else  // row-major: a copy (a few rows, or the AVX-512 tiles)
        for (std::size_t i = 0; i < n * k; ++i) REQUIRE(xp[i] == x[i]);
      const std::size_t split = packed.panels() / 2 | 1;
      ipa::matmul_packed_panels(from_packed.data(), m, xp.data(), n, packed, 0, std::min(split, packed.panels()));
      ipa::matmul_packed_panels(from_packed.data(), m, xp.data(), n, packed, std::min(split, packed.panels()),
                                packed.panels());
      for (std::size_t i = 0; i < n * m; ++i) REQUIRE(from_packed[i] == all[i]);
    }
  }
}
