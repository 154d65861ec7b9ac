// SPDX-License-Identifier: MIT
// ggml's weight encodings, one block at a time, the plain scalar way: what a GGUF file's bytes
// mean (F32, F16, BF16, Q4_0, Q8_0, Q3_K, Q4_K, Q5_K, Q6_K) and how llama.cpp quantizes the inputs of a product
// (Q8_0, Q8_K). The kernels in compact_matrix.hpp read the same bytes in registers; these
// functions are their reference. Layouts and arithmetic follow ggml-common.h and
// ggml-quants.c (llama.cpp b4748), so the weights decode to the same floats as in llama.cpp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "ipa/core/bf16.hpp"

namespace ipa {

/// How a matrix's rows are stored, by ggml's type ids. Q8_K is an input encoding only (the
/// inputs of the K-quants' products); files never hold it.
enum class weight_type : std::uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q8_0 = 8,
  q3_k = 11,
  q4_k = 12,
  q5_k = 13,
  q6_k = 14,
  q8_k = 15,
  bf16 = 30
};

/// ggml's name of a type ("Q4_K").
inline const char* weight_type_name(weight_type t) noexcept {
  switch (t) {
    case weight_type::f32: return "F32";
    case weight_type::f16: return "F16";
    case weight_type::bf16: return "BF16";
    case weight_type::q4_0: return "Q4_0";
    case weight_type::q8_0: return "Q8_0";
    case weight_type::q3_k: return "Q3_K";
    case weight_type::q4_k: return "Q4_K";
    case weight_type::q5_k: return "Q5_K";
    case weight_type::q6_k: return "Q6_K";
    case weight_type::q8_k: return "Q8_K";
  }
  return "?";
}

/// True for the ggml type ids a model file may store and ipa reads.
inline bool is_stored_weight_type(std::uint32_t id) noexcept {
  return id == 0 || id == 1 || id == 30 || id == 2 || id == 8 || id == 11 || id == 12 || id == 13 || id == 14;
}

/// ggml's name of a type id, for messages about files (those ipa does not read too).
inline const char* ggml_type_name(std::uint32_t id) noexcept {
  static constexpr const char* names[] = {
      "F32",     "F16",   "Q4_0",   "Q4_1",  "Q4_2 (removed)", "Q4_3 (removed)", "Q5_0", "Q5_1",    "Q8_0",
      "Q8_1",    "Q2_K",  "Q3_K",   "Q4_K",  "Q5_K",           "Q6_K",           "Q8_K", "IQ2_XXS", "IQ2_XS",
      "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S",          "IQ4_XS",         "I8",   "I16",     "I32",
      "I64",     "F64",   "IQ1_M",  "BF16"};
  return id < std::size(names) ? names[id] : "unknown";
}

/// A type's block: `elements` weights in `bytes` bytes (F32, F16, BF16: one weight a block).
struct block_layout {
  std::size_t elements, bytes;
};
inline constexpr block_layout layout_of(weight_type t) noexcept {
  switch (t) {
    case weight_type::f32: return {1, 4};
    case weight_type::f16:
    case weight_type::bf16: return {1, 2};
    case weight_type::q4_0: return {32, 18};    // f16 d, 16 bytes of nibbles
    case weight_type::q8_0: return {32, 34};    // f16 d, 32 int8
    case weight_type::q3_k: return {256, 110};  // 32 bytes of high bits, 64 of 2-bit pairs, 12 of 6-bit scales, f16 d
    case weight_type::q4_k: return {256, 144};  // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 of nibbles
    case weight_type::q5_k: return {256, 176};  // Q4_K's, with 32 bytes of fifth bits before the nibbles
    case weight_type::q6_k: return {256, 210};  // 128 low nibbles, 64 of high bit pairs, 16 int8 scales, f16 d
    case weight_type::q8_k: return {256, 292};  // f32 d, 256 int8, 16 int16 sums of 16
  }
  return {1, 0};
}
inline constexpr std::size_t q8_0_block = 32, q8_0_block_bytes = 34;

/// The encoding of the inputs that llama.cpp's CPU build multiplies a type's weights with
/// (ggml's vec_dot_type): F16 and BF16 weights take inputs rounded to their type (ipa keeps them
/// as floats), Q4_0 and Q8_0 take Q8_0 inputs, the K-quants (Q3_K to Q6_K) Q8_K inputs.
inline constexpr weight_type input_type(weight_type t) noexcept {
  switch (t) {
    case weight_type::q4_0:
    case weight_type::q8_0: return weight_type::q8_0;
    case weight_type::q3_k:
    case weight_type::q4_k:
    case weight_type::q5_k:
    case weight_type::q6_k:
    case weight_type::q8_k: return weight_type::q8_k;
    default: return t;
  }
}

namespace detail {
inline std::uint16_t load_u16(const unsigned char* p) noexcept {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}
inline std::uint32_t load_u32(const unsigned char* p) noexcept {
  std::uint32_t u;
  std::memcpy(&u, p, 4);
  return u;
}
inline float load_half(const unsigned char* p) noexcept { return from_f16(load_u16(p)); }
inline float load_f32(const unsigned char* p) noexcept {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}
// Q3_K's sixteen 6-bit scales, packed in 12 bytes (low nibbles in bytes 0-7, high bit pairs in
// 8-11), as signed scales (minus 32), in ggml's dequantize_row_q3_K order.
inline void q3_k_scales(const unsigned char* packed, std::int8_t (&scale)[16]) noexcept {
  for (int i = 0; i < 16; ++i) {
    const int low = (packed[i % 8] >> (4 * (i / 8))) & 0xF, high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
    scale[i] = std::int8_t((low | (high << 4)) - 32);
  }
}
// Q4_K's eight 6-bit scales and eight 6-bit mins, packed in 12 bytes (ggml's get_scale_min_k4).
inline void q4_k_scales(const unsigned char* q, std::uint8_t (&scale)[8], std::uint8_t (&min)[8]) noexcept {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      scale[j] = q[j] & 63;
      min[j] = q[j + 4] & 63;
    } else {
      scale[j] = std::uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
      min[j] = std::uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
  }
}
// ggml's nearest_int: round half to even for |v| < 2^22 (adding 1.5 x 2^23 leaves the integer
// in the low mantissa bits); defined for every float, NaN included, where int(v) would not be
inline int nearest_int(float v) noexcept {
  const float shifted = v + 12582912.0f;
  std::int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return (bits & 0x007fffff) - 0x00400000;
}
// nearest_int(a * b) with the product rounded to float first, as llama.cpp's quantizers round
// it (their x86 build multiplies, then rounds in another instruction). Written plainly, a
// compiler with FMA fuses the multiply into nearest_int's add, rounds the exact product, and an
// input within an ulp of a tie goes the other way: a Q4_0 or Q6_K token embedding, whose rows
// are multiples of one step, puts dozens of exact ties into the first layer's inputs.
// (nearbyint rounds half to even as well; the product cannot fuse into it.)
inline int nearest_int_of_product(float a, float b) noexcept { return nearest_int(std::nearbyint(a * b)); }
#if defined(__AVX__)
// The eight lanes of v combined by op (_mm_max_ps or _mm_add_ps on four lanes; exact here, so
// any order), in three shuffles.
template <class Op>
inline float combine8(__m256 v, Op op) noexcept {
  __m128 m = op(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = op(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(op(m, _mm_movehdup_ps(m)));
}
#endif

// 0 when every x is finite, NaN otherwise (x - x): added to a block's scale, it makes a
// non-finite input reach the product's result, as float arithmetic would carry it, where the
// integer quants alone would drop it (models read in place check their values that way). Any
// order of the sum gives the same 0 or NaN, so eight lanes at a time where the build has AVX.
inline float non_finite_mark(const float* x, std::size_t n) noexcept {
#if defined(__AVX__)
  if (n % 8 == 0) {
    __m256 lanes = _mm256_setzero_ps();
    for (std::size_t i = 0; i < n; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      lanes = _mm256_add_ps(lanes, _mm256_sub_ps(v, v));
    }
    return combine8(lanes, [](__m128 a, __m128 b) { return _mm_add_ps(a, b); });
  }
#endif
  float mark = 0.0f;
  for (std::size_t i = 0; i < n; ++i) mark += x[i] - x[i];
  return mark;
}

// The largest |x|, NaNs skipped as std::max(amax, |x|) skips them (the maximum of the rest is
// exact, so eight lanes at a time where the build has AVX: vmaxps returns its second operand,
// the lanes so far, on a NaN). Every quantizer's block scale starts here.
inline float max_magnitude(const float* x, std::size_t n) noexcept {
#if defined(__AVX__)
  if (n % 8 == 0) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 lanes = _mm256_setzero_ps();
    for (std::size_t i = 0; i < n; i += 8) lanes = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), lanes);
    return combine8(lanes, [](__m128 a, __m128 b) { return _mm_max_ps(a, b); });
  }
#endif
  float amax = 0.0f;
  for (std::size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

struct magnitude {
  float amax, max;  ///< the largest |x| (NaNs skipped) and the first x of that magnitude, signed
};
// What ggml's quantize_row_q8_K_ref scans for: `if (|x| > amax) amax = |x|, max = x` in order,
// that is max_magnitude and the first x that has it.
inline magnitude largest_magnitude(const float* x, std::size_t n) noexcept {
  const float amax = max_magnitude(x, n);
  if (amax == 0.0f) return {0.0f, 0.0f};
  std::size_t i = 0;
#if defined(__AVX__)
  const __m256 sign = _mm256_set1_ps(-0.0f), target = _mm256_set1_ps(amax);
  for (; i + 8 <= n; i += 8) {
    const __m256 magnitudes = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i));
    if (const int hits = _mm256_movemask_ps(_mm256_cmp_ps(magnitudes, target, _CMP_EQ_OQ)))
      return {amax, x[i + std::size_t(__builtin_ctz(unsigned(hits)))]};
  }
#endif
  for (; i < n; ++i)
    if (std::fabs(x[i]) == amax) return {amax, x[i]};
  return {amax, 0.0f};  // (not reached: amax is one of the |x|)
}
}  // namespace detail

/// The layout_of(t).elements weights of one block as floats, as ggml's dequantize_row_* computes them.
inline void dequantize_block(weight_type t, const unsigned char* block, float* out) noexcept {
  using detail::load_half;
  switch (t) {
    case weight_type::f32: out[0] = detail::load_f32(block); return;
    case weight_type::f16: out[0] = load_half(block); return;
    case weight_type::bf16: out[0] = from_bf16(detail::load_u16(block)); return;
    case weight_type::q4_0: {  // weight j: low nibble of byte j, weight j + 16: its high nibble; minus 8
      const float d = load_half(block);
      for (int j = 0; j < 16; ++j) {
        out[j] = float((block[2 + j] & 0xF) - 8) * d;
        out[j + 16] = float((block[2 + j] >> 4) - 8) * d;
      }
      return;
    }
    case weight_type::q8_0: {
      const float d = load_half(block);
      for (int j = 0; j < 32; ++j) out[j] = d * float(static_cast<std::int8_t>(block[2 + j]));
      return;
    }
    case weight_type::q3_k: {  // weight 128h + 32j + l: bits 2j of qs[32h + l], minus 4 unless bit 4h + j of hmask[l]
      const unsigned char* hmask = block;
      const unsigned char* qs = block + 32;
      std::int8_t scale[16];
      detail::q3_k_scales(block + 96, scale);
      const float d = load_half(block + 108);
      for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 4; ++j)
          for (int l = 0; l < 32; ++l) {
            const int q = ((qs[32 * h + l] >> (2 * j)) & 3) - (((hmask[l] >> (4 * h + j)) & 1) ? 0 : 4);
            *out++ = d * float(scale[8 * h + 2 * j + l / 16]) * float(q);
          }
      return;
    }
    case weight_type::q4_k:
    case weight_type::q5_k: {  // 64 weights per 32 bytes of nibbles: low (scale 2j), then high (2j + 1);
                               // Q5_K adds bit 2j (low) or 2j + 1 (high) of qh[l] as 16, qh before the nibbles
      const float d = load_half(block), dmin = load_half(block + 2);
      std::uint8_t scale[8], min[8];
      detail::q4_k_scales(block + 4, scale, min);
      const bool fifth = t == weight_type::q5_k;
      const unsigned char* qh = block + 16;
      const unsigned char* q = block + (fifth ? 48 : 16);
      auto bit = [&](int l, int b) { return fifth ? ((qh[l] >> b) & 1) << 4 : 0; };
      for (int j = 0; j < 4; ++j, q += 32) {
        const float d1 = d * scale[2 * j], m1 = dmin * min[2 * j];
        const float d2 = d * scale[2 * j + 1], m2 = dmin * min[2 * j + 1];
        for (int l = 0; l < 32; ++l) *out++ = d1 * float((q[l] & 0xF) | bit(l, 2 * j)) - m1;
        for (int l = 0; l < 32; ++l) *out++ = d2 * float((q[l] >> 4) | bit(l, 2 * j + 1)) - m2;
      }
      return;
    }
    case weight_type::q6_k: {  // 6-bit q = low nibble | 2 high bits, minus 32; an int8 scale per 16 weights
      const unsigned char* ql = block;
      const unsigned char* qh = block + 128;
      const auto* sc = reinterpret_cast<const std::int8_t*>(block + 192);
      const float d = load_half(block + 208);
      for (int half = 0; half < 2; ++half, out += 128, ql += 64, qh += 32, sc += 8) {
        for (int l = 0; l < 32; ++l) {
          const int is = l / 16;
          const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
          const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
          const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
          const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
          out[l] = d * float(sc[is]) * float(q1);
          out[l + 32] = d * float(sc[is + 2]) * float(q2);
          out[l + 64] = d * float(sc[is + 4]) * float(q3);
          out[l + 96] = d * float(sc[is + 6]) * float(q4);
        }
      }
      return;
    }
    case weight_type::q8_k: {
      const float d = detail::load_f32(block);
      for (int j = 0; j < 256; ++j) out[j] = d * float(static_cast<std::int8_t>(block[4 + j]));
      return;
    }
  }
}

/// True when a block's scales (F32/F16: its weight) are finite: a block's weights are then finite.
inline bool block_is_finite(weight_type t, const unsigned char* block) noexcept {
  using detail::load_half;
  switch (t) {
    case weight_type::f32:
    case weight_type::q8_k: return std::isfinite(detail::load_f32(block));
    case weight_type::bf16: return std::isfinite(from_bf16(detail::load_u16(block)));
    case weight_type::f16:
    case weight_type::q4_0:
    case weight_type::q8_0: return std::isfinite(load_half(block));
    case weight_type::q4_k:
    case weight_type::q5_k: return std::isfinite(load_half(block)) && std::isfinite(load_half(block + 2));
    case weight_type::q6_k: return std::isfinite(load_half(block + 208));
    case weight_type::q3_k: return std::isfinite(load_half(block + 108));
  }
  return false;
}

namespace detail {
// Q8_0 blocks of x: d = max|x| / 127 stored as F16, q = quantize(x_c, max|x|) per weight.
template <class Quantize>
void q8_0_blocks(const float* x, std::size_t k, unsigned char* out, Quantize quantize) noexcept {
  for (std::size_t b = 0; b < k / q8_0_block; ++b, x += q8_0_block, out += q8_0_block_bytes) {
    const float amax = max_magnitude(x, q8_0_block);
    const std::uint16_t h = to_f16(amax / 127.0f + non_finite_mark(x, q8_0_block));
    std::memcpy(out, &h, 2);
    for (std::size_t c = 0; c < q8_0_block; ++c) out[2 + c] = static_cast<unsigned char>(quantize(x[c], amax));
  }
}
}  // namespace detail

/// Quantizes k weights (a multiple of 32) to Q8_0 blocks in `out` (k / 32 * 34 bytes), as ggml's
/// quantize_row_q8_0_ref (what llama-quantize writes): q = round(x / d), ties away from zero.
inline void quantize_row_q8_0(const float* x, std::size_t k, unsigned char* out) noexcept {
  detail::q8_0_blocks(x, k, out, [](float v, float amax) {
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    return std::int8_t(std::round(v * id));
  });
}

/// The same as llama.cpp's x86 build quantizes the inputs of a product (quantize_row_q8_0's AVX
/// path, not the reference): q = nearest(x * (127 / max|x|)), ties to even.
inline void quantize_input_q8_0(const float* x, std::size_t k, unsigned char* out) noexcept {
#if defined(__AVX2__)
  // q8_0_blocks' scale, then the 32 quants in registers: every step of a Q8_0 or Q4_0 product
  // runs this on every input row, and at -O2 GCC leaves the element loop scalar (4x slower)
  for (std::size_t b = 0; b < k / q8_0_block; ++b, x += q8_0_block, out += q8_0_block_bytes) {
    const float amax = detail::max_magnitude(x, q8_0_block);
    const std::uint16_t h = to_f16(amax / 127.0f + detail::non_finite_mark(x, q8_0_block));
    std::memcpy(out, &h, 2);
    // llama.cpp's instructions: multiply, round half to even, convert (nearest_int_of_product)
    const __m256 scale = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    __m256i q[4];
    for (int i = 0; i < 4; ++i)
      q[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), scale),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    // int32 -> int8 (|q| <= 127 for finite x), the packs' lane order undone by one permute
    const __m256i bytes =
        _mm256_permutevar8x32_epi32(_mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3])),
                                    _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    std::memcpy(out + 2, &bytes, 32);
  }
#else
  detail::q8_0_blocks(x, k, out, [](float v, float amax) {
    return std::int8_t(detail::nearest_int_of_product(v, amax != 0.0f ? 127.0f / amax : 0.0f));
  });
#endif
}

/// Quantizes k inputs (a multiple of 256) to Q8_K blocks in `out` (k / 256 * 292 bytes), as ggml's
/// quantize_row_q8_K_ref, which llama.cpp's x86 build uses: with m the input of largest magnitude
/// (the first such), iscale = -127 / m, q = min(127, nearest(iscale * x)), d = 1 / iscale (d < 0
/// when m > 0: the signs cancel), and the sums of each 16 q for the Q4_K mins.
inline void quantize_row_q8_k(const float* x, std::size_t k, unsigned char* out) noexcept {
  for (std::size_t b = 0; b < k / 256; ++b, x += 256, out += 292) {
    const auto [amax, max] = detail::largest_magnitude(x, 256);
    std::int8_t q[256] = {};
    float d = 0.0f;
    if (amax != 0.0f) {
      const float iscale = -127.0f / max;
      for (int j = 0; j < 256; ++j) q[j] = std::int8_t(std::min(127, detail::nearest_int_of_product(iscale, x[j])));
      d = 1.0f / iscale;
    }
    d += detail::non_finite_mark(x, 256);
    std::int16_t sums[16];
    for (int j = 0; j < 16; ++j) {
      int s = 0;
      for (int i = 0; i < 16; ++i) s += q[16 * j + i];
      sums[j] = std::int16_t(s);
    }
    std::memcpy(out, &d, 4);
    std::memcpy(out + 4, q, 256);
    std::memcpy(out + 260, sums, 32);
  }
}

}  // namespace ipa
