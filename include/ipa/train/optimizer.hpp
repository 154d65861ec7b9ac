// SPDX-License-Identifier: MIT
// AdamW with decoupled weight decay (Loshchilov & Hutter 2019, arXiv:1711.05101), learning-rate
// schedules (linear warmup, then constant, linear or cosine decay), global-norm clipping, and
// trainable parameter subsets. Gradient accumulation is summing several backward() calls before
// one step (trainable_llama accumulates; scale the loss by 1/steps).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <span>
#include <string>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/parallel.hpp"
#include "ipa/model/llama_weights.hpp"

namespace ipa {

/// How the learning rate moves after warmup.
enum class lr_decay { constant, linear, cosine };

/// lr(step) = peak * step/warmup during warmup, then decays to min_ratio * peak at total_steps.
struct lr_schedule {
  double peak = 1e-4;
  std::size_t warmup_steps = 0;
  std::size_t total_steps = 0;  ///< 0: no decay
  lr_decay decay = lr_decay::constant;
  double min_ratio = 0.0;

  double at(std::size_t step) const noexcept {
    if (step < warmup_steps) return peak * double(step + 1) / double(warmup_steps);
    if (decay == lr_decay::constant || total_steps <= warmup_steps) return peak;
    const double progress = std::min(1.0, double(step - warmup_steps) / double(total_steps - warmup_steps));
    const double shape =
        decay == lr_decay::linear ? 1.0 - progress : 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
    return peak * (min_ratio + (1.0 - min_ratio) * shape);
  }
};

/// Scales grads so that their global L2 norm is at most max_norm (<= 0: no clipping). Returns
/// the norm before clipping.
template <class T>
double clip_grad_norm(std::span<T> grads, double max_norm) noexcept {
  double sq = 0;
  for (T g : grads) sq += double(g) * double(g);
  const double norm = std::sqrt(sq);
  if (max_norm > 0 && norm > max_norm) {
    const T scale = T(max_norm / (norm + 1e-6));
    for (T& g : grads) g *= scale;
  }
  return norm;
}

/// Which parameters an optimizer updates: a 0/1 flag per parameter, built from tensor names.
struct parameter_mask {
  std::vector<std::uint8_t> trainable;  ///< empty: everything trains

  /// Freezes the named tensors (e.g. {"tok_embeddings"}); throws config_error for unknown names.
  static parameter_mask freeze(const std::vector<tensor_slot>& slots, const std::vector<std::string>& frozen) {
    parameter_mask m;
    const tensor_slot& last = slots.back();
    m.trainable.assign(last.offset + last.size(), 1);
    for (const std::string& name : frozen) {
      auto it = std::find_if(slots.begin(), slots.end(), [&](const tensor_slot& s) { return s.name == name; });
      if (it == slots.end()) throw config_error("parameter_mask: no tensor named '" + name + "' to freeze");
      std::fill_n(m.trainable.begin() + std::ptrdiff_t(it->offset), it->size(), std::uint8_t{0});
    }
    return m;
  }
  bool is_trainable(std::size_t i) const noexcept { return trainable.empty() || trainable[i]; }
};

/// AdamW hyper-parameters.
struct adamw_config {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;  ///< decoupled: p -= lr * wd * p, not added to the gradient
  void validate() const {
    auto in01 = [](double b) { return b >= 0 && b < 1; };
    if (!in01(beta1) || !in01(beta2))
      throw config_error("adamw: betas must be in [0, 1), found " + std::to_string(beta1) + ", " +
                         std::to_string(beta2));
    if (!(eps > 0)) throw config_error("adamw: eps must be > 0, found " + std::to_string(eps));
    if (!(weight_decay >= 0)) throw config_error("adamw: weight_decay must be >= 0");
  }
};

/// AdamW over one flat parameter buffer; moments live here and are part of a checkpoint.
class adamw {
 public:
  adamw() = default;
  adamw(std::size_t n, adamw_config config) : config_(config), m_(n, 0.0f), v_(n, 0.0f) { config_.validate(); }

  /// One update with learning rate lr; frozen parameters (mask) are left untouched.
  template <class T>
  void step(std::span<T> params, std::span<const T> grads, double lr, const parameter_mask& mask = {}) {
    if (params.size() != m_.size() || grads.size() != m_.size())
      throw shape_error("adamw::step: " + std::to_string(params.size()) + " parameters and " +
                        std::to_string(grads.size()) + " gradients for an optimizer of " + std::to_string(m_.size()));
    if (!std::isfinite(lr) || lr < 0) throw config_error("adamw::step: learning rate must be finite and >= 0");
    ++t_;
    // float math, like PyTorch's fp32 AdamW; chunks over the threads (each element is
    // independent, so the result does not depend on the thread count)
    const float b1 = float(config_.beta1), b2 = float(config_.beta2), eps = float(config_.eps);
    const float c1 = float(1.0 - std::pow(config_.beta1, double(t_))),
                c2 = float(1.0 - std::pow(config_.beta2, double(t_)));
    const float step = float(lr), decay = float(lr * config_.weight_decay);
    constexpr std::size_t chunk = 1 << 14;
    parallel_for((params.size() + chunk - 1) / chunk, [&](std::size_t c) {
      const std::size_t end = std::min(params.size(), (c + 1) * chunk);
      const bool all = mask.trainable.empty();
      for (std::size_t i = c * chunk; i < end; ++i) {
        if (!all && !mask.trainable[i]) continue;
        const float g = float(grads[i]);
        const float m = b1 * m_[i] + (1 - b1) * g, v = b2 * v_[i] + (1 - b2) * g * g;
        m_[i] = m;
        v_[i] = v;
        const float p = float(params[i]);
        params[i] = T(p - step * (m / c1 / (std::sqrt(v / c2) + eps)) - decay * p);
      }
    });
  }

  std::uint64_t steps_taken() const noexcept { return t_; }
  const adamw_config& config() const noexcept { return config_; }
  std::span<float> first_moment() noexcept { return m_; }
  std::span<float> second_moment() noexcept { return v_; }
  std::span<const float> first_moment() const noexcept { return m_; }
  std::span<const float> second_moment() const noexcept { return v_; }
  void set_steps_taken(std::uint64_t t) noexcept { t_ = t; }

 private:
  adamw_config config_;
  std::vector<float> m_, v_;
  std::uint64_t t_ = 0;
};

}  // namespace ipa
