// SPDX-License-Identifier: MIT
// An adapter seen through a vocab_map: a Policy over the base's ids. Its logit for base id v is
// the adapter's logit for map(v), or -inf where the adapter has no such token (add_expert then
// bans it, whatever the sign of alpha). Tokens fed to it are translated the other way; a prompt
// holding a token the adapter does not know is an error, since the adapter cannot read it.
#pragma once
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/decode/policy.hpp"
#include "ipa/text/vocabulary.hpp"

namespace ipa {

template <Policy P>
class vocab_mapped {
 public:
  using state_type = typename P::state_type;

  /// `map` goes from the base's ids to `adapter`'s; its adapter side must be the adapter's size.
  vocab_mapped(const P& adapter, vocab_map map) : p_(&adapter), map_(std::move(map)), identity_(map_.is_identity()) {
    if (map_.adapter_size() != std::size_t(adapter.vocab_size()))
      throw shape_error("vocab_mapped: the map is for an adapter of " + std::to_string(map_.adapter_size()) +
                        " ids, the adapter predicts " + std::to_string(adapter.vocab_size()));
  }

  std::size_t vocab_size() const noexcept { return map_.base_size(); }
  std::size_t context_length() const noexcept { return p_->context_length(); }
  state_type new_state(int batch, int capacity) const { return p_->new_state(batch, capacity); }
  const vocab_map& map() const noexcept { return map_; }

  void prefill(state_type& s, const prompt_list& prompts, std::span<float> logits) const {
    if (identity_) return p_->prefill(s, prompts, logits);
    prompt_list own(prompts.size());
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      own[b].reserve(prompts[b].size());
      for (const token_id t : prompts[b]) own[b].push_back(translate(t, b));
    }
    scratch_.resize(prompts.size() * map_.adapter_size());
    p_->prefill(s, own, scratch_);
    scatter(prompts.size(), logits);
  }

  void step(state_type& s, std::span<const int> rows, std::span<const token_id> tokens, std::span<float> logits) const {
    if (identity_) return p_->step(s, rows, tokens, logits);
    own_tokens_.resize(tokens.size());
    for (std::size_t j = 0; j < tokens.size(); ++j) own_tokens_[j] = translate(tokens[j], std::size_t(rows[j]));
    scratch_.resize(rows.size() * map_.adapter_size());
    p_->step(s, rows, own_tokens_, scratch_);
    scatter(rows.size(), logits);
  }

 private:
  token_id translate(token_id t, std::size_t row) const {
    const token_id a = map_.adapter_id(t);
    if (a < 0)
      throw config_error("vocab_mapped: row " + std::to_string(row) + " holds token " + std::to_string(t) +
                         ", which the adapter's vocabulary lacks");
    return a;
  }
  void scatter(std::size_t n, std::span<float> logits) const {
    const std::size_t V = vocab_size(), Va = map_.adapter_size();
    if (logits.size() < n * V)
      throw shape_error("vocab_mapped: logits hold " + std::to_string(logits.size()) + " floats, need " +
                        std::to_string(n * V));
    const std::span<const token_id> to_adapter = map_.adapter_ids();
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t v = 0; v < V; ++v) {
        const token_id a = to_adapter[v];
        logits[i * V + v] = a < 0 ? -std::numeric_limits<float>::infinity() : scratch_[i * Va + std::size_t(a)];
      }
  }

  const P* p_;
  vocab_map map_;
  bool identity_;
  mutable std::vector<float> scratch_;
  mutable std::vector<token_id> own_tokens_;
};

}  // namespace ipa
