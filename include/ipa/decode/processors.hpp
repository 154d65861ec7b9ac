// SPDX-License-Identifier: MIT
// Logit processors: rewrites of the tailored row that need the sequence so far (unlike the
// sampler's transforms). Applied after fusion, before the sampler.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/types.hpp"

namespace ipa {

/// What a processor may look at: the row's prompt and what it has generated so far.
struct sequence_view {
  std::span<const token_id> prompt;
  std::span<const token_id> generated;
};

/// Rewrites one row of logits given its sequence.
template <class P>
concept LogitProcessor = requires(P& p, std::span<float> logits, const sequence_view& seq) {
  { p.apply(logits, seq) } -> std::same_as<void>;
};

/// Bans the stop tokens (EOS, ...) until `min_new` tokens have been generated.
struct min_new_tokens {
  std::size_t min_new = 0;
  std::vector<token_id> stop_tokens;
  void apply(std::span<float> logits, const sequence_view& seq) const noexcept {
    if (seq.generated.size() >= min_new) return;
    for (token_id t : stop_tokens)
      if (t >= 0 && std::size_t(t) < logits.size()) logits[t] = -std::numeric_limits<float>::infinity();
  }
};

/// Never samples the listed ids.
struct ban_tokens {
  std::vector<token_id> ids;
  void apply(std::span<float> logits, const sequence_view&) const {
    for (token_id t : ids) {
      if (t < 0 || std::size_t(t) >= logits.size())
        throw shape_error("ban_tokens: id " + std::to_string(t) + " outside the vocabulary of " +
                          std::to_string(logits.size()));
      logits[t] = -std::numeric_limits<float>::infinity();
    }
  }
};

/// Bans token sequences, the way Hugging Face's `bad_words_ids` does: the last token of a banned
/// sequence is never sampled right after the rest of it (a one-token sequence is banned outright).
/// With a small vocabulary a word is several tokens, so this is how a word list is banned at
/// decoding time (one tokenisation per variant; other spellings of the word still get through).
struct ban_sequences {
  std::vector<std::vector<token_id>> sequences;
  void apply(std::span<float> logits, const sequence_view& seq) const {
    for (const auto& s : sequences) {
      if (s.empty()) continue;
      const token_id last = s.back();
      if (last < 0 || std::size_t(last) >= logits.size())
        throw shape_error("ban_sequences: id " + std::to_string(last) + " outside the vocabulary of " +
                          std::to_string(logits.size()));
      const std::size_t need = s.size() - 1, have = seq.prompt.size() + seq.generated.size();
      if (need > have) continue;
      bool match = true;
      for (std::size_t k = 0; k < need && match; ++k) {  // compare s[need-1-k] with the k-th token from the end
        const std::size_t back = k + 1;
        const token_id t = back <= seq.generated.size() ? seq.generated[seq.generated.size() - back]
                                                        : seq.prompt[seq.prompt.size() - (back - seq.generated.size())];
        match = t == s[need - 1 - k];
      }
      if (match) logits[std::size_t(last)] = -std::numeric_limits<float>::infinity();
    }
  }
};

/// CTRL's repetition penalty (Keskar et al. 2019, arXiv:1909.05858): a logit of a token already in
/// the prompt or the output is divided by theta when positive, multiplied when negative.
struct repetition_penalty {
  float theta = 1.0f;
  explicit repetition_penalty(float value = 1.0f) : theta(value) {
    if (!(theta > 0.0f) || !std::isfinite(theta))
      throw config_error("repetition_penalty must be finite and > 0 (1 = off), found " + std::to_string(value));
  }
  void apply(std::span<float> logits, const sequence_view& seq) {
    if (theta == 1.0f) return;
    seen_.assign(logits.size(), 0);
    auto mark = [&](std::span<const token_id> ids) {
      for (token_id t : ids)
        if (t >= 0 && std::size_t(t) < logits.size()) seen_[t] = 1;
    };
    mark(seq.prompt);
    mark(seq.generated);
    for (std::size_t v = 0; v < logits.size(); ++v)
      if (seen_[v]) logits[v] = logits[v] > 0 ? logits[v] / theta : logits[v] * theta;
  }

 private:
  std::vector<char> seen_;
};

}  // namespace ipa
