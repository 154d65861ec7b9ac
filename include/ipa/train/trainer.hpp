// SPDX-License-Identifier: MIT
// One RL loop for every algorithm (DESIGN.md, "Data flow of one RL iteration"):
//   prompts -> decoder (frozen base + adapter in lockstep; the base's logits are kept)
//   -> reward -> samples -> the algorithm's update (rl_update.hpp's shared stage: adapter forward
//   over (prompt, response), fused log-softmax with the stored base logits, loss, backward, AdamW).
// The base runs once per rollout, inside the decoder, and never in an update. Each algorithm's
// update has its own file: quark.hpp (Lu et al. 2022, arXiv:2205.13636, as IPA's official code
// trains), ppo.hpp (Schulman et al. 2017), policy_gradient.hpp (REINFORCE, RLOO, GRPO).
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/rng.hpp"
#include "ipa/core/types.hpp"
#include "ipa/decode/decoder.hpp"
#include "ipa/decode/sampler.hpp"
#include "ipa/model/llama.hpp"
#include "ipa/model/llama_train.hpp"
#include "ipa/reward/reward.hpp"
#include "ipa/train/advantages.hpp"
#include "ipa/train/optimizer.hpp"
#include "ipa/train/policy_gradient.hpp"
#include "ipa/train/ppo.hpp"
#include "ipa/train/quark.hpp"
#include "ipa/train/rl_config.hpp"
#include "ipa/train/rl_update.hpp"

namespace ipa {

/// Trains an adapter (a Llama model) against a Reward, with a frozen Base: a Policy, or a
/// SparsePolicy (a black box revealing top-k log-probs, e.g. remote_base). The rollout keeps a
/// dense base's logits and a sparse base's top-k; the update fills a sparse row's tail with
/// rl_config::sparse_tail, as decoding did, so behaviour and trained policy share one support.
/// The base only ever runs inside the decoder.
/// Tokenizer: anything with `decode(ids, prev) -> text` (llama2c_tokenizer).
template <Reward R, class Tokenizer, BasePolicy Base = llama_model>
class rl_trainer {
 public:
  /// `base` may be null only with cfg.tune_base. Prompts are token ids (with BOS).
  rl_trainer(const Base* base, const llama_weights& adapter_init, const Tokenizer& tokenizer, R reward,
             prompt_list prompts, rl_config cfg)
      : cfg_(std::move(cfg)),
        base_(base),
        tok_(&tokenizer),
        reward_(std::move(reward)),
        prompts_(std::move(prompts)),
        policy_(cfg_.algorithm == rl_algorithm::quark ? quark_adapter_weights(adapter_init, cfg_) : adapter_init),
        ref_(policy_),
        rng_(cfg_.seed) {
    cfg_.validate();
    if (!base_ && !cfg_.tune_base) throw config_error("rl_trainer: a base model is required unless tune_base");
    if (prompts_.empty()) throw config_error("rl_trainer: no training prompts");
    const llama_config& c = policy_.config();
    if (base_ && base_->vocab_size() != std::size_t(c.vocab_size))
      throw shape_error("rl_trainer: base and adapter vocabularies differ (" + std::to_string(base_->vocab_size()) +
                        " vs " + std::to_string(c.vocab_size) + "); they must share a tokenizer");
    for (const auto& p : prompts_)
      if (p.empty()) throw config_error("rl_trainer: an empty prompt; start every prompt with BOS");
    mask_ = parameter_mask::freeze(policy_.slots(), cfg_.frozen);
    opt_ = adamw(policy_.parameters().size(), cfg_.adam);
    critic_ = critic_head(std::size_t(c.dim), cfg_.adam);
    pool_.capacity = cfg_.pool_capacity;
    order_.resize(prompts_.size());
    std::iota(order_.begin(), order_.end(), std::size_t{0});
    rebuild_decoder_model();
  }

  const rl_config& config() const noexcept { return cfg_; }
  std::size_t steps_done() const noexcept { return step_; }
  const trainable_llama<float>& policy() const noexcept { return policy_; }
  trainable_llama<float>& policy() noexcept { return policy_; }
  const llama_model& adapter_model() const noexcept { return *adapter_model_; }
  /// The adapter id that conditions on Quark's best reward bin, bin 0 (-1 for other algorithms).
  token_id best_control_token() const noexcept {
    return cfg_.algorithm == rl_algorithm::quark ? quark_control_token(policy_.config(), 0) : -1;
  }

  /// One iteration: rollout, reward, update. Returns its metrics.
  step_metrics step() {
    const auto start = std::chrono::steady_clock::now();
    step_metrics m;
    const std::vector<rl_sample> samples = rollout_and_score();
    update(samples, m);
    m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    m.tokens_per_second = double(m.response_tokens) / std::max(m.seconds, 1e-9);
    return m;
  }

  /// The first half of a step: prompts -> decoder (base + adapter) -> reward.
  std::vector<rl_sample> rollout_and_score() {
    const prompt_list prompts = next_prompts();
    generation_config g;
    g.max_new_tokens = cfg_.max_new_tokens;
    g.eos_id = cfg_.eos_id;
    g.stop_tokens = cfg_.stop_tokens;
    g.keep_base_logits = cfg_.tune_base ? keep_base::none : sparse_base ? keep_base::top_k : keep_base::dense;
    if constexpr (sparse_base) g.keep_top_k = base_->top_k();
    g.sparse_tail = cfg_.sparse_tail;
    auto sampler = make_standard_sampler(cfg_.temperature, cfg_.top_k, cfg_.top_p);
    rollout r;
    if (cfg_.tune_base) {
      r = ipa_decoder<llama_model>(*adapter_model_).generate(prompts, g, sampler, rng_);
    } else {
      std::vector<prompt_list> adapter_prompts;
      if (cfg_.algorithm == rl_algorithm::quark) {
        adapter_prompts.emplace_back();
        for (const auto& p : prompts) adapter_prompts[0].push_back(with_control_token(p, best_control_token()));
      }
      const ipa_decoder<Base, llama_model> decoder(*base_, {with_alpha(*adapter_model_, cfg_.alpha)});
      r = decoder.generate(prompts, g, sampler, rng_, adapter_prompts);
    }
    return score(prompts, r);
  }

  /// The second half: advantages, losses and optimizer steps from the samples alone (the base
  /// is not run: its logits are in the samples). Fills the loss/KL/reward fields of `m`.
  void update(const std::vector<rl_sample>& samples, step_metrics& m) {
    m.step = step_;
    m.lr = cfg_.lr.at(step_);
    for (const auto& s : samples) {
      m.reward_mean += s.reward / double(samples.size());
      m.response_tokens += s.response.size();
    }
    m.samples = samples.size();
    rl_update_stage stage(cfg_, policy_, opt_, mask_, critic_, rng_);
    switch (cfg_.algorithm) {
      case rl_algorithm::ppo: ppo_update(stage, ref_, cfg_.kl, samples, m); break;
      case rl_algorithm::quark: quark_update(stage, pool_, cfg_.kl, samples, m); break;
      default: policy_gradient_update(stage, baseline_, cfg_.kl, samples, m); break;
    }
    m.kl_coef = cfg_.kl.coef;
    rebuild_decoder_model();
    ++step_;
  }

  // ---- state a checkpoint saves (see train/checkpoint.hpp) ----
  xoshiro256& rng() noexcept { return rng_; }
  adamw& optimizer() noexcept { return opt_; }
  adamw& value_optimizer() noexcept { return critic_.optimizer; }
  std::vector<float>& value_head() noexcept { return critic_.weights; }
  running_mean_baseline& baseline() noexcept { return baseline_; }
  kl_controller& kl() noexcept { return cfg_.kl; }
  quark_pool& pool() noexcept { return pool_; }
  std::vector<std::size_t>& prompt_order() noexcept { return order_; }
  std::size_t& prompt_cursor() noexcept { return cursor_; }
  std::size_t& step_count() noexcept { return step_; }
  trainable_llama<float>& reference() noexcept { return ref_; }
  /// After the state was restored from a checkpoint: rebuild what derives from it.
  void state_restored() { rebuild_decoder_model(); }

 private:
  void rebuild_decoder_model() { adapter_model_.emplace(policy_.to_weights()); }

  // Next prompts_per_step prompts in a shuffled order (reshuffled each pass over the data),
  // each repeated samples_per_prompt times in a row (RLOO/GRPO groups).
  prompt_list next_prompts() {
    prompt_list out;
    for (std::size_t i = 0; i < cfg_.prompts_per_step; ++i) {
      if (cursor_ == 0) shuffle_indices(order_, rng_);
      const auto& p = prompts_[order_[cursor_]];
      cursor_ = (cursor_ + 1) % order_.size();
      for (std::size_t k = 0; k < cfg_.samples_per_prompt; ++k) out.push_back(p);
    }
    return out;
  }

  // Samples (with the base's logits) from a rollout, scored by the reward.
  std::vector<rl_sample> score(const prompt_list& prompts, const rollout& r) {
    const std::size_t n = prompts.size(), V = std::size_t(policy_.config().vocab_size);
    std::vector<rl_sample> samples(n);
    std::vector<std::string> prompt_text(n), response_text(n);
    std::vector<sample_view> views(n);
    for (std::size_t i = 0; i < n; ++i) {
      rl_sample& s = samples[i];
      s.prompt = prompts[i];
      s.response = r.response(i);
      if (!cfg_.tune_base && sparse_base) {
        const std::size_t K = r.base_top_k_ids.shape()[2];
        const token_id* ids = &r.base_top_k_ids(i, 0, 0);
        const float* lps = &r.base_top_k_log_probs(i, 0, 0);
        s.base_top_k_ids.assign(ids, ids + s.response.size() * K);
        s.base_top_k_log_probs.assign(lps, lps + s.response.size() * K);
      } else if (!cfg_.tune_base) {
        const float* rows = &r.base_logits(i, 0, 0);
        s.base_logits.assign(rows, rows + s.response.size() * V);
      }
      prompt_text[i] = tok_->decode(s.prompt);
      response_text[i] = tok_->decode(s.response, s.prompt.back());
    }
    for (std::size_t i = 0; i < n; ++i)
      views[i] = {samples[i].prompt, samples[i].response, prompt_text[i], response_text[i]};
    std::vector<double> scores(n);
    reward_.score(views, scores);
    for (std::size_t i = 0; i < n; ++i) {
      if (!std::isfinite(scores[i]))
        throw config_error("rl_trainer: the reward of sample " + std::to_string(i) + " is not finite");
      samples[i].reward = scores[i];
    }
    return samples;
  }

  static constexpr bool sparse_base = !Policy<Base>;

  rl_config cfg_;
  const Base* base_;
  const Tokenizer* tok_;
  R reward_;
  prompt_list prompts_;
  trainable_llama<float> policy_, ref_;
  std::optional<llama_model> adapter_model_;
  xoshiro256 rng_;
  adamw opt_;
  parameter_mask mask_;
  critic_head critic_;  ///< PPO's value head
  running_mean_baseline baseline_;
  quark_pool pool_;
  std::vector<std::size_t> order_;
  std::size_t cursor_ = 0, step_ = 0;
};

}  // namespace ipa
