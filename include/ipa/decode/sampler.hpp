// SPDX-License-Identifier: MIT
// Samplers as a compile-time chain, the llama.cpp way: logit transforms (temperature, top-k,
// top-p, min-p) rewrite a row left to right, then exactly one selector picks a token with the
// caller's generator. "Selector last" is a type rule, not a comment.
#pragma once
#include <algorithm>
#include <cmath>
#include <concepts>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/math.hpp"
#include "ipa/core/rng.hpp"
#include "ipa/core/types.hpp"

namespace ipa {

/// Rewrites logits in place (masking with -inf, rescaling). Never picks a token.
template <class T>
concept LogitTransform = requires(T& t, std::span<float> logits) {
  { t.apply(logits) } -> std::same_as<void>;
};

/// Picks the next token from (transformed) logits; all randomness comes from the caller's
/// generator. `log_prob` gives the log-probability of a token under the distribution it samples.
/// A selector may also offer `draw(logits, rng) -> sampled_token`, both in one pass over the row
/// (greedy does); `sampler` then calls that instead of select and log_prob.
template <class S, class Rng = xoshiro256>
concept TokenSelector = requires(S& s, std::span<const float> logits, Rng& rng, token_id token) {
  requires std::uniform_random_bit_generator<Rng>;
  { s.select(logits, rng) } -> std::same_as<token_id>;
  { s.log_prob(logits, token) } -> std::convertible_to<float>;
};

namespace detail {
constexpr float neg_inf = -std::numeric_limits<float>::infinity();

// Indices of `logits` ordered by descending value, lower id first on ties; only the first
// `count` are guaranteed ordered. Reuses `order`.
inline void order_by_logit(std::span<const float> logits, std::vector<int>& order, std::size_t count) {
  order.resize(logits.size());
  std::iota(order.begin(), order.end(), 0);
  auto better = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  count = std::min(count, order.size());
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(count), order.end(), better);
}
// The k most likely ids of a dense row (ties: lower id) and their log-probs, into ids/log_probs.
inline void top_k_log_probs(std::span<const float> logits, std::size_t k, std::vector<int>& order, token_id* ids,
                            float* log_probs) {
  order_by_logit(logits, order, k);
  const double lse = log_sum_exp(logits);
  for (std::size_t j = 0; j < k; ++j) {
    ids[j] = order[j];
    log_probs[j] = static_cast<float>(logits[order[j]] - lse);
  }
}
}  // namespace detail

/// Divides logits by t > 0 (t < 1 sharpens, t > 1 flattens).
struct temperature {
  float t = 1.0f;
  explicit temperature(float value = 1.0f) : t(value) {
    if (!(t > 0.0f) || !std::isfinite(t))
      throw config_error("temperature must be finite and > 0 (use greedy{} for 0), found " + std::to_string(t));
  }
  void apply(std::span<float> logits) const noexcept {
    if (t == 1.0f) return;
    const float inv = 1.0f / t;  // inf when t < 1/FLT_MAX
    float top = -std::numeric_limits<float>::infinity(), largest = 0;
    for (float v : logits)
      if (std::isfinite(v)) top = std::max(top, v), largest = std::max(largest, std::abs(v));
    if (std::isfinite(inv) && largest * inv < std::numeric_limits<float>::max()) {
      for (float& v : logits) v *= inv;
      return;
    }
    // A tiny t would overflow the row to inf (and inf - inf is NaN). (v - top) / t is the same
    // distribution and cannot overflow upwards: the best tokens stay at 0, the rest go to -inf
    // when t is that small, which is greedy decoding (ties shared evenly).
    if (!std::isfinite(top)) return;  // every token banned: nothing to scale
    const float scale = std::min(inv, std::numeric_limits<float>::max());
    for (float& v : logits) v = (v - top) * scale;
  }
};

/// Keeps the k most likely tokens (exactly k: ties go to the lower id); k = 0 keeps all.
/// Fan et al. 2018, arXiv:1805.04833.
struct top_k {
  std::size_t k = 0;
  explicit top_k(long long value = 0) : k(static_cast<std::size_t>(value)) {
    if (value < 0) throw config_error("top_k must be >= 0 (0 = off), found " + std::to_string(value));
  }
  void apply(std::span<float> logits) {
    if (k == 0 || k >= logits.size()) return;
    detail::order_by_logit(logits, order_, k);
    for (std::size_t j = k; j < order_.size(); ++j) logits[order_[j]] = detail::neg_inf;
  }

 private:
  std::vector<int> order_;
};

/// Nucleus sampling: keeps the smallest set of most likely tokens whose probability reaches p,
/// p in (0, 1]. Holtzman et al. 2019, arXiv:1904.09751.
struct top_p {
  double p = 1.0;
  explicit top_p(double value = 1.0) : p(value) {
    if (!(p > 0.0 && p <= 1.0)) throw config_error("top_p must be in (0, 1], found " + std::to_string(value));
  }
  void apply(std::span<float> logits) {
    if (p >= 1.0) return;
    const double lse = log_sum_exp(logits);
    // Tokens below (1-p)/(V-1) can never be inside the nucleus (llama2.c's cut); sort the rest.
    const double cutoff = std::log((1.0 - p) / double(logits.size() > 1 ? logits.size() - 1 : 1)) + lse;
    order_.clear();
    for (std::size_t v = 0; v < logits.size(); ++v)
      if (logits[v] >= cutoff) order_.push_back(int(v));
    std::sort(order_.begin(), order_.end(),
              [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    double cum = 0.0;
    std::size_t keep = order_.size();
    for (std::size_t j = 0; j < order_.size(); ++j) {
      cum += std::exp(double(logits[order_[j]]) - lse);
      if (cum >= p) {
        keep = j + 1;
        break;
      }
    }
    keep_.assign(logits.size(), 0);
    for (std::size_t j = 0; j < keep; ++j) keep_[order_[j]] = 1;
    for (std::size_t v = 0; v < logits.size(); ++v)
      if (!keep_[v]) logits[v] = detail::neg_inf;
  }

 private:
  std::vector<int> order_;
  std::vector<char> keep_;
};

/// Keeps tokens whose probability is at least p times the most likely one's, p in [0, 1].
/// Nguyen et al. 2024, arXiv:2407.01082.
struct min_p {
  double p = 0.0;
  explicit min_p(double value = 0.0) : p(value) {
    if (!(p >= 0.0 && p <= 1.0)) throw config_error("min_p must be in [0, 1], found " + std::to_string(value));
  }
  void apply(std::span<float> logits) const noexcept {
    if (p <= 0.0 || logits.empty()) return;
    const float max = logits[argmax(logits)];
    const double cut = double(max) + std::log(p);
    for (float& v : logits)
      if (v < cut) v = detail::neg_inf;
  }
};

/// A sampled token and its log-probability under the distribution it was drawn from.
struct sampled_token {
  token_id token = 0;
  float log_prob = 0.0f;
};

namespace detail {
/// A selector that draws and scores in one pass over the row (`draw`, optional).
template <class S, class Rng>
concept DrawsInOnePass = requires(S& s, std::span<const float> row, Rng& rng) {
  { s.draw(row, rng) } -> std::same_as<sampled_token>;
};
}  // namespace detail

/// The most likely token (lowest id on ties). Its distribution is a point mass: log-prob 0.
struct greedy {
  template <class Rng>
  token_id select(std::span<const float> logits, Rng&) const noexcept {
    return static_cast<token_id>(argmax(logits));
  }
  float log_prob(std::span<const float> logits, token_id token) const noexcept {
    return static_cast<std::size_t>(token) == argmax(logits) ? 0.0f : detail::neg_inf;
  }
  /// select and log_prob of the token selected, in one pass over the row (sampler uses it).
  template <class Rng>
  sampled_token draw(std::span<const float> logits, Rng& rng) const noexcept {
    return {select(logits, rng), 0.0f};
  }
};

/// Draws from softmax(logits) by inverse CDF over ids in order, with one uniform from the
/// caller's generator: the same generator state gives the same token on every platform.
struct categorical {
  template <class Rng>
  token_id select(std::span<const float> logits, Rng& rng) const {
    const float max = logits[argmax(logits)];
    if (max == detail::neg_inf) throw config_error("categorical: every token is masked (all logits are -inf)");
    double total = 0.0;
    for (float v : logits) total += std::exp(double(v) - max);
    const double target = uniform01(rng) * total;
    double cum = 0.0;
    std::size_t last = 0;
    for (std::size_t v = 0; v < logits.size(); ++v) {
      const double w = std::exp(double(logits[v]) - max);
      if (w == 0.0) continue;
      cum += w;
      last = v;
      if (cum > target) return static_cast<token_id>(v);
    }
    return static_cast<token_id>(last);  // rounding left target at the very end
  }
  float log_prob(std::span<const float> logits, token_id token) const noexcept {
    return static_cast<float>(logits[token] - log_sum_exp(logits));
  }
};

/// Transforms then exactly one selector, fixed at compile time: sampler<top_k, top_p, categorical>.
template <class... Stages>
class sampler {
  static_assert(sizeof...(Stages) >= 1, "ipa::sampler: a chain needs a token selector as its last stage");
  using stages_tuple = std::tuple<Stages...>;
  using selector_type = std::tuple_element_t<sizeof...(Stages) - 1, stages_tuple>;
  static constexpr std::size_t n_transforms = sizeof...(Stages) - 1;
  template <std::size_t... I>
  static constexpr bool transforms_first(std::index_sequence<I...>) {
    return (LogitTransform<std::tuple_element_t<I, stages_tuple>> && ...);
  }
  static_assert(TokenSelector<selector_type>,
                "ipa::sampler: the last stage must be a token selector (greedy, categorical, ...)");
  static_assert(transforms_first(std::make_index_sequence<n_transforms>{}),
                "ipa::sampler: every stage before the selector must be a logit transform");

 public:
  explicit sampler(Stages... stages) : stages_(std::move(stages)...) {}

  /// Transforms `logits` in place, then draws; returns the token and its log-prob under the
  /// transformed distribution (the behaviour policy's log-prob).
  template <std::uniform_random_bit_generator Rng>
  sampled_token operator()(std::span<float> logits, Rng& rng) {
    apply_transforms(logits, std::make_index_sequence<n_transforms>{});
    auto& select = std::get<n_transforms>(stages_);
    const std::span<const float> row(logits);
    // a selector may draw and score in one pass (optional: greedy's second argmax is a pass over V)
    if constexpr (detail::DrawsInOnePass<decltype(select), Rng>) return select.draw(row, rng);
    const token_id t = select.select(row, rng);
    return {t, static_cast<float>(select.log_prob(row, t))};
  }

  template <std::size_t I>
  auto& stage() noexcept {
    return std::get<I>(stages_);
  }

 private:
  template <std::size_t... I>
  void apply_transforms([[maybe_unused]] std::span<float> logits, std::index_sequence<I...>) {
    (std::get<I>(stages_).apply(logits), ...);
  }
  stages_tuple stages_;
};

/// Anything callable as a sampler: sampler<...> or a user type with the same call.
template <class S, class Rng = xoshiro256>
concept Sampler = requires(S& s, std::span<float> logits, Rng& rng) {
  { s(logits, rng) } -> std::same_as<sampled_token>;
};

/// The common chain, configured at run time: temperature, top-k, top-p, min-p, categorical.
using standard_sampler = sampler<temperature, top_k, top_p, min_p, categorical>;

/// Builds the standard chain; checks every parameter (top_k 0 / top_p 1 / min_p 0 = off).
inline standard_sampler make_standard_sampler(float temp, long long k = 0, double p = 1.0, double mp = 0.0) {
  return standard_sampler(temperature(temp), top_k(k), top_p(p), min_p(mp), categorical{});
}

}  // namespace ipa
