// SPDX-License-Identifier: MIT
// Causal softmax attention, shared by every architecture (Llama's grouped-query attention and
// GPT-2's multi-head attention are the same math with kv_heads = heads). Rows hold Q | K | V
// side by side: Q is heads * head_size wide, K and V kv_heads * head_size each.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include "ipa/core/bf16.hpp"
#include "ipa/core/compact_matrix.hpp"  // load8_f16, load16_f16, add_halves
#include "ipa/core/math.hpp"
#include "ipa/core/matmul.hpp"  // v8f helpers
#include "ipa/core/parallel.hpp"
#include "ipa/model/kv_cache.hpp"

namespace ipa::detail {

/// Lane sum in a fixed tree: ((0+1)+(2+3))+((4+5)+(6+7)).
inline float tree_sum8(v8f v) noexcept { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

/// Lane i of the result is tree_sum8(a[i]), bit for bit: three rounds of pairwise sums that
/// transpose as they go.
inline v8f tree_sum8x8(const v8f (&a)[8]) noexcept {
  auto pairs = [](v8f x, v8f y) {  // [x0+x1, y0+y1, x2+x3, y2+y3, ...]
    return __builtin_shufflevector(x, y, 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(x, y, 1, 9, 3, 11, 5, 13, 7, 15);
  };
  auto quads = [](v8f x, v8f y) {
    return __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
  };
  const v8f c0 = quads(pairs(a[0], a[1]), pairs(a[2], a[3])), c1 = quads(pairs(a[4], a[5]), pairs(a[6], a[7]));
  return __builtin_shufflevector(c0, c1, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(c0, c1, 4, 5, 6, 7, 12, 13, 14, 15);
}

// A KV cache's elements as floats: f32 as stored, f16 widened (exact). Kv is float or
// std::uint16_t (half bits).
inline v8f load8_kv(const float* p) noexcept { return load8(p); }
inline v8f load8_kv(const std::uint16_t* p) noexcept { return load8_f16(reinterpret_cast<const unsigned char*>(p)); }
#if defined(__AVX512F__)
inline __m512 load16_kv(const float* p) noexcept { return _mm512_loadu_ps(p); }
inline __m512 load16_kv(const std::uint16_t* p) noexcept {
  return load16_f16(reinterpret_cast<const unsigned char*>(p));
}
#endif
inline float kv_at(const float* p, std::size_t i) noexcept { return p[i]; }
inline float kv_at(const std::uint16_t* p, std::size_t i) noexcept { return from_f16(p[i]); }

/// Head layout of one attention layer.
struct attention_shape {
  std::size_t heads = 0, kv_heads = 0, head_size = 0;
  std::size_t q_width() const noexcept { return heads * head_size; }
  std::size_t kv_width() const noexcept { return kv_heads * head_size; }
  std::size_t row_width() const noexcept { return q_width() + 2 * kv_width(); }  ///< Q | K | V
  std::size_t group() const noexcept { return heads / kv_heads; }
};

// What follows computes attention in llama.cpp's order, operation for operation (ggml's CPU
// backend as built for AVX2, KV cache in f32 or f16, without flash attention): its scores, weights and
// outputs are then llama.cpp's to the bit, and a quantized model fed by them rounds its int8
// inputs as llama.cpp does (one float summed in another order flips such a rounding now and then,
// and the flip travels on through the KV cache). ggml's dot product of two f32 rows keeps four
// accumulators of 8 lanes, element i of a 32-wide step in accumulator (i % 32) / 8, lane i % 8;
// then adds accumulator 2 to 0 and 3 to 1, then 1 to 0, then the lanes as
// ((0+4)+(1+5))+((2+6)+(3+7)); elements past the last whole step follow one by one. With an f16
// cache ggml converts the other operand (the query; the softmax's weights) to f16 and runs
// ggml_vec_dot_f16: the same steps on halves widened to float, the elements past the last step
// added in double (llama-server's default cache; remote_test checks both against it).

/// The lanes of ggml's reduced accumulators, reordered so that tree_sum8 adds them as ggml does.
inline v8f ggml_lane_order(v8f acc0, v8f acc1, v8f acc2, v8f acc3) noexcept {
  const v8f x = (acc0 + acc2) + (acc1 + acc3);
  return __builtin_shufflevector(x, x, 0, 4, 1, 5, 2, 6, 3, 7);
}

/// q . k over hs floats in ggml_vec_dot_f32's order (see above): the vector part's lanes, in
/// tree_sum8 order; `tail` adds the elements past the last whole step of 32.
/// (ggml_vec_dot_f16, for an f16 cache, has the same steps, lanes and order, on halves widened.)
/// (AVX-512 builds hold accumulators 0|1 and 2|3 side by side in 16 lanes: the same chains.)
template <class Kv>
inline v8f ggml_dot_lanes(const float* q, const Kv* k, std::size_t hs) noexcept {
#if defined(__AVX512F__)
  __m512 acc01 = _mm512_setzero_ps(), acc23 = _mm512_setzero_ps();
  for (std::size_t i = 0; i + 32 <= hs; i += 32) {
    acc01 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load16_kv(k + i), acc01);
    acc23 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), load16_kv(k + i + 16), acc23);
  }
  const v8f x = add_halves(_mm512_add_ps(acc01, acc23));  // (acc0 + acc2) + (acc1 + acc3)
  return __builtin_shufflevector(x, x, 0, 4, 1, 5, 2, 6, 3, 7);
#else
  v8f acc[4] = {};
  for (std::size_t i = 0; i + 32 <= hs; i += 32)
    for (std::size_t j = 0; j < 4; ++j) acc[j] = fma8(load8(q + i + 8 * j), load8_kv(k + i + 8 * j), acc[j]);
  return ggml_lane_order(acc[0], acc[1], acc[2], acc[3]);
#endif
}
// (GCC vectorises ggml's loop over those elements: eight products at a time, each rounded, then
// added one by one; hs is a multiple of 8 here. A product taken out of a vector is not fused
// into the add.)
inline float ggml_dot_tail(float sum, const float* q, const float* k, std::size_t hs) noexcept {
  for (std::size_t i = hs - hs % 32; i < hs; i += 8) {
    const v8f products = load8(q + i) * load8(k + i);
    for (int l = 0; l < 8; ++l) sum += products[l];
  }
  return sum;
}
// ggml_vec_dot_f16 adds those elements' products (each rounded to float) in double.
inline float ggml_dot_tail(float sum, const float* q, const std::uint16_t* k, std::size_t hs) noexcept {
  double total = sum;
  for (std::size_t i = hs - hs % 32; i < hs; ++i) total += double(q[i] * from_f16(k[i]));
  return float(total);
}

// softmax of sc[0, positions) in place, as ggml_soft_max_ext: exp(s - max) eight at a time (the
// row is padded with masked positions, so the last eight too), each eight summed in float
// as ggml_hsum8 adds them, into a double, then scaled by float(1 / sum)
inline void softmax_scores(float* sc, std::size_t positions) noexcept {
  const float max = max_of(std::span<const float>(sc, positions));
  double sum = 0.0;
  for (std::size_t t = 0; t < positions; t += 8) {
    v8f x = broadcast8(-std::numeric_limits<float>::infinity());
    const std::size_t m = std::min<std::size_t>(8, positions - t);
    std::memcpy(&x, sc + t, m * sizeof(float));
    const v8f e = exp8(x - broadcast8(max));
    std::memcpy(sc + t, &e, m * sizeof(float));
    sum += double(ggml_hsum8(e));
  }
  const float inv_sum = float(1.0 / sum);
  for (std::size_t t = 0; t < positions; ++t) sc[t] *= inv_sum;
}

/// out[0, 8 C) = sum over t < positions of p[t] * v[t * stride + (0, 8 C)], each output as ggml's
/// dot product of its (transposed) value row with the weights: position t in accumulator
/// (t % 32) / 8, lane t % 8 (padding positions add nothing). The lanes here hold outputs, so
/// lane l's four accumulators run over positions l, l + 8, l + 16, ... in turn, are reduced as
/// ggml reduces them, and the eight lanes' results are added in ggml's lane order. C blocks of 8
/// outputs share the passes (and the loads of the weights).
template <int C, class Kv>
inline void ggml_weighted_sum(const float* p, const Kv* v, std::size_t stride, std::size_t positions,
                              float* out) noexcept {
#if defined(__AVX512F__)
  if constexpr (C == 2) {  // the two blocks of 8 outputs in one register's halves: the same chains
    v8f lanes[C][8];
    for (std::size_t l = 0; l < 8; ++l) {
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      auto add = [&](std::size_t t, int a) {
        acc[a] = _mm512_fmadd_ps(_mm512_set1_ps(p[t]), load16_kv(v + t * stride), acc[a]);
      };
      std::size_t t = l;
      for (; t + 24 < positions; t += 32)
        for (int a = 0; a < 4; ++a) add(t + 8 * std::size_t(a), a);
      for (int a = 0; t + 8 * std::size_t(a) < positions; ++a) add(t + 8 * std::size_t(a), a);
      v16f sum;
      const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
      std::memcpy(&sum, &s, sizeof sum);
      lanes[0][l] = __builtin_shufflevector(sum, sum, 0, 1, 2, 3, 4, 5, 6, 7);
      lanes[1][l] = __builtin_shufflevector(sum, sum, 8, 9, 10, 11, 12, 13, 14, 15);
    }
    for (int c = 0; c < C; ++c) {
      const v8f total = sum8(lanes[c]);
      std::memcpy(out + 8 * c, &total, sizeof total);
    }
    return;
  }
#endif
  v8f lanes[C][8];
  for (std::size_t l = 0; l < 8; ++l) {
    v8f acc[C][4] = {};
    auto add = [&](std::size_t t, int a) {
      const v8f w = broadcast8(p[t]);
      for (int c = 0; c < C; ++c) acc[c][a] = fma8(w, load8_kv(v + t * stride + 8 * c), acc[c][a]);
    };
    std::size_t t = l;
    for (; t + 24 < positions; t += 32)
      for (int a = 0; a < 4; ++a) add(t + 8 * std::size_t(a), a);
    for (int a = 0; t + 8 * std::size_t(a) < positions; ++a) add(t + 8 * std::size_t(a), a);
    for (int c = 0; c < C; ++c) lanes[c][l] = (acc[c][0] + acc[c][2]) + (acc[c][1] + acc[c][3]);
  }
  for (int c = 0; c < C; ++c) {
    const v8f total = sum8(lanes[c]);
    std::memcpy(out + 8 * c, &total, sizeof total);
  }
}

/// H query heads (1 or 2) that share one kv head, head_size a multiple of 8, in one pass over
/// the keys and one over the values: head g's query at q + g * hs, scores at sc + g * sc_stride,
/// output at out + g * hs. Keys and values at k0/v0 + t * stride. Each head's arithmetic is the
/// same as alone (H = 1), and llama.cpp's (above).
template <int H, class Kv>
inline void wide_heads(const float* q, const Kv* k0, const Kv* v0, std::size_t stride, std::size_t hs,
                       std::size_t positions, float scale, float* sc, std::size_t sc_stride, float* out) noexcept {
  // The cache is read once per step and not again before the weights have gone through the
  // caches: ask for the next eight keys and these eight values ahead of their use.
  auto fetch = [&](const Kv* row) {
    for (std::size_t j = 0; j < hs * sizeof(Kv); j += 64) __builtin_prefetch(reinterpret_cast<const char*>(row) + j);
  };
  const bool whole_steps = hs % 32 == 0;
  // eight positions at a time, their lane sums in one transposing tree (the same sums, in the
  // same order, as tree_sum8 on one position)
  std::size_t t = 0;
  for (; t + 8 <= positions; t += 8) {
    for (std::size_t u = 0; u < 8; ++u) {
      if (t + 8 + u < positions) fetch(k0 + (t + 8 + u) * stride);
      fetch(v0 + (t + u) * stride);
    }
    for (int g = 0; g < H; ++g) {
      const float* qg = q + g * hs;
      v8f lanes[8];
      IPA_UNROLL(8)
      for (std::size_t u = 0; u < 8; ++u) lanes[u] = ggml_dot_lanes(qg, k0 + (t + u) * stride, hs);
      v8f dots = tree_sum8x8(lanes);
      if (!whole_steps)
        for (std::size_t u = 0; u < 8; ++u) dots[u] = ggml_dot_tail(dots[u], qg, k0 + (t + u) * stride, hs);
      dots *= broadcast8(scale);
      std::memcpy(sc + g * sc_stride + t, &dots, sizeof dots);
    }
  }
  for (; t < positions; ++t)
    for (int g = 0; g < H; ++g) {
      const float* qg = q + g * hs;
      const Kv* k = k0 + t * stride;
      sc[g * sc_stride + t] = ggml_dot_tail(tree_sum8(ggml_dot_lanes(qg, k, hs)), qg, k, hs) * scale;
    }
  for (int g = 0; g < H; ++g) {
    softmax_scores(sc + g * sc_stride, positions);
    if constexpr (!std::is_same_v<Kv, float>) round_to_f16(sc + g * sc_stride, positions);
  }
  // Output j of head g is ggml's dot product of the values' column j with the weights (llama.cpp
  // keeps the values transposed), its rows padded with masked positions (weight 0, adding
  // nothing) to whole steps of 32: position t goes to accumulator (t % 32) / 8, lane t % 8. Here
  // the lanes are 8 outputs instead, so lane l's four accumulators are summed over positions
  // l, l + 8, l + 16, ... in turn, reduced as ggml reduces them, and the eight lanes' results
  // added in ggml's lane order: the same sums, position-major, with nothing transposed.
  for (int g = 0; g < H; ++g) {
    const float* p = sc + g * sc_stride;
    if (hs % 16 == 0)
      for (std::size_t j = 0; j < hs; j += 16) ggml_weighted_sum<2>(p, v0 + j, stride, positions, out + g * hs + j);
    else
      for (std::size_t j = 0; j < hs; j += 8) ggml_weighted_sum<1>(p, v0 + j, stride, positions, out + g * hs + j);
  }
}

/// `heads` query heads (consecutive, q + g * hs) sharing one kv head: scores q.k_t / sqrt(hs)
/// over t < positions (key t at k0 + t * stride, value t at v0 + t * stride), softmax, output
/// head g at out + g * hs = sum_t p_t v_t. Scores of head g at sc + g * sc_stride (scratch).
/// With an f16 cache (Kv = std::uint16_t) the queries are rounded to half in place first, and
/// the softmax's weights after it, as llama.cpp's products with an f16 cache round them.
template <class Kv>
inline void attend_heads(float* q, std::size_t heads, const Kv* k0, const Kv* v0, std::size_t stride, std::size_t hs,
                         std::size_t positions, float* sc, std::size_t sc_stride, float* out) noexcept {
  const float scale = 1.0f / std::sqrt(float(hs));
  if constexpr (!std::is_same_v<Kv, float>) round_to_f16(q, heads * hs);
  if (hs % 8 == 0) {  // real models: 8 .. 128; pairs of heads share the passes over K and V
    std::size_t g = 0;
    for (; g + 2 <= heads; g += 2)
      wide_heads<2>(q + g * hs, k0, v0, stride, hs, positions, scale, sc + g * sc_stride, sc_stride, out + g * hs);
    if (g < heads)
      wide_heads<1>(q + g * hs, k0, v0, stride, hs, positions, scale, sc + g * sc_stride, sc_stride, out + g * hs);
    return;
  }
  for (std::size_t g = 0; g < heads; ++g) {
    const float* qg = q + g * hs;
    float* sg = sc + g * sc_stride;
    for (std::size_t t = 0; t < positions; ++t) {
      const Kv* k = k0 + t * stride;
      float dot = 0.0f;
      for (std::size_t j = 0; j < hs; ++j) dot += qg[j] * kv_at(k, j);
      sg[t] = dot * scale;
    }
    softmax_scores(sg, positions);
    if constexpr (!std::is_same_v<Kv, float>) round_to_f16(sg, positions);
    float* o = out + g * hs;
    std::fill_n(o, hs, 0.0f);
    for (std::size_t t = 0; t < positions; ++t)
      for (std::size_t j = 0; j < hs; ++j) o[j] += sg[t] * kv_at(v0, t * stride + j);
  }
}

/// attend_heads on layer l, row `row`, kv head kvh of a state's cache, whichever its type.
inline void attend_cached(float* q, std::size_t heads, const kv_cache_state& s, std::size_t l, int row, std::size_t kvh,
                          std::size_t positions, float* sc, std::size_t sc_stride, float* out) noexcept {
  const std::size_t hs = s.head_size, at = s.offset(l, row, kvh);
  if (s.type == kv_cache_type::f16)
    attend_heads(q, heads, s.key_cache.as<std::uint16_t>() + at, s.value_cache.as<std::uint16_t>() + at, hs, hs,
                 positions, sc, sc_stride, out);
  else
    attend_heads(q, heads, s.key_cache.as<float>() + at, s.value_cache.as<float>() + at, hs, hs, positions, sc,
                 sc_stride, out);
}

/// Decoding: n fed tokens (token i of row rows[i] at position pos[i], its Q|K|V in qkv, its K
/// and V already in the cache) attend over their row's positions 0..pos[i] of layer l's cache;
/// att receives (n, q_width); s.scores holds n * heads * capacity floats of scratch. (An f16
/// cache rounds the queries in qkv to half, in place.)
inline void cached_attention(const attention_shape& a, float* qkv, const int* rows, const int* pos, std::size_t n,
                             kv_cache_state& s, std::size_t l, float* att) {
  const std::size_t hs = a.head_size, d = a.q_width(), heads = a.heads, group = a.group(), w = a.row_width(),
                    capacity = std::size_t(s.capacity);
  std::size_t work = 0;
  for (std::size_t i = 0; i < n; ++i) work += std::size_t(pos[i] + 1) * d;
  parallel_for(
      n * heads,
      [&](std::size_t task) {
        const std::size_t i = task / heads, h = task % heads;
        attend_cached(qkv + i * w + h * hs, 1, s, l, rows[i], h / group, std::size_t(pos[i]) + 1,
                      s.scores.data() + task * capacity, capacity, att + i * d + h * hs);
      },
      work >= (std::size_t{1} << 16));
}

/// Training forward over B sequences of Tn positions: qkv is (B*Tn, row_width); probs
/// (B, heads, Tn, Tn) keeps the causal triangle for backward; att receives (B*Tn, q_width).
template <class T>
void causal_attention_forward(const attention_shape& a, std::size_t B, std::size_t Tn, const T* qkv, T* probs, T* att) {
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
void causal_attention_backward(const attention_shape& a, std::size_t B, std::size_t Tn, const T* qkv, const T* probs,
                               const T* datt, T* dqkv) {
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
