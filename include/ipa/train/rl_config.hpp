// SPDX-License-Identifier: MIT
// What configures a training run (rl_config) and what one step reports (step_metrics), shared by
// the trainer and each algorithm's update (quark.hpp, ppo.hpp, policy_gradient.hpp).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/types.hpp"
#include "ipa/decode/fusion.hpp"
#include "ipa/train/advantages.hpp"
#include "ipa/train/losses.hpp"
#include "ipa/train/optimizer.hpp"

namespace ipa {

enum class rl_algorithm { quark, ppo, reinforce, rloo, grpo };

inline const char* to_string(rl_algorithm a) noexcept {
  switch (a) {
    case rl_algorithm::quark: return "quark";
    case rl_algorithm::ppo: return "ppo";
    case rl_algorithm::reinforce: return "reinforce";
    case rl_algorithm::rloo: return "rloo";
    default: return "grpo";
  }
}
inline rl_algorithm parse_rl_algorithm(std::string_view s) {
  for (rl_algorithm a :
       {rl_algorithm::quark, rl_algorithm::ppo, rl_algorithm::reinforce, rl_algorithm::rloo, rl_algorithm::grpo})
    if (s == to_string(a)) return a;
  throw config_error("unknown RL algorithm '" + std::string(s) + "'; expected quark, ppo, reinforce, rloo or grpo");
}

/// Everything a training run is configured by. Defaults are a small, sensible run.
struct rl_config {
  rl_algorithm algorithm = rl_algorithm::quark;
  std::size_t prompts_per_step = 8;
  std::size_t samples_per_prompt = 1;  ///< rloo / grpo: >= 2 (a group per prompt)
  std::size_t max_new_tokens = 64;
  float temperature = 1.0f;
  double top_p = 1.0;
  long long top_k = 0;
  token_id eos_id = -1;
  std::vector<token_id> stop_tokens;  ///< llama2.c models end a story with BOS (1)
  float alpha = 1.0f;                 ///< the adapter's weight in the product of experts
  bool tune_base = false;             ///< no base: the trained model is the whole policy (fine-tuning baseline)
  tail_policy sparse_tail = tail_policy::restrict_to_top_k;  ///< how a top-k base's rows are filled

  lr_schedule lr{1e-3, 0, 0, lr_decay::constant, 0.0};
  adamw_config adam{};
  double max_grad_norm = 1.0;
  std::size_t micro_batch = 0;      ///< samples per forward/backward (gradient accumulation); 0: all
  std::vector<std::string> frozen;  ///< tensors that do not train, e.g. {"tok_embeddings"}

  kl_controller kl{0.05, 0, 10000};  ///< weight of the KL to the base (Quark, REINFORCE family) or
                                     ///< of the per-token KL penalty to the reference (PPO)
  double baseline_decay = 0.9;       ///< REINFORCE's running mean
  // PPO
  std::size_t ppo_epochs = 4, ppo_minibatches = 2;
  double clip_eps = 0.2, value_clip = 0.2, vf_coef = 0.5, gamma = 1.0, lambda = 0.95;
  kl_estimator kl_est = kl_estimator::k1;
  bool whiten_advantages = true;
  // Quark
  int quark_bins = 5;
  double entropy_coef = 0.06;
  std::size_t pool_capacity = 4096;  ///< oldest samples are evicted beyond this; 0: unbounded
  std::size_t quark_updates = 2;     ///< gradient steps on pool minibatches per rollout
  std::size_t quark_minibatch = 0;   ///< samples drawn from the pool per update; 0: the rollout's size
  int quark_train_bins = 0;          ///< updates draw from the best N bins only; 0: every bin (Quark), 1: the
                                     ///< best rewards alone (reward-filtered fine-tuning, RAFT arXiv:2304.06767)

  std::uint64_t seed = 1;

  void validate() const {
    auto fail = [](const std::string& m) { throw config_error("rl_config: " + m); };
    if (prompts_per_step == 0 || samples_per_prompt == 0) fail("prompts_per_step and samples_per_prompt must be >= 1");
    if ((algorithm == rl_algorithm::rloo || algorithm == rl_algorithm::grpo) && samples_per_prompt < 2)
      fail(std::string(to_string(algorithm)) + " needs samples_per_prompt >= 2 (a group per prompt)");
    if (max_new_tokens == 0) fail("max_new_tokens must be >= 1");
    if (!(temperature > 0) || !std::isfinite(temperature)) fail("temperature must be > 0 for RL sampling");
    check_alpha(alpha, "rl_config: alpha");
    if (alpha == 0 && !tune_base) fail("alpha must be non-zero: with alpha 0 the adapter has no effect");
    if (algorithm == rl_algorithm::quark && quark_bins < 2) fail("quark_bins must be >= 2");
    if (quark_train_bins < 0 || quark_train_bins > quark_bins)
      fail("quark_train_bins must be in [0, quark_bins] (0: every bin); got " + std::to_string(quark_train_bins));
    if (algorithm == rl_algorithm::ppo && (ppo_epochs == 0 || ppo_minibatches == 0))
      fail("ppo_epochs and ppo_minibatches must be >= 1");
    if (!(clip_eps > 0) || !(gamma >= 0 && gamma <= 1) || !(lambda >= 0 && lambda <= 1))
      fail("clip_eps must be > 0, gamma and lambda in [0, 1]");
    if (!(lr.peak >= 0) || !std::isfinite(lr.peak)) fail("the learning rate must be finite and >= 0");
    if (!(max_grad_norm >= 0)) fail("max_grad_norm must be >= 0 (0: no clipping)");
    adam.validate();
  }
};

/// What one step did (one JSON line of metrics.jsonl).
struct step_metrics {
  std::size_t step = 0;
  double reward_mean = 0, kl = 0, entropy = 0, loss = 0, grad_norm = 0, lr = 0, kl_coef = 0;
  std::size_t samples = 0, response_tokens = 0;
  double seconds = 0, tokens_per_second = 0;
  bin_summary quark_bins;  ///< Quark: the pool's bins after this step (sampling conditions on bin 0)
};

}  // namespace ipa
