// SPDX-License-Identifier: MIT
// Small numeric helpers shared by every layer: log-sum-exp, softmax, argmax over a row.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>

#include "ipa/core/vector_abi.hpp"

namespace ipa {

namespace detail {

using v8f_math = float __attribute__((vector_size(32)));
using v8i_math = std::int32_t __attribute__((vector_size(32)));

inline v8f_math splat(float a) noexcept { return v8f_math{a, a, a, a, a, a, a, a}; }
inline v8f_math blend(v8i_math mask, v8f_math yes, v8f_math no) noexcept {
  v8i_math y, n;
  std::memcpy(&y, &yes, sizeof y);
  std::memcpy(&n, &no, sizeof n);
  const v8i_math r = (mask & y) | (~mask & n);
  v8f_math out;
  std::memcpy(&out, &r, sizeof out);
  return out;
}

// a * b + c lane by lane, rounded once where the build has FMA and twice where it has not, as
// llama.cpp's build computes its multiply-adds (GGML_F32_VEC_FMA, _mm256_fmadd_ps). Written out,
// so that it holds whatever the compiler's -ffp-contract (ISO C++ modes turn contraction off).
inline v8f_math fma8(v8f_math a, v8f_math b, v8f_math c) noexcept {
#if defined(__FMA__)
  return __builtin_ia32_vfmaddps256(a, b, c);
#else
  return a * b + c;
#endif
}
// The same for one float.
inline float fma1(float a, float b, float c) noexcept {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

template <class To, class From>
inline To bits_as(From v) noexcept {
  static_assert(sizeof(To) == sizeof(From));
  To out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

/// exp of 8 floats as llama.cpp computes them (ggml_v_expf, from Arm's optimized-routines: 1.45
/// ulp + 0.5 at most; inf above 88.38, 0 below -103.97), step for step, so that ipa's SwiGLU
/// gates and attention weights equal llama.cpp's to the bit: a last-bit difference upstream of
/// a quantized product flips the rounding of its int8 inputs now and then.
inline v8f_math exp8(v8f_math x) noexcept {
  using v8u = std::uint32_t __attribute__((vector_size(32)));
  const v8f_math r = splat(0x1.8p23f);
  const v8f_math z = fma8(x, splat(0x1.715476p+0f), r);  // x / ln 2, rounded to an integer in the low bits
  const v8f_math n = z - r;
  const v8f_math b = fma8(-n, splat(0x1.7f7d1cp-20f), fma8(-n, splat(0x1.62e4p-1f), x));  // x - n ln 2
  const v8u e = bits_as<v8u>(z) << 23;
  const v8f_math k = bits_as<v8f_math>(e + bits_as<v8u>(splat(1.0f)));  // 2^n
  const v8f_math abs_n = bits_as<v8f_math>(bits_as<v8u>(n) & 0x7fffffffu);
  const v8f_math u = b * b;
  const v8f_math j = fma8(fma8(fma8(splat(0x1.0e4020p-7f), b, splat(0x1.573e2ep-5f)), u,
                               fma8(splat(0x1.555e66p-3f), b, splat(0x1.fffdb6p-2f))),
                          u, splat(0x1.ffffecp-1f) * b);
  const v8f_math plain = fma8(k, j, k);
  const v8i_math scaled = abs_n > splat(126.0f);  // 2^n itself would overflow or be subnormal
  bool any = false;
  for (int l = 0; l < 8; ++l) any |= scaled[l] != 0;
  if (!any) return plain;
  const v8u g = bits_as<v8u>(n <= splat(0.0f)) & 0x82000000u;
  const v8f_math s1 = bits_as<v8f_math>(g + 0x7f000000u), s2 = bits_as<v8f_math>(e - g);
  const v8i_math huge = abs_n > splat(192.0f);
  return blend(huge, s1 * s1, blend(scaled, fma8(s2, j, s2) * s1, plain));
}

}  // namespace detail

/// Largest element of a row (-inf when empty); 8 lanes, so no serial chain of compares.
inline float max_of(std::span<const float> x) noexcept {
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  const std::size_t n8 = x.size() - x.size() % 8;
  detail::v8f_math m = detail::splat(neg_inf);  // (blend: clang and GCC agree on it, not on vector ?:)
  for (std::size_t i = 0; i < n8; i += 8) {
    detail::v8f_math v;
    std::memcpy(&v, x.data() + i, sizeof v);
    m = detail::blend(v > m, v, m);
  }
  float max = neg_inf;
  for (int l = 0; l < 8; ++l) max = m[l] > max ? m[l] : max;
  for (std::size_t i = n8; i < x.size(); ++i) max = x[i] > max ? x[i] : max;
  return max;
}

/// sum(exp(x - shift)) in a fixed order (8 lanes, then a fixed tree): the softmax normaliser.
inline double sum_exp(std::span<const float> x, float shift) noexcept {
  const std::size_t n8 = x.size() - x.size() % 8;
  detail::v8f_math acc = {};
  for (std::size_t i = 0; i < n8; i += 8) {
    detail::v8f_math v;
    std::memcpy(&v, x.data() + i, sizeof v);
    acc += detail::exp8(v - detail::splat(shift));
  }
  double sum =
      ((double(acc[0]) + acc[4]) + (double(acc[1]) + acc[5])) + ((double(acc[2]) + acc[6]) + (double(acc[3]) + acc[7]));
  for (std::size_t i = n8; i < x.size(); ++i) sum += std::exp(double(x[i]) - shift);
  return sum;
}

/// sum(x) in a fixed order (8 lanes, then a fixed tree): no serial chain of adds.
inline double sum_of(std::span<const float> x) noexcept {
  const std::size_t n8 = x.size() - x.size() % 8;
  detail::v8f_math acc = {};
  for (std::size_t i = 0; i < n8; i += 8) {
    detail::v8f_math v;
    std::memcpy(&v, x.data() + i, sizeof v);
    acc += v;
  }
  double sum =
      ((double(acc[0]) + acc[4]) + (double(acc[1]) + acc[5])) + ((double(acc[2]) + acc[6]) + (double(acc[3]) + acc[7]));
  for (std::size_t i = n8; i < x.size(); ++i) sum += x[i];
  return sum;
}

/// log(sum(exp(x))) of a row; -inf for an empty or all -inf row.
inline double log_sum_exp(std::span<const float> x) noexcept {
  const float max = max_of(x);
  if (max == -std::numeric_limits<float>::infinity()) return -std::numeric_limits<double>::infinity();
  return max + std::log(sum_exp(x, max));  // shifted by the max so exp() cannot overflow
}

/// y += a * exp(x), vectorised (exp8, about 1 ulp).
inline void add_scaled_exp(float a, std::span<const float> x, std::span<float> y) noexcept {
  const std::size_t n8 = x.size() - x.size() % 8;
  for (std::size_t i = 0; i < n8; i += 8) {
    detail::v8f_math v, out;
    std::memcpy(&v, x.data() + i, sizeof v);
    std::memcpy(&out, y.data() + i, sizeof out);
    out += detail::splat(a) * detail::exp8(v);
    std::memcpy(y.data() + i, &out, sizeof out);
  }
  for (std::size_t i = n8; i < x.size(); ++i) y[i] += a * std::exp(x[i]);
}

/// out = exp(x), vectorised (exp8, about 1 ulp).
inline void exp_of(std::span<const float> x, std::span<float> out) noexcept {
  const std::size_t n8 = x.size() - x.size() % 8;
  for (std::size_t i = 0; i < n8; i += 8) {
    detail::v8f_math v;
    std::memcpy(&v, x.data() + i, sizeof v);
    v = detail::exp8(v);
    std::memcpy(out.data() + i, &v, sizeof v);
  }
  for (std::size_t i = n8; i < x.size(); ++i) out[i] = std::exp(x[i]);
}

/// out = silu(gate) * up = gate / (1 + exp(-gate)) * up, the SwiGLU gate, vectorised (exp8).
inline void silu_mul(std::span<const float> gate, std::span<const float> up, std::span<float> out) noexcept {
  const std::size_t n8 = gate.size() - gate.size() % 8;
  for (std::size_t i = 0; i < n8; i += 8) {
    detail::v8f_math g, u;
    std::memcpy(&g, gate.data() + i, sizeof g);
    std::memcpy(&u, up.data() + i, sizeof u);
    const detail::v8f_math v = g / (detail::splat(1.0f) + detail::exp8(-g)) * u;
    std::memcpy(out.data() + i, &v, sizeof v);
  }
  for (std::size_t i = n8; i < gate.size(); ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

/// In place: x <- log_softmax(x).
inline void log_softmax(std::span<float> x) noexcept {
  const double lse = log_sum_exp(x);
  for (float& v : x) v = static_cast<float>(v - lse);
}

/// In place: x <- softmax(x).
inline void softmax(std::span<float> x) noexcept {
  const double lse = log_sum_exp(x);
  for (float& v : x) v = static_cast<float>(std::exp(v - lse));
}

/// Index of the largest element; the first one on ties (as llama2.c's argmax). NaNs are passed
/// over (unless x[0] is one: then 0). The plain loop, argmax's reference.
inline std::size_t argmax_reference(std::span<const float> x) noexcept {
  std::size_t best = 0;
  for (std::size_t i = 1; i < x.size(); ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

/// argmax_reference, eight lanes at a time (GCC and Clang leave the plain loop scalar: its
/// comparisons chain): 32000 logits in ~6 us instead of ~23 (AMD Zen 3). Greedy decoding takes
/// it once per row and token, on the thread that samples.
inline std::size_t argmax(std::span<const float> x) noexcept {
  const std::size_t n = x.size();
  if (n < 16 || std::isnan(x[0])) return argmax_reference(x);
  using detail::v8f_math, detail::v8i_math;
  // each lane keeps the first index of its largest element: strictly greater replaces, so ties
  // keep the earlier index and a NaN never replaces (the lanes start below every number)
  v8f_math best = detail::splat(-std::numeric_limits<float>::infinity());
  v8i_math at = {}, index = {0, 1, 2, 3, 4, 5, 6, 7};
  const v8i_math eight = {8, 8, 8, 8, 8, 8, 8, 8};
  std::size_t i = 0;
  for (; i + 8 <= n && i + 8 <= std::size_t{INT32_MAX}; i += 8, index += eight) {
    v8f_math v;
    std::memcpy(&v, x.data() + i, sizeof v);
    const v8i_math greater = v > best;
    best = detail::blend(greater, v, best);
    at = (greater & index) | (~greater & at);
  }
  // the largest of the lanes' maxima, the lowest index on ties; x[0] (a number) is the start,
  // as in the plain loop, so a row of -inf gives 0
  float top = x[0];
  std::size_t result = 0;
  for (int l = 0; l < 8; ++l)
    if (best[l] > top || (best[l] == top && std::size_t(at[l]) < result)) top = best[l], result = std::size_t(at[l]);
  for (; i < n; ++i)
    if (x[i] > top) top = x[i], result = i;
  return result;
}

}  // namespace ipa
