// SPDX-License-Identifier: MIT
// The IPA decoder: a frozen base and any number of adapters decoded in lockstep over a batch,
// their logits fused in log space, processed, sampled; the result is a rollout that carries all
// a trainer needs (behaviour and tailored log-probs, masks, optionally the base's logits).
//
// B = batch rows, T = longest response, V = vocabulary, K = kept top-k.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include <xtensor/xtensor.hpp>

#include "ipa/core/error.hpp"
#include "ipa/core/math.hpp"
#include "ipa/core/parallel.hpp"
#include "ipa/core/types.hpp"
#include "ipa/decode/fusion.hpp"
#include "ipa/decode/policy.hpp"
#include "ipa/decode/processors.hpp"
#include "ipa/decode/sampler.hpp"

namespace ipa {

/// What the rollout keeps of the base at each response position (so training never re-runs it).
enum class keep_base { none, dense, top_k };

/// Why a row stopped.
enum class finish_reason : std::uint8_t { length, eos, stop_token, context };

inline const char* to_string(finish_reason r) noexcept {
  switch (r) {
    case finish_reason::eos: return "eos";
    case finish_reason::stop_token: return "stop";
    case finish_reason::context: return "context";
    default: return "length";
  }
}

/// Settings of one generate() call.
struct generation_config {
  std::size_t max_new_tokens = 64;
  std::size_t min_new_tokens = 0;       ///< EOS and stop tokens are banned before this many
  token_id eos_id = -1;                 ///< ends a row; -1 for none
  std::vector<token_id> stop_tokens;    ///< also end a row (llama2.c models: BOS = 1)
  std::vector<token_id> banned_tokens;  ///< never sampled
  float repetition_penalty = 1.0f;      ///< CTRL-style; 1 = off
  keep_base keep_base_logits = keep_base::none;
  std::size_t keep_top_k = 20;                               ///< with keep_base::top_k
  tail_policy sparse_tail = tail_policy::restrict_to_top_k;  ///< for SparsePolicy bases
  /// Threads for this call's local work (adapters, a local base, the fusion). 0: all of ipa's,
  /// but one with a base that answers later (a server): the adapters' step hides behind the
  /// server's answer anyway, and OpenMP threads that spin after each step would take the cores of
  /// a server on the same machine (measured: 110M shape behind llama-server on 2 cores, the
  /// default adapter cost 1.49x the time on two threads, 1.03x on one).
  int threads = 0;
};

/// The result of decoding a batch. Responses include the token that ended a row (EOS or a stop
/// token); masks are 1 on real tokens, 0 on padding.
struct rollout {
  xt::xtensor<token_id, 2> prompt_ids;         ///< (B, P) base prompts, right-padded with 0
  xt::xtensor<std::uint8_t, 2> prompt_mask;    ///< (B, P)
  xt::xtensor<token_id, 2> response_ids;       ///< (B, T)
  xt::xtensor<std::uint8_t, 2> response_mask;  ///< (B, T)
  xt::xtensor<float, 2> log_probs;             ///< (B, T) under the distribution actually sampled
  xt::xtensor<float, 2> tailored_log_probs;    ///< (B, T) under the untruncated tailored policy
  std::vector<finish_reason> finish;           ///< (B)
  xt::xtensor<float, 3> base_logits;           ///< (B, T, V) when keep_base::dense
  xt::xtensor<token_id, 3> base_top_k_ids;     ///< (B, T, K) when keep_base::top_k
  xt::xtensor<float, 3> base_top_k_log_probs;  ///< (B, T, K) when keep_base::top_k

  std::size_t batch_size() const noexcept { return response_ids.shape()[0]; }
  std::size_t response_length(std::size_t b) const noexcept { return lengths_.at(b); }
  std::size_t prompt_length(std::size_t b) const noexcept { return prompt_lengths_.at(b); }
  std::vector<token_id> response(std::size_t b) const {
    const auto* row = response_ids.data() + b * response_ids.shape()[1];
    return {row, row + response_length(b)};
  }
  std::vector<token_id> prompt(std::size_t b) const {
    const auto* row = prompt_ids.data() + b * prompt_ids.shape()[1];
    return {row, row + prompt_length(b)};
  }

  std::vector<std::size_t> lengths_, prompt_lengths_;
};

/// An adapter with its weight alpha in the product of experts.
template <class P>
struct weighted {
  const P* policy = nullptr;
  float alpha = 1.0f;
};
template <class P>
weighted<P> with_alpha(const P& policy, float alpha) {
  return {&policy, alpha};
}

/// Decodes base + adapters in lockstep. Base: a Policy (dense logits) or a SparsePolicy (top-k
/// log-probs only); adapters: Policies of one type sharing the base's vocabulary.
template <BasePolicy Base, Policy Adapter = Base>
class ipa_decoder {
 public:
  explicit ipa_decoder(const Base& base, std::vector<weighted<Adapter>> adapters = {})
      : base_(&base), adapters_(std::move(adapters)) {
    for (std::size_t i = 0; i < adapters_.size(); ++i) {
      const std::string name = "ipa_decoder: adapter " + std::to_string(i);
      if (!adapters_[i].policy) throw config_error(name + " is null");
      check_alpha(adapters_[i].alpha, name + "'s alpha");
      if (std::size_t(adapters_[i].policy->vocab_size()) != vocab_size())
        throw shape_error("ipa_decoder: base and adapter " + std::to_string(i) + " vocabularies differ (" +
                          std::to_string(vocab_size()) + " vs " + std::to_string(adapters_[i].policy->vocab_size()) +
                          "); they must share a tokenizer");
    }
  }

  std::size_t vocab_size() const noexcept { return std::size_t(base_->vocab_size()); }
  std::size_t adapter_count() const noexcept { return adapters_.size(); }

  /// Decodes one continuation per prompt. `adapter_prompts[i]`, when given, is what adapter i
  /// reads instead of the base prompt (e.g. a control-code prefix + the prompt); the
  /// continuation is shared. Extra LogitProcessors run after the built-in ones.
  template <std::uniform_random_bit_generator Rng, Sampler<Rng> S, LogitProcessor... Extra>
  rollout generate(const prompt_list& prompts, const generation_config& cfg, S& sampler, Rng& rng,
                   const std::vector<prompt_list>& adapter_prompts = {}, Extra&... extra) const {
    const std::size_t B = prompts.size(), V = vocab_size(), A = adapters_.size();
    if (B == 0) throw shape_error("ipa_decoder::generate: no prompts");
    if (!adapter_prompts.empty() && adapter_prompts.size() != A)
      throw shape_error("ipa_decoder::generate: adapter_prompts has " + std::to_string(adapter_prompts.size()) +
                        " entries for " + std::to_string(A) + " adapters");
    for (const auto& ap : adapter_prompts)
      if (ap.size() != B)
        throw shape_error("ipa_decoder::generate: an adapter prompt list has " + std::to_string(ap.size()) +
                          " rows for " + std::to_string(B) + " prompts");
    check_tokens(cfg.banned_tokens, "banned_tokens");
    check_tokens(cfg.stop_tokens, "stop_tokens");
    if (cfg.eos_id >= 0) check_tokens(std::vector<token_id>{cfg.eos_id}, "eos_id");
    if (cfg.keep_base_logits == keep_base::top_k && (cfg.keep_top_k == 0 || cfg.keep_top_k > V))
      throw config_error("ipa_decoder::generate: keep_top_k must be in [1, " + std::to_string(V) + "]");
    if (cfg.threads < 0)
      throw config_error("ipa_decoder::generate: threads must be >= 0, found " + std::to_string(cfg.threads));
    // a top-k renormalised over itself has no mass left for the uniform tail to spread
    if constexpr (requires { base_->renormalizes_top_k(); })
      if (cfg.sparse_tail == tail_policy::uniform && base_->renormalizes_top_k())
        throw config_error(
            "ipa_decoder::generate: the uniform tail needs the base's raw top-k log-probs, and this base "
            "renormalises them over the top k; turn remote_options::renormalize_top_k off or restrict to the top k");
    const thread_limit threads(cfg.threads > 0 ? cfg.threads : SplitSparsePolicy<Base> ? 1 : max_threads());

    // Per-row budget: max_new_tokens, cut so that every sampled token fits every context.
    std::vector<std::size_t> limit(B);
    std::size_t longest = 0, longest_prompt = 0;
    auto fit = [&](std::size_t context, const prompt_list& rows, const char* who) {
      for (std::size_t b = 0; b < B; ++b) {
        const std::size_t len = rows[b].size();
        if (len == 0)
          throw shape_error(std::string("ipa_decoder::generate: ") + who + " prompt " + std::to_string(b) +
                            " is empty; start it with the BOS token");
        if (len >= context)
          throw shape_error(std::string("ipa_decoder::generate: ") + who + " prompt " + std::to_string(b) + " has " +
                            std::to_string(len) + " tokens, the model's context holds " + std::to_string(context) +
                            " (leave room for at least one new token)");
        limit[b] = std::min(limit[b], context - len + 1);
      }
    };
    std::fill(limit.begin(), limit.end(), cfg.max_new_tokens);
    fit(base_->context_length(), prompts, "base");
    for (std::size_t i = 0; i < A; ++i)
      fit(adapters_[i].policy->context_length(), adapter_prompts.empty() ? prompts : adapter_prompts[i], "adapter");
    for (std::size_t b = 0; b < B; ++b) {
      longest = std::max(longest, limit[b]);
      longest_prompt = std::max(longest_prompt, prompts[b].size());
    }

    rollout out = empty_rollout(prompts, B, longest, longest_prompt, V, cfg);
    std::vector<std::vector<token_id>> generated(B);
    if (longest == 0) return out;

    // States and (B x V) scratch, allocated once for the whole call.
    auto capacity = [&](const prompt_list& rows, std::size_t context) {
      std::size_t cap = 0;
      for (std::size_t b = 0; b < B; ++b) cap = std::max(cap, rows[b].size() + limit[b]);
      return int(std::min(cap, context));
    };
    auto base_state = base_->new_state(int(B), capacity(prompts, base_->context_length()));
    std::vector<typename Adapter::state_type> adapter_states;
    std::vector<std::vector<float>> adapter_logits(A, std::vector<float>(B * V));
    for (std::size_t i = 0; i < A; ++i) {
      const prompt_list& rows = adapter_prompts.empty() ? prompts : adapter_prompts[i];
      adapter_states.push_back(
          adapters_[i].policy->new_state(int(B), capacity(rows, adapters_[i].policy->context_length())));
    }
    std::vector<float> base_logits, base_lp, tailored(B * V), work(V);
    std::vector<double> row_lse(B);
    std::vector<token_id> base_ids;
    constexpr bool sparse = !Policy<Base>;
    if constexpr (sparse) {
      base_ids.resize(B * base_->top_k());
      base_lp.resize(B * base_->top_k());
    } else {
      base_logits.resize(B * V);
    }
    // A base that answers later (a server) is asked first; the adapters run while it answers.
    if constexpr (SplitSparsePolicy<Base>) base_->start_prefill_top_k(base_state, prompts);
    else if constexpr (sparse) base_->prefill_top_k(base_state, prompts, base_ids, base_lp);
    else base_->prefill(base_state, prompts, base_logits);
    for (std::size_t i = 0; i < A; ++i)
      adapters_[i].policy->prefill(adapter_states[i], adapter_prompts.empty() ? prompts : adapter_prompts[i],
                                   adapter_logits[i]);
    if constexpr (SplitSparsePolicy<Base>) base_->finish_top_k(base_state, base_ids, base_lp);

    min_new_tokens min_new{cfg.min_new_tokens, cfg.stop_tokens};
    if (cfg.eos_id >= 0) min_new.stop_tokens.push_back(cfg.eos_id);
    const ban_tokens banned{cfg.banned_tokens};
    repetition_penalty penalty(cfg.repetition_penalty);

    std::vector<int> active(B), next_active;
    std::vector<token_id> next_tokens;
    for (std::size_t b = 0; b < B; ++b) active[b] = int(b);
    for (std::size_t t = 0;; ++t) {
      next_active.clear();
      next_tokens.clear();
      // Fuse every active row (rows are independent: spread over the threads), then sample in
      // row order (the one generator is consumed sequentially, so results never depend on threads).
      const std::size_t n_active = active.size();
      parallel_for(
          n_active,
          [&](std::size_t j) {
            const std::size_t b = std::size_t(active[j]);
            const std::span<float> row(tailored.data() + j * V, V);
            // fuse: tailored = base + sum_i alpha_i * adapter_i
            if constexpr (sparse) {
              const std::size_t k = base_->top_k();
              const std::span<const token_id> ids(base_ids.data() + j * k, k);
              const std::span<const float> lps(base_lp.data() + j * k, k);
              densify_top_k(ids, lps, cfg.sparse_tail, row);
              keep_sparse(out, cfg, b, t, ids, lps);
            } else {
              const float* base_row = base_logits.data() + j * V;
              std::copy_n(base_row, V, row.data());
              keep_dense(out, cfg, b, t, std::span<const float>(base_row, V));
            }
            for (std::size_t i = 0; i < A; ++i)
              add_expert(row, std::span<const float>(adapter_logits[i].data() + j * V, V), adapters_[i].alpha);
            row_lse[j] = log_sum_exp(row);
          },
          V * n_active >= (std::size_t{1} << 15));
      for (std::size_t j = 0; j < n_active; ++j) {
        const std::size_t b = std::size_t(active[j]);
        const std::span<const float> row(tailored.data() + j * V, V);
        const double lse = row_lse[j];
        if (lse == -std::numeric_limits<double>::infinity())
          throw config_error("ipa_decoder::generate: the tailored distribution of row " + std::to_string(b) +
                             " is empty (every logit is -inf)");

        // process, then sample from the processed row
        std::copy(row.begin(), row.end(), work.begin());
        const sequence_view seq{prompts[b], generated[b]};
        min_new.apply(work, seq);
        banned.apply(work, seq);
        penalty.apply(work, seq);
        (extra.apply(std::span<float>(work), seq), ...);
        const sampled_token s = sampler(std::span<float>(work), rng);

        generated[b].push_back(s.token);
        out.response_ids(b, t) = s.token;
        out.response_mask(b, t) = 1;
        out.log_probs(b, t) = s.log_prob;
        out.tailored_log_probs(b, t) = static_cast<float>(row[s.token] - lse);
        out.lengths_[b] = t + 1;

        const bool is_stop =
            std::find(cfg.stop_tokens.begin(), cfg.stop_tokens.end(), s.token) != cfg.stop_tokens.end();
        if (s.token == cfg.eos_id) out.finish[b] = finish_reason::eos;
        else if (is_stop) out.finish[b] = finish_reason::stop_token;
        else if (t + 1 >= limit[b])
          out.finish[b] = limit[b] < cfg.max_new_tokens ? finish_reason::context : finish_reason::length;
        else {
          next_active.push_back(int(b));
          next_tokens.push_back(s.token);
        }
      }
      if (next_active.empty()) break;
      active.swap(next_active);
      const std::size_t n = active.size();
      std::size_t k = 0;
      if constexpr (sparse) k = base_->top_k();
      if constexpr (SplitSparsePolicy<Base>) base_->start_step_top_k(base_state, active, next_tokens);
      else if constexpr (sparse)
        base_->step_top_k(base_state, active, next_tokens, std::span<token_id>(base_ids.data(), n * k),
                          std::span<float>(base_lp.data(), n * k));
      else base_->step(base_state, active, next_tokens, std::span<float>(base_logits.data(), n * V));
      for (std::size_t i = 0; i < A; ++i)
        adapters_[i].policy->step(adapter_states[i], active, next_tokens,
                                  std::span<float>(adapter_logits[i].data(), n * V));
      if constexpr (SplitSparsePolicy<Base>)
        base_->finish_top_k(base_state, std::span<token_id>(base_ids.data(), n * k),
                            std::span<float>(base_lp.data(), n * k));
    }
    return out;
  }

 private:
  void check_tokens(const std::vector<token_id>& ids, const char* what) const {
    for (token_id t : ids)
      if (t < 0 || std::size_t(t) >= vocab_size())
        throw config_error(std::string("ipa_decoder::generate: ") + what + " holds id " + std::to_string(t) +
                           " outside the vocabulary [0, " + std::to_string(vocab_size()) + ")");
  }

  static rollout empty_rollout(const prompt_list& prompts, std::size_t B, std::size_t T, std::size_t P, std::size_t V,
                               const generation_config& cfg) {
    rollout r;
    r.prompt_ids = xt::zeros<token_id>({B, P});
    r.prompt_mask = xt::zeros<std::uint8_t>({B, P});
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t p = 0; p < prompts[b].size(); ++p) {
        r.prompt_ids(b, p) = prompts[b][p];
        r.prompt_mask(b, p) = 1;
      }
    r.response_ids = xt::zeros<token_id>({B, T});
    r.response_mask = xt::zeros<std::uint8_t>({B, T});
    r.log_probs = xt::zeros<float>({B, T});
    r.tailored_log_probs = xt::zeros<float>({B, T});
    r.finish.assign(B, finish_reason::length);
    r.lengths_.assign(B, 0);
    r.prompt_lengths_.resize(B);
    for (std::size_t b = 0; b < B; ++b) r.prompt_lengths_[b] = prompts[b].size();
    if (cfg.keep_base_logits == keep_base::dense) r.base_logits = xt::zeros<float>({B, T, V});
    if (cfg.keep_base_logits == keep_base::top_k) {
      r.base_top_k_ids = xt::zeros<token_id>({B, T, cfg.keep_top_k});
      r.base_top_k_log_probs = xt::zeros<float>({B, T, cfg.keep_top_k});
    }
    return r;
  }

  // The base row as the rollout keeps it: dense logits, or its top-k log-probs.
  void keep_dense(rollout& r, const generation_config& cfg, std::size_t b, std::size_t t,
                  std::span<const float> row) const {
    if (cfg.keep_base_logits == keep_base::dense) {
      std::copy(row.begin(), row.end(), &r.base_logits(b, t, 0));
    } else if (cfg.keep_base_logits == keep_base::top_k) {
      thread_local std::vector<int> order;  // rows are kept from several threads
      detail::top_k_log_probs(row, cfg.keep_top_k, order, &r.base_top_k_ids(b, t, 0), &r.base_top_k_log_probs(b, t, 0));
    }
  }
  void keep_sparse(rollout& r, const generation_config& cfg, std::size_t b, std::size_t t,
                   std::span<const token_id> ids, std::span<const float> lps) const {
    if (cfg.keep_base_logits == keep_base::dense) {
      densify_top_k(ids, lps, cfg.sparse_tail, std::span<float>(&r.base_logits(b, t, 0), vocab_size()));
    } else if (cfg.keep_base_logits == keep_base::top_k) {
      for (std::size_t j = 0; j < cfg.keep_top_k; ++j) {
        r.base_top_k_ids(b, t, j) = j < ids.size() ? ids[j] : 0;
        r.base_top_k_log_probs(b, t, j) = j < lps.size() ? lps[j] : -std::numeric_limits<float>::infinity();
      }
    }
  }

  const Base* base_;
  std::vector<weighted<Adapter>> adapters_;
};

/// A dense policy seen through a top-k API: what a black-box base (an LM API) reveals. Useful to
/// test sparse decoding against the dense truth.
template <Policy P>
class top_k_view {
 public:
  using state_type = typename P::state_type;
  top_k_view(const P& policy, std::size_t k) : p_(&policy), k_(k) {
    if (k == 0 || k > std::size_t(policy.vocab_size()))
      throw config_error("top_k_view: k must be in [1, vocab_size], found " + std::to_string(k));
  }
  std::size_t vocab_size() const noexcept { return p_->vocab_size(); }
  std::size_t context_length() const noexcept { return p_->context_length(); }
  std::size_t top_k() const noexcept { return k_; }
  state_type new_state(int batch, int capacity) const { return p_->new_state(batch, capacity); }
  void prefill_top_k(state_type& s, const prompt_list& prompts, std::span<token_id> ids, std::span<float> lps) const {
    dense_.resize(prompts.size() * vocab_size());
    p_->prefill(s, prompts, dense_);
    reduce(prompts.size(), ids, lps);
  }
  void step_top_k(state_type& s, std::span<const int> rows, std::span<const token_id> tokens, std::span<token_id> ids,
                  std::span<float> lps) const {
    dense_.resize(rows.size() * vocab_size());
    p_->step(s, rows, tokens, dense_);
    reduce(rows.size(), ids, lps);
  }

 private:
  void reduce(std::size_t n, std::span<token_id> ids, std::span<float> lps) const {
    const std::size_t V = vocab_size();
    for (std::size_t i = 0; i < n; ++i)
      detail::top_k_log_probs(std::span<const float>(dense_.data() + i * V, V), k_, order_, ids.data() + i * k_,
                              lps.data() + i * k_);
  }
  const P* p_;
  std::size_t k_;
  mutable std::vector<float> dense_;
  mutable std::vector<int> order_;
};

}  // namespace ipa
