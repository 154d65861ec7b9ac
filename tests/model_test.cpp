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

#include "test_data.hpp"

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

namespace {

// llama.cpp's arithmetic, written out one scalar operation at a time from ggml's AVX2 code (the
// llama-server of ../shared/peers): the references for exp8 and attention below.
float ggml_expf(float x) {
  auto bits = [](float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  auto from = [](std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  const float r = 0x1.8p23f, z = std::fma(x, 0x1.715476p+0f, r), n = z - r;
  const float b = std::fma(-n, 0x1.7f7d1cp-20f, std::fma(-n, 0x1.62e4p-1f, x));
  const std::uint32_t e = bits(z) << 23;
  const float k = from(e + bits(1.0f)), u = b * b;
  const float j =
      std::fma(std::fma(std::fma(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, std::fma(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
               0x1.ffffecp-1f * b);
  if (!(std::fabs(n) > 126.0f)) return std::fma(k, j, k);
  const std::uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
  const float s1 = from(g + 0x7f000000u), s2 = from(e - g);
  return std::fabs(n) > 192.0f ? s1 * s1 : std::fma(s2, j, s2) * s1;
}

// ggml_vec_dot_f32: four accumulators of eight lanes over steps of 32, reduced (2 into 0, 3 into
// 1, 1 into 0, then lanes ((0+4)+(1+5))+((2+6)+(3+7))), the rest eight products at a time, each
// rounded, added one by one (as GCC vectorises that loop)
float ggml_dot(const float* x, const float* y, std::size_t n) {
  float sum[4][8] = {};
  const std::size_t steps = n - n % 32;
  for (std::size_t i = 0; i < steps; i += 32)
    for (std::size_t a = 0; a < 4; ++a)
      for (std::size_t l = 0; l < 8; ++l) sum[a][l] = std::fma(x[i + 8 * a + l], y[i + 8 * a + l], sum[a][l]);
  float lane[8];
  for (std::size_t l = 0; l < 8; ++l) lane[l] = (sum[0][l] + sum[2][l]) + (sum[1][l] + sum[3][l]);
  float total = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
  for (std::size_t i = steps; i < n; ++i) {
    volatile float product = x[i] * y[i];  // (rounded on its own)
    total += product;
  }
  return total;
}

// ggml_vec_dot_f16 (a KV cache in f16): the same steps and lanes on the halves widened, but the
// rest's products added in double
float ggml_dot_f16(const float* x, const float* y, std::size_t n) {
  const std::size_t steps = n - n % 32;
  double total = steps ? ggml_dot(x, y, steps) : 0.0;
  for (std::size_t i = steps; i < n; ++i) {
    volatile float product = x[i] * y[i];
    total += double(product);
  }
  return float(total);
}

float to_half(float x) { return ipa::from_f16(ipa::to_f16(x)); }

}  // namespace

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

// (An f16 cache: ggml converts the query and the softmax's weights to f16 for its products.)
TEST_CASE("attention computes llama.cpp's scores, weights and outputs, bit for bit, from an f32 or an f16 cache") {
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const bool half : {false, true})
    for (std::size_t hs : {8, 64, 80})
      for (std::size_t positions = 1; positions <= 70; positions += 3) {
        CAPTURE(half);
        CAPTURE(hs);
        CAPTURE(positions);
        std::vector<float> q(hs), k(positions * hs), v(positions * hs), scores(80), out(hs);
        for (auto* x : {&q, &k, &v})
          for (float& f : *x) f = normal(gen);
        std::vector<float> q_in = q;  // (rounded in place by an f16 attention)
        if (half) {
          std::vector<std::uint16_t> k16(k.size()), v16(v.size());
          for (std::size_t i = 0; i < k.size(); ++i) k16[i] = ipa::to_f16(k[i]), v16[i] = ipa::to_f16(v[i]);
          ipa::detail::attend_heads(q_in.data(), 1, k16.data(), v16.data(), hs, hs, positions, scores.data(), 80,
                                    out.data());
          for (auto* x : {&q, &k, &v})
            for (float& f : *x) f = to_half(f);
          CHECK(q_in == q);
        } else {
          ipa::detail::attend_heads(q_in.data(), 1, k.data(), v.data(), hs, hs, positions, scores.data(), 80,
                                    out.data());
        }
        const auto dot = half ? ggml_dot_f16 : ggml_dot;
        // llama.cpp: scores over a row padded to 32 positions with masked ones, soft_max_ext, then
        // each output the dot product of its transposed value row with the weights
        const std::size_t padded = (positions + 31) / 32 * 32;
        std::vector<float> w(padded, -std::numeric_limits<float>::infinity()), p(padded), column(padded, 0.0f);
        const float scale = 1.0f / std::sqrt(float(hs));
        for (std::size_t t = 0; t < positions; ++t) w[t] = dot(k.data() + t * hs, q.data(), hs) * scale;
        float max = w[0];
        for (float x : w) max = std::max(max, x);
        double sum = 0.0;
        for (std::size_t t = 0; t < padded; t += 8) {
          for (std::size_t l = 0; l < 8; ++l) p[t + l] = ggml_expf(w[t + l] - max);
          const float* e = p.data() + t;
          sum += double(((e[0] + e[4]) + (e[2] + e[6])) + ((e[1] + e[5]) + (e[3] + e[7])));
        }
        const float inv_sum = float(1.0 / sum);
        for (float& x : p) x = half ? to_half(x * inv_sum) : x * inv_sum;
        for (std::size_t j = 0; j < hs; ++j) {
          for (std::size_t t = 0; t < positions; ++t) column[t] = v[t * hs + j];
          const float want = dot(column.data(), p.data(), padded);
#ifdef __OPTIMIZE__
          CHECK(std::memcmp(&want, &out[j], sizeof want) == 0);
#else
          CHECK(std::fabs(want - out[j]) <= 1e-5f);
#endif
        }
#ifdef __OPTIMIZE__
        CHECK(std::memcmp(p.data(), scores.data(), positions * sizeof(float)) == 0);
#endif
      }
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
