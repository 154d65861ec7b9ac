// SPDX-License-Identifier: MIT
// Quark (Lu et al. 2022, arXiv:2205.13636), as IPA's official code trains an adapter: every
// sample goes to a pool, the pool is binned by reward quantile (the best rewards always bin 0),
// and the adapter learns to produce each sample when its bin's control token follows BOS:
//   loss = NLL + kl_coef * KL(pi || base) - entropy_coef * H(pi), per response token.
// Rollouts condition on bin 0's token, so sampling asks for the best rewards seen.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <numeric>
#include <vector>

#include "ipa/core/bf16.hpp"
#include "ipa/core/rng.hpp"
#include "ipa/core/types.hpp"
#include "ipa/model/llama_weights.hpp"
#include "ipa/train/advantages.hpp"
#include "ipa/train/losses.hpp"
#include "ipa/train/rl_config.hpp"
#include "ipa/train/rl_update.hpp"

namespace ipa {

/// The adapter's id of reward bin `bin`'s control token: the bins' tokens follow the vocabulary.
inline token_id quark_control_token(const llama_config& adapter, int bin) noexcept {
  return token_id(adapter.vocab_size + bin);
}

/// The adapter Quark trains: `w` with an input embedding for each bin's control token (kept
/// when `w` has enough already, e.g. a resumed Quark adapter).
inline llama_weights quark_adapter_weights(const llama_weights& w, const rl_config& cfg) {
  if (w.config().extra_tokens >= cfg.quark_bins) return w;
  return w.with_input_tokens(cfg.quark_bins - w.config().extra_tokens, cfg.seed ^ 0x5eedULL);
}

/// Quark's data pool: every sample seen, with its dense base logits stored as bf16 (a sparse
/// base's top-k as they came).
struct quark_pool {
  struct entry {
    std::vector<token_id> prompt, response;
    std::vector<std::uint16_t> base_logits;  ///< (R, V) bf16
    double reward = 0;
    std::vector<token_id> base_top_k_ids;     ///< (R, K)
    std::vector<float> base_top_k_log_probs;  ///< (R, K)
  };
  std::deque<entry> entries;
  std::size_t capacity = 0;  ///< 0: unbounded

  void add(const rl_sample& s) {
    entry e{s.prompt, s.response, {}, s.reward, s.base_top_k_ids, s.base_top_k_log_probs};
    e.base_logits.resize(s.base_logits.size());
    std::transform(s.base_logits.begin(), s.base_logits.end(), e.base_logits.begin(), to_bf16);
    entries.push_back(std::move(e));
    while (capacity && entries.size() > capacity) entries.pop_front();
  }
  rl_sample get(std::size_t i) const {
    const entry& e = entries.at(i);
    rl_sample s{
        e.prompt, e.response, std::vector<float>(e.base_logits.size()), e.base_top_k_ids, e.base_top_k_log_probs,
        e.reward};
    std::transform(e.base_logits.begin(), e.base_logits.end(), s.base_logits.begin(), from_bf16);
    return s;
  }
};

/// The pool entries an update may draw: those in the best `train_bins` bins (0: every entry).
inline std::vector<std::size_t> quark_trainable(const std::vector<int>& pool_bins, int train_bins) {
  std::vector<std::size_t> which;
  for (std::size_t i = 0; i < pool_bins.size(); ++i)
    if (train_bins == 0 || pool_bins[i] < train_bins) which.push_back(i);
  return which;
}

/// One Quark update: add the fresh samples to the pool, re-bin the pool by reward quantile, then
/// take quark_updates gradient steps, each on quark_minibatch samples drawn from the pool (0: as
/// many as the rollout has; from the best quark_train_bins bins only, where set) conditioned on
/// their bins. The pool's bins go to m.quark_bins.
inline void quark_update(rl_update_stage& stage, quark_pool& pool, kl_controller& kl,
                         const std::vector<rl_sample>& fresh, step_metrics& m) {
  const rl_config& cfg = stage.config();
  for (const auto& s : fresh) pool.add(s);
  std::vector<double> rewards(pool.entries.size());
  for (std::size_t i = 0; i < rewards.size(); ++i) rewards[i] = pool.entries[i].reward;
  const std::vector<int> pool_bins = quantile_bins(rewards, cfg.quark_bins);
  m.quark_bins = summarize_bins(rewards, pool_bins, cfg.quark_bins);
  const std::size_t batch = cfg.quark_minibatch ? cfg.quark_minibatch : fresh.size();
  const std::vector<std::size_t> trainable = quark_trainable(pool_bins, cfg.quark_train_bins);  // bin 0 is never empty
  for (std::size_t u = 0; u < cfg.quark_updates; ++u) {
    std::vector<rl_sample> mb;
    std::vector<token_id> controls;
    for (std::size_t j = 0; j < batch; ++j) {
      const std::size_t i = trainable[std::size_t(uniform01(stage.rng()) * double(trainable.size()))];
      mb.push_back(pool.get(i));
      controls.push_back(quark_control_token(stage.policy().config(), pool_bins[i]));
    }
    std::vector<std::size_t> all(mb.size());
    std::iota(all.begin(), all.end(), std::size_t{0});
    const double inv_n = 1.0 / double(token_count(mb, all));
    double kl_sum = 0, ent_sum = 0, loss = 0;
    stage.pass(stage.policy(), mb, all, controls, true, [&](rl_position& p) {
      loss -= p.log_pi[std::size_t(p.token)] * inv_n;
      add_log_prob_grad<float>(p.log_pi, p.token, -inv_n, p.dz);
      const double k = p.log_base.empty() ? 0.0 : add_kl_grad<float>(p.log_pi, p.log_base, kl.coef * inv_n, p.dz);
      const double h = add_entropy_grad<float>(p.log_pi, -cfg.entropy_coef * inv_n, p.dz);
      loss += (kl.coef * k - cfg.entropy_coef * h) * inv_n;
      kl_sum += k;
      ent_sum += h;
    });
    m.loss = loss;
    m.kl = kl_sum * inv_n;
    m.entropy = ent_sum * inv_n;
    stage.optimizer_step(m, false);
  }
  kl.update(m.kl, fresh.size());
}

}  // namespace ipa
