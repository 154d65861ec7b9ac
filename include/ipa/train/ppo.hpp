// SPDX-License-Identifier: MIT
// PPO's update (Schulman et al. 2017, arXiv:1707.06347; the RLHF form of Ziegler et al. 2019,
// arXiv:1909.08593): old log-probs and values from the current adapter, reference log-probs from
// the initial one; per-token reward = -kl_coef * KL estimate (+ the reward at the last token);
// GAE; epochs of clipped policy + value updates over shuffled minibatches.
#pragma once
#include <algorithm>
#include <cstddef>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

#include "ipa/model/llama_train.hpp"
#include "ipa/train/advantages.hpp"
#include "ipa/train/losses.hpp"
#include "ipa/train/rl_config.hpp"
#include "ipa/train/rl_update.hpp"

namespace ipa {

/// One PPO update from a scored rollout. `reference` is the adapter as it started (the KL
/// penalty's anchor); `kl` the penalty's weight (updated after the update).
inline void ppo_update(rl_update_stage& stage, trainable_llama<float>& reference, kl_controller& kl,
                       const std::vector<rl_sample>& samples, step_metrics& m) {
  const rl_config& cfg = stage.config();
  const std::size_t n = samples.size();
  std::vector<std::vector<double>> old_lp(n), ref_lp(n), values(n), adv(n), ret(n);
  for (std::size_t i = 0; i < n; ++i) {
    old_lp[i].resize(samples[i].response.size());
    ref_lp[i].resize(samples[i].response.size());
    values[i].resize(samples[i].response.size());
  }
  std::vector<std::size_t> all(n);
  std::iota(all.begin(), all.end(), std::size_t{0});
  const double inv_all = 1.0 / double(token_count(samples, all));
  double kl_exact = 0, ent = 0;
  stage.pass(stage.policy(), samples, all, {}, false, [&](rl_position& p) {
    old_lp[p.sample][p.t] = p.log_pi[std::size_t(p.token)];
    values[p.sample][p.t] = p.value;
    if (!p.log_base.empty()) kl_exact += add_kl_grad<float>(p.log_pi, p.log_base, 0.0, p.dz) * inv_all;
    ent += add_entropy_grad<float>(p.log_pi, 0.0, p.dz) * inv_all;
  });
  stage.pass(reference, samples, all, {}, false,
             [&](rl_position& p) { ref_lp[p.sample][p.t] = p.log_pi[std::size_t(p.token)]; });
  double kl_seq_mean = 0, kl_ref_tokens = 0;
  std::vector<double> flat_adv;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t T = samples[i].response.size();
    std::vector<double> r(T);
    for (std::size_t t = 0; t < T; ++t) {
      const double k = kl_estimate(cfg.kl_est, old_lp[i][t], ref_lp[i][t]);
      kl_seq_mean += k / double(n);
      kl_ref_tokens += k * inv_all;
      r[t] = -kl.coef * k;
    }
    r[T - 1] += samples[i].reward;
    gae_result g = gae(r, values[i], cfg.gamma, cfg.lambda);
    adv[i] = std::move(g.advantages);
    ret[i] = std::move(g.returns);
    flat_adv.insert(flat_adv.end(), adv[i].begin(), adv[i].end());
  }
  if (cfg.whiten_advantages) {
    whiten(flat_adv);
    std::size_t k = 0;
    for (auto& a : adv)
      for (double& v : a) v = flat_adv[k++];
  }
  double loss = 0;
  const std::size_t mbs = std::min(cfg.ppo_minibatches, n);
  for (std::size_t e = 0; e < cfg.ppo_epochs; ++e) {
    std::vector<std::size_t> order = all;
    shuffle_indices(order, stage.rng());
    for (std::size_t b = 0; b < mbs; ++b) {
      const std::size_t lo = b * n / mbs, hi = (b + 1) * n / mbs;
      const std::span<const std::size_t> which(order.data() + lo, hi - lo);
      const double inv_n = 1.0 / double(token_count(samples, which));
      loss = 0;
      stage.pass(stage.policy(), samples, which, {}, true, [&](rl_position& p) {
        const ppo_token_loss pl =
            ppo_clip_loss(p.log_pi[std::size_t(p.token)], old_lp[p.sample][p.t], adv[p.sample][p.t], cfg.clip_eps);
        add_log_prob_grad<float>(p.log_pi, p.token, pl.dloss_dlogp * inv_n, p.dz);
        const value_token_loss vl = ppo_value_loss(p.value, values[p.sample][p.t], ret[p.sample][p.t], cfg.value_clip);
        p.dvalue = cfg.vf_coef * vl.dloss_dvalue * inv_n;
        loss += (pl.loss + cfg.vf_coef * vl.loss) * inv_n;
      });
      stage.optimizer_step(m, true);
    }
  }
  m.loss = loss;
  // the exact KL to the base; without a base (tune_base) the per-token estimate against the
  // reference, which is what the penalty used
  m.kl = cfg.tune_base ? kl_ref_tokens : kl_exact;
  m.entropy = ent;
  kl.update(kl_seq_mean, n);
}

}  // namespace ipa
