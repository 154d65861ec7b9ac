// SPDX-License-Identifier: MIT
// The Llama model against the golden logits of llama2.c's model.py, plus kernel references.
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <ipa/core/bf16.hpp>
#include <ipa/core/math.hpp>
#include <ipa/core/matmul.hpp>
#include <ipa/core/parallel.hpp>
#include <ipa/core/rng.hpp>
#include <ipa/io/llama2c.hpp>
#include <ipa/io/npy.hpp>
#include <ipa/model/llama.hpp>

#include "ggml_reference.hpp"
#include "test_data.hpp"

using ipa_test::ggml_expf;

TEST_CASE("matmul_nt matches the double-precision reference for every tile remainder") {
  ipa::xoshiro256 rng(7);
  for (std::size_t n : {1u, 2u, 3u, 4u, 5u, 7u, 16u})
    for (std::size_t m : {1u, 3u, 4u, 33u, 70u})
      for (std::size_t k : {1u, 8u, 13u, 64u, 100u}) {
        std::vector<float> x(n * k), w(m * k), out(n * m), ref(n * m);
        for (auto& v : x) v = float(ipa::uniform01(rng) - 0.5);
        for (auto& v : w) v = float(ipa::uniform01(rng) - 0.5);
        ipa::matmul_nt(out.data(), m, x.data(), k, n, w.data(), k, m, k);
        ipa::matmul_nt_reference(ref.data(), m, x.data(), k, n, w.data(), k, m, k);
        for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == doctest::Approx(ref[i]).epsilon(1e-5));
        // batch invariance: row i alone gives the same bits as inside the batch
        std::vector<float> one(m);
        ipa::matmul_nt(one.data(), m, x.data() + (n - 1) * k, k, 1, w.data(), k, m, k);
        for (std::size_t r = 0; r < m; ++r) REQUIRE(one[r] == out[(n - 1) * m + r]);
      }
}

TEST_CASE("tree_sum8x8 sums eight vectors like tree_sum8, bit for bit") {
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> u(-1e3f, 1e3f);
  for (int trial = 0; trial < 200; ++trial) {
    ipa::detail::v8f a[8];
    for (auto& v : a)
      for (int l = 0; l < 8; ++l) v[l] = u(gen) * (l % 3 == 0 ? 1e-3f : 1.0f);  // mixed magnitudes: rounding shows
    const ipa::detail::v8f sums = ipa::detail::tree_sum8x8(a);
    for (int i = 0; i < 8; ++i) REQUIRE(sums[i] == ipa::detail::tree_sum8(a[i]));
  }
}

TEST_CASE("silu_mul (vectorised SwiGLU gate) matches the scalar formula within a few ulp") {
  std::mt19937 gen(9);
  std::uniform_real_distribution<float> u(-30.0f, 30.0f);
  for (const std::size_t n : {1u, 7u, 8u, 172u, 2048u}) {  // the vector body and the scalar tail
    std::vector<float> gate(n), up(n), out(n);
    for (auto& v : gate) v = u(gen);
    for (auto& v : up) v = u(gen) / 30.0f;
    if (n >= 8) gate[3] = -100.0f;  // exp(100) overflows float: silu must still give -0, not NaN
    ipa::silu_mul(gate, up, out);
    for (std::size_t i = 0; i < n; ++i) {
      const double ref = double(gate[i]) / (1.0 + std::exp(-double(gate[i]))) * up[i];
      REQUIRE(std::isfinite(out[i]));
      REQUIRE(std::fabs(out[i] - ref) <= 4e-7 * (1.0 + std::fabs(ref)));
    }
  }
}

TEST_CASE("exp8 is llama.cpp's expf (ggml_v_expf) to the bit, within 2 ulp of exp") {
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> wide(-110.0f, 90.0f);
  std::normal_distribution<float> narrow(0.0f, 4.0f);
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           1.0f,
                           -1.0f,
                           88.0f,
                           88.5f,
                           -87.0f,
                           -100.0f,
                           -104.0f,
                           -200.0f,
                           -std::numeric_limits<float>::infinity()};
  for (int i = 0; i < 200000; ++i) xs.push_back(i % 2 ? wide(gen) : narrow(gen));
  while (xs.size() % 8) xs.push_back(0.5f);
  int mismatches = 0;
  for (std::size_t i = 0; i < xs.size(); i += 8) {
    ipa::detail::v8f_math v;
    std::memcpy(&v, xs.data() + i, sizeof v);
    const ipa::detail::v8f_math e = ipa::detail::exp8(v);
    for (int l = 0; l < 8; ++l) {
      const float x = xs[i + std::size_t(l)], want = ggml_expf(x);
      mismatches += std::memcmp(&want, &e[l], sizeof want) != 0;
      const double exact = std::exp(double(x));
      if (exact > 1e-37 && exact < 1e38)
        CHECK(std::fabs(e[l] - exact) <=
              2.0 * (std::nextafter(float(exact), std::numeric_limits<float>::infinity()) - float(exact)));
    }
  }
#ifdef __OPTIMIZE__
  CHECK(mismatches == 0);  // (an unoptimised build rounds a * b + c in two steps, not as one FMA)
#endif
}

TEST_CASE("thread_limit caps the threads of the regions this thread starts, and restores them") {
  const int all = ipa::max_threads();
  {
    const ipa::thread_limit one(1);
    CHECK(ipa::max_threads() == 1);
    CHECK(ipa::team_threads(std::size_t{1} << 30) == 1);
  }
  CHECK(ipa::max_threads() == all);
}

TEST_CASE("a team's stages see each other's writes, and its shares cover every item once") {
  for (const int threads : {1, 2, 3}) {
    constexpr std::size_t items = 37, stages = 200;
    std::vector<int> value(items, -1);
    std::atomic<int> wrong{0}, covered{0};
    ipa::run_team(threads, [&](const ipa::team& t) noexcept {
      const auto [first, last] = t.share(items);
      covered += int(last - first);
      for (std::size_t stage = 0; stage < stages; ++stage) {
        for (std::size_t i = first; i < last; ++i) value[i] = int(stage);
        t.sync();  // every item now holds this stage
        for (std::size_t i = 0; i < items; ++i) wrong += value[i] != int(stage);
        t.sync();  // nobody writes the next stage before everyone has read this one
      }
    });
    CHECK(covered == int(items));
    CHECK(wrong == 0);
  }
}

TEST_CASE("a team's chunks cover every item once, in every call, whichever thread takes them") {
  for (const int threads : {1, 2, 3}) {
    for (const std::size_t chunk : {std::size_t(1), std::size_t(4), std::size_t(50)}) {
      constexpr std::size_t items = 37, calls = 300;
      std::vector<std::atomic<int>> taken(items);
      std::atomic<int> wrong{0}, bad_bounds{0};
      ipa::run_team(threads, [&](const ipa::team& t) noexcept {
        for (std::size_t call = 0; call < calls; ++call) {
          // calls of different sizes, so that a miscounted ticket shows up as a missed or doubled chunk
          const std::size_t n = items - call % 5;
          t.for_each_chunk(n, chunk, [&](std::size_t first, std::size_t last) {
            if (first % chunk != 0 || last > n || last <= first || (last != n && last - first != chunk)) ++bad_bounds;
            for (std::size_t i = first; i < last; ++i) ++taken[i];
          });
          t.sync();
          if (t.rank() == 0) {
            for (std::size_t i = 0; i < items; ++i) {
              wrong += taken[i] != (i < n ? 1 : 0);
              taken[i] = 0;
            }
          }
          t.sync();
        }
      });
      CHECK(bad_bounds == 0);
      CHECK(wrong == 0);
    }
  }
}

TEST_CASE("teams count as contended after repeated long barrier waits, not after one") {
  auto& stalls = ipa::detail::stalls();
  auto forget = [&] {
    stalls.contended_at = std::numeric_limits<std::int64_t>::min() / 2;
    stalls.window_start = 0;
    stalls.in_window = 0;
  };
  forget();
  const std::int64_t now = ipa::detail::steady_ns();
  stalls.record(now);  // one long wait: an interrupt, say
  CHECK_FALSE(ipa::teams_contended());
  for (int i = 1; i < 4; ++i) stalls.record(now + i);
  CHECK(ipa::teams_contended());
  forget();  // the other tests run with teams again
  CHECK_FALSE(ipa::teams_contended());
}

TEST_CASE("stories260K logits match llama2.c model.py at every golden position") {
  const std::string golden = ipa_test::golden_dir() + "/llama_stories260K";
  if (!ipa_test::have(ipa_test::model_path()) || !ipa_test::have(golden + "/logits_f64.npy")) return;
  const ipa::llama_model model(ipa::load_llama2c(ipa_test::model_path()));
  const auto tokens = ipa::load_npy<ipa::token_id>(golden + "/tokens.npy");
  const auto expected = ipa::load_npy<double>(golden + "/logits_f64.npy");
  const std::size_t T = tokens.size(), V = model.vocab_size();
  REQUIRE(expected.shape()[0] == T);
  REQUIRE(expected.shape()[1] == V);

  SUBCASE("one forward over the whole sequence") {
    auto state = model.new_state(1);
    std::vector<int> rows(T, 0);
    std::vector<std::size_t> items(T);
    for (std::size_t i = 0; i < T; ++i) items[i] = i;
    std::vector<float> logits(T * V);
    model.forward(state, rows, std::span(tokens.data(), T), items, logits);
    double worst = 0;
    for (std::size_t i = 0; i < T * V; ++i) worst = std::max(worst, std::abs(logits[i] - expected.data()[i]));
    MESSAGE("max |logit - golden| = " << worst);
    CHECK(worst < 1e-4);
  }
  SUBCASE("token by token through the KV cache, bit-identical to the one-shot forward") {
    auto full = model.new_state(1);
    std::vector<int> rows(T, 0);
    std::vector<std::size_t> items(T);
    for (std::size_t i = 0; i < T; ++i) items[i] = i;
    std::vector<float> all(T * V);
    model.forward(full, rows, std::span(tokens.data(), T), items, all);
    auto inc = model.new_state(1);
    std::vector<float> b(V);
    double worst = 0;
    std::size_t differing = 0;
    for (std::size_t t = 0; t < T; ++t) {
      const int row = 0;
      const ipa::token_id tok = tokens.data()[t];
      model.step(inc, std::span(&row, 1), std::span(&tok, 1), b);
      for (std::size_t v = 0; v < V; ++v) {
        worst = std::max(worst, std::abs(b[v] - expected.data()[t * V + v]));
        differing += b[v] != all[t * V + v];
      }
    }
    CHECK(worst < 1e-4);
    CHECK(differing == 0);
  }
}
