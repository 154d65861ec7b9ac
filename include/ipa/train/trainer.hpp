// SPDX-License-Identifier: MIT
// One RL loop for every algorithm (DESIGN.md, "Data flow of one RL iteration"):
//   prompts -> decoder (frozen base + adapter in lockstep; the base's logits are kept)
//   -> reward -> advantages -> adapter forward over (prompt, response) -> fused log-softmax with
//   the stored base logits -> loss -> backward into the adapter -> AdamW.
// The base runs once per rollout, inside the decoder, and never in an update.
//
// Algorithms: Quark (Lu et al. 2022, arXiv:2205.13636, as IPA's official code trains), PPO
// (Schulman et al. 2017), REINFORCE with a running-mean baseline, RLOO, GRPO-style groups.
// n = samples in a step, R_i = response length of sample i, V = vocab, d = adapter dim.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ipa/core/bf16.hpp"
#include "ipa/core/error.hpp"
#include "ipa/core/rng.hpp"
#include "ipa/core/types.hpp"
#include "ipa/decode/decoder.hpp"
#include "ipa/decode/sampler.hpp"
#include "ipa/model/llama.hpp"
#include "ipa/model/llama_train.hpp"
#include "ipa/reward/reward.hpp"
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
        policy_(grow_for_quark(adapter_init, cfg_)),
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
    value_head_.assign(std::size_t(c.dim) + 1, 0.0f);
    value_grad_.assign(value_head_.size(), 0.0f);
    value_opt_ = adamw(value_head_.size(), cfg_.adam);
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
    return cfg_.algorithm == rl_algorithm::quark ? token_id(policy_.config().vocab_size) : -1;
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
        for (const auto& p : prompts) adapter_prompts[0].push_back(adapter_prompt(p, 0));
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
    switch (cfg_.algorithm) {
      case rl_algorithm::ppo: update_ppo(samples, m); break;
      case rl_algorithm::quark: update_quark(samples, m); break;
      default: update_policy_gradient(samples, m); break;
    }
    m.kl_coef = cfg_.kl.coef;
    rebuild_decoder_model();
    ++step_;
  }

  // ---- state a checkpoint saves (see train/checkpoint.hpp) ----
  xoshiro256& rng() noexcept { return rng_; }
  adamw& optimizer() noexcept { return opt_; }
  adamw& value_optimizer() noexcept { return value_opt_; }
  std::vector<float>& value_head() noexcept { return value_head_; }
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
  static llama_weights grow_for_quark(const llama_weights& w, const rl_config& cfg) {
    if (cfg.algorithm != rl_algorithm::quark || w.config().extra_tokens >= cfg.quark_bins) return w;
    return w.with_input_tokens(cfg.quark_bins - w.config().extra_tokens, cfg.seed ^ 0x5eedULL);
  }

  void rebuild_decoder_model() { adapter_model_.emplace(policy_.to_weights()); }

  // The adapter's prompt: Quark puts the bin's control token right after BOS.
  std::vector<token_id> adapter_prompt(const std::vector<token_id>& prompt, int bin) const {
    if (cfg_.algorithm != rl_algorithm::quark) return prompt;
    return with_control_token(prompt, token_id(policy_.config().vocab_size + bin));
  }

  // Fisher-Yates with the trainer's generator (uniform01 is platform-exact).
  void shuffle(std::vector<std::size_t>& v) {
    for (std::size_t j = v.size(); j > 1; --j) std::swap(v[j - 1], v[std::size_t(uniform01(rng_) * double(j))]);
  }

  // Next prompts_per_step prompts in a shuffled order (reshuffled each pass over the data),
  // each repeated samples_per_prompt times in a row (RLOO/GRPO groups).
  prompt_list next_prompts() {
    prompt_list out;
    for (std::size_t i = 0; i < cfg_.prompts_per_step; ++i) {
      if (cursor_ == 0) shuffle(order_);
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

  // Per response position: the model's tailored log-probs, the base's log-probs, the hidden
  // state; the callback fills dz (d loss / d tailored logits) and dvalue (d loss / d value).
  struct position {
    std::size_t sample, t;
    token_id token;
    std::span<const float> log_pi, log_base, hidden;
    std::span<float> dz;
    double value = 0, dvalue = 0;
  };

  // Runs `model` over samples[which] (adapter prompt + response) in micro-batches, calls fn for
  // every response position and, when `grad`, backpropagates what fn wrote.
  template <class Fn>
  void pass(trainable_llama<float>& model, const std::vector<rl_sample>& samples, std::span<const std::size_t> which,
            const std::vector<int>& bins, bool grad, Fn&& fn) {
    const std::size_t V = std::size_t(model.config().vocab_size), d = std::size_t(model.config().dim);
    const std::size_t micro = cfg_.micro_batch ? cfg_.micro_batch : which.size();
    std::vector<float> log_pi(V), log_base(V), dz(V), zeros(V, 0.0f), sparse_row(V);
    for (std::size_t at = 0; at < which.size(); at += micro) {
      const std::size_t nb = std::min(micro, which.size() - at);
      std::vector<std::vector<token_id>> seqs(nb);
      std::size_t T = 1;
      for (std::size_t j = 0; j < nb; ++j) {
        const rl_sample& s = samples[which[at + j]];
        seqs[j] = adapter_prompt(s.prompt, bins.empty() ? 0 : bins[which[at + j]]);
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
          tailored_log_softmax<float>(base_row, model.logits().subspan(row * V, V), cfg_.tune_base ? 1.0 : cfg_.alpha,
                                      log_pi);
          if (!base_row.empty()) tailored_log_softmax<float>(base_row, zeros, 0.0, log_base);
          std::fill(dz.begin(), dz.end(), 0.0f);
          position p{i,
                     t,
                     s.response[t],
                     log_pi,
                     base_row.empty() ? std::span<const float>() : log_base,
                     model.final_hidden().subspan(row * d, d),
                     dz,
                     0.0,
                     0.0};
          p.value = value_head_[d];
          for (std::size_t k = 0; k < d; ++k) p.value += double(value_head_[k]) * p.hidden[k];
          fn(p);
          if (!grad) continue;
          const float scale = cfg_.tune_base ? 1.0f : cfg_.alpha;
          for (std::size_t v = 0; v < V; ++v) dlogits[row * V + v] = scale * dz[v];
          if (p.dvalue != 0) {
            any_dvalue = true;
            for (std::size_t k = 0; k < d; ++k) {
              dhidden[row * d + k] = float(p.dvalue) * value_head_[k];
              value_grad_[k] += float(p.dvalue * p.hidden[k]);
            }
            value_grad_[d] += float(p.dvalue);
          }
        }
      }
      if (grad) model.backward(dlogits, any_dvalue ? std::span<const float>(dhidden) : std::span<const float>());
    }
  }

  // Clip, step AdamW on the adapter (and the value head), zero the gradients.
  void optimizer_step(step_metrics& m, bool with_value_head) {
    m.grad_norm = clip_grad_norm<float>(policy_.gradients(), cfg_.max_grad_norm);
    opt_.step<float>(policy_.parameters(), policy_.gradients(), m.lr, mask_);
    policy_.zero_grad();
    if (with_value_head) {
      clip_grad_norm<float>(value_grad_, cfg_.max_grad_norm);
      value_opt_.step<float>(value_head_, value_grad_, m.lr);
      std::fill(value_grad_.begin(), value_grad_.end(), 0.0f);
    }
  }

  static std::size_t token_count(const std::vector<rl_sample>& s, std::span<const std::size_t> which) {
    std::size_t n = 0;
    for (std::size_t i : which) n += s[i].response.size();
    return std::max<std::size_t>(n, 1);
  }

  // REINFORCE / RLOO / GRPO: loss = -(1/N) sum_i A_i sum_t log pi(y_it) + kl_coef * mean KL(pi||base).
  void update_policy_gradient(const std::vector<rl_sample>& samples, step_metrics& m) {
    std::vector<double> rewards(samples.size());
    for (std::size_t i = 0; i < samples.size(); ++i) rewards[i] = samples[i].reward;
    std::vector<double> adv;
    if (cfg_.algorithm == rl_algorithm::rloo) adv = rloo_advantages(rewards, cfg_.samples_per_prompt);
    else if (cfg_.algorithm == rl_algorithm::grpo) adv = group_normalised_advantages(rewards, cfg_.samples_per_prompt);
    else {
      baseline_.decay = cfg_.baseline_decay;
      adv = baseline_.advantages(rewards);
    }
    std::vector<std::size_t> all(samples.size());
    std::iota(all.begin(), all.end(), std::size_t{0});
    const double inv_n = 1.0 / double(token_count(samples, all)), kl_coef = cfg_.kl.coef;
    double kl_sum = 0, ent_sum = 0, loss = 0;
    pass(policy_, samples, all, {}, true, [&](position& p) {
      const double a = adv[p.sample];
      loss -= a * p.log_pi[std::size_t(p.token)] * inv_n;
      add_log_prob_grad<float>(p.log_pi, p.token, -a * inv_n, p.dz);
      if (!p.log_base.empty()) {
        const double kl = add_kl_grad<float>(p.log_pi, p.log_base, kl_coef * inv_n, p.dz);
        kl_sum += kl;
        loss += kl_coef * kl * inv_n;
      }
      ent_sum += add_entropy_grad<float>(p.log_pi, 0.0, p.dz);
    });
    m.loss = loss;
    m.kl = kl_sum * inv_n;
    m.entropy = ent_sum * inv_n;
    optimizer_step(m, false);
    cfg_.kl.update(m.kl, samples.size());
  }

  // Quark: add the samples to the pool, re-bin the pool by reward quantile, then train on pool
  // minibatches conditioned on each sample's bin: NLL + kl_coef * KL(pi||base) - entropy_coef * H.
  void update_quark(const std::vector<rl_sample>& fresh, step_metrics& m) {
    for (const auto& s : fresh) pool_.add(s);
    std::vector<double> rewards(pool_.entries.size());
    for (std::size_t i = 0; i < rewards.size(); ++i) rewards[i] = pool_.entries[i].reward;
    const std::vector<int> pool_bins = quantile_bins(rewards, cfg_.quark_bins);
    m.quark_bins = summarize_bins(rewards, pool_bins, cfg_.quark_bins);
    const std::size_t batch = cfg_.quark_minibatch ? cfg_.quark_minibatch : fresh.size();
    for (std::size_t u = 0; u < cfg_.quark_updates; ++u) {
      std::vector<rl_sample> mb;
      std::vector<int> bins;
      for (std::size_t j = 0; j < batch; ++j) {
        const std::size_t i = std::size_t(uniform01(rng_) * double(pool_.entries.size()));
        mb.push_back(pool_.get(i));
        bins.push_back(pool_bins[i]);
      }
      std::vector<std::size_t> all(mb.size());
      std::iota(all.begin(), all.end(), std::size_t{0});
      const double inv_n = 1.0 / double(token_count(mb, all));
      double kl_sum = 0, ent_sum = 0, loss = 0;
      pass(policy_, mb, all, bins, true, [&](position& p) {
        loss -= p.log_pi[std::size_t(p.token)] * inv_n;
        add_log_prob_grad<float>(p.log_pi, p.token, -inv_n, p.dz);
        const double kl =
            p.log_base.empty() ? 0.0 : add_kl_grad<float>(p.log_pi, p.log_base, cfg_.kl.coef * inv_n, p.dz);
        const double h = add_entropy_grad<float>(p.log_pi, -cfg_.entropy_coef * inv_n, p.dz);
        loss += (cfg_.kl.coef * kl - cfg_.entropy_coef * h) * inv_n;
        kl_sum += kl;
        ent_sum += h;
      });
      m.loss = loss;
      m.kl = kl_sum * inv_n;
      m.entropy = ent_sum * inv_n;
      optimizer_step(m, false);
    }
    cfg_.kl.update(m.kl, fresh.size());
  }

  // PPO: old log-probs and values from the current adapter, reference log-probs from the
  // initial one; per-token reward = -kl_coef * KL estimate (+ the reward at the last token);
  // GAE; epochs of clipped policy + value updates over shuffled minibatches.
  void update_ppo(const std::vector<rl_sample>& samples, step_metrics& m) {
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
    pass(policy_, samples, all, {}, false, [&](position& p) {
      old_lp[p.sample][p.t] = p.log_pi[std::size_t(p.token)];
      values[p.sample][p.t] = p.value;
      if (!p.log_base.empty()) kl_exact += add_kl_grad<float>(p.log_pi, p.log_base, 0.0, p.dz) * inv_all;
      ent += add_entropy_grad<float>(p.log_pi, 0.0, p.dz) * inv_all;
    });
    pass(ref_, samples, all, {}, false, [&](position& p) { ref_lp[p.sample][p.t] = p.log_pi[std::size_t(p.token)]; });
    double kl_seq_mean = 0, kl_ref_tokens = 0;
    std::vector<double> flat_adv;
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t T = samples[i].response.size();
      std::vector<double> r(T);
      for (std::size_t t = 0; t < T; ++t) {
        const double k = kl_estimate(cfg_.kl_est, old_lp[i][t], ref_lp[i][t]);
        kl_seq_mean += k / double(n);
        kl_ref_tokens += k * inv_all;
        r[t] = -cfg_.kl.coef * k;
      }
      r[T - 1] += samples[i].reward;
      gae_result g = gae(r, values[i], cfg_.gamma, cfg_.lambda);
      adv[i] = std::move(g.advantages);
      ret[i] = std::move(g.returns);
      flat_adv.insert(flat_adv.end(), adv[i].begin(), adv[i].end());
    }
    if (cfg_.whiten_advantages) {
      whiten(flat_adv);
      std::size_t k = 0;
      for (auto& a : adv)
        for (double& v : a) v = flat_adv[k++];
    }
    double loss = 0;
    const std::size_t mbs = std::min(cfg_.ppo_minibatches, n);
    for (std::size_t e = 0; e < cfg_.ppo_epochs; ++e) {
      std::vector<std::size_t> order = all;
      shuffle(order);
      for (std::size_t b = 0; b < mbs; ++b) {
        const std::size_t lo = b * n / mbs, hi = (b + 1) * n / mbs;
        const std::span<const std::size_t> which(order.data() + lo, hi - lo);
        const double inv_n = 1.0 / double(token_count(samples, which));
        loss = 0;
        pass(policy_, samples, which, {}, true, [&](position& p) {
          const ppo_token_loss pl =
              ppo_clip_loss(p.log_pi[std::size_t(p.token)], old_lp[p.sample][p.t], adv[p.sample][p.t], cfg_.clip_eps);
          add_log_prob_grad<float>(p.log_pi, p.token, pl.dloss_dlogp * inv_n, p.dz);
          const value_token_loss vl =
              ppo_value_loss(p.value, values[p.sample][p.t], ret[p.sample][p.t], cfg_.value_clip);
          p.dvalue = cfg_.vf_coef * vl.dloss_dvalue * inv_n;
          loss += (pl.loss + cfg_.vf_coef * vl.loss) * inv_n;
        });
        optimizer_step(m, true);
      }
    }
    m.loss = loss;
    // the exact KL to the base; without a base (tune_base) the per-token estimate against the
    // reference, which is what the penalty used
    m.kl = cfg_.tune_base ? kl_ref_tokens : kl_exact;
    m.entropy = ent;
    cfg_.kl.update(kl_seq_mean, n);
  }

  static constexpr bool sparse_base = !Policy<Base>;

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

  rl_config cfg_;
  const Base* base_;
  const Tokenizer* tok_;
  R reward_;
  prompt_list prompts_;
  trainable_llama<float> policy_, ref_;
  std::optional<llama_model> adapter_model_;
  xoshiro256 rng_;
  adamw opt_, value_opt_;
  parameter_mask mask_;
  std::vector<float> value_head_, value_grad_;
  running_mean_baseline baseline_;
  quark_pool pool_;
  std::vector<std::size_t> order_;
  std::size_t cursor_ = 0, step_ = 0;
};

}  // namespace ipa
