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

#include <ipa/core/compact_matrix.hpp>
#include <ipa/core/math.hpp>
#include <ipa/core/matmul.hpp>
#include <ipa/core/parallel.hpp>
#include <ipa/core/rng.hpp>
#include <ipa/io/llama2c.hpp>
#include <ipa/io/npy.hpp>
#include <ipa/model/llama.hpp>

#include "test_data.hpp"

// ---- compact weights: F32, F16 and Q8_0 rows read in place

namespace {
// A matrix of m rows x k random weights stored as `type` (Q8_0 through quantize_row_q8_0; the
// other quantized types as random blocks: random quants and scales, weights of at most ~0.5).
std::vector<unsigned char> compact_bytes(ipa::weight_type type, std::size_t m, std::size_t k, ipa::xoshiro256& rng) {
  std::vector<float> w(m * k);
  for (auto& v : w) v = float(ipa::uniform01(rng) - 0.5);
  const std::size_t row_bytes = ipa::compact_matrix::row_bytes(type, k);
  std::vector<unsigned char> bytes(m * row_bytes);
  auto put_half = [](unsigned char* p, float v) {
    const std::uint16_t h = ipa::to_f16(v);
    std::memcpy(p, &h, 2);
  };
  for (std::size_t r = 0; r < m; ++r) {
    unsigned char* row = bytes.data() + r * row_bytes;
    const float* x = w.data() + r * k;
    switch (type) {
      case ipa::weight_type::f32: std::memcpy(row, x, 4 * k); break;
      case ipa::weight_type::f16:
        for (std::size_t c = 0; c < k; ++c) put_half(row + 2 * c, x[c]);
        break;
      case ipa::weight_type::q8_0: ipa::quantize_row_q8_0(x, k, row); break;
      default: {
        const ipa::block_layout b = ipa::layout_of(type);
        for (std::size_t i = 0; i < row_bytes; ++i) row[i] = static_cast<unsigned char>(rng() & 0xFF);
        for (std::size_t blk = 0; blk < k / b.elements; ++blk) {
          unsigned char* block = row + blk * b.bytes;
          const float d = float(0.005 + 0.01 * ipa::uniform01(rng));
          if (type == ipa::weight_type::q4_0) put_half(block, d);
          if (type == ipa::weight_type::q4_k) {  // weights d * (6-bit) * (4-bit) - dmin * (6-bit)
            put_half(block, d / 20);
            put_half(block + 2, d / 40);
          }
          if (type == ipa::weight_type::q6_k) put_half(block + 208, d / 100);  // d * (int8) * (6-bit - 32)
        }
      }
    }
  }
  return bytes;
}
}  // namespace

TEST_CASE("Q8_0 quantization is ggml's: d = max|x| / 127, q = round(x / d), and dequantizes within d / 2") {
  std::vector<float> x(64);
  for (std::size_t c = 0; c < 64; ++c) x[c] = std::sin(float(c)) * (c < 32 ? 1.0f : 0.001f);
  x[40] = 0.0f;
  std::vector<unsigned char> q(2 * 34);
  ipa::quantize_row_q8_0(x.data(), 64, q.data());
  const ipa::compact_matrix w{ipa::weight_type::q8_0, q.data(), 1, 64};
  std::vector<float> back(64);
  ipa::dequantize_row(w, 0, back.data());
  for (std::size_t b = 0; b < 2; ++b) {
    float amax = 0;
    for (std::size_t c = 0; c < 32; ++c) amax = std::max(amax, std::fabs(x[32 * b + c]));
    std::uint16_t h;
    std::memcpy(&h, q.data() + 34 * b, 2);
    CHECK(ipa::from_f16(h) == doctest::Approx(amax / 127).epsilon(1e-3));
    for (std::size_t c = 0; c < 32; ++c) CHECK(std::fabs(back[32 * b + c] - x[32 * b + c]) <= 0.51f * amax / 127);
  }
  CHECK(back[40] == 0.0f);
  std::vector<float> zeros(32, 0.0f);  // an all-zero block: d = 0, never 0/0
  ipa::quantize_row_q8_0(zeros.data(), 32, q.data());
  ipa::dequantize_row({ipa::weight_type::q8_0, q.data(), 1, 32}, 0, back.data());
  CHECK(back[0] == 0.0f);
}

TEST_CASE("compact_matmul (F32, F16, Q4_0, Q8_0, Q4_K, Q6_K) equals its scalar reference, batch- and range-invariant") {
  ipa::xoshiro256 rng(11);
  for (ipa::weight_type type : {ipa::weight_type::f32, ipa::weight_type::f16, ipa::weight_type::q4_0,
                                ipa::weight_type::q8_0, ipa::weight_type::q4_k, ipa::weight_type::q6_k})
    for (std::size_t k : {32u, 96u, 100u, 256u, 768u}) {
      if (k % ipa::layout_of(type).elements != 0) continue;
      const std::size_t m = 37, n = 7;
      CAPTURE(ipa::weight_type_name(type));
      CAPTURE(k);
      const auto bytes = compact_bytes(type, m, k, rng);
      const ipa::compact_matrix w{type, bytes.data(), m, k};
      std::vector<float> x(n * k), out(n * m), ref(n * m), one(m), exact(n * m);
      for (auto& v : x) v = float(ipa::uniform01(rng) - 0.5);
      std::vector<unsigned char> in(n * ipa::compact_input_bytes(type, k));
      ipa::prepare_input(type, x.data(), k, n, k, in.data());
      ipa::compact_matmul(out.data(), m, x.data(), k, n, w, 0, m);
      ipa::compact_matmul_reference(ref.data(), m, in.data(), n, w, 0, m);
      for (std::size_t i = 0; i < n * m; ++i) CHECK(out[i] == doctest::Approx(ref[i]).epsilon(1e-5).scale(1.0));
      // the inputs' rounding (llama.cpp's: F16, Q8_0) against f32 inputs: small
      std::vector<unsigned char> f32_in(n * 4 * k);
      ipa::prepare_input(ipa::weight_type::f32, x.data(), k, n, k, f32_in.data());
      std::vector<float> dequantized(m * k);
      for (std::size_t j = 0; j < m; ++j) ipa::dequantize_row(w, j, dequantized.data() + j * k);
      const ipa::compact_matrix as_f32{ipa::weight_type::f32,
                                       reinterpret_cast<const unsigned char*>(dequantized.data()), m, k};
      ipa::compact_matmul_reference(exact.data(), m, f32_in.data(), n, as_f32, 0, m);
      for (std::size_t i = 0; i < n * m; ++i) CHECK(std::abs(out[i] - exact[i]) <= 0.01 * std::sqrt(double(k)));
      for (std::size_t i = 0; i < n; ++i) {  // each row alone, in pieces of output columns: the same bits
        ipa::compact_matmul(one.data(), m, x.data() + i * k, k, 1, w, 0, 5);
        ipa::compact_matmul(one.data(), m, x.data() + i * k, k, 1, w, 5, m);
        for (std::size_t j = 0; j < m; ++j) CHECK(one[j] == out[i * m + j]);
      }
    }
}

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
