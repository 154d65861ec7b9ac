// SPDX-License-Identifier: MIT
// A small, fast, seedable generator (xoshiro256**) and the uniform draws the samplers use.
#pragma once
#include <concepts>
#include <cstdint>
#include <limits>
#include <random>

namespace ipa {

/// xoshiro256** (Blackman & Vigna 2018), seeded through splitmix64. Satisfies
/// std::uniform_random_bit_generator; any other such generator works with ipa as well.
class xoshiro256 {
 public:
  using result_type = std::uint64_t;
  explicit xoshiro256(std::uint64_t seed = 0x1234abcdULL) noexcept { this->seed(seed); }
  void seed(std::uint64_t seed) noexcept {
    for (auto& s : s_) s = splitmix64(seed);
  }
  static constexpr result_type min() noexcept { return 0; }
  static constexpr result_type max() noexcept { return std::numeric_limits<result_type>::max(); }
  result_type operator()() noexcept {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  /// The full state, for checkpoints that must resume exactly.
  const std::uint64_t* state() const noexcept { return s_; }
  void set_state(const std::uint64_t (&s)[4]) noexcept {
    for (int i = 0; i < 4; ++i) s_[i] = s[i];
  }
  friend bool operator==(const xoshiro256&, const xoshiro256&) = default;

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitmix64(std::uint64_t& x) noexcept {
    std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::uint64_t s_[4];
};

/// A double uniform in [0, 1) from 53 random bits; the same sequence on every platform
/// (std::uniform_real_distribution is not specified bit for bit).
template <std::uniform_random_bit_generator Rng>
double uniform01(Rng& rng) {
  static_assert(Rng::max() - Rng::min() == std::numeric_limits<std::uint64_t>::max() ||
                    Rng::max() - Rng::min() == std::numeric_limits<std::uint32_t>::max(),
                "ipa::uniform01: the generator must produce 32 or 64 uniform bits");
  std::uint64_t bits = static_cast<std::uint64_t>(rng() - Rng::min());
  if constexpr (Rng::max() - Rng::min() == std::numeric_limits<std::uint32_t>::max())
    bits = (bits << 32) | static_cast<std::uint64_t>(rng() - Rng::min());
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

}  // namespace ipa
