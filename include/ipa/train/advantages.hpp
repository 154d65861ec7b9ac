// SPDX-License-Identifier: MIT
// From rewards to advantages: running-mean baseline (REINFORCE, Williams 1992), leave-one-out
// (RLOO, Kool et al. 2019 / Ahmadian et al. 2024, arXiv:2402.14740), group normalisation
// (GRPO, Shao et al. 2024, arXiv:2402.03300), GAE (Schulman et al. 2015, arXiv:1506.02438),
// whitening; Quark's quantile bins (Lu et al. 2022, arXiv:2205.13636); KL coefficient
// controllers (fixed, adaptive as Ziegler et al. 2019, arXiv:1909.08593).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "ipa/core/error.hpp"

namespace ipa {

/// REINFORCE's baseline: an exponential moving average of past rewards. advantage = r - b,
/// where b is the baseline *before* this batch (so a sample never baselines itself).
struct running_mean_baseline {
  double decay = 0.9;  ///< b <- decay * b + (1 - decay) * mean(batch)
  double value = 0.0;
  bool has_value = false;

  std::vector<double> advantages(std::span<const double> rewards) {
    if (rewards.empty()) return {};
    const double mean = std::accumulate(rewards.begin(), rewards.end(), 0.0) / double(rewards.size());
    const double b = has_value ? value : mean;
    std::vector<double> a(rewards.size());
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = rewards[i] - b;
    value = has_value ? decay * value + (1 - decay) * mean : mean;
    has_value = true;
    return a;
  }
};

inline void check_groups(std::size_t n, std::size_t group, const char* who) {
  if (group < 2 || n % group != 0)
    throw config_error(std::string(who) +
                       ": needs groups of >= 2 samples per prompt and a batch that is a multiple "
                       "of the group size; found " +
                       std::to_string(n) + " rewards in groups of " + std::to_string(group));
}

/// RLOO: rewards come in consecutive groups of k samples of the same prompt; each sample's
/// baseline is the mean of the other k - 1.
inline std::vector<double> rloo_advantages(std::span<const double> rewards, std::size_t k) {
  check_groups(rewards.size(), k, "rloo_advantages");
  std::vector<double> a(rewards.size());
  for (std::size_t g = 0; g < rewards.size(); g += k) {
    double sum = 0;
    for (std::size_t i = 0; i < k; ++i) sum += rewards[g + i];
    for (std::size_t i = 0; i < k; ++i) a[g + i] = rewards[g + i] - (sum - rewards[g + i]) / double(k - 1);
  }
  return a;
}

/// GRPO: (r - mean of the group) / (std of the group + eps), population std.
inline std::vector<double> group_normalised_advantages(std::span<const double> rewards, std::size_t k,
                                                       double eps = 1e-6) {
  check_groups(rewards.size(), k, "group_normalised_advantages");
  std::vector<double> a(rewards.size());
  for (std::size_t g = 0; g < rewards.size(); g += k) {
    double mean = 0, var = 0;
    for (std::size_t i = 0; i < k; ++i) mean += rewards[g + i];
    mean /= double(k);
    for (std::size_t i = 0; i < k; ++i) var += (rewards[g + i] - mean) * (rewards[g + i] - mean);
    const double sd = std::sqrt(var / double(k));
    for (std::size_t i = 0; i < k; ++i) a[g + i] = (rewards[g + i] - mean) / (sd + eps);
  }
  return a;
}

/// Generalised advantage estimation over one sequence of T tokens (the value after the last
/// token is 0: the episode ends). delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma
/// lambda A_{t+1}; returns_t = A_t + V_t (the value targets).
struct gae_result {
  std::vector<double> advantages, returns;
};
inline gae_result gae(std::span<const double> rewards, std::span<const double> values, double gamma, double lambda) {
  if (rewards.size() != values.size())
    throw shape_error("gae: " + std::to_string(rewards.size()) + " rewards but " + std::to_string(values.size()) +
                      " values");
  const std::size_t T = rewards.size();
  gae_result r{std::vector<double>(T), std::vector<double>(T)};
  double next_adv = 0, next_value = 0;
  for (std::size_t t = T; t-- > 0;) {
    const double delta = rewards[t] + gamma * next_value - values[t];
    next_adv = delta + gamma * lambda * next_adv;
    r.advantages[t] = next_adv;
    r.returns[t] = next_adv + values[t];
    next_value = values[t];
  }
  return r;
}

/// In place: x <- (x - mean) / (std + eps) over all entries (population std).
inline void whiten(std::span<double> x, double eps = 1e-8) {
  if (x.size() < 2) return;
  double mean = std::accumulate(x.begin(), x.end(), 0.0) / double(x.size()), var = 0;
  for (double v : x) var += (v - mean) * (v - mean);
  const double sd = std::sqrt(var / double(x.size()));
  for (double& v : x) v = (v - mean) / (sd + eps);
}

/// Quark's quantisation: sorts rewards and cuts them into k bins of (nearly) equal size; bin 0
/// holds the highest rewards, and Quark always samples with bin 0's control token. Equal rewards
/// share one bin, the bin of their middle rank (splitting a tie at a bin edge would put equal
/// samples under different control tokens), except the highest rewards, which are bin 0 however
/// many share them: with a 0/1 reward, bin 0 means "reward 1" at any success rate, where by
/// middle rank it would move to bin 1, then 2 as the pool's successes pass 40% and 80%, and the
/// token sampled with would change meaning under the adapter's feet. The official code cuts by
/// sorted position, so there too bin 0 holds only the best rewards once they are a k-th of the pool.
inline std::vector<int> quantile_bins(std::span<const double> rewards, int k) {
  if (k < 1) throw config_error("quantile_bins: k must be >= 1, found " + std::to_string(k));
  const std::size_t n = rewards.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return rewards[a] > rewards[b]; });
  std::vector<int> bin(n);
  for (std::size_t first = 0; first < n;) {
    std::size_t last = first;
    while (last + 1 < n && rewards[order[last + 1]] == rewards[order[first]]) ++last;
    const int b = first == 0 ? 0 : int((first + last) / 2 * std::size_t(k) / n);
    for (std::size_t r = first; r <= last; ++r) bin[order[r]] = b;
    first = last + 1;
  }
  return bin;
}

/// Each bin's size and mean reward (0 for an empty bin): Quark's diagnostics.
struct bin_summary {
  std::vector<std::size_t> size;
  std::vector<double> mean_reward;
};
inline bin_summary summarize_bins(std::span<const double> rewards, std::span<const int> bins, int k) {
  bin_summary s{std::vector<std::size_t>(std::size_t(std::max(k, 0))),
                std::vector<double>(std::size_t(std::max(k, 0)))};
  for (std::size_t i = 0; i < rewards.size() && i < bins.size(); ++i) {
    if (bins[i] < 0 || bins[i] >= k) continue;
    ++s.size[std::size_t(bins[i])];
    s.mean_reward[std::size_t(bins[i])] += rewards[i];
  }
  for (std::size_t b = 0; b < s.size.size(); ++b)
    if (s.size[b] != 0) s.mean_reward[b] /= double(s.size[b]);
  return s;
}

/// A KL (or entropy) coefficient that is fixed, or adapted towards a target value per step:
/// coef *= 1 + clip(observed / target - 1, -0.2, 0.2) * n / horizon (Ziegler et al. 2019).
struct kl_controller {
  double coef = 0.05;
  double target = 0;  ///< 0: fixed coefficient
  double horizon = 10000;

  void update(double observed, std::size_t n_samples) noexcept {
    if (target <= 0) return;
    const double error = std::clamp(observed / target - 1.0, -0.2, 0.2);
    coef *= 1.0 + error * double(n_samples) / horizon;
  }
};

}  // namespace ipa
