// SPDX-License-Identifier: MIT
// Are a base and an adapter speaking the same vocabulary? Compared by token table (the bytes of
// every token), not only by size. Two tables that agree on every id they share may differ by
// tokens appended to one of them (added special tokens) and by padding (a model predicting more
// ids than its tokenizer has, to round a matrix up): vocab_map is then the explicit id mapping
// from the base's ids to the adapter's. Tables that disagree on a shared id are an error.
#pragma once
#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/types.hpp"
#include "ipa/text/gpt2_tokenizer.hpp"
#include "ipa/text/llama2c_tokenizer.hpp"

namespace ipa {

/// The bytes of every token, by id.
using token_table = std::vector<std::string>;

/// llama2.c / SentencePiece pieces as stored (byte tokens as <0xXX>). llama2.c's exporter writes
/// BOS and EOS as "\n<s>\n" and "\n</s>\n"; they are the "<s>" and "</s>" of SentencePiece (and
/// of llama.cpp's GGUF), so the table names them that way.
inline token_table table_of(const llama2c_tokenizer& t) {
  token_table out(t.vocab_size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = t.piece(token_id(i));
    if (out[i] == "\n<s>\n" || out[i] == "\n</s>\n") out[i] = out[i].substr(1, out[i].size() - 2);
  }
  return out;
}
/// GPT-2 byte-level BPE: each token's raw bytes (special tokens as their text).
inline token_table table_of(const gpt2_tokenizer& t) {
  token_table out(t.vocab_size());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = t.token_bytes(token_id(i));
  return out;
}

/// Base id -> adapter id, for every id the base model predicts. -1: the adapter has no such token
/// (an id appended to the base's table or one of the base model's padding rows); the tailored
/// policy bans it.
class vocab_map {
 public:
  /// The identity over a vocabulary of `size` ids.
  static vocab_map identity(std::size_t size) {
    vocab_map m;
    m.adapter_of_.resize(size);
    for (std::size_t v = 0; v < size; ++v) m.adapter_of_[v] = token_id(v);
    m.adapter_size_ = size;
    return m;
  }
  /// An explicit mapping: `adapter_of[v]` for each base id v, in [0, adapter_size) or -1.
  static vocab_map explicit_map(std::vector<token_id> adapter_of, std::size_t adapter_size) {
    for (std::size_t v = 0; v < adapter_of.size(); ++v)
      if (adapter_of[v] < -1 || (adapter_of[v] >= 0 && std::size_t(adapter_of[v]) >= adapter_size))
        throw shape_error("vocab_map: base id " + std::to_string(v) + " maps to " + std::to_string(adapter_of[v]) +
                          ", outside the adapter's [0, " + std::to_string(adapter_size) + ") and not -1");
    vocab_map m;
    m.adapter_of_ = std::move(adapter_of);
    m.adapter_size_ = adapter_size;
    return m;
  }

  std::size_t base_size() const noexcept { return adapter_of_.size(); }
  std::size_t adapter_size() const noexcept { return adapter_size_; }
  /// The adapter's id of base id v, or -1.
  token_id adapter_id(token_id v) const {
    if (v < 0 || std::size_t(v) >= adapter_of_.size())
      throw shape_error("vocab_map: base id " + std::to_string(v) + " outside [0, " + std::to_string(base_size()) +
                        ")");
    return adapter_of_[std::size_t(v)];
  }
  /// The whole mapping, by base id (-1: unknown to the adapter).
  std::span<const token_id> adapter_ids() const noexcept { return adapter_of_; }
  /// Same sizes and every id maps to itself: the adapter's logits can be used as they are.
  bool is_identity() const noexcept {
    if (adapter_size_ != adapter_of_.size()) return false;
    for (std::size_t v = 0; v < adapter_of_.size(); ++v)
      if (adapter_of_[v] != token_id(v)) return false;
    return true;
  }
  /// How many base ids the adapter knows.
  std::size_t mapped() const noexcept {
    return std::size_t(std::count_if(adapter_of_.begin(), adapter_of_.end(), [](token_id a) { return a >= 0; }));
  }

 private:
  std::vector<token_id> adapter_of_;
  std::size_t adapter_size_ = 0;
};

namespace detail {
inline std::string quoted_token(const std::string& bytes) {
  std::string out = "'";
  for (const unsigned char c : bytes) {
    if (c >= 0x20 && c < 0x7f && c != '\'') out += char(c);
    else {
      static constexpr char hex[] = "0123456789abcdef";
      out += "\\x", out += hex[c >> 4], out += hex[c & 15];
    }
  }
  return out + "'";
}
}  // namespace detail

/// Checks the base's and the adapter's token tables against each other and returns the id
/// mapping. `*_model_vocab` is how many ids each model predicts (>= its table: the rest is
/// padding, never a real token). Ids both tables have must hold the same bytes; beyond them one
/// table may have more tokens (appended). Throws config_error naming the first differing id.
inline vocab_map map_vocabularies(const token_table& base, std::size_t base_model_vocab, const token_table& adapter,
                                  std::size_t adapter_model_vocab) {
  if (base.size() > base_model_vocab || adapter.size() > adapter_model_vocab)
    throw shape_error("map_vocabularies: a tokenizer has more tokens than its model predicts (base " +
                      std::to_string(base.size()) + " tokens for " + std::to_string(base_model_vocab) +
                      " logits, adapter " + std::to_string(adapter.size()) + " for " +
                      std::to_string(adapter_model_vocab) + ")");
  const std::size_t shared = std::min(base.size(), adapter.size());
  for (std::size_t v = 0; v < shared; ++v)
    if (base[v] != adapter[v])
      throw config_error("the base's and the adapter's vocabularies differ at id " + std::to_string(v) + ": base " +
                         detail::quoted_token(base[v]) + ", adapter " + detail::quoted_token(adapter[v]) +
                         "; ipa maps vocabularies that differ only by appended tokens or padding");
  if (base.size() == adapter.size() && base_model_vocab == adapter_model_vocab)
    return vocab_map::identity(base_model_vocab);  // padding rows of equal models match too
  std::vector<token_id> adapter_of(base_model_vocab, -1);
  for (std::size_t v = 0; v < shared; ++v) adapter_of[v] = token_id(v);
  return vocab_map::explicit_map(std::move(adapter_of), adapter_model_vocab);
}

}  // namespace ipa
