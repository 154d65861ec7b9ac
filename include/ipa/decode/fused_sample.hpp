// SPDX-License-Identifier: MIT
// The fused IPA step for one row, in one pass over the vocabulary: tailored logits
// z = base + sum_i alpha_i adapter_i, temperature, Gumbel-max sampling with a counter-based
// RNG, and the two log-probs a rollout records (of the distribution sampled from, and the
// untruncated tailored one). This is the CPU reference (double accumulation) of the CUDA
// kernel in ipa/cuda/fusion.cuh: the same noise, so the same token.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>

#include "ipa/core/counter_rng.hpp"
#include "ipa/core/error.hpp"
#include "ipa/core/types.hpp"

namespace ipa {

/// What the fused step returns for one row.
struct fused_sample_result {
  token_id token = -1;
  float log_prob = 0.0f;           ///< under softmax(z / T), the distribution sampled from
  float tailored_log_prob = 0.0f;  ///< under softmax(z)
};

/// Parameters of the fused step shared by every row.
struct fused_sample_params {
  float temperature = 1.0f;  ///< 0: greedy (argmax of z, no noise)
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
};

/// Row `row` of the fused step: base and adapters are the row's V logits. Noise depends only on
/// (seed, row, step, v).
inline fused_sample_result fused_sample_reference(std::span<const float> base, std::span<const float* const> adapters,
                                                  std::span<const float> alphas, const fused_sample_params& p,
                                                  std::uint64_t row) {
  const std::size_t V = base.size();
  if (adapters.size() != alphas.size())
    throw shape_error("fused_sample_reference: " + std::to_string(adapters.size()) + " adapters, " +
                      std::to_string(alphas.size()) + " alphas");
  if (V == 0) throw shape_error("fused_sample_reference: empty vocabulary");
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    throw config_error("fused_sample_reference: temperature must be finite and >= 0");
  const bool greedy = p.temperature == 0.0f;
  const float inv_t = greedy ? 1.0f : 1.0f / p.temperature;
  auto z_of = [&](std::size_t v) {
    float z = base[v];
    // explicit FMAs in the kernel's order: the compilers may not contract differently
    for (std::size_t i = 0; i < adapters.size(); ++i) z = std::fma(alphas[i], adapters[i][v], z);
    return z;
  };
  double max_t = -INFINITY, max_u = -INFINITY;
  float best = -INFINITY;
  std::size_t best_v = 0;
  for (std::size_t v = 0; v < V; ++v) {
    const float z = z_of(v), zt = z * inv_t;
    max_t = std::fmax(max_t, double(zt));
    max_u = std::fmax(max_u, double(z));
    const float score = greedy ? z : std::fma(z, inv_t, counter_gumbel(p.seed, row, p.step, v));
    if (score > best) best = score, best_v = v;
  }
  if (!std::isfinite(max_u)) throw config_error("fused_sample_reference: every tailored logit is -inf or NaN");
  double sum_t = 0, sum_u = 0;
  for (std::size_t v = 0; v < V; ++v) {
    const float z = z_of(v);
    sum_t += std::exp(double(z * inv_t) - max_t);
    sum_u += std::exp(double(z) - max_u);
  }
  const float zb = z_of(best_v);
  fused_sample_result r;
  r.token = token_id(best_v);
  r.tailored_log_prob = float(double(zb) - max_u - std::log(sum_u));
  r.log_prob = greedy ? 0.0f : float(double(zb * inv_t) - max_t - std::log(sum_t));
  return r;
}

}  // namespace ipa
