// SPDX-License-Identifier: MIT
// bfloat16 storage: the top 16 bits of an IEEE float, rounded to nearest even. Halves the
// memory of stored base logits (a training pool keeps one (T, V) block per sample).
#pragma once
#include <cstdint>
#include <cstring>

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

}  // namespace ipa
