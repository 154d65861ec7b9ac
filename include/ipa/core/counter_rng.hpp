// SPDX-License-Identifier: MIT
// A counter-based random number: a pure function of (seed, row, step, index), so a sample does
// not depend on thread count or launch geometry, and the CPU and the GPU draw the same numbers.
// Host and device code (the macro adds __host__ __device__ under nvcc); no CUDA header needed.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define IPA_HOST_DEVICE __host__ __device__
#else
#define IPA_HOST_DEVICE
#endif

namespace ipa {

/// SplitMix64's finaliser: a bijective mix of 64 bits.
IPA_HOST_DEVICE inline std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// Uniform in (0, 1), 24 bits, for vocabulary entry `index` of `row` at decoding `step`.
IPA_HOST_DEVICE inline float counter_uniform(std::uint64_t seed, std::uint64_t row, std::uint64_t step,
                                             std::uint64_t index) noexcept {
  std::uint64_t h = mix64(seed ^ 0x9e3779b97f4a7c15ULL);
  h = mix64(h ^ (row * 0xd1b54a32d192ed03ULL));
  h = mix64(h ^ (step * 0x8cb92ba72f3d8dd7ULL));
  h = mix64(h ^ index);
  return (float(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

/// Gumbel(0, 1) noise from counter_uniform: argmax(logits / T + gumbel) samples softmax(logits / T).
IPA_HOST_DEVICE inline float counter_gumbel(std::uint64_t seed, std::uint64_t row, std::uint64_t step,
                                            std::uint64_t index) noexcept {
  return -logf(-logf(counter_uniform(seed, row, step, index)));
}

}  // namespace ipa
