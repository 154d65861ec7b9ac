// SPDX-License-Identifier: MIT
// The IPA step in log space (Lu et al. 2023, arXiv:2305.15065): the tailored policy is the
// product of experts p_base * prod_i p_i^alpha_i, renormalised, i.e. logits add:
//   tailored[v] = base[v] + sum_i alpha_i * adapter_i[v]        (then one softmax)
// A log_softmax of the base first would only shift the row by a constant: a no-op for the policy.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/math.hpp"
#include "ipa/core/types.hpp"

namespace ipa {

/// Throws config_error unless alpha is finite (negative is fine: an anti-expert, as DExperts).
inline void check_alpha(float alpha, const std::string& where = "alpha") {
  if (!std::isfinite(alpha)) throw config_error(where + " must be a finite number, found " + std::to_string(alpha));
}

/// tailored += alpha * adapter over the vocabulary. alpha == 0 leaves the row untouched (even
/// where the adapter says -inf). An adapter's -inf bans the token whatever the sign of alpha:
/// an anti-expert that cannot produce a token (outside its vocabulary, see vocab_mapped) must not
/// make it certain.
inline void add_expert(std::span<float> tailored, std::span<const float> adapter, float alpha) {
  if (tailored.size() != adapter.size())
    throw shape_error("add_expert: vocabulary sizes differ (" + std::to_string(tailored.size()) + " vs " +
                      std::to_string(adapter.size()) + ")");
  if (alpha == 0.0f) return;
  if (alpha > 0.0f) {
    for (std::size_t v = 0; v < tailored.size(); ++v) tailored[v] += alpha * adapter[v];
    return;
  }
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  for (std::size_t v = 0; v < tailored.size(); ++v)
    tailored[v] = adapter[v] == neg_inf ? neg_inf : tailored[v] + alpha * adapter[v];
}

/// How a top-k-only base fills the vocabulary it did not reveal.
enum class tail_policy {
  restrict_to_top_k,  ///< -inf outside the top-k: the adapter can only re-rank them (the paper)
  uniform,            ///< the missing mass 1 - sum(top-k probs) spread evenly over the others
};

/// The log-prob a top-k base row leaves to each of the V - k ids it did not reveal: -inf when
/// restricting to the top-k, else the missing mass 1 - sum(top-k probs) spread evenly.
inline float tail_log_prob(std::span<const float> log_probs, std::size_t V, tail_policy policy) {
  const std::size_t k = log_probs.size();
  if (policy == tail_policy::restrict_to_top_k || k >= V) return -std::numeric_limits<float>::infinity();
  double mass = 0.0;
  for (float lp : log_probs) mass += std::exp(double(lp));
  if (mass >= 1.0) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(std::log((1.0 - mass) / double(V - k)));
}

/// Writes a dense base row (V log-probs) from top-k (id, log-prob) pairs under `policy`.
/// Throws shape_error for ids outside the vocabulary or repeated, io-style garbage (NaN,
/// log-probs > 0) as config_error.
inline void densify_top_k(std::span<const token_id> ids, std::span<const float> log_probs, tail_policy policy,
                          std::span<float> out) {
  const std::size_t V = out.size(), k = ids.size();
  if (log_probs.size() != k)
    throw shape_error("densify_top_k: " + std::to_string(k) + " ids but " + std::to_string(log_probs.size()) +
                      " log-probs");
  if (k == 0 || k > V)
    throw shape_error("densify_top_k: top-k of " + std::to_string(k) + " for a vocabulary of " + std::to_string(V));
  for (std::size_t j = 0; j < k; ++j) {
    if (ids[j] < 0 || std::size_t(ids[j]) >= V)
      throw shape_error("densify_top_k: id " + std::to_string(ids[j]) + " outside [0, " + std::to_string(V) + ")");
    if (std::isnan(log_probs[j]) || log_probs[j] > 1e-4f)
      throw config_error("densify_top_k: log-prob " + std::to_string(log_probs[j]) + " of id " +
                         std::to_string(ids[j]) + " is not a log-probability (expected <= 0)");
  }
  const float tail = tail_log_prob(log_probs, V, policy);
  std::vector<token_id> sorted(ids.begin(), ids.end());
  std::sort(sorted.begin(), sorted.end());
  if (auto dup = std::adjacent_find(sorted.begin(), sorted.end()); dup != sorted.end())
    throw shape_error("densify_top_k: id " + std::to_string(*dup) + " appears twice");
  std::fill(out.begin(), out.end(), tail);
  for (std::size_t j = 0; j < k; ++j) out[ids[j]] = log_probs[j];
}

}  // namespace ipa
