// SPDX-License-Identifier: MIT
// Weight matrices kept in their stored encoding (ggml's F32, F16 and Q8_0), read where they lie
// (a mapped GGUF): out = x * w^T, dequantizing 32 weights at a time in registers, never into an
// f32 copy, beside a plain scalar reference that the tests compare against. As in matmul.hpp,
// every output element is one fixed chain of operations whatever the batch size or the range of
// rows a call computes, so a prompt gives the same bits alone or inside a batch.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "ipa/core/bf16.hpp"
#include "ipa/core/error.hpp"
#include "ipa/core/matmul.hpp"
#include "ipa/core/vector_abi.hpp"

namespace ipa {

/// How a matrix's rows are stored, by ggml's type ids.
enum class weight_type : std::uint32_t { f32 = 0, f16 = 1, q8_0 = 8 };

/// ggml's name of a type ("Q8_0").
inline const char* weight_type_name(weight_type t) noexcept {
  switch (t) {
    case weight_type::f32: return "F32";
    case weight_type::f16: return "F16";
    case weight_type::q8_0: return "Q8_0";
  }
  return "?";
}

/// Q8_0 (ggml): blocks of 32 weights, an f16 scale d and 32 int8 q; weight = d * q.
inline constexpr std::size_t q8_0_block = 32, q8_0_block_bytes = 34;

/// A row-major matrix (rows x cols) in a compact encoding, seen where it lies; owns nothing.
/// Rows of Q8_0 hold a multiple of 32 weights.
struct compact_matrix {
  weight_type type = weight_type::f32;
  const unsigned char* data = nullptr;
  std::size_t rows = 0, cols = 0;

  /// Bytes of one row of `cols` weights.
  static std::size_t row_bytes(weight_type type, std::size_t cols) noexcept {
    switch (type) {
      case weight_type::f32: return 4 * cols;
      case weight_type::f16: return 2 * cols;
      case weight_type::q8_0: return cols / q8_0_block * q8_0_block_bytes;
    }
    return 0;
  }
  std::size_t row_bytes() const noexcept { return row_bytes(type, cols); }
  std::size_t bytes() const noexcept { return rows * row_bytes(); }
  const unsigned char* row(std::size_t r) const noexcept { return data + r * row_bytes(); }
};

namespace detail {
inline std::uint16_t load_u16(const unsigned char* p) noexcept {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}
}  // namespace detail

/// Weight c of a row, the plain scalar way.
inline float compact_weight(weight_type type, const unsigned char* row, std::size_t c) noexcept {
  switch (type) {
    case weight_type::f32: {
      float f;
      std::memcpy(&f, row + 4 * c, 4);
      return f;
    }
    case weight_type::f16: return from_f16(detail::load_u16(row + 2 * c));
    case weight_type::q8_0: {
      const unsigned char* block = row + c / q8_0_block * q8_0_block_bytes;
      return from_f16(detail::load_u16(block)) * float(static_cast<std::int8_t>(block[2 + c % q8_0_block]));
    }
  }
  return 0.0f;
}

/// Row r of w as floats (w.cols of them into out): the reference for every kernel below.
inline void dequantize_row(const compact_matrix& w, std::size_t r, float* out) noexcept {
  const unsigned char* row = w.row(r);
  for (std::size_t c = 0; c < w.cols; ++c) out[c] = compact_weight(w.type, row, c);
}

/// Quantizes k weights (a multiple of 32) to Q8_0 blocks in `out` (k / 32 * 34 bytes), as ggml's
/// quantize_row_q8_0_ref: d = max|x| / 127 per block, q = round(x / d).
inline void quantize_row_q8_0(const float* x, std::size_t k, unsigned char* out) noexcept {
  for (std::size_t b = 0; b < k / q8_0_block; ++b, x += q8_0_block, out += q8_0_block_bytes) {
    float amax = 0.0f;
    for (std::size_t c = 0; c < q8_0_block; ++c) amax = std::max(amax, std::fabs(x[c]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    const std::uint16_t h = to_f16(d);
    std::memcpy(out, &h, 2);
    for (std::size_t c = 0; c < q8_0_block; ++c)
      out[2 + c] = static_cast<unsigned char>(std::int8_t(std::round(x[c] * id)));
  }
}

/// The inputs of a product as the kernels of a weight type read them, as llama.cpp's CPU build
/// prepares them when it decodes one token (ggml's vec_dot_type), so that ipa computes what
/// llama.cpp computes: F32 weights take the f32 rows as they are; F16 takes them rounded to F16
/// (kept as floats here); Q8_0 takes them quantized per block of 32 (quantize_row_q8_0) and
/// multiplies int8 by int8 with exact integer sums. (llama.cpp's prompt processing multiplies
/// F16 by unrounded f32 where rows are a multiple of 8 long; ipa rounds alike at every batch
/// size, so a row gives the same bits alone or in a batch.)
inline std::size_t compact_input_bytes(weight_type type, std::size_t k) noexcept {
  return type == weight_type::q8_0 ? compact_matrix::row_bytes(type, k) : 4 * k;
}
inline void prepare_input(weight_type type, const float* x, std::size_t ldx, std::size_t n, std::size_t k,
                          unsigned char* out) noexcept {
  const std::size_t row_bytes = compact_input_bytes(type, k);
  for (std::size_t i = 0; i < n; ++i, out += row_bytes) {
    const float* xi = x + i * ldx;
    if (type == weight_type::q8_0) {
      quantize_row_q8_0(xi, k, out);
    } else if (type == weight_type::f16) {
      for (std::size_t c = 0; c < k; ++c) {
        const float h = from_f16(to_f16(xi[c]));
        std::memcpy(out + 4 * c, &h, 4);
      }
    } else {
      std::memcpy(out, xi, 4 * k);
    }
  }
}

/// out(i, j) = sum_c in(i, c) * w(j, c) for the n rows of `in` (prepare_input's) and output
/// columns j in [j0, j1): the scalar reference (dequantized rows, sums in double).
inline void compact_matmul_reference(float* out, std::size_t ldo, const unsigned char* in, std::size_t n,
                                     const compact_matrix& w, std::size_t j0, std::size_t j1) {
  const std::size_t k = w.cols;
  const compact_matrix inputs{w.type == weight_type::q8_0 ? weight_type::q8_0 : weight_type::f32, in, n, k};
  std::vector<float> row(k), x(n * k);
  for (std::size_t i = 0; i < n; ++i) dequantize_row(inputs, i, x.data() + i * k);
  for (std::size_t j = j0; j < j1; ++j) {
    dequantize_row(w, j, row.data());
    for (std::size_t i = 0; i < n; ++i) {
      double s = 0;
      for (std::size_t c = 0; c < k; ++c) s += double(x[i * k + c]) * double(row[c]);
      out[i * ldo + j] = float(s);
    }
  }
}

namespace detail {

// Eight halves as floats (vcvtph2ps where the build has F16C).
inline v8f load8_f16(const unsigned char* p) noexcept {
  v8f v;
#if defined(__F16C__)
  __m128i h;
  std::memcpy(&h, p, sizeof h);
  const __m256 f = _mm256_cvtph_ps(h);
  std::memcpy(&v, &f, sizeof v);
#else
  for (int k = 0; k < 8; ++k) v[k] = from_f16(load_u16(p + 2 * k));
#endif
  return v;
}
inline float half_to_float(const unsigned char* p) noexcept {
#if defined(__F16C__)
  return _cvtsh_ss(load_u16(p));
#else
  return from_f16(load_u16(p));
#endif
}

// Weights 32g .. 32g + 31 of an F32 or F16 row as four vectors (Q8_0 has q8_0_tile).
template <weight_type T>
inline void load_group(const unsigned char* row, std::size_t g, v8f (&w)[4]) noexcept {
  static_assert(T == weight_type::f32 || T == weight_type::f16);
  IPA_UNROLL(4)
  for (std::size_t q = 0; q < 4; ++q) {
    if constexpr (T == weight_type::f32) w[q] = load8(reinterpret_cast<const float*>(row) + 32 * g + 8 * q);
    else w[q] = load8_f16(row + 2 * (32 * g + 8 * q));
  }
}

// The lanes of v added in one fixed order.
inline float sum8(v8f v) noexcept {
  const float a = (v[0] + v[4]) + (v[1] + v[5]), b = (v[2] + v[6]) + (v[3] + v[7]);
  return a + b;
}

// F32/F16: out(i, j) for NR rows of x and row j of w. Each output is the same chain whatever the tile:
// four 8-lane accumulators (weights 0-7, 8-15, 16-23, 24-31 of every group: four independent FMA
// chains hide the FMA latency at batch 1), added pairwise and then in sum8's order, then the
// columns past the last full group (rows of any length) one by one. A group of 32 weights is
// converted once for the NR rows. (Two rows of w at a time, interleaving two streams from
// memory, measured slower at batch 1 during development: one row at a time.)
template <weight_type T, int NR>
inline void compact_tile(const float* x, std::size_t ldx, const compact_matrix& w, std::size_t j, float* out,
                         std::size_t ldo) noexcept {
  const unsigned char* row = w.row(j);
  const std::size_t groups = w.cols / 32;
  v8f acc[NR][4] = {};
  for (std::size_t g = 0; g < groups; ++g) {
    v8f wg[4];
    load_group<T>(row, g, wg);
    IPA_UNROLL(4)
    for (int r = 0; r < NR; ++r) {
      const float* xg = x + std::size_t(r) * ldx + 32 * g;
      IPA_UNROLL(4)
      for (std::size_t q = 0; q < 4; ++q) acc[r][q] += wg[q] * load8(xg + 8 * q);
    }
  }
  for (int r = 0; r < NR; ++r) {
    float total = sum8((acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]));
    for (std::size_t c = 32 * groups; c < w.cols; ++c) total += compact_weight(T, row, c) * x[std::size_t(r) * ldx + c];
    out[std::size_t(r) * ldo + j] = total;
  }
}

// Q8_0 x Q8_0 for NR input rows and row j of w, as ggml's AVX2 vec_dot_q8_0_q8_0: per block,
// eight int32 lanes (lane l: the products of bytes 4l .. 4l + 3, exact), times dw * dx, into one
// 8-lane accumulator; then the lanes in sum8's order. The same chain whatever the tile.
inline v8f q8_0_block_dot(const unsigned char* wq, const unsigned char* xq) noexcept {
  v8f lanes;
#if defined(__AVX2__)
  __m256i a, b;
  std::memcpy(&a, wq, 32);
  std::memcpy(&b, xq, 32);
  // |a| as unsigned times b with a's sign: maddubs multiplies u8 by s8 into pairs of int16
  // (|products| <= 128 * 127 * 2 < 2^15: no saturation), madd with ones adds pairs into int32
  const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
  const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  std::memcpy(&lanes, &f, sizeof lanes);
#else
  for (int l = 0; l < 8; ++l) {
    int sum = 0;
    for (int b = 4 * l; b < 4 * l + 4; ++b) sum += int(std::int8_t(wq[b])) * int(std::int8_t(xq[b]));
    lanes[l] = float(sum);
  }
#endif
  return lanes;
}

template <int NR>
inline void q8_0_tile(const unsigned char* in, std::size_t ld_in, const compact_matrix& w, std::size_t j, float* out,
                      std::size_t ldo) noexcept {
  const unsigned char* row = w.row(j);
  const std::size_t blocks = w.cols / q8_0_block;
  v8f acc[NR] = {};
  for (std::size_t b = 0; b < blocks; ++b) {
    const unsigned char* wb = row + b * q8_0_block_bytes;
    const float dw = half_to_float(wb);
    IPA_UNROLL(4)
    for (int r = 0; r < NR; ++r) {
      const unsigned char* xb = in + std::size_t(r) * ld_in + b * q8_0_block_bytes;
      acc[r] += broadcast8(dw * half_to_float(xb)) * q8_0_block_dot(wb + 2, xb + 2);
    }
  }
  for (int r = 0; r < NR; ++r) out[std::size_t(r) * ldo + j] = sum8(acc[r]);
}

// One row of w at a time against the input rows three (Q8_0: four) at a time.
template <weight_type T>
inline void compact_matmul_typed(float* out, std::size_t ldo, const unsigned char* in, std::size_t n,
                                 const compact_matrix& w, std::size_t j0, std::size_t j1) noexcept {
  const std::size_t ld_in = compact_input_bytes(T, w.cols);
  for (std::size_t j = j0; j < j1; ++j) {
    std::size_t i = 0;
    if constexpr (T == weight_type::q8_0) {
      for (; i + 4 <= n; i += 4) q8_0_tile<4>(in + i * ld_in, ld_in, w, j, out + i * ldo, ldo);
      for (; i < n; ++i) q8_0_tile<1>(in + i * ld_in, ld_in, w, j, out + i * ldo, ldo);
    } else {
      const float* x = reinterpret_cast<const float*>(in);
      const std::size_t ldx = w.cols;
      for (; i + 3 <= n; i += 3) compact_tile<T, 3>(x + i * ldx, ldx, w, j, out + i * ldo, ldo);
      if (n - i == 2) compact_tile<T, 2>(x + i * ldx, ldx, w, j, out + i * ldo, ldo);
      if (n - i == 1) compact_tile<T, 1>(x + i * ldx, ldx, w, j, out + i * ldo, ldo);
    }
  }
}

}  // namespace detail

/// out(i, j) = sum_c in(i, c) * w(j, c) for the n rows of `in` (prepare_input(w.type, ...)) and
/// output columns j in [j0, j1): the kernel; compact_matmul_reference is the plain math.
inline void compact_matmul_prepared(float* out, std::size_t ldo, const unsigned char* in, std::size_t n,
                                    const compact_matrix& w, std::size_t j0, std::size_t j1) noexcept {
  switch (w.type) {
    case weight_type::f32: detail::compact_matmul_typed<weight_type::f32>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::f16: detail::compact_matmul_typed<weight_type::f16>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::q8_0: detail::compact_matmul_typed<weight_type::q8_0>(out, ldo, in, n, w, j0, j1); break;
  }
}

/// The same from f32 rows x (w.cols columns, leading dimension ldx), prepared here.
inline void compact_matmul(float* out, std::size_t ldo, const float* x, std::size_t ldx, std::size_t n,
                           const compact_matrix& w, std::size_t j0, std::size_t j1) {
  std::vector<unsigned char> in(n * compact_input_bytes(w.type, w.cols));
  prepare_input(w.type, x, ldx, n, w.cols, in.data());
  compact_matmul_prepared(out, ldo, in.data(), n, w, j0, j1);
}

/// Compact matrices of one type and the same number of columns stacked by rows: the weights of
/// one fused product (Q|K|V, W1|W3), each part read where it lies.
class compact_stack {
 public:
  compact_stack() = default;
  /// Throws shape_error when the parts differ in type or columns.
  compact_stack(std::initializer_list<compact_matrix> parts) : parts_(parts) {
    for (const compact_matrix& p : parts_) {
      if (p.type != parts_.front().type || p.cols != parts_.front().cols)
        throw shape_error(std::string("compact_stack: parts of one product must share a type and a width, found ") +
                          weight_type_name(parts_.front().type) + " x " + std::to_string(parts_.front().cols) +
                          " and " + weight_type_name(p.type) + " x " + std::to_string(p.cols));
      rows_ += p.rows;
    }
  }
  std::size_t rows() const noexcept { return rows_; }
  std::size_t cols() const noexcept { return parts_.empty() ? 0 : parts_.front().cols; }
  weight_type type() const noexcept { return parts_.empty() ? weight_type::f32 : parts_.front().type; }
  /// Bytes read per product.
  std::size_t bytes() const noexcept {
    std::size_t b = 0;
    for (const compact_matrix& p : parts_) b += p.bytes();
    return b;
  }
  /// compact_matmul_prepared for output columns [j0, j1) of the stack.
  void matmul_prepared(float* out, std::size_t ldo, const unsigned char* in, std::size_t n, std::size_t j0,
                       std::size_t j1) const noexcept {
    std::size_t first = 0;  // the stack's row of this part's row 0
    for (const compact_matrix& p : parts_) {
      const std::size_t a = std::max(j0, first), b = std::min(j1, first + p.rows);
      if (a < b) compact_matmul_prepared(out + first, ldo, in, n, p, a - first, b - first);
      first += p.rows;
    }
  }

 private:
  std::vector<compact_matrix> parts_;
  std::size_t rows_ = 0;
};

}  // namespace ipa
