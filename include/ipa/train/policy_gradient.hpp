// SPDX-License-Identifier: MIT
// The REINFORCE family's update: REINFORCE with a running-mean baseline (Williams 1992), RLOO
// (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740), GRPO-style group normalisation
// (Shao et al. 2024, arXiv:2402.03300). One gradient step per rollout on
//   loss = -(1/N) sum_i A_i sum_t log pi(y_it) + kl_coef * (1/N) sum_it KL(pi || base)_it,
// N = the rollout's response tokens.
#pragma once
#include <cstddef>
#include <numeric>
#include <vector>

#include "ipa/train/advantages.hpp"
#include "ipa/train/losses.hpp"
#include "ipa/train/rl_config.hpp"
#include "ipa/train/rl_update.hpp"

namespace ipa {

/// One REINFORCE / RLOO / GRPO update (stage.config().algorithm says which) from a scored
/// rollout; `baseline` is REINFORCE's running mean, `kl` the KL weight (updated after the step).
inline void policy_gradient_update(rl_update_stage& stage, running_mean_baseline& baseline, kl_controller& kl,
                                   const std::vector<rl_sample>& samples, step_metrics& m) {
  const rl_config& cfg = stage.config();
  std::vector<double> rewards(samples.size());
  for (std::size_t i = 0; i < samples.size(); ++i) rewards[i] = samples[i].reward;
  std::vector<double> adv;
  if (cfg.algorithm == rl_algorithm::rloo) adv = rloo_advantages(rewards, cfg.samples_per_prompt);
  else if (cfg.algorithm == rl_algorithm::grpo) adv = group_normalised_advantages(rewards, cfg.samples_per_prompt);
  else {
    baseline.decay = cfg.baseline_decay;
    adv = baseline.advantages(rewards);
  }
  std::vector<std::size_t> all(samples.size());
  std::iota(all.begin(), all.end(), std::size_t{0});
  const double inv_n = 1.0 / double(token_count(samples, all)), kl_coef = kl.coef;
  double kl_sum = 0, ent_sum = 0, loss = 0;
  stage.pass(stage.policy(), samples, all, {}, true, [&](rl_position& p) {
    const double a = adv[p.sample];
    loss -= a * p.log_pi[std::size_t(p.token)] * inv_n;
    add_log_prob_grad<float>(p.log_pi, p.token, -a * inv_n, p.dz);
    if (!p.log_base.empty()) {
      const double k = add_kl_grad<float>(p.log_pi, p.log_base, kl_coef * inv_n, p.dz);
      kl_sum += k;
      loss += kl_coef * k * inv_n;
    }
    ent_sum += add_entropy_grad<float>(p.log_pi, 0.0, p.dz);
  });
  m.loss = loss;
  m.kl = kl_sum * inv_n;
  m.entropy = ent_sum * inv_n;
  stage.optimizer_step(m, false);
  kl.update(m.kl, samples.size());
}

}  // namespace ipa
