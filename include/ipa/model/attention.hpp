// SPDX-License-Identifier: MIT
// Causal softmax attention, shared by every architecture (Llama's grouped-query attention and
// GPT-2's multi-head attention are the same math with kv_heads = heads). Rows hold Q | K | V
// side by side: Q is heads * head_size wide, K and V kv_heads * head_size each.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "ipa/core/matmul.hpp"  // v8f helpers
#include "ipa/core/parallel.hpp"

namespace ipa::detail {

/// Head layout of one attention layer.
struct attention_shape {
  std::size_t heads = 0, kv_heads = 0, head_size = 0;
  std::size_t q_width() const noexcept { return heads * head_size; }
  std::size_t kv_width() const noexcept { return kv_heads * head_size; }
  std::size_t row_width() const noexcept { return q_width() + 2 * kv_width(); }  ///< Q | K | V
  std::size_t group() const noexcept { return heads / kv_heads; }
};

/// Decoding: n fed tokens (token i of row rows[i] at position pos[i], its Q|K|V in qkv) attend
/// over their row's cache, positions 0..pos[i]. The caches of this layer are (B, S, kv_width);
/// scores is n * heads * S scratch; att receives (n, q_width).
inline void cached_attention(const attention_shape& a, const float* qkv, const int* rows, const int* pos, std::size_t n,
                             const float* key_cache, const float* value_cache, std::size_t capacity, float* scores,
                             float* att) {
  const std::size_t hs = a.head_size, d = a.q_width(), kv = a.kv_width(), heads = a.heads, group = a.group(),
                    w = a.row_width();
  const float scale = 1.0f / std::sqrt(float(hs));
  const bool wide = hs % 8 == 0;  // head sizes of real models: 8, 16, 32, 64, 128
  std::size_t work = 0;
  for (std::size_t i = 0; i < n; ++i) work += std::size_t(pos[i] + 1) * d;
  parallel_for(
      n * heads,
      [&](std::size_t task) {
        const std::size_t i = task / heads, h = task % heads, kvh = h / group;
        const int p = pos[i];
        const float* q = qkv + i * w + h * hs;
        const std::size_t row0 = std::size_t(rows[i]) * capacity;
        float* sc = scores + task * capacity;
        float max = -INFINITY;
        for (int t = 0; t <= p; ++t) {
          const float* k = key_cache + (row0 + std::size_t(t)) * kv + kvh * hs;
          float dot = 0.0f;
          if (wide) {
            v8f acc = {};
            for (std::size_t j = 0; j < hs; j += 8) acc += load8(q + j) * load8(k + j);
            dot = hsum8(acc);
          } else {
            for (std::size_t j = 0; j < hs; ++j) dot += q[j] * k[j];
          }
          sc[t] = dot * scale;
          max = sc[t] > max ? sc[t] : max;
        }
        float sum = 0.0f;
        for (int t = 0; t <= p; ++t) {
          sc[t] = std::exp(sc[t] - max);
          sum += sc[t];
        }
        float* out = att + i * d + h * hs;
        std::fill_n(out, hs, 0.0f);
        const float inv_sum = 1.0f / sum;
        for (int t = 0; t <= p; ++t) {
          const float pr = sc[t] * inv_sum;
          const float* v = value_cache + (row0 + std::size_t(t)) * kv + kvh * hs;
          if (wide) {
            const v8f av = broadcast8(pr);
            for (std::size_t j = 0; j < hs; j += 8) {
              const v8f o = load8(out + j) + av * load8(v + j);
              std::memcpy(out + j, &o, sizeof o);
            }
          } else {
            for (std::size_t j = 0; j < hs; ++j) out[j] += pr * v[j];
          }
        }
      },
      work >= (std::size_t{1} << 16));
}

/// Training forward over B sequences of Tn positions: qkv is (B*Tn, row_width); probs
/// (B, heads, Tn, Tn) keeps the causal triangle for backward; att receives (B*Tn, q_width).
template <class T>
void causal_attention_forward(const attention_shape& a, std::size_t B, std::size_t Tn, const T* qkv, T* probs,
                              T* att) {
  const std::size_t d = a.q_width(), kv = a.kv_width(), hs = a.head_size, H = a.heads, group = a.group(),
                    w = a.row_width();
  const T scale = T(1) / std::sqrt(T(hs));
  parallel_for(B * H, [&](std::size_t task) {
    const std::size_t b = task / H, h = task % H, kvh = h / group;
    for (std::size_t t = 0; t < Tn; ++t) {
      const T* q = qkv + (b * Tn + t) * w + h * hs;
      T* p = probs + (task * Tn + t) * Tn;
      T max = -INFINITY;
      for (std::size_t s = 0; s <= t; ++s) {
        const T* k = qkv + (b * Tn + s) * w + d + kvh * hs;
        T dot = 0;
        for (std::size_t j = 0; j < hs; ++j) dot += q[j] * k[j];
        p[s] = dot * scale;
        max = std::max(max, p[s]);
      }
      T sum = 0;
      for (std::size_t s = 0; s <= t; ++s) sum += (p[s] = std::exp(p[s] - max));
      T* out = att + (b * Tn + t) * d + h * hs;
      std::fill_n(out, hs, T(0));
      for (std::size_t s = 0; s <= t; ++s) {
        p[s] /= sum;
        const T* v = qkv + (b * Tn + s) * w + d + kv + kvh * hs;
        for (std::size_t j = 0; j < hs; ++j) out[j] += p[s] * v[j];
      }
    }
  });
}

/// From d att (B*Tn, q_width) to d Q|K|V (B*Tn, row_width), overwritten. A kv head is shared by
/// `group` query heads, so one task per (sequence, kv head) owns its dK/dV rows and no two
/// threads write the same row.
template <class T>
void causal_attention_backward(const attention_shape& a, std::size_t B, std::size_t Tn, const T* qkv,
                               const T* probs, const T* datt, T* dqkv) {
  const std::size_t d = a.q_width(), kv = a.kv_width(), hs = a.head_size, H = a.heads, KH = a.kv_heads,
                    group = a.group(), w = a.row_width();
  const T scale = T(1) / std::sqrt(T(hs));
  std::fill_n(dqkv, B * Tn * w, T(0));
  parallel_for(B * KH, [&](std::size_t task) {
    const std::size_t b = task / KH, kvh = task % KH;
    std::vector<T> dp(Tn);
    for (std::size_t h = kvh * group; h < (kvh + 1) * group; ++h)
      for (std::size_t t = 0; t < Tn; ++t) {
        const T* p = probs + ((b * H + h) * Tn + t) * Tn;
        const T* dout = datt + (b * Tn + t) * d + h * hs;
        // dP[s] = dout . v[s];  dV[s] += P[s] dout
        T dot_pdp = 0;
        for (std::size_t s = 0; s <= t; ++s) {
          const T* v = qkv + (b * Tn + s) * w + d + kv + kvh * hs;
          T* dv = dqkv + (b * Tn + s) * w + d + kv + kvh * hs;
          T acc = 0;
          for (std::size_t j = 0; j < hs; ++j) {
            acc += dout[j] * v[j];
            dv[j] += p[s] * dout[j];
          }
          dp[s] = acc;
          dot_pdp += p[s] * acc;
        }
        // softmax backward, then the scaled dot products
        const T* q = qkv + (b * Tn + t) * w + h * hs;
        T* dq = dqkv + (b * Tn + t) * w + h * hs;
        for (std::size_t s = 0; s <= t; ++s) {
          const T ds = p[s] * (dp[s] - dot_pdp) * scale;
          const T* k = qkv + (b * Tn + s) * w + d + kvh * hs;
          T* dk = dqkv + (b * Tn + s) * w + d + kvh * hs;
          for (std::size_t j = 0; j < hs; ++j) {
            dq[j] += ds * k[j];
            dk[j] += ds * q[j];
          }
        }
      }
  });
}

}  // namespace ipa::detail
