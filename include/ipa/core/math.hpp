// SPDX-License-Identifier: MIT
// Small numeric helpers shared by every layer: log-sum-exp, softmax, argmax over a row.
#pragma once
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>

#if defined(__CUDACC__)
#define IPA_HOST_DEVICE __host__ __device__
#else
#define IPA_HOST_DEVICE
#endif

namespace ipa {

/// log(sum(exp(x))) of a row, computed in double; -inf for an empty or all -inf row.
inline double log_sum_exp(std::span<const float> x) noexcept {
  float max = -std::numeric_limits<float>::infinity();
  for (float v : x) max = v > max ? v : max;
  if (max == -std::numeric_limits<float>::infinity()) return -std::numeric_limits<double>::infinity();
  double sum = 0.0;  // subtract the row max so exp() cannot overflow
  for (float v : x) sum += std::exp(static_cast<double>(v) - max);
  return max + std::log(sum);
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

/// Index of the largest element; the first one on ties (as llama2.c's argmax).
inline std::size_t argmax(std::span<const float> x) noexcept {
  std::size_t best = 0;
  for (std::size_t i = 1; i < x.size(); ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

}  // namespace ipa
