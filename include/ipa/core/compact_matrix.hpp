// SPDX-License-Identifier: MIT
// Weight matrices kept in their stored encoding (ggml's F32, F16, BF16, Q4_0, Q8_0, Q3_K-Q6_K; the
// blocks are in ggml_blocks.hpp), read where they lie (a mapped GGUF): out = x * w^T, unpacking
// a block at a time in registers, never into an f32 copy, beside a plain scalar reference that
// the tests compare against. As in matmul.hpp,
// every output element is one fixed chain of operations whatever the batch size or the range of
// rows a call computes, so a prompt gives the same bits alone or inside a batch (on AVX-512 VNNI
// the K-quants take batches 16 input rows at a time, one lane per row: see pack_group; Q8_0 and
// Q4_0 weights are interleaved 16 rows at a time instead, one lane per row of w: see interleave).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "ipa/core/bf16.hpp"
#include "ipa/core/error.hpp"
#include "ipa/core/ggml_blocks.hpp"
#include "ipa/core/math.hpp"
#include "ipa/core/matmul.hpp"
#include "ipa/core/vector_abi.hpp"

namespace ipa {

/// A row-major matrix (rows x cols) in a compact encoding, seen where it lies; owns nothing.
/// A row holds whole blocks (layout_of(type).elements divides cols). A Q8_0 or Q4_0 matrix may
/// instead be `interleaved` 16 rows at a time (interleave), where row() has no meaning.
struct compact_matrix {
  weight_type type = weight_type::f32;
  const unsigned char* data = nullptr;
  std::size_t rows = 0, cols = 0;
  bool interleaved = false;

  /// Bytes of one row of `cols` weights.
  static std::size_t row_bytes(weight_type type, std::size_t cols) noexcept {
    const block_layout b = layout_of(type);
    return cols / b.elements * b.bytes;
  }
  std::size_t row_bytes() const noexcept { return row_bytes(type, cols); }
  std::size_t bytes() const noexcept { return rows * row_bytes(); }
  const unsigned char* row(std::size_t r) const noexcept {
    IPA_ASSERT(!interleaved, "compact_matrix::row: an interleaved matrix has no rows in place");
    return data + r * row_bytes();
  }
};

// Q8_0 and Q4_0 rows interleaved for the AVX-512 VNNI kernels: for each group of 16 rows and
// each block of 32 columns, what the 16 rows' blocks take row by row (Q8_0 544 bytes, Q4_0 288):
// the 16 scales (F16, row r at 2r), then quads of 64 bytes, row r at 4r: Q8_0's quad l holds
// weights 4l .. 4l + 3 of each row + 128 (unsigned, as vpdpbusd takes its first operand), eight
// quads; Q4_0's quad l holds its bytes 4l .. 4l + 3 as stored (low nibbles: weights 4l .. 4l + 3
// + 8, high nibbles: weights 16 + 4l .. + 3, + 8), four quads. One 64-byte load then meets four
// inputs of an input row broadcast, for 16 rows of w at once, and a batch reuses it for eight
// input rows (row by row, a batch of 16 spent a load of inputs and a broadcast of weights on
// every multiply). A last group of fewer than 16 rows is padded with zero scales and weights.
namespace detail {
inline constexpr std::size_t interleave_rows = 16;
inline bool can_interleave(weight_type type) noexcept { return type == weight_type::q8_0 || type == weight_type::q4_0; }
// Bytes of one group's block: 16 blocks.
inline std::size_t interleaved_block(weight_type type) noexcept { return interleave_rows * layout_of(type).bytes; }

// Block b of row r of an interleaved matrix back in ggml's layout (scale, then the quants).
inline void interleaved_block_of(const compact_matrix& w, std::size_t r, std::size_t b, unsigned char* out) noexcept {
  const unsigned char* block = w.data + (r / interleave_rows * (w.cols / q8_0_block) + b) * interleaved_block(w.type);
  const bool q8_0 = w.type == weight_type::q8_0;
  const std::size_t lane = r % interleave_rows, quads = q8_0 ? 8 : 4;
  const unsigned char bias = q8_0 ? 0x80 : 0;
  std::memcpy(out, block + 2 * lane, 2);
  for (std::size_t l = 0; l < quads; ++l)
    for (std::size_t i = 0; i < 4; ++i)
      out[2 + 4 * l + i] = static_cast<unsigned char>(block[32 + 64 * l + 4 * lane + i] ^ bias);
}
}  // namespace detail

/// Bytes of a rows x cols Q8_0 or Q4_0 matrix interleaved (whole groups of 16 rows).
inline std::size_t interleaved_bytes(weight_type type, std::size_t rows, std::size_t cols) noexcept {
  const std::size_t groups = (rows + detail::interleave_rows - 1) / detail::interleave_rows;
  return groups * detail::interleave_rows * compact_matrix::row_bytes(type, cols);
}

/// w (row-major Q8_0 or Q4_0) interleaved into out (interleaved_bytes(w.type, w.rows, w.cols)
/// bytes): the view of out.
inline compact_matrix interleave(const compact_matrix& w, unsigned char* out) noexcept {
  IPA_ASSERT(detail::can_interleave(w.type) && !w.interleaved, "interleave takes a row-major Q8_0 or Q4_0 matrix");
  using detail::interleave_rows;
  const std::size_t blocks = w.cols / q8_0_block, groups = (w.rows + interleave_rows - 1) / interleave_rows,
                    block_bytes = layout_of(w.type).bytes, quads = (block_bytes - 2) / 4;
  const std::uint32_t bias = w.type == weight_type::q8_0 ? 0x80808080u : 0;
  for (std::size_t g = 0; g < groups; ++g)
    for (std::size_t b = 0; b < blocks; ++b) {
      unsigned char* block = out + (g * blocks + b) * detail::interleaved_block(w.type);
      for (std::size_t lane = 0; lane < interleave_rows; ++lane) {
        const std::size_t r = g * interleave_rows + lane;
        static constexpr unsigned char zero_block[q8_0_block_bytes] = {};  // (Q8_0 + 128: zeros)
        const unsigned char* in = r < w.rows ? w.data + r * w.row_bytes() + b * block_bytes : zero_block;
        std::memcpy(block + 2 * lane, in, 2);
        for (std::size_t l = 0; l < quads; ++l) {
          const std::uint32_t quad = detail::load_u32(in + 2 + 4 * l) ^ bias;
          std::memcpy(block + 32 + 64 * l + 4 * lane, &quad, 4);
        }
      }
    }
  return {w.type, out, w.rows, w.cols, true};
}

/// Weight c of a row, the plain scalar way.
inline float compact_weight(weight_type type, const unsigned char* row, std::size_t c) noexcept {
  const block_layout b = layout_of(type);
  float block[256];
  dequantize_block(type, row + c / b.elements * b.bytes, block);
  return block[c % b.elements];
}

/// Row r of w as floats (w.cols of them into out): the reference for every kernel below.
inline void dequantize_row(const compact_matrix& w, std::size_t r, float* out) noexcept {
  const block_layout b = layout_of(w.type);
  if (w.interleaved) {
    unsigned char block[256] = {};  // (the size of any block: dequantize_block's other types)
    for (std::size_t i = 0; i < w.cols / q8_0_block; ++i) {
      detail::interleaved_block_of(w, r, i, block);
      dequantize_block(w.type, block, out + i * q8_0_block);
    }
    return;
  }
  const unsigned char* row = w.row(r);
  for (std::size_t c = 0; c < w.cols; c += b.elements)
    dequantize_block(w.type, row + c / b.elements * b.bytes, out + c);
}

/// True when every weight of row r is finite (for blocks with scales: every scale).
inline bool row_is_finite(const compact_matrix& w, std::size_t r) noexcept {
  const block_layout b = layout_of(w.type);
  if (w.interleaved) {
    unsigned char block[256] = {};  // (the size of any block: block_is_finite's other types)
    for (std::size_t i = 0; i < w.cols / q8_0_block; ++i) {
      detail::interleaved_block_of(w, r, i, block);
      if (!block_is_finite(w.type, block)) return false;
    }
    return true;
  }
  const unsigned char* row = w.row(r);
  // F32, F16, BF16: an exponent of all ones is Inf or NaN; a bit test the compiler vectorises
  // (llama_model checks every step's logits with it), and which -ffast-math cannot fold away
  auto no_exponent_all_ones = [&](auto load, std::size_t bytes, std::uint32_t exponent) {
    unsigned bad = 0;
    for (std::size_t c = 0; c < w.cols; ++c) bad |= (load(row + bytes * c) & exponent) == exponent;
    return bad == 0;
  };
  if (w.type == weight_type::f32) return no_exponent_all_ones(detail::load_u32, 4, 0x7f800000u);
  if (w.type == weight_type::f16) return no_exponent_all_ones(detail::load_u16, 2, 0x7c00u);
  if (w.type == weight_type::bf16) return no_exponent_all_ones(detail::load_u16, 2, 0x7f80u);
  for (std::size_t i = 0; i < w.cols / b.elements; ++i)
    if (!block_is_finite(w.type, row + i * b.bytes)) return false;
  return true;
}

namespace detail {
/// Throws io_error "`where`: tensor '`name`' holds a non-finite value (row r)" unless every
/// weight of w is finite (quantized: every scale).
inline void require_finite(const compact_matrix& w, const std::string& where, const std::string& name) {
  for (std::size_t r = 0; r < w.rows; ++r)
    if (!row_is_finite(w, r))
      throw io_error(where + ": tensor '" + name + "' holds a non-finite value (row " + std::to_string(r) + ")");
}
}  // namespace detail

/// The inputs of a product as the kernels of a weight type read them, as llama.cpp's CPU build
/// prepares them when it decodes one token (input_type(), ggml's vec_dot_type), so that ipa
/// computes what llama.cpp computes: F32 weights take the f32 rows as they are; F16 takes them
/// rounded to F16 (kept as floats here); Q4_0 and Q8_0 take them quantized per block of 32
/// (quantize_input_q8_0), the K-quants per block of 256 (quantize_row_q8_k), and multiply int8
/// by int8 with exact integer sums. (llama.cpp's prompt processing multiplies F16 by unrounded
/// f32 where rows are a multiple of 8 long; ipa rounds alike at every batch size, so a row
/// gives the same bits alone or in a batch.) A prepared Q8_0 row is followed by its blocks'
/// scales as floats, converted once per product rather than once per row of weights, and by
/// -128 x the sum of each block's 32 inputs (int32: interleaved Q8_0 weights are + 128; Q4_0's
/// are + 8, a sixteenth of it).
namespace detail {
/// Where a prepared Q8_0 row of k inputs keeps its float scales: after its blocks.
inline std::size_t q8_0_input_scales(std::size_t k) noexcept { return compact_matrix::row_bytes(weight_type::q8_0, k); }
/// Where it keeps -128 x each block's sum: after the scales.
inline std::size_t q8_0_input_offsets(std::size_t k) noexcept { return q8_0_input_scales(k) + 4 * (k / q8_0_block); }
}  // namespace detail
inline std::size_t compact_input_bytes(weight_type type, std::size_t k) noexcept {
  const weight_type in = input_type(type);
  if (in == weight_type::q8_0) return detail::q8_0_input_offsets(k) + 4 * (k / q8_0_block);
  return in == weight_type::q8_k ? compact_matrix::row_bytes(in, k) : 4 * k;
}

// K-quant batches on AVX-512 VNNI: Q8_K inputs are also laid out 16 rows at a time (a group), so
// that one instruction multiplies four bytes of a weight row (broadcast) by four bytes of each
// of 16 input rows, one 32-bit lane per row, where the row-at-a-time tiles spend a register on
// 32 bytes of one input row. In a group, "piece (s, l)" is 64 bytes: bytes 4l .. 4l + 3 of
// sub-block s of a block, for each of the 16 rows (row r at 4r). (Q8_0 and Q4_0 weights are
// interleaved instead, which reads the rows as they are: see interleave.)
// Per block of 256: pieces (0 .. 7, 0 .. 7) as they are; the same pieces as
//   int16 pairs 32 x (byte 2i + byte 2i + 1), Q6_K's offset of 32 (maddubs' pairs of 32 and the
//   inputs; Q3_K's offset of 4 is the same shifted right by 3); four pieces of int16 pairs (sums
//   of sub-blocks 2p and 2p + 1, for Q4_K's and Q5_K's mins); the 16 scales.
namespace detail {
// The group tiles need AVX-512 F and BW and VNNI.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define IPA_DETAIL_ROW_GROUPS 1
#else
#define IPA_DETAIL_ROW_GROUPS 0
#endif
inline constexpr bool row_groups = IPA_DETAIL_ROW_GROUPS;
inline constexpr std::size_t group_rows = 16;
inline constexpr std::size_t q8_k_group_block = 8 * 8 * 64 * 2 + 4 * 64 + 64;  // bytes per block of 256
/// Bytes of one group of 16 rows of k inputs to `type` weights (0: no groups for this type).
inline std::size_t group_bytes(weight_type type, std::size_t k) noexcept {
  switch (input_type(type)) {
    case weight_type::q8_k: return k / 256 * q8_k_group_block;
    default: return 0;
  }
}
/// How many groups follow the n prepared rows for `type`.
inline std::size_t row_group_count(weight_type type, std::size_t n) noexcept {
  const weight_type in = input_type(type);
  return row_groups && in == weight_type::q8_k ? n / group_rows : 0;
}
// Piece (s, l) of a group from the 32-byte sub-block at q of row r (transform: each 4 bytes).
template <class Transform>
inline void scatter_pieces(const unsigned char* q, std::size_t r, unsigned char* pieces, Transform transform) noexcept {
  for (std::size_t l = 0; l < 8; ++l) {
    unsigned char four[4];
    transform(q + 4 * l, four);
    std::memcpy(pieces + 64 * l + 4 * r, four, 4);
  }
}
// 16 prepared rows (ld bytes apart) of k Q8_K inputs in the group layout above.
inline void pack_group(const unsigned char* rows, std::size_t ld, std::size_t k, unsigned char* out) noexcept {
  auto as_is = [](const unsigned char* p, unsigned char* o) { std::memcpy(o, p, 4); };
  auto times_32 = [](const unsigned char* p, unsigned char* o) {
    const std::int16_t pairs[2] = {std::int16_t(32 * (std::int8_t(p[0]) + std::int8_t(p[1]))),
                                   std::int16_t(32 * (std::int8_t(p[2]) + std::int8_t(p[3])))};
    std::memcpy(o, pairs, 4);
  };
  for (std::size_t b = 0; b < k / 256; ++b) {
    unsigned char* block = out + b * q8_k_group_block;
    for (std::size_t r = 0; r < group_rows; ++r) {
      const unsigned char* x = rows + r * ld + b * layout_of(weight_type::q8_k).bytes;  // d, 256 q, 16 sums
      for (std::size_t s = 0; s < 8; ++s) {
        scatter_pieces(x + 4 + 32 * s, r, block + 8 * 64 * s, as_is);
        scatter_pieces(x + 4 + 32 * s, r, block + 8 * 8 * 64 + 8 * 64 * s, times_32);
      }
      std::int16_t sums[16];
      std::memcpy(sums, x + 260, sizeof sums);
      for (std::size_t p = 0; p < 4; ++p) {
        const std::int16_t pair[2] = {std::int16_t(sums[4 * p] + sums[4 * p + 1]),
                                      std::int16_t(sums[4 * p + 2] + sums[4 * p + 3])};
        std::memcpy(block + 2 * 8 * 8 * 64 + 64 * p + 4 * r, pair, 4);
      }
      std::memcpy(block + 2 * 8 * 8 * 64 + 4 * 64 + 4 * r, x, 4);
    }
  }
}
}  // namespace detail

/// Bytes prepare_input writes for n rows of k inputs to a product with `type` weights: the rows
/// (compact_input_bytes each), then for the K-quants on AVX-512 VNNI the rows again in groups of 16.
inline std::size_t compact_prepared_bytes(weight_type type, std::size_t n, std::size_t k) noexcept {
  return n * compact_input_bytes(type, k) + detail::row_group_count(type, n) * detail::group_bytes(type, k);
}
/// Writes compact_prepared_bytes(type, n, k) bytes.
inline void prepare_input(weight_type type, const float* x, std::size_t ldx, std::size_t n, std::size_t k,
                          unsigned char* out) noexcept {
  const std::size_t row_bytes = compact_input_bytes(type, k);
  for (std::size_t i = 0; i < n; ++i, out += row_bytes) {
    const float* xi = x + i * ldx;
    auto round_each = [&](auto round) {  // F16/BF16 inputs: rounded to the type, kept as floats
      for (std::size_t c = 0; c < k; ++c) {
        const float h = round(xi[c]);
        std::memcpy(out + 4 * c, &h, 4);
      }
    };
    switch (input_type(type)) {
      case weight_type::q8_0: {
        quantize_input_q8_0(xi, k, out);
        unsigned char* scales = out + detail::q8_0_input_scales(k);
        unsigned char* offsets = out + detail::q8_0_input_offsets(k);
        for (std::size_t b = 0; b < k / q8_0_block; ++b) {
          const float d = detail::load_half(out + b * q8_0_block_bytes);
          std::memcpy(scales + 4 * b, &d, 4);
          std::int32_t sum = 0;
          for (std::size_t c = 0; c < q8_0_block; ++c) sum += std::int8_t(out[b * q8_0_block_bytes + 2 + c]);
          const std::int32_t offset = -128 * sum;
          std::memcpy(offsets + 4 * b, &offset, 4);
        }
        break;
      }
      case weight_type::q8_k: quantize_row_q8_k(xi, k, out); break;
      case weight_type::f16: round_each([](float v) { return from_f16(to_f16(v)); }); break;
      case weight_type::bf16: round_each([](float v) { return from_bf16(to_bf16(v)); }); break;
      default: std::memcpy(out, xi, 4 * k);
    }
  }
  const unsigned char* rows = out - n * row_bytes;  // out is past the rows now
  for (std::size_t g = 0; g < detail::row_group_count(type, n); ++g)
    detail::pack_group(rows + g * detail::group_rows * row_bytes, row_bytes, k, out + g * detail::group_bytes(type, k));
}

/// out(i, j) = sum_c in(i, c) * w(j, c) for the n rows of `in` (prepare_input's) and output
/// columns j in [j0, j1): the scalar reference (dequantized rows, sums in double).
inline void compact_matmul_reference(float* out, std::size_t ldo, const unsigned char* in, std::size_t n,
                                     const compact_matrix& w, std::size_t j0, std::size_t j1) {
  const std::size_t k = w.cols;
  const weight_type in_type =
      w.type == weight_type::f16 || w.type == weight_type::bf16 ? weight_type::f32 : input_type(w.type);
  const std::size_t ld_in = compact_input_bytes(w.type, k);
  std::vector<float> row(k), x(n * k);
  for (std::size_t i = 0; i < n; ++i)
    dequantize_row(compact_matrix{in_type, in + i * ld_in, 1, k}, 0, x.data() + i * k);
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
#if defined(__AVX512F__)
// Sixteen halves as floats (the masked form: g++ 12's plain AVX-512 intrinsics warn falsely of
// undefined values).
inline __m512 load16_f16(const unsigned char* p) noexcept {
  return _mm512_mask_cvtph_ps(_mm512_setzero_ps(), 0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// Lanes 0-7 of v plus lanes 8-15: two 8-lane accumulators held side by side, added.
inline v8f add_halves(__m512 v) noexcept {
  v16f x;
  std::memcpy(&x, &v, sizeof x);
  return __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
}
#endif
inline float half_to_float(const unsigned char* p) noexcept {
#if defined(__F16C__)
  return _cvtsh_ss(load_u16(p));
#else
  return from_f16(load_u16(p));
#endif
}

// Eight bf16 as floats: each the upper half of a float's bits.
inline v8f load8_bf16(const unsigned char* p) noexcept {
  v8f v;
#if defined(__AVX2__)
  __m128i h;
  std::memcpy(&h, p, sizeof h);
  const __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  std::memcpy(&v, &f, sizeof v);
#else
  for (int k = 0; k < 8; ++k) v[k] = from_bf16(load_u16(p + 2 * k));
#endif
  return v;
}

// Weights 32g .. 32g + 31 of an F32, F16 or BF16 row as four vectors (Q8_0 has q8_0_tile).
template <weight_type T>
inline void load_group(const unsigned char* row, std::size_t g, v8f (&w)[4]) noexcept {
  static_assert(T == weight_type::f32 || T == weight_type::f16 || T == weight_type::bf16);
  IPA_UNROLL(4)
  for (std::size_t q = 0; q < 4; ++q) {
    if constexpr (T == weight_type::f32) w[q] = load8(reinterpret_cast<const float*>(row) + 32 * g + 8 * q);
    else if constexpr (T == weight_type::f16) w[q] = load8_f16(row + 2 * (32 * g + 8 * q));
    else w[q] = load8_bf16(row + 2 * (32 * g + 8 * q));
  }
}

// F32/F16/BF16: out(i, j) for NR rows of x and row j of w. Each output is the same chain whatever the tile:
// four 8-lane accumulators (weights 0-7, 8-15, 16-23, 24-31 of every group: four independent FMA
// chains hide the FMA latency at batch 1), the third added to the first and the fourth to the
// second, those two added, then the lanes in sum8's order, then the columns past the last full
// group (rows of any length) one by one: ggml_vec_dot_f32/_f16's chain as llama.cpp builds it
// for AVX2 (and ggml_vec_dot_bf16's, whose lanes end in hsum_float_8's order), so that these
// products equal llama.cpp's to the bit (F16 and BF16 add the last columns in double, as ggml
// does). A group of 32 weights is
// converted once for the NR rows. (Two rows of w at a time, interleaving two streams from
// memory, measured slower at batch 1 during development: one row at a time.)
// (AVX-512 builds hold accumulators 0 and 1, and 2 and 3, side by side in 16 lanes: the same
// chains in half the instructions, which lets the core overlap more rows' chains at batch 1.)
template <weight_type T, int NR>
inline void compact_tile(const float* x, std::size_t ldx, const compact_matrix& w, std::size_t j, float* out,
                         std::size_t ldo) noexcept {
  const unsigned char* row = w.row(j);
  const std::size_t groups = w.cols / 32;
#if defined(__AVX512F__)
  // (a vector extension for BF16: g++ 12's plain AVX-512 intrinsics here warn falsely of
  // undefined values)
  using v16u16 = std::uint16_t __attribute__((vector_size(32)));
  using v16u = std::uint32_t __attribute__((vector_size(64)));
  __m512 acc[NR][2];
  for (auto& a : acc) a[0] = a[1] = _mm512_setzero_ps();
  for (std::size_t g = 0; g < groups; ++g) {
    __m512 wg[2];  // weights 32g .. 32g + 15, then 32g + 16 .. 32g + 31
    for (std::size_t h = 0; h < 2; ++h) {
      const unsigned char* p = row + (32 * g + 16 * h) * (T == weight_type::f32 ? 4 : 2);
      if constexpr (T == weight_type::f32) {
        wg[h] = _mm512_loadu_ps(p);
      } else if constexpr (T == weight_type::f16) {
        wg[h] = load16_f16(p);
      } else {
        v16u16 b;
        std::memcpy(&b, p, sizeof b);
        const v16u wide = __builtin_convertvector(b, v16u) << 16;
        std::memcpy(&wg[h], &wide, sizeof wide);
      }
    }
    IPA_UNROLL(4)
    for (int r = 0; r < NR; ++r) {
      const float* xg = x + std::size_t(r) * ldx + 32 * g;
      for (std::size_t h = 0; h < 2; ++h) acc[r][h] = _mm512_fmadd_ps(wg[h], _mm512_loadu_ps(xg + 16 * h), acc[r][h]);
    }
  }
#else
  v8f acc[NR][4] = {};
  for (std::size_t g = 0; g < groups; ++g) {
    v8f wg[4];
    load_group<T>(row, g, wg);
    IPA_UNROLL(4)
    for (int r = 0; r < NR; ++r) {
      const float* xg = x + std::size_t(r) * ldx + 32 * g;
      IPA_UNROLL(4)
      for (std::size_t q = 0; q < 4; ++q) acc[r][q] = fma8(wg[q], load8(xg + 8 * q), acc[r][q]);
    }
  }
#endif
  for (int r = 0; r < NR; ++r) {
    // (ggml_vec_dot_f16 and _bf16 add the tail in double; _bf16 ends its lanes in hsum_float_8's order)
    using sum_type = std::conditional_t<T == weight_type::f32, float, double>;
    const float* xr = x + std::size_t(r) * ldx;
#if defined(__AVX512F__)
    // (acc0 + acc2) + (acc1 + acc3), as below: the halves of the two 16-lane sums added
    const v8f lanes = add_halves(_mm512_add_ps(acc[r][0], acc[r][1]));
#else
    const v8f lanes = (acc[r][0] + acc[r][2]) + (acc[r][1] + acc[r][3]);
#endif
    sum_type total = T == weight_type::bf16 ? ggml_hsum8(lanes) : sum8(lanes);
    for (std::size_t c = 32 * groups; c < w.cols; ++c) {
      const float product = compact_weight(T, row, c) * xr[c];
      total += sum_type(product);
    }
    out[std::size_t(r) * ldo + j] = float(total);
  }
}

#if defined(__AVX2__)
// Lane l: the sum of u(4l + b) * s(4l + b) for b < 4, u unsigned and s signed bytes, exact. VNNI
// does it in one instruction (vpdpbusd); AVX2 in two: maddubs multiplies into pairs of int16
// (the callers' |products| <= 128 * 127 * 2 < 2^15: no saturation), madd with ones adds pairs.
// Both give the same integers, so a native build and an AVX2 build compute the same bits.
inline __m256i dot_u8_s8(__m256i u, __m256i s) noexcept {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
// sum + (lane l: a(2l) * b(2l) + a(2l + 1) * b(2l + 1)) for int16 a and b: vpdpwssd with VNNI,
// madd + add without; the same integers.
inline __m256i add_dot_s16(__m256i sum, __m256i a, __m256i b) noexcept {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(sum, a, b);
#elif defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(sum, a, b);
#else
  return _mm256_add_epi32(sum, _mm256_madd_epi16(a, b));
#endif
}
#endif

// Row-major Q8_0 and Q4_0 weights x Q8_0 inputs (builds without AVX-512 VNNI; with it the model
// interleaves them: interleaved_matmul), in the float order of what llama.cpp's AVX2 build runs,
// so that its int8 roundings downstream come out the same. Q8_0 as ggml_vec_dot_q8_0_q8_0 (and
// llamafile's tinyBLAS, the same order): block b's products in eight exact int32 lanes (lane l:
// bytes 4l .. 4l + 3), each fused into its float lane with dw * dx, block after block; the lanes
// added in hsum_float_8's order. Q4_0 as ggml_gemv_q4_0_8x8_q8_0 (llama.cpp repacks Q4_0 for
// AVX2): block b's whole int32 sum fused into one float chain with dw * dx. The same chain
// whatever the tile.
using v8i = std::int32_t __attribute__((vector_size(32)));

// The products of a block of 32 int8 weights and 32 int8 inputs in eight int32 lanes (lane l:
// bytes 4l .. 4l + 3), exact.
inline v8i q8_0_block_lanes(const unsigned char* wq, const unsigned char* xq) noexcept {
#if defined(__AVX2__)
  __m256i a, b;
  std::memcpy(&a, wq, 32);
  std::memcpy(&b, xq, 32);
  // |a| as unsigned times b with a's sign, four products into each int32 lane
  return (v8i)dot_u8_s8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
#else
  v8i lanes = {};
  for (int l = 0; l < 8; ++l)
    for (int b = 4 * l; b < 4 * l + 4; ++b) lanes[l] += int(std::int8_t(wq[b])) * int(std::int8_t(xq[b]));
  return lanes;
#endif
}

// Lane u: the sum of the eight lanes of v[u] (exact integers, so any order).
inline v8i add_lanes(const v8i (&v)[8]) noexcept {
#if defined(__AVX2__)
  auto h = [](v8i a, v8i b) { return (v8i)_mm256_hadd_epi32((__m256i)a, (__m256i)b); };
  // per 128-bit half: lane u of blocks 0-3 (a) and 4-7 (b) from bytes 0-15, then from bytes 16-31
  const __m256i a = (__m256i)h(h(v[0], v[1]), h(v[2], v[3])), b = (__m256i)h(h(v[4], v[5]), h(v[6], v[7]));
  return (v8i)_mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
#else
  v8i sums = {};
  for (int u = 0; u < 8; ++u)
    for (int l = 0; l < 8; ++l) sums[u] += v[u][l];
  return sums;
#endif
}

// Q4_0's nibbles as bytes (low nibbles are weights 0-15, high nibbles 16-31) plus `offset`: -8
// gives the int8 weights, 120 the weights + 128 as uint8.
inline void q4_0_unpack(const unsigned char* qs, unsigned char* w, std::int8_t offset) noexcept {
#if defined(__AVX2__)
  __m128i q;
  std::memcpy(&q, qs, 16);
  const __m256i nibbles = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0xF));
  const __m256i v = _mm256_add_epi8(nibbles, _mm256_set1_epi8(offset));
  std::memcpy(w, &v, 32);
#else
  for (int j = 0; j < 16; ++j) {
    w[j] = static_cast<unsigned char>((qs[j] & 0xF) + offset);
    w[j + 16] = static_cast<unsigned char>((qs[j] >> 4) + offset);
  }
#endif
}

// Eight halves (each `stride` bytes from the last) as floats. (Into `out`: a function that
// returns a 32-byte vector and is not inlined changes the ABI of a build without AVX.)
inline void gather8_f16(const unsigned char* p, std::size_t stride, v8f& out) noexcept {
#if defined(__F16C__)
  __m128i h = _mm_cvtsi32_si128(load_u16(p));
  h = _mm_insert_epi16(h, load_u16(p + stride), 1);
  h = _mm_insert_epi16(h, load_u16(p + 2 * stride), 2);
  h = _mm_insert_epi16(h, load_u16(p + 3 * stride), 3);
  h = _mm_insert_epi16(h, load_u16(p + 4 * stride), 4);
  h = _mm_insert_epi16(h, load_u16(p + 5 * stride), 5);
  h = _mm_insert_epi16(h, load_u16(p + 6 * stride), 6);
  h = _mm_insert_epi16(h, load_u16(p + 7 * stride), 7);
  out = (v8f)_mm256_cvtph_ps(h);
#else
  for (std::size_t k = 0; k < 8; ++k) out[k] = from_f16(load_u16(p + k * stride));
#endif
}

// NR input rows (prepared, ld_in bytes apart) and row j of w, eight blocks at a time: their
// weights unpacked once for the NR rows, each row's blocks then added in the order above (Q8_0:
// eight lanes, one FMA per block; Q4_0: the eight blocks' sums, one FMA each, in one chain). A
// last partial eight is padded with zero blocks (their terms add +0). (Rows of w side by side,
// eight Q4_0 rows in the lanes as ggml's gemv keeps them, measured 1.5-2x slower at batch 1 in
// the model than one row at a time: bench/RESULTS.md, session 26.)
template <weight_type T, int NR>
inline void q8_0_tile(const unsigned char* in, std::size_t ld_in, const compact_matrix& w, std::size_t j, float* out,
                      std::size_t ldo) noexcept {
  static_assert(T == weight_type::q8_0 || T == weight_type::q4_0);
  constexpr block_layout layout = layout_of(T);
  const unsigned char* row = w.row(j);
  const std::size_t blocks = w.cols / layout.elements, scales = q8_0_input_scales(w.cols);
  v8f acc[NR] = {};      // Q8_0: ggml's eight lanes
  float chain[NR] = {};  // Q4_0: the one chain
  // eight blocks of weights at wb, of input row r at x[r] (their scales: dx[r])
  auto eight = [&](const unsigned char* wb, const unsigned char*(&x)[NR], const v8f(&dx)[NR]) {
    v8f dw;
    gather8_f16(wb, layout.bytes, dw);
    alignas(32) unsigned char unpacked[8][32];
    IPA_UNROLL(4)
    for (int r = 0; r < NR; ++r) {
      v8i lanes[8];
      IPA_UNROLL(8)
      for (std::size_t u = 0; u < 8; ++u) {
        const unsigned char* wq = wb + u * layout.bytes + 2;
        if constexpr (T == weight_type::q4_0) {
          if (r == 0) q4_0_unpack(wq, unpacked[u], -8);
          wq = unpacked[u];
        }
        lanes[u] = q8_0_block_lanes(wq, x[r] + u * q8_0_block_bytes + 2);
      }
      const v8f scale = dw * dx[r];
      if constexpr (T == weight_type::q8_0) {
        IPA_UNROLL(8)
        for (std::size_t u = 0; u < 8; ++u)
          acc[r] = fma8(broadcast8(scale[u]), __builtin_convertvector(lanes[u], v8f), acc[r]);
      } else {
        const v8i sums = add_lanes(lanes);
        IPA_UNROLL(8)
        for (std::size_t u = 0; u < 8; ++u) chain[r] = fma1(scale[u], float(sums[u]), chain[r]);
      }
    }
  };
  std::size_t b0 = 0;
  for (; b0 + 8 <= blocks; b0 += 8) {
    const unsigned char* x[NR];
    v8f dx[NR];
    for (int r = 0; r < NR; ++r) {
      x[r] = in + std::size_t(r) * ld_in + b0 * q8_0_block_bytes;
      std::memcpy(&dx[r], in + std::size_t(r) * ld_in + scales + 4 * b0, sizeof(v8f));
    }
    eight(row + b0 * layout.bytes, x, dx);
  }
  if (b0 < blocks) {  // the last blocks, copied beside zero ones
    const std::size_t count = blocks - b0;
    alignas(32) unsigned char wb[8 * layout.bytes] = {}, xb[NR][8 * q8_0_block_bytes] = {};
    std::memcpy(wb, row + b0 * layout.bytes, count * layout.bytes);
    const unsigned char* x[NR];
    v8f dx[NR] = {};
    for (int r = 0; r < NR; ++r) {
      std::memcpy(xb[r], in + std::size_t(r) * ld_in + b0 * q8_0_block_bytes, count * q8_0_block_bytes);
      std::memcpy(&dx[r], in + std::size_t(r) * ld_in + scales + 4 * b0, 4 * count);
      x[r] = xb[r];
    }
    eight(wb, x, dx);
  }
  for (int r = 0; r < NR; ++r) out[std::size_t(r) * ldo + j] = T == weight_type::q8_0 ? ggml_hsum8(acc[r]) : chain[r];
}

// Interleaved Q8_0 and Q4_0 weights x Q8_0 inputs: per input row and row j of w, block b gives
// the exact int32 sum of its products, then acc = fma(dw * dx, sum, acc), block after block. One
// chain whatever the batch or the tile, and the same in every build: the scalar loop here and the
// AVX-512 VNNI tile below round alike (an int32 sum converts to the nearest float either way).
// For Q4_0 that is ggml_gemv_q4_0_8x8_q8_0's chain; for Q8_0 it is not ggml's eight lanes per
// row (q8_0_tile), a few ulp apart: eight accumulators per row would not fit the batch tiles'
// registers, so VNNI builds' Q8_0 products are not llama.cpp's AVX2 bits.
inline float interleaved_dot(const unsigned char* x, const compact_matrix& w, std::size_t j) noexcept {
  const std::size_t scales = q8_0_input_scales(w.cols);
  float acc = 0;
  unsigned char block[q8_0_block_bytes];
  for (std::size_t b = 0; b < w.cols / q8_0_block; ++b) {
    interleaved_block_of(w, j, b, block);
    std::int32_t sum = 0;
    for (std::size_t c = 0; c < q8_0_block; ++c) {
      const int weight = w.type == weight_type::q8_0 ? std::int8_t(block[2 + c])
                         : c < 16                    ? (block[2 + c] & 0xF) - 8
                                                     : (block[2 + c - 16] >> 4) - 8;
      sum += weight * std::int8_t(x[b * q8_0_block_bytes + 2 + c]);
    }
    float dx;
    std::memcpy(&dx, x + scales + 4 * b, sizeof dx);
    acc = std::fma(load_half(block) * dx, float(sum), acc);
  }
  return acc;
}

#if IPA_DETAIL_ROW_GROUPS
// NR input rows (prepared, ld_in bytes apart) and group g of an interleaved w, the group's 16 rows
// in the lanes of a register: each quad of weights is loaded once for the NR rows, whose four
// inputs come broadcast. The weights are unsigned (Q8_0 + 128, Q4_0's nibbles + 8), so a block's
// sums start from the input row's -128 (Q4_0: -8) x its sum. Writes the group's rows in [j0, j1).
// With `fetch_ahead`, asks for the weights 16 blocks on while it computes: a batch computes long
// enough per block that the hardware's prefetch alone left it waiting on memory (measured on one
// core, 8 input rows x 107 MB of Q8_0 weights: 2.4 G vpdpbusd/s without, 3.8-4.2 with; one row
// streams faster without).
template <weight_type T, int NR>
inline void interleaved_tile(const unsigned char* in, std::size_t ld_in, const compact_matrix& w, std::size_t g,
                             float* out, std::size_t ldo, std::size_t j0, std::size_t j1, bool fetch_ahead) noexcept {
  using v16i = std::int32_t __attribute__((vector_size(64)));
  const std::size_t blocks = w.cols / q8_0_block, scales = q8_0_input_scales(w.cols),
                    offsets = q8_0_input_offsets(w.cols), block_bytes = interleaved_block(T);
  const unsigned char* group = w.data + g * blocks * block_bytes;
  constexpr int chains = NR <= 2 ? 2 : 1;  // a row or two: two integer chains (vpdpbusd's latency)
  __m512 acc[NR];
  for (__m512& a : acc) a = _mm512_setzero_ps();
  for (std::size_t b = 0; b < blocks; ++b) {
    const unsigned char* wb = group + b * block_bytes;
    if (fetch_ahead)
      for (std::size_t c = 0; c < block_bytes; c += 64)
        _mm_prefetch(reinterpret_cast<const char*>(wb + 16 * block_bytes + c), _MM_HINT_T0);
    __m512i sums[NR][chains];
    for (int i = 0; i < NR; ++i) {
      const auto offset = std::int32_t(load_u32(in + std::size_t(i) * ld_in + offsets + 4 * b));
      sums[i][0] = _mm512_set1_epi32(T == weight_type::q8_0 ? offset : offset / 16);
      if constexpr (chains == 2) sums[i][1] = _mm512_setzero_si512();
    }
    // weights 4l .. 4l + 3 of the 16 rows: Q8_0's quad l; Q4_0's low nibbles of quad l, or for
    // l >= 4 the high nibbles of quad l - 4
    auto weights = [&](std::size_t l) {
      __m512i q;
      if constexpr (T == weight_type::q8_0) {
        std::memcpy(&q, wb + 32 + 64 * l, sizeof q);
      } else {
        std::memcpy(&q, wb + 32 + 64 * (l % 4), sizeof q);
        if (l >= 4) q = _mm512_srli_epi16(q, 4);
        q = _mm512_and_si512(q, _mm512_set1_epi8(0x0F));
      }
      return q;
    };
    IPA_UNROLL(8)
    for (std::size_t l = 0; l < 8; ++l) {
      const __m512i q = weights(l);
      for (int i = 0; i < NR; ++i) {
        const unsigned char* x = in + std::size_t(i) * ld_in + b * q8_0_block_bytes + 2 + 4 * l;
        __m512i& sum = sums[i][l % chains];
        sum = _mm512_dpbusd_epi32(sum, q, _mm512_set1_epi32(std::int32_t(load_u32(x))));
      }
    }
    // (vector extensions where g++ 12's AVX-512 intrinsics warn falsely of undefined values)
    const v8f dw_lo = load8_f16(wb), dw_hi = load8_f16(wb + 16);
    const v16f dw = __builtin_shufflevector(dw_lo, dw_hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int i = 0; i < NR; ++i) {
      float dx;
      std::memcpy(&dx, in + std::size_t(i) * ld_in + scales + 4 * b, sizeof dx);
      v16i sum = (v16i)sums[i][0];
      if constexpr (chains == 2) sum += (v16i)sums[i][1];
      acc[i] = _mm512_fmadd_ps(__m512(dw * dx), __m512(__builtin_convertvector(sum, v16f)), acc[i]);
    }
  }
  const std::size_t first = g * interleave_rows, lo = std::max(j0, first) - first,
                    hi = std::min({j1, w.rows, first + interleave_rows}) - first;
  const auto lanes = static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
  for (int i = 0; i < NR; ++i) _mm512_mask_storeu_ps(out + std::size_t(i) * ldo + first, lanes, acc[i]);
}
#endif

// compact_matmul_prepared for an interleaved w: on AVX-512 VNNI a group of 16 rows of w at a
// time against the input rows eight at a time (the group's weights stay in cache between).
template <weight_type T>
inline void interleaved_matmul(float* out, std::size_t ldo, const unsigned char* in, std::size_t n,
                               const compact_matrix& w, std::size_t j0, std::size_t j1) noexcept {
  const std::size_t ld_in = compact_input_bytes(T, w.cols);
#if IPA_DETAIL_ROW_GROUPS
  for (std::size_t g = j0 / interleave_rows; g * interleave_rows < j1; ++g) {
    std::size_t i = 0;
    auto tile = [&](auto rows) {  // the first pass over the group fetches ahead (a batch of 4 or more)
      interleaved_tile<T, rows()>(in + i * ld_in, ld_in, w, g, out + i * ldo, ldo, j0, j1, i == 0 && n >= 4);
      i += rows();
    };
    while (i + 8 <= n) tile(std::integral_constant<int, 8>{});
    if (n - i >= 4) tile(std::integral_constant<int, 4>{});
    if (n - i >= 2) tile(std::integral_constant<int, 2>{});
    if (n - i == 1) tile(std::integral_constant<int, 1>{});
  }
#else
  for (std::size_t j = j0; j < j1; ++j)
    for (std::size_t i = 0; i < n; ++i) out[i * ldo + j] = interleaved_dot(in + i * ld_in, w, j);
#endif
}

// The K-quants against Q8_K inputs, as ggml's AVX2 vec_dot_q4_K_q8_K (Q5_K's the same with a
// fifth bit) / vec_dot_q6_K_q8_K (Q3_K's the same with 3 bits), float for float: a block of 256 weights is
// unpacked once for the NR input rows into unsigned bytes (Q4_K's nibbles 0..15, Q5_K's 0..31;
// Q6_K's 6-bit q 0..63 offset by 32 in the product, Q3_K's 0..7 offset by 4) in eight
// sub-blocks of 32, with an int16 scale for each 16 weights. Per input row, eight int32 lanes (lane l of a sub-block:
// bytes 4l .. 4l + 3 times their scale, exact), times dw * dx, go into one 8-lane accumulator; Q4_K's and Q5_K's mins
// (dmin * min_s * the sum of the inputs of sub-block s, which Q8_K keeps per 16) into four more
// lanes for Q4_K (two sub-blocks each), one chain for Q5_K, as ggml keeps them. The end adds the
// lanes in hsum_float_8's order (ggml_hsum8), less the mins' lanes (0+2)+(1+3). The same chain
// whatever the tile.
struct k_block {
  alignas(32) std::uint8_t u[256];
  alignas(32) std::int16_t scale[8][16];  // sub-block s: scale of bytes 0-15 (x8), then of bytes 16-31 (x8)
  alignas(16) std::int16_t min[8];        // Q4_K, Q5_K: the 6-bit min of each sub-block
  float d = 0, dmin = 0;
};

inline void set_scales(k_block& k, int s, int lo, int hi) noexcept {
#if defined(__AVX2__)
  const __m256i v = _mm256_set_m128i(_mm_set1_epi16(std::int16_t(hi)), _mm_set1_epi16(std::int16_t(lo)));
  std::memcpy(k.scale[s], &v, 32);
#else
  for (int i = 0; i < 8; ++i) {
    k.scale[s][i] = std::int16_t(lo);
    k.scale[s][i + 8] = std::int16_t(hi);
  }
#endif
}

// Q4_K's and Q5_K's first 16 bytes: d, dmin, and the sub-blocks' 6-bit scales and mins.
inline void unpack_k_scales_mins(const unsigned char* block, k_block& k) noexcept {
  k.d = half_to_float(block);
  k.dmin = half_to_float(block + 2);
  std::uint8_t scale[8], min[8];
  q4_k_scales(block + 4, scale, min);
  for (int s = 0; s < 8; ++s) {
    set_scales(k, s, scale[s], scale[s]);
    k.min[s] = min[s];
  }
}

inline void unpack_q4_k(const unsigned char* block, k_block& k) noexcept {
  unpack_k_scales_mins(block, k);
  const unsigned char* q = block + 16;
  for (int j = 0; j < 4; ++j) {  // 32 bytes: weights 64j .. 64j + 31 low, 64j + 32 .. 64j + 63 high
#if defined(__AVX2__)
    __m256i v;
    std::memcpy(&v, q + 32 * j, 32);
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    std::memcpy(k.u + 64 * j, &lo, 32);
    std::memcpy(k.u + 64 * j + 32, &hi, 32);
#else
    for (int l = 0; l < 32; ++l) {
      k.u[64 * j + l] = q[32 * j + l] & 0xF;
      k.u[64 * j + 32 + l] = q[32 * j + l] >> 4;
    }
#endif
  }
}

// Q5_K: Q4_K's nibbles (after 32 bytes of fifth bits) plus 16 x bit 2j of qh[l] for weight
// 64j + l, bit 2j + 1 for weight 64j + 32 + l.
inline void unpack_q5_k(const unsigned char* block, k_block& k) noexcept {
  unpack_k_scales_mins(block, k);
  const unsigned char* qh = block + 16;
  const unsigned char* q = block + 48;
#if defined(__AVX2__)
  __m256i h;
  std::memcpy(&h, qh, 32);
  const __m256i m4 = _mm256_set1_epi8(0xF), m1 = _mm256_set1_epi8(1);
  for (int j = 0; j < 4; ++j) {
    __m256i v;
    std::memcpy(&v, q + 32 * j, 32);
    // bit b of each byte of qh, moved to bit 4 (shifts of 16-bit lanes, then masked per byte)
    auto fifth = [&](int b) { return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, b), m1), 4); };
    const __m256i lo = _mm256_or_si256(_mm256_and_si256(v, m4), fifth(2 * j));
    const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), fifth(2 * j + 1));
    std::memcpy(k.u + 64 * j, &lo, 32);
    std::memcpy(k.u + 64 * j + 32, &hi, 32);
  }
#else
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < 32; ++l) {
      k.u[64 * j + l] = std::uint8_t((q[32 * j + l] & 0xF) | (((qh[l] >> (2 * j)) & 1) << 4));
      k.u[64 * j + 32 + l] = std::uint8_t((q[32 * j + l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4));
    }
#endif
}

inline void unpack_q6_k(const unsigned char* block, k_block& k) noexcept {
  const auto* sc = reinterpret_cast<const std::int8_t*>(block + 192);
  k.d = half_to_float(block + 208);
  for (int s = 0; s < 8; ++s) set_scales(k, s, sc[2 * s], sc[2 * s + 1]);
  for (int half = 0; half < 2; ++half) {  // sub-blocks 4h .. 4h + 3, from 64 bytes of ql and 32 of qh
    const unsigned char* ql = block + 64 * half;
    const unsigned char* qh = block + 128 + 32 * half;
    std::uint8_t* u = k.u + 128 * half;
#if defined(__AVX2__)
    __m256i l0, l1, h;
    std::memcpy(&l0, ql, 32);
    std::memcpy(&l1, ql + 32, 32);
    std::memcpy(&h, qh, 32);
    const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
    auto high = [&](int shift) { return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, shift), m2), 4); };
    const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4), high(0));
    const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, m4), high(2));
    const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), high(4));
    const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), high(6));
    std::memcpy(u, &q0, 32);
    std::memcpy(u + 32, &q1, 32);
    std::memcpy(u + 64, &q2, 32);
    std::memcpy(u + 96, &q3, 32);
#else
    for (int l = 0; l < 32; ++l) {
      u[l] = std::uint8_t((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
      u[l + 32] = std::uint8_t((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
      u[l + 64] = std::uint8_t((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
      u[l + 96] = std::uint8_t((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
    }
#endif
  }
}

// Q3_K: q = 2 bits of qs | the hmask bit << 2 (0..7, offset by 4 in the product), one int8
// scale (6-bit, minus 32) per 16 weights; sub-block 4h + j holds bits 2j of qs[32h + l] and bit
// 4h + j of hmask[l].
inline void unpack_q3_k(const unsigned char* block, k_block& k) noexcept {
  std::int8_t scale[16];
  q3_k_scales(block + 96, scale);
  k.d = half_to_float(block + 108);
  for (int s = 0; s < 8; ++s) set_scales(k, s, scale[2 * s], scale[2 * s + 1]);
  const unsigned char* hmask = block;
  for (int h = 0; h < 2; ++h) {
    const unsigned char* qs = block + 32 + 32 * h;
#if defined(__AVX2__)
    __m256i q, hm;
    std::memcpy(&q, qs, 32);
    std::memcpy(&hm, hmask, 32);
    const __m256i m3 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
    for (int j = 0; j < 4; ++j) {
      const __m256i low = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
      const __m256i high = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + j), m1), 2);
      const __m256i u = _mm256_or_si256(low, high);
      std::memcpy(k.u + 32 * (4 * h + j), &u, 32);
    }
#else
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l)
        k.u[32 * (4 * h + j) + l] = std::uint8_t(((qs[l] >> (2 * j)) & 3) | (((hmask[l] >> (4 * h + j)) & 1) << 2));
#endif
  }
}

// A K-quant block of type T unpacked; T has mins (Q4_K, Q5_K) or an offset (Q3_K 4, Q6_K 32).
template <weight_type T>
inline constexpr bool has_mins = T == weight_type::q4_k || T == weight_type::q5_k;
template <weight_type T>
inline constexpr int k_offset = T == weight_type::q6_k   ? 32
                                : T == weight_type::q3_k ? 4
                                                         : 0;
template <weight_type T>
inline constexpr bool is_k_quant = has_mins<T> || k_offset<T> != 0;
template <weight_type T>
inline void unpack_k_quant(const unsigned char* block, k_block& k) noexcept {
  if constexpr (T == weight_type::q3_k) unpack_q3_k(block, k);
  else if constexpr (T == weight_type::q4_k) unpack_q4_k(block, k);
  else if constexpr (T == weight_type::q5_k) unpack_q5_k(block, k);
  else unpack_q6_k(block, k);
}

// The eight int32 lanes of a block against Q8_K inputs xq, as floats: sum over sub-blocks s of
// scale * (u - Offset) * x, lane l holding bytes 4l .. 4l + 3 of each sub-block.
template <int Offset>
inline v8f k_block_dot(const k_block& k, const unsigned char* xq) noexcept {
  v8f lanes;
#if defined(__AVX2__)
  __m256i sum = _mm256_setzero_si256();
  IPA_UNROLL(8)
  for (int s = 0; s < 8; ++s) {
    __m256i u, x, scale;
    std::memcpy(&u, k.u + 32 * s, 32);
    std::memcpy(&x, xq + 32 * s, 32);
    std::memcpy(&scale, k.scale[s], 32);
    // u8 x s8 pairs into int16: at most 2 * 63 * 127 < 2^15, no saturation
    __m256i pairs = _mm256_maddubs_epi16(u, x);
    if constexpr (Offset != 0) pairs = _mm256_sub_epi16(pairs, _mm256_maddubs_epi16(_mm256_set1_epi8(Offset), x));
    sum = add_dot_s16(sum, pairs, scale);
  }
  const __m256 f = _mm256_cvtepi32_ps(sum);
  std::memcpy(&lanes, &f, sizeof lanes);
#else
  for (int l = 0; l < 8; ++l) {
    int sum = 0;
    for (int s = 0; s < 8; ++s)
      for (int b = 4 * l; b < 4 * l + 4; ++b)
        sum += k.scale[s][b / 2] * (int(k.u[32 * s + b]) - Offset) * int(std::int8_t(xq[32 * s + b]));
    lanes[l] = float(sum);
  }
#endif
  return lanes;
}

// Q4_K's and Q5_K's mins against one Q8_K input block, in ggml's four lanes: lane m is
// min_2m * (sum of sub-block 2m's inputs) + min_2m+1 * (sub-block 2m + 1's), the sums of 32
// inputs being bsums[2s] + bsums[2s + 1] (|.| <= 4064).
inline void k_block_mins(const k_block& k, const unsigned char* bsums, int (&lanes)[4]) noexcept {
#if defined(__AVX2__)
  __m128i lo, hi, mins;
  std::memcpy(&lo, bsums, 16);
  std::memcpy(&hi, bsums + 16, 16);
  std::memcpy(&mins, k.min, 16);
  const __m128i prod = _mm_madd_epi16(mins, _mm_hadd_epi16(lo, hi));
  std::memcpy(lanes, &prod, 16);
#else
  std::int16_t sums[16];
  std::memcpy(sums, bsums, 32);
  for (int m = 0; m < 4; ++m)
    lanes[m] = k.min[2 * m] * (sums[4 * m] + sums[4 * m + 1]) + k.min[2 * m + 1] * (sums[4 * m + 2] + sums[4 * m + 3]);
#endif
}

template <weight_type T, int NR>
inline void k_quant_tile(const unsigned char* in, std::size_t ld_in, const compact_matrix& w, std::size_t j, float* out,
                         std::size_t ldo) noexcept {
  static_assert(is_k_quant<T>);
  constexpr block_layout layout = layout_of(T), input = layout_of(weight_type::q8_k);
  const unsigned char* row = w.row(j);
  const std::size_t blocks = w.cols / layout.elements;
  v8f acc[NR] = {};
  float mins[NR][4] = {};  // (Q4_K: ggml's acc_m lanes, negated; Q5_K: its one summs chain in [0])
  k_block k;
  for (std::size_t b = 0; b < blocks; ++b) {
    unpack_k_quant<T>(row + b * layout.bytes, k);
    IPA_UNROLL(4)
    for (int r = 0; r < NR; ++r) {
      const unsigned char* xb = in + std::size_t(r) * ld_in + b * input.bytes;
      const float dx = load_f32(xb);
      acc[r] = fma8(broadcast8(k.d * dx), k_block_dot<k_offset<T>>(k, xb + 4), acc[r]);
      if constexpr (has_mins<T>) {
        int lanes[4];
        k_block_mins(k, xb + 260, lanes);
        const float dm = k.dmin * dx;
        if constexpr (T == weight_type::q4_k)
          for (int m = 0; m < 4; ++m) mins[r][m] = fma1(dm, float(lanes[m]), mins[r][m]);
        else mins[r][0] = fma1(dm, float((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])), mins[r][0]);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    out[std::size_t(r) * ldo + j] = ggml_hsum8(acc[r]) - ((mins[r][0] + mins[r][2]) + (mins[r][1] + mins[r][3]));
}

#if IPA_DETAIL_ROW_GROUPS
// fma8 on sixteen lanes (AVX-512 has FMA).
inline v16f fma16(v16f a, v16f b, v16f c) noexcept { return (v16f)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }

// k_quant_tile for a group of 16 input rows (pack_group's layout) and row j of w, one lane per
// input row: k_block_dot's eight lanes are eight registers here (sums[l]: each sub-block's
// bytes 4l .. 4l + 3, maddubs pairs times their scale by vpdpwssd), Q4_K's mins one more
// (vpdpwssd of the inputs' sub-block sums and the mins, two sub-blocks a pair). The same
// integers and the same chain as k_quant_tile, so the same bits.
template <weight_type T>
inline void k_quant_group_tile(const unsigned char* group, const compact_matrix& w, std::size_t j, float* out,
                               std::size_t ldo) noexcept {
  static_assert(is_k_quant<T>);
  using v16i = std::int32_t __attribute__((vector_size(64)));
  constexpr block_layout layout = layout_of(T);
  const unsigned char* row = w.row(j);
  v16f acc[8] = {}, mins[4] = {};  // (as k_quant_tile's mins)
  k_block k;
  for (std::size_t b = 0; b < w.cols / layout.elements; ++b) {
    unpack_k_quant<T>(row + b * layout.bytes, k);
    const unsigned char* x = group + b * q8_k_group_block;  // pieces (s, l) at 64 (8s + l)
    const unsigned char* x32 = x + 8 * 8 * 64;              // the same as pairs of 32 x inputs
    const unsigned char* sub_sums = x32 + 8 * 8 * 64;
    v16f dx;
    std::memcpy(&dx, sub_sums + 4 * 64, sizeof dx);
    IPA_UNROLL(8)
    for (std::size_t l = 0; l < 8; ++l) {
      __m512i sums = _mm512_setzero_si512();
      IPA_UNROLL(8)
      for (std::size_t s = 0; s < 8; ++s) {
        __m512i piece;
        std::memcpy(&piece, x + 64 * (8 * s + l), sizeof piece);
        // u8 weights x s8 inputs into int16 pairs (<= 2 * 63 * 127: no saturation)
        __m512i pairs = _mm512_maddubs_epi16(_mm512_set1_epi32(std::int32_t(load_u32(k.u + 32 * s + 4 * l))), piece);
        if constexpr (k_offset<T> != 0) {  // the pieces hold 32 x the pairs: Q3_K's 4 x is an exact shift
          __m512i offset;
          std::memcpy(&offset, x32 + 64 * (8 * s + l), sizeof offset);
          if constexpr (k_offset<T> == 4) offset = _mm512_srai_epi16(offset, 3);
          pairs = _mm512_sub_epi16(pairs, offset);
        }
        // both pairs of lane l share a scale: scale[s][2l] and [2l + 1] are equal
        sums = _mm512_dpwssd_epi32(
            sums, pairs,
            _mm512_set1_epi32(std::int32_t(load_u32(reinterpret_cast<const unsigned char*>(k.scale[s] + 2 * l)))));
      }
      acc[l] = fma16(k.d * dx, __builtin_convertvector((v16i)sums, v16f), acc[l]);
    }
    if constexpr (has_mins<T>) {
      __m512i m[4];
      IPA_UNROLL(4)
      for (std::size_t p = 0; p < 4; ++p) {
        __m512i pair_sums;
        std::memcpy(&pair_sums, sub_sums + 64 * p, sizeof pair_sums);
        m[p] = _mm512_dpwssd_epi32(
            _mm512_setzero_si512(), pair_sums,
            _mm512_set1_epi32(std::int32_t(load_u32(reinterpret_cast<const unsigned char*>(k.min + 2 * p)))));
      }
      const v16f dm = k.dmin * dx;
      if constexpr (T == weight_type::q4_k)
        for (std::size_t p = 0; p < 4; ++p) mins[p] = fma16(dm, __builtin_convertvector((v16i)m[p], v16f), mins[p]);
      else
        mins[0] = fma16(dm,
                        __builtin_convertvector(
                            (v16i)_mm512_add_epi32(_mm512_add_epi32(m[0], m[1]), _mm512_add_epi32(m[2], m[3])), v16f),
                        mins[0]);
    }
  }
  const v16f total = ggml_hsum8(acc) - ((mins[0] + mins[2]) + (mins[1] + mins[3]));
  for (std::size_t r = 0; r < group_rows; ++r) out[r * ldo + j] = total[r];
}
#endif

// One row of w at a time against the input rows three (quantized inputs: four) at a time.
template <weight_type T>
inline void compact_matmul_typed(float* out, std::size_t ldo, const unsigned char* in, std::size_t n,
                                 const compact_matrix& w, std::size_t j0, std::size_t j1) noexcept {
  const std::size_t ld_in = compact_input_bytes(T, w.cols);
  for (std::size_t j = j0; j < j1; ++j) {
    std::size_t i = 0;
    if constexpr (T == weight_type::q8_0 || T == weight_type::q4_0) {  // (interleaved: interleaved_matmul)
      for (; i + 4 <= n; i += 4) q8_0_tile<T, 4>(in + i * ld_in, ld_in, w, j, out + i * ldo, ldo);
      for (; i < n; ++i) q8_0_tile<T, 1>(in + i * ld_in, ld_in, w, j, out + i * ldo, ldo);
    } else if constexpr (is_k_quant<T>) {
#if IPA_DETAIL_ROW_GROUPS
      for (; i < row_group_count(T, n) * group_rows; i += group_rows)
        k_quant_group_tile<T>(in + n * ld_in + i / group_rows * group_bytes(T, w.cols), w, j, out + i * ldo, ldo);
#endif
      for (; i + 4 <= n; i += 4) k_quant_tile<T, 4>(in + i * ld_in, ld_in, w, j, out + i * ldo, ldo);
      for (; i < n; ++i) k_quant_tile<T, 1>(in + i * ld_in, ld_in, w, j, out + i * ldo, ldo);
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
  if (w.interleaved && w.type == weight_type::q8_0)
    return detail::interleaved_matmul<weight_type::q8_0>(out, ldo, in, n, w, j0, j1);
  if (w.interleaved) return detail::interleaved_matmul<weight_type::q4_0>(out, ldo, in, n, w, j0, j1);
  switch (w.type) {
    case weight_type::f32: detail::compact_matmul_typed<weight_type::f32>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::f16: detail::compact_matmul_typed<weight_type::f16>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::bf16: detail::compact_matmul_typed<weight_type::bf16>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::q4_0: detail::compact_matmul_typed<weight_type::q4_0>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::q8_0: detail::compact_matmul_typed<weight_type::q8_0>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::q3_k: detail::compact_matmul_typed<weight_type::q3_k>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::q4_k: detail::compact_matmul_typed<weight_type::q4_k>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::q5_k: detail::compact_matmul_typed<weight_type::q5_k>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::q6_k: detail::compact_matmul_typed<weight_type::q6_k>(out, ldo, in, n, w, j0, j1); break;
    case weight_type::q8_k: break;  // an input encoding, never a weight (the readers refuse it)
  }
}

/// The same from f32 rows x (w.cols columns, leading dimension ldx), prepared here.
inline void compact_matmul(float* out, std::size_t ldo, const float* x, std::size_t ldx, std::size_t n,
                           const compact_matrix& w, std::size_t j0, std::size_t j1) {
  std::vector<unsigned char> in(compact_prepared_bytes(w.type, n, w.cols));
  prepare_input(w.type, x, ldx, n, w.cols, in.data());
  compact_matmul_prepared(out, ldo, in.data(), n, w, j0, j1);
}

/// Compact matrices of the same width whose inputs are prepared alike (one input_type(): Q4_K
/// and Q6_K parts may mix, as in a Q4_K_M file) stacked by rows: the weights of one fused
/// product (Q|K|V, W1|W3), each part read where it lies.
class compact_stack {
 public:
  compact_stack() = default;
  /// Throws shape_error when the parts differ in width or in the encoding of their inputs.
  compact_stack(std::initializer_list<compact_matrix> parts) : compact_stack(std::vector<compact_matrix>(parts)) {}
  explicit compact_stack(std::vector<compact_matrix> parts) : parts_(std::move(parts)) {
    for (const compact_matrix& p : parts_) {
      if (ipa::input_type(p.type) != ipa::input_type(parts_.front().type) || p.cols != parts_.front().cols)
        throw shape_error(std::string("compact_stack: parts of one product must share a width and an input "
                                      "encoding (F32, F16, Q8_0 for Q4_0/Q8_0, Q8_K for the K-quants), found ") +
                          weight_type_name(parts_.front().type) + " x " + std::to_string(parts_.front().cols) +
                          " and " + weight_type_name(p.type) + " x " + std::to_string(p.cols));
      rows_ += p.rows;
    }
  }
  std::size_t rows() const noexcept { return rows_; }
  std::size_t cols() const noexcept { return parts_.empty() ? 0 : parts_.front().cols; }
  /// How the parts' inputs are prepared (prepare_input).
  weight_type input_type() const noexcept {
    return parts_.empty() ? weight_type::f32 : ipa::input_type(parts_.front().type);
  }
  const std::vector<compact_matrix>& parts() const noexcept { return parts_; }
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
