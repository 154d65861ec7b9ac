// SPDX-License-Identifier: MIT
// Attention (model/attention.hpp) against ggml's, bit for bit, from an f32 or an f16 KV cache. Built
// in ipa_tests (AVX2) and in ipa_native_tests (-march=native: the AVX-512 paths).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <ipa/core/bf16.hpp>
#include <ipa/model/attention.hpp>

#include "ggml_reference.hpp"

using ipa_test::ggml_dot;
using ipa_test::ggml_dot_f16;
using ipa_test::ggml_expf;
using ipa_test::to_half;

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
