// SPDX-License-Identifier: MIT
// Scalar transcriptions of ggml's AVX2 arithmetic that the kernel tests compare against.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <ipa/core/bf16.hpp>

namespace ipa_test {

// llama.cpp's arithmetic, written out one scalar operation at a time from ggml's AVX2 code (the
// llama-server of ../shared/peers): the references for exp8 (model_test) and attention (attention_test).
inline float ggml_expf(float x) {
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
inline float ggml_dot(const float* x, const float* y, std::size_t n) {
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
inline float ggml_dot_f16(const float* x, const float* y, std::size_t n) {
  const std::size_t steps = n - n % 32;
  double total = steps ? ggml_dot(x, y, steps) : 0.0;
  for (std::size_t i = steps; i < n; ++i) {
    volatile float product = x[i] * y[i];
    total += double(product);
  }
  return float(total);
}

inline float to_half(float x) { return ipa::from_f16(ipa::to_f16(x)); }

}  // namespace ipa_test
