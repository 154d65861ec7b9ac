// SPDX-License-Identifier: MIT
// The Policy contracts: a batched, incremental next-token model seen from the decoder.
#pragma once
#include <concepts>
#include <cstddef>
#include <span>
#include <vector>

#include "ipa/core/types.hpp"

namespace ipa {

/// Prompts of a batch, one token sequence per row.
using prompt_list = std::vector<std::vector<token_id>>;

/// A language model as a batched next-token policy over dense logits. `new_state(B, S)` makes
/// a decoding state for B rows of at most S positions; `prefill` feeds one prompt per row and
/// writes (B x V) logits; `step` feeds one token to each listed row and writes (n x V) logits.
template <class P>
concept Policy = requires(const P& p, typename P::state_type& s, const prompt_list& prompts, std::span<const int> rows,
                          std::span<const token_id> tokens, std::span<float> logits) {
  typename P::state_type;
  { p.vocab_size() } -> std::convertible_to<std::size_t>;
  { p.context_length() } -> std::convertible_to<std::size_t>;
  { p.new_state(1, 1) } -> std::same_as<typename P::state_type>;
  p.prefill(s, prompts, logits);
  p.step(s, rows, tokens, logits);
};

/// A black-box base that only reveals the top-k (id, log-prob) pairs of each row, as LM APIs
/// do. Writes (n x top_k()) ids and log-probs, each row sorted by descending log-prob.
template <class P>
concept SparsePolicy = requires(const P& p, typename P::state_type& s, const prompt_list& prompts,
                                std::span<const int> rows, std::span<const token_id> tokens, std::span<token_id> ids,
                                std::span<float> log_probs) {
  typename P::state_type;
  { p.vocab_size() } -> std::convertible_to<std::size_t>;
  { p.context_length() } -> std::convertible_to<std::size_t>;
  { p.top_k() } -> std::convertible_to<std::size_t>;
  { p.new_state(1, 1) } -> std::same_as<typename P::state_type>;
  p.prefill_top_k(s, prompts, ids, log_probs);
  p.step_top_k(s, rows, tokens, ids, log_probs);
};

/// A SparsePolicy that can send a step and collect its answer later (a base behind a server):
/// the decoder runs the adapters in between. `finish_top_k` writes the rows started last.
template <class P>
concept SplitSparsePolicy = SparsePolicy<P> &&
    requires(const P& p, typename P::state_type& s, const prompt_list& prompts, std::span<const int> rows,
             std::span<const token_id> tokens, std::span<token_id> ids, std::span<float> log_probs) {
  p.start_prefill_top_k(s, prompts);
  p.start_step_top_k(s, rows, tokens);
  p.finish_top_k(s, ids, log_probs);
};

/// What the decoder and the trainers take as the frozen base: dense logits or top-k only.
template <class P>
concept BasePolicy = Policy<P> || SparsePolicy<P>;

}  // namespace ipa
