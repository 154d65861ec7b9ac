// SPDX-License-Identifier: MIT
// Compact weights (core/ggml_blocks.hpp, core/compact_matrix.hpp): the kernels against their
// scalar reference for every type, and the input quantizations against ggml's rules. Built
// twice: in ipa_tests (x86-64-v3: the AVX2 kernels) and in ipa_portable_tests (x86-64: the
// scalar fallbacks that a consumer building at the default -march gets).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include <ipa/core/compact_matrix.hpp>
#include <ipa/core/rng.hpp>

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
      case ipa::weight_type::bf16:
        for (std::size_t c = 0; c < k; ++c) {
          const std::uint16_t h = ipa::to_bf16(x[c]);
          std::memcpy(row + 2 * c, &h, 2);
        }
        break;
      case ipa::weight_type::q8_0: ipa::quantize_row_q8_0(x, k, row); break;
      default: {
        const ipa::block_layout b = ipa::layout_of(type);
        for (std::size_t i = 0; i < row_bytes; ++i) row[i] = static_cast<unsigned char>(rng() & 0xFF);
        for (std::size_t blk = 0; blk < k / b.elements; ++blk) {
          unsigned char* block = row + blk * b.bytes;
          const float d = float(0.005 + 0.01 * ipa::uniform01(rng));
          if (type == ipa::weight_type::q4_0) put_half(block, d);
          if (type == ipa::weight_type::q4_k ||
              type == ipa::weight_type::q5_k) {  // d * (6-bit) * (4/5-bit) - dmin * (6-bit)
            put_half(block, type == ipa::weight_type::q5_k ? d / 40 : d / 20);
            put_half(block + 2, d / 40);
          }
          if (type == ipa::weight_type::q6_k) put_half(block + 208, d / 100);  // d * (int8) * (6-bit - 32)
          if (type == ipa::weight_type::q3_k) put_half(block + 108, d / 10);   // d * (6-bit - 32) * (3-bit - 4)
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

TEST_CASE(
    "compact_matmul (F32, F16, BF16, Q4_0 and Q8_0 row by row and interleaved, Q3_K, Q4_K, Q5_K, Q6_K) equals its "
    "scalar reference, batch- and range-invariant") {
  ipa::xoshiro256 rng(11);
  for (ipa::weight_type type : {ipa::weight_type::f32, ipa::weight_type::f16, ipa::weight_type::bf16,
                                ipa::weight_type::q4_0, ipa::weight_type::q8_0, ipa::weight_type::q3_k,
                                ipa::weight_type::q4_k, ipa::weight_type::q5_k, ipa::weight_type::q6_k})
    for (std::size_t k : {32u, 96u, 100u, 256u, 768u})
      for (const bool interleaved : {false, true}) {
        if (k % ipa::layout_of(type).elements != 0 ||
            (interleaved && type != ipa::weight_type::q8_0 && type != ipa::weight_type::q4_0))
          continue;
        // two groups of 16 rows (of inputs on AVX-512 VNNI, of weights interleaved) and 7 and 5 more
        const std::size_t m = 37, n = 39;
        CAPTURE(ipa::weight_type_name(type));
        CAPTURE(k);
        CAPTURE(interleaved);
        const auto bytes = compact_bytes(type, m, k, rng);
        std::vector<unsigned char> interleaved_bytes(ipa::interleaved_bytes(type, m, k));
        const ipa::compact_matrix row_major{type, bytes.data(), m, k};
        const ipa::compact_matrix w = interleaved ? ipa::interleave(row_major, interleaved_bytes.data()) : row_major;
        std::vector<float> row(k), row_again(k);
        for (std::size_t j = 0; interleaved && j < m; ++j) {  // the same weights
          ipa::dequantize_row(row_major, j, row.data());
          ipa::dequantize_row(w, j, row_again.data());
          CHECK(row == row_again);
        }
        std::vector<float> x(n * k), out(n * m), ref(n * m), one(m), exact(n * m);
        for (auto& v : x) v = float(ipa::uniform01(rng) - 0.5);
        std::vector<unsigned char> in(ipa::compact_prepared_bytes(type, n, k));
        ipa::prepare_input(type, x.data(), k, n, k, in.data());
        ipa::compact_matmul(out.data(), m, x.data(), k, n, w, 0, m);
        ipa::compact_matmul_reference(ref.data(), m, in.data(), n, w, 0, m);
        if (interleaved) {  // the prepared rows given as they are: the same product
          std::vector<float> again(n * m);
          ipa::compact_matmul_prepared(again.data(), m, in.data(), n, w, 0, m);
          CHECK(again == out);
          // the scalar chain (builds without AVX-512 VNNI) gives the tile's bits
          const std::size_t ld_in = ipa::compact_input_bytes(type, k);
          for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < m; ++j)
              CHECK(ipa::detail::interleaved_dot(in.data() + i * ld_in, w, j) == out[i * m + j]);
        }
        for (std::size_t i = 0; i < n * m; ++i) CHECK(out[i] == doctest::Approx(ref[i]).epsilon(1e-5).scale(1.0));
        // the inputs' rounding (llama.cpp's: F16, Q8_0) against f32 inputs: small
        std::vector<unsigned char> f32_in(ipa::compact_prepared_bytes(ipa::weight_type::f32, n, k));
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

TEST_CASE("Q8_K quantization is ggml's: iscale = -127 / the largest-magnitude input, sums of 16 kept") {
  std::vector<float> x(512);
  for (std::size_t c = 0; c < x.size(); ++c) x[c] = std::sin(0.37f * float(c)) * (c < 256 ? 2.0f : 0.01f);
  x[100] = 3.0f;  // block 0's largest magnitude, positive: d < 0
  std::vector<unsigned char> q(2 * 292);
  ipa::quantize_row_q8_k(x.data(), x.size(), q.data());
  float d;
  std::memcpy(&d, q.data(), 4);
  CHECK(d == doctest::Approx(-3.0f / 127.0f));
  CHECK(static_cast<std::int8_t>(q[4 + 100]) == -127);
  std::vector<float> back(512);
  ipa::dequantize_row({ipa::weight_type::q8_k, q.data(), 1, 512}, 0, back.data());
  for (std::size_t c = 0; c < 512; ++c) {
    float db;
    std::memcpy(&db, q.data() + 292 * (c / 256), 4);
    CHECK(std::fabs(back[c] - x[c]) <= 0.51f * std::fabs(db));
  }
  for (std::size_t b = 0; b < 2; ++b)
    for (int j = 0; j < 16; ++j) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += static_cast<std::int8_t>(q[292 * b + 4 + std::size_t(16 * j + i)]);
      std::int16_t kept;
      std::memcpy(&kept, q.data() + 292 * b + 260 + 2 * j, 2);
      CHECK(kept == sum);
    }
  std::vector<float> zeros(256, 0.0f);  // an all-zero block: d = 0, q = 0
  ipa::quantize_row_q8_k(zeros.data(), 256, q.data());
  ipa::dequantize_row({ipa::weight_type::q8_k, q.data(), 1, 256}, 0, back.data());
  CHECK(std::all_of(back.begin(), back.begin() + 256, [](float v) { return v == 0.0f; }));
}

namespace {
// x * y rounded to float, then to the nearest integer, ties to even: what llama.cpp's quantizers
// compute (the volatile keeps the compiler from fusing the product into the rounding)
int rounded_product(float x, float y) {
  const volatile float product = x * y;
  return int(std::nearbyint(product));
}
}  // namespace

TEST_CASE("quantize_input_q8_0 (its max and mark in AVX lanes where built with it) equals the element-wise formula") {
  // one element at a time, as ggml's AVX path computes it: d = max|x| / 127 (NaNs skipped), plus
  // the non-finite mark; q = nearest(x * 127 / max|x|), ties to even
  auto one_at_a_time = [](const float* x, std::size_t k, unsigned char* out) {
    for (std::size_t b = 0; b < k / 32; ++b, x += 32, out += ipa::q8_0_block_bytes) {
      float amax = 0.0f, mark = 0.0f;
      for (std::size_t c = 0; c < 32; ++c) amax = std::max(amax, std::fabs(x[c])), mark += x[c] - x[c];
      const std::uint16_t h = ipa::to_f16(amax / 127.0f + mark);
      std::memcpy(out, &h, 2);
      for (std::size_t c = 0; c < 32; ++c)
        out[2 + c] = static_cast<unsigned char>(rounded_product(x[c], amax != 0.0f ? 127.0f / amax : 0.0f));
    }
  };
  ipa::xoshiro256 rng(23);
  std::vector<float> x(32 * 40);
  for (std::size_t c = 0; c < x.size(); ++c) {
    const std::size_t block = c / 32;
    const double u = ipa::uniform01(rng) - 0.5;
    x[c] = float(u * std::pow(10.0, double(block % 9) - 4.0));  // magnitudes 1e-4 .. 1e4
    if (block == 3) x[c] = 0.0f;                                // an all-zero block: d = 0
    if (block == 5) x[c] = float(int(c % 11) - 5) + 0.5f;       // with a 127 below: every x a tie
    if (block == 6) x[c] = -x[c];
  }
  x[5 * 32] = 127.0f;                                // (127 / max = 1: x * 1 is x)
  x[7 * 32 + 3] = -1e30f, x[8 * 32 + 31] = 3.4e38f;  // the largest magnitude last in its block
  std::vector<unsigned char> fast(x.size() / 32 * ipa::q8_0_block_bytes), slow(fast.size());
  ipa::quantize_input_q8_0(x.data(), x.size(), fast.data());
  one_at_a_time(x.data(), x.size(), slow.data());
  CHECK(fast == slow);
  for (std::size_t c = 5 * 32 + 1; c < 6 * 32; ++c)  // halves to even, as ggml's AVX path rounds
    CHECK(int(std::int8_t(fast[5 * ipa::q8_0_block_bytes + 2 + c % 32])) == int(std::nearbyint(x[c])));
}

// Rows that are multiples of one step (a Q4_0 or Q6_K token embedding, normalised) put inputs on
// or within an ulp of x.5 once scaled: llama.cpp rounds the scaled input to float before rounding
// it to an integer, and a compiler with FMA fuses the two roundings of the plain formula into one
// that goes the other way now and then (llama-server's first position was 0.03 off with such an
// embedding before ipa rounded the product first).
TEST_CASE("Q8_0 and Q8_K inputs on a lattice: the scaled input is rounded to float, then to an integer") {
  ipa::xoshiro256 rng(31);
  std::vector<float> x(256 * 24);
  for (std::size_t b = 0; b < x.size() / 256; ++b) {
    const float step = float(0.001 + 0.01 * ipa::uniform01(rng)), scale = float(0.5 + 2.0 * ipa::uniform01(rng));
    for (std::size_t c = 0; c < 256; ++c)
      x[256 * b + c] = float(int(ipa::uniform01(rng) * 16) - 8) * step * scale;  // Q4_0's 16 levels
  }
  int fused_differs = 0;  // inputs where rounding the exact product (as a fused multiply-add does) differs
  auto count_fused = [&](float v, float s) {
    fused_differs += int(std::nearbyint(double(v) * double(s))) != rounded_product(v, s);
  };
  std::vector<unsigned char> q8_0(x.size() / 32 * ipa::q8_0_block_bytes), q8_k(x.size() / 256 * 292);
  ipa::quantize_input_q8_0(x.data(), x.size(), q8_0.data());
  ipa::quantize_row_q8_k(x.data(), x.size(), q8_k.data());
  for (std::size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0.0f;
    for (std::size_t c = 0; c < 32; ++c) amax = std::max(amax, std::fabs(x[32 * b + c]));
    for (std::size_t c = 0; c < 32; ++c) {
      CAPTURE(b);
      CAPTURE(c);
      CHECK(int(std::int8_t(q8_0[b * ipa::q8_0_block_bytes + 2 + c])) == rounded_product(x[32 * b + c], 127.0f / amax));
      count_fused(x[32 * b + c], 127.0f / amax);
    }
  }
  for (std::size_t b = 0; b < x.size() / 256; ++b) {
    const auto [amax, max] = ipa::detail::largest_magnitude(x.data() + 256 * b, 256);
    const float iscale = -127.0f / max;
    for (std::size_t c = 0; c < 256; ++c) {
      CAPTURE(b);
      CAPTURE(c);
      CHECK(int(std::int8_t(q8_k[292 * b + 4 + c])) == std::min(127, rounded_product(iscale, x[256 * b + c])));
      count_fused(iscale, x[256 * b + c]);
    }
  }
  MESSAGE(fused_differs << " of " << x.size() * 2 << " inputs round otherwise from the exact product");
  CHECK(fused_differs > 0);  // (the rows reach the case at all)
}

TEST_CASE("largest_magnitude is ggml's scan: the first input of the largest magnitude, NaNs skipped") {
  auto scan = [](const float* x, std::size_t n) {  // quantize_row_q8_K_ref's loop
    float amax = 0.0f, max = 0.0f;
    for (std::size_t j = 0; j < n; ++j)
      if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), max = x[j];
    return std::pair{amax, max};
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  ipa::xoshiro256 rng(7);
  for (int trial = 0; trial < 64; ++trial) {
    CAPTURE(trial);
    std::vector<float> x(256);
    for (auto& v : x) v = float(ipa::uniform01(rng) - 0.5);
    const std::size_t a = std::size_t(ipa::uniform01(rng) * 256), b = std::size_t(ipa::uniform01(rng) * 256);
    if (trial % 2 == 0) x[a] = -2.0f, x[b] = 2.0f;  // a tie of opposite signs: the first wins
    if (trial % 3 == 0) x[(a + 1) % 256] = nan;
    if (trial % 5 == 0) x[b] = trial % 10 == 0 ? -inf : inf;
    if (trial == 7) std::fill(x.begin(), x.end(), 0.0f);
    if (trial == 9) std::fill(x.begin(), x.end(), nan);
    const auto [amax, max] = ipa::detail::largest_magnitude(x.data(), x.size());
    const auto [scan_amax, scan_max] = scan(x.data(), x.size());
    CHECK(amax == scan_amax);
    CHECK(std::signbit(max) == std::signbit(scan_max));
    CHECK(max == scan_max);
  }
}

TEST_CASE("the input quantizers carry a NaN or Inf input into the block's scale (and stay defined)") {
  // nearest_int is ggml's bit trick: round half to even, as std::nearbyint, where |v| < 2^22
  for (float v : {0.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -126.5f, 126.49f, 127.0f, -127.0f, 4194303.0f, 1e-30f})
    CHECK(ipa::detail::nearest_int(v) == int(std::nearbyint(v)));
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (float bad : {nan, inf, -inf}) {
    CAPTURE(bad);
    std::vector<float> x(512);
    for (std::size_t c = 0; c < x.size(); ++c) x[c] = std::sin(0.37f * float(c));
    x[300] = bad;  // block 1 of Q8_K, block 9 of Q8_0
    std::vector<unsigned char> q8_k(2 * 292), q8_0(ipa::compact_input_bytes(ipa::weight_type::q8_0, 512));
    ipa::quantize_row_q8_k(x.data(), x.size(), q8_k.data());
    ipa::quantize_input_q8_0(x.data(), x.size(), q8_0.data());
    float d0, d1;
    std::memcpy(&d0, q8_k.data(), 4);
    std::memcpy(&d1, q8_k.data() + 292, 4);
    CHECK(std::isfinite(d0));  // the other blocks keep their scales
    CHECK(!std::isfinite(d1));
    for (std::size_t b = 0; b < 16; ++b)
      CHECK(std::isfinite(ipa::detail::load_half(q8_0.data() + b * ipa::q8_0_block_bytes)) == (b != 9));
  }
}

// llama.cpp's AVX2 ggml_vec_dot_q4_K_q8_K and ggml_vec_dot_q6_K_q8_K, one scalar step at a time:
// per block, eight int32 lanes (lane l: the products of bytes 4l..4l+3 of each 32, times their
// scales) each fused into its float accumulator with d * the input's d; Q4_K's mins in four float
// lanes (one per pair of sub-blocks); at the end hsum_float_8's order ((0+4)+(2+6))+((1+5)+(3+7))
// and the mins' ((0+2)+(1+3)). ipa's tiles end so (k_quant_tile): random rows of 1-8 blocks give
// the same bits where ipa is built with FMA (its multiply-adds fused as llama.cpp's build fuses
// them, whatever the optimisation level), else within float rounding.
TEST_CASE("Q4_K and Q6_K rows times a Q8_K input: ggml's AVX2 vec_dot, step for step") {
  auto hsum8 = [](const float* a) { return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7])); };
  ipa::xoshiro256 rng(41);
  auto byte = [&] { return static_cast<unsigned char>(ipa::uniform01(rng) * 256); };
  auto small_scale = [&] { return ipa::to_f16(float(0.001 + 0.01 * ipa::uniform01(rng))); };
  int differ = 0, rows = 0;
  for (int trial = 0; trial < 80; ++trial) {
    const std::size_t blocks = 1 + std::size_t(trial % 8), k = 256 * blocks;
    std::vector<float> x(k);
    for (float& v : x) v = float(ipa::uniform01(rng) - 0.5);
    std::vector<unsigned char> q(292 * blocks);
    ipa::quantize_row_q8_k(x.data(), k, q.data());
    for (const ipa::weight_type type : {ipa::weight_type::q4_k, ipa::weight_type::q6_k}) {
      CAPTURE(trial);
      CAPTURE(std::string(ipa::weight_type_name(type)));
      const bool q4 = type == ipa::weight_type::q4_k;
      const std::size_t block_bytes = q4 ? 144 : 210;
      std::vector<unsigned char> w(block_bytes * blocks);
      for (auto& b : w) b = byte();
      for (std::size_t b = 0; b < blocks; ++b) {  // finite scales of a realistic size
        const std::uint16_t d = small_scale(), dmin = small_scale();
        std::memcpy(&w[block_bytes * b + (q4 ? 0 : 208)], &d, 2);
        if (q4) std::memcpy(&w[block_bytes * b + 2], &dmin, 2);
      }
      float acc[8] = {}, mins[4] = {};
      for (std::size_t b = 0; b < blocks; ++b) {
        const unsigned char* y = q.data() + 292 * b;
        float yd;
        std::memcpy(&yd, y, 4);
        const auto* q8 = reinterpret_cast<const std::int8_t*>(y + 4);
        std::int16_t sums[16];
        std::memcpy(sums, y + 260, 32);
        const unsigned char* wb = w.data() + block_bytes * b;
        int lane[8] = {};
        float d;
        if (q4) {
          d = yd * ipa::detail::half_to_float(wb);
          const float dmin = -yd * ipa::detail::half_to_float(wb + 2);
          std::uint8_t scale[8], min[8];
          ipa::detail::q4_k_scales(wb + 4, scale, min);
          for (int m = 0; m < 4; ++m)
            mins[m] = std::fma(dmin,
                               float(min[2 * m] * (sums[4 * m] + sums[4 * m + 1]) +
                                     min[2 * m + 1] * (sums[4 * m + 2] + sums[4 * m + 3])),
                               mins[m]);
          for (int j = 0; j < 4; ++j)  // 64 weights: 32 low nibbles, then 32 high ones
            for (int l = 0; l < 8; ++l) {
              int lo = 0, hi = 0;
              for (int e = 4 * l; e < 4 * l + 4; ++e) {
                lo += (wb[16 + 32 * j + e] & 0xF) * q8[64 * j + e];
                hi += (wb[16 + 32 * j + e] >> 4) * q8[64 * j + 32 + e];
              }
              lane[l] += scale[2 * j] * lo + scale[2 * j + 1] * hi;
            }
        } else {
          d = yd * ipa::detail::half_to_float(wb + 208);
          const unsigned char *ql = wb, *qh = wb + 128;
          const auto* scale = reinterpret_cast<const std::int8_t*>(wb + 192);
          for (int j = 0; j < 2; ++j)    // 128 weights each
            for (int c = 0; c < 4; ++c)  // in four runs of 32
              for (int l = 0; l < 8; ++l) {
                int sum = 0;
                for (int e = 4 * l; e < 4 * l + 4; ++e) {
                  const int low = c < 2 ? ql[64 * j + 32 * (c % 2) + e] & 0xF : ql[64 * j + 32 * (c % 2) + e] >> 4;
                  sum += ((low | (((qh[32 * j + e] >> (2 * c)) & 3) << 4)) - 32) * q8[128 * j + 32 * c + e];
                }
                lane[l] += scale[8 * j + 2 * c + (l >= 4)] * sum;  // 16 weights per scale
              }
        }
        for (int l = 0; l < 8; ++l) acc[l] = std::fma(d, float(lane[l]), acc[l]);
      }
      const float ggml = hsum8(acc) + (q4 ? (mins[0] + mins[2]) + (mins[1] + mins[3]) : 0.0f);
      float ours = 0.0f;
      ipa::compact_matmul(&ours, 1, x.data(), k, 1, ipa::compact_matrix{type, w.data(), 1, k}, 0, 1);
#if defined(__FMA__)
      CHECK(ours == ggml);
#else
      CHECK(std::abs(ours - ggml) <= 1e-5f * (1.0f + std::abs(ggml)));
#endif
      differ += ours != ggml, ++rows;
    }
  }
  MESSAGE(differ << " of " << rows << " rows differ from the transcription in their last bits");
}

TEST_CASE("Q3_K, Q4_K, Q5_K and Q6_K blocks decode as ggml lays them out: scales, mins and quants in place") {
  // Q4_K: d = 1, dmin = 0.5; sub-block 1's scale 3 and min 2 (6-bit, packed in bytes 1 and 5);
  // sub-block 5's scale 33 and min 17 (low bits in byte 9, high bits in bytes 1 and 5)
  std::vector<unsigned char> b(144, 0);
  const std::uint16_t one = ipa::to_f16(1.0f), half = ipa::to_f16(0.5f);
  std::memcpy(b.data(), &one, 2);
  std::memcpy(b.data() + 2, &half, 2);
  b[4 + 1] = 3 | (2u << 6);     // scale[1] = 3, high bits of scale[5] = 2 (33 = 0b100001)
  b[4 + 5] = 2 | (1u << 6);     // min[1] = 2, high bits of min[5] = 1 (17 = 0b010001)
  b[4 + 9] = 0x1 | (0x1 << 4);  // low bits: scale[5] = 1, min[5] = 1
  b[16 + 5] = 0x7 << 4;         // weight 32 + 5 (sub-block 1, high nibble of byte 5) = 7
  b[16 + 64 + 2] = 0x9 << 4;    // weight 160 + 2 (sub-block 5, high nibble of byte 64 + 2) = 9
  std::vector<float> w(256);
  ipa::dequantize_row({ipa::weight_type::q4_k, b.data(), 1, 256}, 0, w.data());
  CHECK(w[37] == 3.0f * 7 - 0.5f * 2);
  CHECK(w[36] == -0.5f * 2);
  CHECK(w[162] == 33.0f * 9 - 0.5f * 17);
  CHECK(w[0] == 0.0f);
  // Q6_K: d = 0.25; scale of weights 16..31 = -2; weight 17 = (low nibble 5 | high bits 2 << 4) - 32
  std::vector<unsigned char> k(210, 0);
  const std::uint16_t quarter = ipa::to_f16(0.25f);
  std::memcpy(k.data() + 208, &quarter, 2);
  k[192 + 1] = static_cast<unsigned char>(std::int8_t(-2));
  k[17] = 5;
  k[128 + 17] = 2;
  ipa::dequantize_row({ipa::weight_type::q6_k, k.data(), 1, 256}, 0, w.data());
  CHECK(w[17] == 0.25f * -2 * float((5 | (2 << 4)) - 32));
  CHECK(w[0] == 0.0f);  // scale 0
  // Q5_K: Q4_K's block with 32 bytes of fifth bits (qh) before the nibbles; weight 64j + l takes
  // bit 2j of qh[l], weight 64j + 32 + l bit 2j + 1 (ggml's dequantize_row_q5_K)
  std::vector<unsigned char> q5(176, 0);
  std::copy(b.begin(), b.begin() + 16, q5.begin());  // d = 1, dmin = 0.5, the scales and mins above
  q5[48 + 5] = 0x7 << 4;                             // weight 32 + 5 (sub-block 1): high nibble 7 ...
  q5[16 + 5] = 1u << 1;                              // ... and bit 1 of qh[5]: 7 + 16
  q5[48 + 64 + 2] = 0x9 << 4;                        // weight 160 + 2 (sub-block 5): 9, bit 5 of qh[2] clear
  q5[16 + 3] = 1u << 5;  // bit 5 of qh[3]: weight 160 + 3 (sub-block 5, high nibble 0) gets 16
  ipa::dequantize_row({ipa::weight_type::q5_k, q5.data(), 1, 256}, 0, w.data());
  CHECK(w[37] == 3.0f * (7 + 16) - 0.5f * 2);
  CHECK(w[162] == 33.0f * 9 - 0.5f * 17);
  CHECK(w[163] == 33.0f * 16 - 0.5f * 17);
  CHECK(w[36] == -0.5f * 2);
  CHECK(w[0] == 0.0f);  // scale and min 0
  // Q3_K (ggml's dequantize_row_q3_K): weight 128h + 32j + l = d * (scale - 32) * (bits 2j of
  // qs[32h + l] - 4 unless bit 4h + j of hmask[l]); scale 8h + 2j + l / 16 of sixteen 6-bit ones
  // (low nibbles: bytes 0-7, low then high; high bit pairs: bytes 8-11, two bits per scale)
  std::vector<unsigned char> q3(110, 0);
  const std::uint16_t two = ipa::to_f16(2.0f);
  std::memcpy(q3.data() + 108, &two, 2);
  // scale 2 (h 0, j 1, l < 16) = 35 (0b100011: low nibble 3 in byte 96 + 2, high pair 2 in bits
  // 0-1 of byte 96 + 8 + 2)
  q3[96 + 2] = 3;
  q3[96 + 8 + 2] = 2;
  // scale 13 (h 1, j 2, l >= 16) = 10 (low nibble 10: the high nibble of byte 96 + 5; high pair 0)
  q3[96 + 5] = 10 << 4;
  q3[32 + 5] = 3 << 2;        // weight 32 + 5: bits 2-3 of qs[5] = 3, hmask bit 1 clear: 3 - 4
  q3[32 + 32 + 20] = 2 << 4;  // weight 128 + 64 + 20: bits 4-5 of qs[32 + 20] = 2 ...
  q3[20] = 1u << 6;           // ... bit 6 of hmask[20] set: 2
  ipa::dequantize_row({ipa::weight_type::q3_k, q3.data(), 1, 256}, 0, w.data());
  CHECK(w[37] == 2.0f * (35 - 32) * (3 - 4));
  CHECK(w[212] == 2.0f * (10 - 32) * 2);
  CHECK(w[36] == 2.0f * (35 - 32) * -4);  // quants 0, hmask clear: -4
  CHECK(w[0] == 2.0f * -32 * -4);         // scale bits 0: -32
}
