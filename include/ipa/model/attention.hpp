// SPDX-License-Identifier: MIT
// Causal softmax attention, shared by every architecture (Llama's grouped-query attention and
// GPT-2's multi-head attention are the same math with kv_heads = heads). Rows hold Q | K | V
// side by side: Q is heads * head_size wide, K and V kv_heads * head_size each.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

#include "ipa/core/math.hpp"
#include "ipa/core/matmul.hpp"  // v8f helpers
#include "ipa/core/parallel.hpp"

namespace ipa::detail {

/// Lane sum in a fixed tree: ((0+1)+(2+3))+((4+5)+(6+7)).
inline float tree_sum8(v8f v) noexcept { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

/// Lane i of the result is tree_sum8(a[i]), bit for bit: three rounds of pairwise sums that
/// transpose as they go.
inline v8f tree_sum8x8(const v8f (&a)[8]) noexcept {
  auto pairs = [](v8f x, v8f y) {  // [x0+x1, y0+y1, x2+x3, y2+y3, ...]
    return __builtin_shufflevector(x, y, 0, 8, 2, 10, 4, 12, 6, 14) + __builtin_shufflevector(x, y, 1, 9, 3, 11, 5, 13, 7, 15);
  };
  auto quads = [](v8f x, v8f y) {
    return __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13) + __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
  };
  const v8f c0 = quads(pairs(a[0], a[1]), pairs(a[2], a[3])), c1 = quads(pairs(a[4], a[5]), pairs(a[6], a[7]));
  return __builtin_shufflevector(c0, c1, 0, 1, 2, 3, 8, 9, 10, 11) + __builtin_shufflevector(c0, c1, 4, 5, 6, 7, 12, 13, 14, 15);
}

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
        const float* k0 = key_cache + row0 * kv + kvh * hs;
        if (wide) {
          auto products = [&](std::size_t t) {  // q * k_t, 8 lanes (summed over the head's chunks)
            const float* k = k0 + t * kv;
            v8f acc = load8(q) * load8(k);
            for (std::size_t j = 8; j < hs; j += 8) acc += load8(q + j) * load8(k + j);
            return acc;
          };
          // eight positions at a time, their lane sums in one transposing tree (the same sums,
          // in the same order, as tree_sum8 on one position)
          std::size_t t = 0;
          for (; t + 8 <= std::size_t(p) + 1; t += 8) {
            v8f prod[8];
            for (std::size_t u = 0; u < 8; ++u) prod[u] = products(t + u);
            const v8f dots = tree_sum8x8(prod) * broadcast8(scale);
            std::memcpy(sc + t, &dots, sizeof dots);
          }
          for (; t <= std::size_t(p); ++t) sc[t] = tree_sum8(products(t)) * scale;
        } else {
          for (int t = 0; t <= p; ++t) {
            const float* k = k0 + std::size_t(t) * kv;
            float dot = 0.0f;
            for (std::size_t j = 0; j < hs; ++j) dot += q[j] * k[j];
            sc[t] = dot * scale;
          }
        }
        const float max = max_of(std::span<const float>(sc, std::size_t(p) + 1));
        const std::span<float> row(sc, std::size_t(p) + 1);
        for (float& v : row) v -= max;
        exp_of(row, row);  // vectorised: with head size 8 (stories260K) a scalar exp was a fifth of decoding
        const float inv_sum = 1.0f / float(sum_of(row));
        float* out = att + i * d + h * hs;
        const float* v0 = value_cache + row0 * kv + kvh * hs;
        if (wide) {
          // 8 outputs at a time, accumulated in a register over the positions (a store per
          // position made it a store-to-load chain)
          // four chains (positions t mod 4) hide the FMA latency
          for (std::size_t j = 0; j < hs; j += 8) {
            v8f acc[4] = {};
            const std::size_t positions = std::size_t(p) + 1;
            for (std::size_t t = 0; t < positions; ++t)
              acc[t % 4] += broadcast8(sc[t] * inv_sum) * load8(v0 + t * kv + j);
            const v8f sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
            std::memcpy(out + j, &sum, sizeof sum);
          }
        } else {
          std::fill_n(out, hs, 0.0f);
          for (int t = 0; t <= p; ++t)
            for (std::size_t j = 0; j < hs; ++j) out[j] += sc[t] * inv_sum * v0[std::size_t(t) * kv + j];
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
