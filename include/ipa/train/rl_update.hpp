// SPDX-License-Identifier: MIT
// The stage every algorithm's update shares (DESIGN.md, "Data flow of one RL iteration"): finished
// samples with the base kept from their rollout -> the adapter's forward over (prompt, response)
// -> fused log-softmax with the stored base rows -> the algorithm's d loss / d logits at each
// response position -> backward into the adapter -> clipping and AdamW. The base never runs here.
// n = samples, R = response length of a sample, K = a sparse base's top-k, V = vocab, d = adapter dim.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/rng.hpp"
#include "ipa/core/types.hpp"
#include "ipa/decode/fusion.hpp"
#include "ipa/model/llama_train.hpp"
#include "ipa/train/losses.hpp"
#include "ipa/train/optimizer.hpp"
#include "ipa/train/rl_config.hpp"

namespace ipa {

/// One finished sample as the trainer keeps it. The base at each response position is kept as
/// dense logits (a local base) or as its top-k (a SparsePolicy base: O(K) per position, whatever
/// the vocabulary); neither when there is no base.
struct rl_sample {
  std::vector<token_id> prompt, response;   ///< base prompt (with BOS) and response ids
  std::vector<float> base_logits;           ///< (R, V) dense base logits, or empty
  std::vector<token_id> base_top_k_ids;     ///< (R, K) a sparse base's top-k ids, or empty
  std::vector<float> base_top_k_log_probs;  ///< (R, K) and their log-probs
  double reward = 0;

  bool has_base() const noexcept { return !base_logits.empty() || !base_top_k_ids.empty(); }
};

/// PPO's critic: a linear head on the adapter's last hidden state, value = w . h + b, with its
/// own gradient and AdamW state. weights holds w (d) then b.
struct critic_head {
  std::vector<float> weights, grad;
  adamw optimizer;

  critic_head() = default;
  critic_head(std::size_t dim, const adamw_config& adam)
      : weights(dim + 1, 0.0f), grad(dim + 1, 0.0f), optimizer(dim + 1, adam) {}

  double value(std::span<const float> hidden) const noexcept {
    double v = weights[hidden.size()];
    for (std::size_t k = 0; k < hidden.size(); ++k) v += double(weights[k]) * hidden[k];
    return v;
  }
};

/// A response position as an update sees it: the tailored log-probs there, the base's, the
/// adapter's hidden state and the critic's value; the algorithm writes dz (d loss / d tailored
/// logits) and dvalue (d loss / d value).
struct rl_position {
  std::size_t sample, t;
  token_id token;
  std::span<const float> log_pi, log_base, hidden;  ///< log_base: empty without a base
  std::span<float> dz;
  double value = 0, dvalue = 0;
};

/// A prompt as an adapter trained with control tokens reads it: `control` right after the first
/// token (BOS); control < 0 leaves the prompt as it is.
inline std::vector<token_id> with_control_token(const std::vector<token_id>& prompt, token_id control) {
  if (control < 0 || prompt.empty()) return prompt;
  std::vector<token_id> p;
  p.reserve(prompt.size() + 1);
  p.push_back(prompt[0]);
  p.push_back(control);
  p.insert(p.end(), prompt.begin() + 1, prompt.end());
  return p;
}

/// Fisher-Yates with the run's generator (uniform01 is platform-exact, so a run replays).
inline void shuffle_indices(std::vector<std::size_t>& v, xoshiro256& rng) {
  for (std::size_t j = v.size(); j > 1; --j) std::swap(v[j - 1], v[std::size_t(uniform01(rng) * double(j))]);
}

/// Response tokens of samples[which] (at least 1: the mean's denominator).
inline std::size_t token_count(const std::vector<rl_sample>& samples, std::span<const std::size_t> which) {
  std::size_t n = 0;
  for (std::size_t i : which) n += samples[i].response.size();
  return std::max<std::size_t>(n, 1);
}

/// The shared stage over the trainer's state (held by reference: the trainer owns it, and a
/// checkpoint saves it). An algorithm calls pass() with what it does at each position, then
/// optimizer_step().
class rl_update_stage {
 public:
  rl_update_stage(const rl_config& cfg, trainable_llama<float>& policy, adamw& optimizer, const parameter_mask& mask,
                  critic_head& critic, xoshiro256& rng) noexcept
      : cfg_(cfg), policy_(policy), opt_(optimizer), mask_(mask), critic_(critic), rng_(rng) {}

  const rl_config& config() const noexcept { return cfg_; }
  trainable_llama<float>& policy() noexcept { return policy_; }
  xoshiro256& rng() noexcept { return rng_; }

  /// Runs `model` over samples[which] (each adapter prompt: the prompt with control token
  /// controls[i] after BOS, or as it is when `controls` is empty, then the response) in
  /// micro-batches; calls fn(rl_position&) at every response position and, when `grad`,
  /// backpropagates what fn wrote into the model and the critic.
  template <class Fn>
  void pass(trainable_llama<float>& model, const std::vector<rl_sample>& samples, std::span<const std::size_t> which,
            std::span<const token_id> controls, bool grad, Fn&& fn) {
    const std::size_t V = std::size_t(model.config().vocab_size), d = std::size_t(model.config().dim);
    const std::size_t micro = cfg_.micro_batch ? cfg_.micro_batch : which.size();
    // the fine-tuning baseline has no base: its logits are the policy's, at weight 1
    const double alpha = cfg_.tune_base ? 1.0 : cfg_.alpha;
    std::vector<float> log_pi(V), log_base(V), dz(V), zeros(V, 0.0f), sparse_row(V);
    for (std::size_t at = 0; at < which.size(); at += micro) {
      const std::size_t nb = std::min(micro, which.size() - at);
      std::vector<std::vector<token_id>> seqs(nb);
      std::size_t T = 1;
      for (std::size_t j = 0; j < nb; ++j) {
        const std::size_t i = which[at + j];
        const rl_sample& s = samples[i];
        seqs[j] = controls.empty() ? s.prompt : with_control_token(s.prompt, controls[i]);
        seqs[j].insert(seqs[j].end(), s.response.begin(), s.response.end());
        seqs[j].pop_back();  // the last response token is predicted, never read
        T = std::max(T, seqs[j].size());
      }
      if (T > std::size_t(model.config().seq_len))
        throw shape_error("rl_trainer: a prompt + response of " + std::to_string(T + 1) +
                          " tokens exceeds the adapter's context " + std::to_string(model.config().seq_len));
      std::vector<token_id> tokens(nb * T, 0);
      for (std::size_t j = 0; j < nb; ++j)
        std::copy(seqs[j].begin(), seqs[j].end(), tokens.begin() + std::ptrdiff_t(j * T));
      model.forward(tokens, nb, T);
      std::vector<float> dlogits, dhidden;
      if (grad) {
        dlogits.assign(nb * T * V, 0.0f);
        dhidden.assign(nb * T * d, 0.0f);
      }
      bool any_dvalue = false;
      for (std::size_t j = 0; j < nb; ++j) {
        const std::size_t i = which[at + j];
        const rl_sample& s = samples[i];
        const std::size_t first = seqs[j].size() + 1 - s.response.size();  // position predicting response[0]
        for (std::size_t t = 0; t < s.response.size(); ++t) {
          const std::size_t row = j * T + first - 1 + t;
          const std::span<const float> base_row = base_row_of(s, t, sparse_row);
          tailored_log_softmax<float>(base_row, model.logits().subspan(row * V, V), alpha, log_pi);
          if (!base_row.empty()) tailored_log_softmax<float>(base_row, zeros, 0.0, log_base);
          std::fill(dz.begin(), dz.end(), 0.0f);
          const std::span<const float> hidden = model.final_hidden().subspan(row * d, d);
          rl_position p{
              i,      t,  s.response[t],         log_pi, base_row.empty() ? std::span<const float>() : log_base,
              hidden, dz, critic_.value(hidden), 0.0};
          fn(p);
          if (!grad) continue;
          for (std::size_t v = 0; v < V; ++v) dlogits[row * V + v] = float(alpha) * dz[v];
          if (p.dvalue != 0) {
            any_dvalue = true;
            for (std::size_t k = 0; k < d; ++k) {
              dhidden[row * d + k] = float(p.dvalue) * critic_.weights[k];
              critic_.grad[k] += float(p.dvalue * p.hidden[k]);
            }
            critic_.grad[d] += float(p.dvalue);
          }
        }
      }
      if (grad) model.backward(dlogits, any_dvalue ? std::span<const float>(dhidden) : std::span<const float>());
    }
  }

  /// Clips and steps AdamW on the policy (and on the critic when `with_critic`), then zeroes the
  /// gradients; the policy's gradient norm goes to m.grad_norm. The learning rate is m.lr.
  void optimizer_step(step_metrics& m, bool with_critic) {
    m.grad_norm = clip_grad_norm<float>(policy_.gradients(), cfg_.max_grad_norm);
    opt_.step<float>(policy_.parameters(), policy_.gradients(), m.lr, mask_);
    policy_.zero_grad();
    if (with_critic) {
      clip_grad_norm<float>(critic_.grad, cfg_.max_grad_norm);
      critic_.optimizer.step<float>(critic_.weights, critic_.grad, m.lr);
      std::fill(critic_.grad.begin(), critic_.grad.end(), 0.0f);
    }
  }

 private:
  // The base at response position t as a dense row: the stored logits, or the stored top-k
  // with the tail filled as decoding filled it; empty without a base.
  std::span<const float> base_row_of(const rl_sample& s, std::size_t t, std::vector<float>& sparse_row) const {
    const std::size_t V = sparse_row.size();
    if (!s.base_logits.empty()) return std::span<const float>(s.base_logits.data() + t * V, V);
    if (s.base_top_k_ids.empty()) return {};
    const std::size_t K = s.base_top_k_ids.size() / s.response.size();
    densify_top_k(std::span<const token_id>(s.base_top_k_ids.data() + t * K, K),
                  std::span<const float>(s.base_top_k_log_probs.data() + t * K, K), cfg_.sparse_tail, sparse_row);
    return sparse_row;
  }

  const rl_config& cfg_;
  trainable_llama<float>& policy_;
  adamw& opt_;
  const parameter_mask& mask_;
  critic_head& critic_;
  xoshiro256& rng_;
};

}  // namespace ipa
