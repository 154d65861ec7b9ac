// SPDX-License-Identifier: MIT
// GPT-2's element-wise layers, forward and backward, for the decoding model (float) and the
// trainable one (float or double): LayerNorm and GELU (tanh or erf form).
#pragma once
#include <cmath>
#include <cstddef>

#include "ipa/model/gpt2_weights.hpp"  // gelu_kind

namespace ipa::detail {

/// y = (x - mean) * rstd * w + b per row of width d; mean and rstd saved when non-null.
template <class T>
void layer_norm(T* y, T* mean_out, T* rstd_out, const T* x, const T* w, const T* b, std::size_t n, std::size_t d,
                T eps) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    const T* xi = x + i * d;
    T mean = 0;
    for (std::size_t j = 0; j < d; ++j) mean += xi[j];
    mean /= T(d);
    T var = 0;
    for (std::size_t j = 0; j < d; ++j) var += (xi[j] - mean) * (xi[j] - mean);
    const T rstd = T(1) / std::sqrt(var / T(d) + eps);
    for (std::size_t j = 0; j < d; ++j) y[i * d + j] = (xi[j] - mean) * rstd * w[j] + b[j];
    if (mean_out) mean_out[i] = mean;
    if (rstd_out) rstd_out[i] = rstd;
  }
}

/// dx += rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w; dw += dy * xhat; db += dy.
template <class T>
void layer_norm_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* mean, const T* rstd, const T* w,
                         std::size_t n, std::size_t d) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    const T *xi = x + i * d, *dyi = dy + i * d;
    T g_mean = 0, gx_mean = 0;
    for (std::size_t j = 0; j < d; ++j) {
      const T xhat = (xi[j] - mean[i]) * rstd[i], g = dyi[j] * w[j];
      g_mean += g;
      gx_mean += g * xhat;
    }
    g_mean /= T(d);
    gx_mean /= T(d);
    for (std::size_t j = 0; j < d; ++j) {
      const T xhat = (xi[j] - mean[i]) * rstd[i], g = dyi[j] * w[j];
      dx[i * d + j] += rstd[i] * (g - g_mean - xhat * gx_mean);
      dw[j] += dyi[j] * xhat;
      db[j] += dyi[j];
    }
  }
}

/// GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) or 0.5 x (1 + erf(x / sqrt(2))).
template <class T>
T gelu(T x, gelu_kind kind) noexcept {
  if (kind == gelu_kind::erf) return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
  const T s = T(0.79788456080286535588);  // sqrt(2/pi)
  return T(0.5) * x * (T(1) + std::tanh(s * (x + T(0.044715) * x * x * x)));
}

/// d gelu(x) / dx.
template <class T>
T gelu_grad(T x, gelu_kind kind) noexcept {
  if (kind == gelu_kind::erf) {
    const T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
    const T pdf = std::exp(T(-0.5) * x * x) * T(0.39894228040143267794);  // 1/sqrt(2 pi)
    return cdf + x * pdf;
  }
  const T s = T(0.79788456080286535588);
  const T th = std::tanh(s * (x + T(0.044715) * x * x * x));
  return T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * s * (T(1) + T(3) * T(0.044715) * x * x);
}

}  // namespace ipa::detail
