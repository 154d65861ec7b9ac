// SPDX-License-Identifier: MIT
// Losses through the IPA fusion, one vocabulary row at a time. The tailored logits are
//   z = base + alpha * adapter,   log pi = z - logsumexp(z)
// and only the adapter is differentiated: d loss / d adapter = alpha * d loss / d z. The base's
// logits come from the rollout (stored once at decoding time): the base never runs again.
//
// Every "add_*_grad" helper adds coef * d(term)/dz into a caller-owned row dz.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/math.hpp"
#include "ipa/core/parallel.hpp"
#include "ipa/core/types.hpp"

namespace ipa {

/// log_pi = log_softmax(base + alpha * adapter) (base empty: the adapter alone, as when a model
/// is fine-tuned without a base). Sums in double whatever T is.
template <class T>
void tailored_log_softmax(std::span<const float> base, std::span<const T> adapter, double alpha, std::span<T> log_pi) {
  const std::size_t V = adapter.size();
  if (log_pi.size() != V || (!base.empty() && base.size() != V))
    throw shape_error("tailored_log_softmax: rows of " + std::to_string(base.size()) + " (base), " + std::to_string(V) +
                      " (adapter) and " + std::to_string(log_pi.size()) + " (output) values");
  if constexpr (std::is_same_v<T, float>) {  // float: one vectorisable pass, sums in double
    const float a = float(alpha);
    float max = -std::numeric_limits<float>::infinity();
    for (std::size_t v = 0; v < V; ++v) {
      const float z = (base.empty() ? 0.0f : base[v]) + a * adapter[v];
      log_pi[v] = z;
      max = z > max ? z : max;
    }
    const float lse = float(double(max) + std::log(sum_exp(std::span<const float>(log_pi.data(), V), max)));
    for (std::size_t v = 0; v < V; ++v) log_pi[v] -= lse;
    return;
  }
  double max = -std::numeric_limits<double>::infinity();
  for (std::size_t v = 0; v < V; ++v) {
    const double z = (base.empty() ? 0.0 : double(base[v])) + alpha * double(adapter[v]);
    log_pi[v] = T(z);
    max = std::max(max, z);
  }
  double sum = 0;  // shifted by the max: no overflow
  for (std::size_t v = 0; v < V; ++v) sum += std::exp(double(log_pi[v]) - max);
  const double lse = max + std::log(sum);
  for (std::size_t v = 0; v < V; ++v) log_pi[v] = T(double(log_pi[v]) - lse);
}

/// dz += coef * d log pi(y) / dz = coef * (onehot(y) - pi).
template <class T>
void add_log_prob_grad(std::span<const T> log_pi, token_id y, double coef, std::span<T> dz) noexcept {
  if constexpr (std::is_same_v<T, float>) {
    add_scaled_exp(float(-coef), log_pi, dz);
  } else {
    for (std::size_t v = 0; v < log_pi.size(); ++v) dz[v] -= T(coef * std::exp(double(log_pi[v])));
  }
  dz[std::size_t(y)] += T(coef);
}

namespace detail {
// pi = exp(log_pi) into a per-thread buffer (vectorised for float).
template <class T>
std::span<const T> probs_of(std::span<const T> log_pi) {
  thread_local std::vector<T> p;
  p.resize(log_pi.size());
  if constexpr (std::is_same_v<T, float>) exp_of(log_pi, p);
  else
    for (std::size_t v = 0; v < p.size(); ++v) p[v] = std::exp(log_pi[v]);
  return p;
}
}  // namespace detail

/// KL(pi || q) = sum pi (log pi - log q), exact over the vocabulary; dz += coef * dKL/dz, where
/// dKL/dz_j = pi_j (log pi_j - log q_j - KL). `log_q` must be normalised log-probs.
template <class T>
double add_kl_grad(std::span<const T> log_pi, std::span<const T> log_q, double coef, std::span<T> dz) noexcept {
  const std::span<const T> pi = detail::probs_of(log_pi);
  double kl = 0;
  for (std::size_t v = 0; v < log_pi.size(); ++v)
    if (pi[v] > 0) kl += double(pi[v]) * (double(log_pi[v]) - double(log_q[v]));
  if (coef != 0)
    for (std::size_t v = 0; v < log_pi.size(); ++v)
      if (pi[v] > 0) dz[v] += T(coef * double(pi[v]) * (double(log_pi[v]) - double(log_q[v]) - kl));
  return kl;
}

/// H(pi) = -sum pi log pi; dz += coef * dH/dz, where dH/dz_j = -pi_j (log pi_j + H).
template <class T>
double add_entropy_grad(std::span<const T> log_pi, double coef, std::span<T> dz) noexcept {
  const std::span<const T> pi = detail::probs_of(log_pi);
  double h = 0;
  for (std::size_t v = 0; v < log_pi.size(); ++v)
    if (pi[v] > 0) h -= double(pi[v]) * double(log_pi[v]);
  if (coef != 0)
    for (std::size_t v = 0; v < log_pi.size(); ++v)
      if (pi[v] > 0) dz[v] -= T(coef * double(pi[v]) * (double(log_pi[v]) + h));
  return h;
}

/// Mean next-token cross-entropy of logits (N, V) against targets (N; a negative target is
/// ignored, like PyTorch's ignore_index); writes d loss / d logits. Returns the loss.
template <class T>
double cross_entropy(std::span<const T> logits, std::span<const token_id> targets, std::size_t V,
                     std::span<T> dlogits) {
  const std::size_t N = targets.size();
  if (logits.size() != N * V || dlogits.size() != N * V)
    throw shape_error("cross_entropy: logits/dlogits must hold targets x V = " + std::to_string(N * V) + " values");
  std::size_t count = 0;
  for (token_id t : targets) {
    if (t >= 0 && std::size_t(t) >= V)
      throw shape_error("cross_entropy: target " + std::to_string(t) + " outside [0, " + std::to_string(V) + ")");
    count += t >= 0;
  }
  if (count == 0) {
    std::fill(dlogits.begin(), dlogits.end(), T(0));
    return 0;
  }
  // rows are independent: spread them over the threads, sum the per-row losses in order
  std::vector<double> row_loss(N, 0.0);
  parallel_for(N, [&](std::size_t i) {
    const std::span<T> d = dlogits.subspan(i * V, V);
    std::fill(d.begin(), d.end(), T(0));
    if (targets[i] < 0) return;
    thread_local std::vector<T> log_pi;
    log_pi.resize(V);
    tailored_log_softmax<T>({}, logits.subspan(i * V, V), 1.0, log_pi);
    row_loss[i] = -double(log_pi[std::size_t(targets[i])]);
    add_log_prob_grad<T>(log_pi, targets[i], -1.0 / double(count), d);
  });
  double loss = 0;
  for (double l : row_loss) loss += l;
  return loss / double(count);
}

/// The two per-token KL estimators of Schulman's "Approximating KL divergence" note, for a
/// token y sampled from pi: k1 = log pi(y) - log ref(y) (unbiased, high variance, can be
/// negative); k3 = r - 1 - log r with r = ref(y)/pi(y) (unbiased, always >= 0).
enum class kl_estimator { k1, k3 };

inline double kl_estimate(kl_estimator e, double log_pi, double log_ref) noexcept {
  const double log_r = log_ref - log_pi;
  return e == kl_estimator::k1 ? -log_r : std::expm1(log_r) - log_r;
}

/// PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347) for one token, as a loss to
/// minimise: max(-A r, -A clip(r, 1-eps, 1+eps)), r = exp(log_pi - old_log_pi).
struct ppo_token_loss {
  double loss = 0;         ///< the clipped surrogate loss
  double dloss_dlogp = 0;  ///< its derivative with respect to log_pi (0 where clipped)
  bool clipped = false;
};
inline ppo_token_loss ppo_clip_loss(double log_pi, double old_log_pi, double advantage, double clip_eps) noexcept {
  const double ratio = std::exp(log_pi - old_log_pi);
  const double unclipped = -advantage * ratio;
  const double clipped = -advantage * std::clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps);
  if (unclipped >= clipped) return {unclipped, -advantage * ratio, false};
  return {clipped, 0.0, true};
}

/// PPO's clipped value loss for one token: 0.5 * max((v - R)^2, (clip(v, v_old +- eps) - R)^2).
struct value_token_loss {
  double loss = 0;
  double dloss_dvalue = 0;
};
inline value_token_loss ppo_value_loss(double value, double old_value, double ret, double clip_eps) noexcept {
  const double clipped_v = std::clamp(value, old_value - clip_eps, old_value + clip_eps);
  const double a = (value - ret) * (value - ret), b = (clipped_v - ret) * (clipped_v - ret);
  if (a >= b) return {0.5 * a, value - ret};
  const bool inside = value > old_value - clip_eps && value < old_value + clip_eps;
  return {0.5 * b, inside ? clipped_v - ret : 0.0};
}

}  // namespace ipa
