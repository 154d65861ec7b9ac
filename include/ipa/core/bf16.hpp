// SPDX-License-Identifier: MIT
// 16-bit floats: bfloat16 (the top 16 bits of an IEEE float, rounded to nearest even; halves the
// memory of stored base logits) and IEEE half (F16 weights, the scales of quantized blocks, f16
// KV caches).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace ipa {

/// float -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
inline std::uint16_t to_bf16(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

/// bf16 bits -> float (exact).
inline float from_bf16(std::uint16_t h) noexcept {
  const std::uint32_t u = std::uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// IEEE half -> float (exact, including subnormals, inf and NaN).
inline float from_f16(std::uint16_t h) noexcept {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  std::uint32_t u;
  if (exp == 0x1f) u = sign | 0x7f800000u | (mant << 13);
  else if (exp != 0) u = sign | ((exp + 112u) << 23) | (mant << 13);
  else if (mant == 0) u = sign;
  else {  // subnormal: normalise
    int e = -1;
    std::uint32_t m = mant;
    do {
      ++e;
      m <<= 1;
    } while ((m & 0x400u) == 0);
    u = sign | (std::uint32_t(112 - e) << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// float -> IEEE half, round to nearest even (overflow to inf, NaN stays NaN).
inline std::uint16_t to_f16(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return std::uint16_t(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // rounds past 65504: inf
  if (abs < 0x38800000u) {                                       // subnormal half (or zero)
    if (abs < 0x33000000u) return sign;                          // below half the smallest
    const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - int(abs >> 23);  // 14 + (113 - exp)
    std::uint32_t h = mant >> shift;
    const std::uint32_t rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) ++h;
    return std::uint16_t(sign | h);
  }
  std::uint32_t h = ((abs >> 23) - 112) << 10 | ((abs >> 13) & 0x3ffu);
  const std::uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: fine
  return std::uint16_t(sign | h);
}

namespace detail {

/// n floats -> IEEE half bits, round to nearest even: to_f16, eight at a time (vcvtps2ph) where
/// the build has F16C, the rounding ggml's F16C build uses too (an f16 KV cache's writes).
inline void store_f16(const float* x, std::size_t n, std::uint16_t* out) noexcept {
  std::size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) out[i] = to_f16(x[i]);
}

/// x rounded to the nearest half, as floats, in place: what llama.cpp's products with an f16
/// cache see of their f32 operand (the query, the softmax's weights), which ggml converts first.
inline void round_to_f16(float* x, std::size_t n) noexcept {
  std::size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
#endif
  for (; i < n; ++i) x[i] = from_f16(to_f16(x[i]));
}

}  // namespace detail

}  // namespace ipa
