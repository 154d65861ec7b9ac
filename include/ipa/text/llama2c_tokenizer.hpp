// SPDX-License-Identifier: MIT
// The llama2.c tokenizer (tokenizer.bin: sentencepiece BPE exported with scores), encoding and
// decoding exactly as llama2.c's run.c: BOS, a dummy-prefix space, UTF-8 code points looked up
// whole, byte fallback to <0xHH> tokens, then greedy merges of the best-scoring adjacent pair.
#pragma once
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/types.hpp"
#include "ipa/io/binary_reader.hpp"

namespace ipa {

/// A llama2.c tokenizer.bin: int32 max_token_length, then per token a float32 score, an int32
/// byte length and the bytes. ids 0/1/2 are <unk>, BOS and EOS; 3..258 are bytes <0x00>..<0xFF>.
class llama2c_tokenizer {
 public:
  static constexpr token_id bos_id = 1;
  static constexpr token_id eos_id = 2;

  /// Loads a tokenizer.bin; with expected_vocab > 0 the token count must equal it.
  static llama2c_tokenizer load(const std::string& path, std::size_t expected_vocab = 0) {
    binary_reader in(path);
    llama2c_tokenizer t;
    const auto max_len = in.read<std::int32_t>("max_token_length");
    if (max_len <= 0 || max_len > 65536)
      throw io_error(path + ": not a llama2.c tokenizer: max_token_length " + std::to_string(max_len) +
                     " is outside [1, 65536]");
    t.max_token_length_ = max_len;
    while (in.remaining() > 0) {
      const std::string what = "token " + std::to_string(t.pieces_.size());
      const auto score = in.read<float>(what + "'s score");
      const auto len = in.read<std::int32_t>(what + "'s length");
      if (len < 0 || len > max_len)
        throw io_error(path + ": corrupt tokenizer: " + what + " has length " + std::to_string(len) + ", expected 0.." +
                       std::to_string(max_len) + " (max_token_length)");
      if (!std::isfinite(score)) throw io_error(path + ": corrupt tokenizer: " + what + " has a non-finite score");
      std::string piece(static_cast<std::size_t>(len), '\0');
      in.read_bytes(piece.data(), piece.size(), what + "'s bytes");
      t.scores_.push_back(score);
      t.pieces_.push_back(std::move(piece));
      if (expected_vocab > 0 && t.pieces_.size() > expected_vocab) break;
    }
    if (expected_vocab > 0 && t.pieces_.size() != expected_vocab)
      throw shape_error(path + ": the tokenizer has " + (t.pieces_.size() > expected_vocab ? "more than " : "") +
                        std::to_string(t.pieces_.size()) + " tokens but the model's vocabulary has " +
                        std::to_string(expected_vocab) + "; they must come from the same model");
    if (t.pieces_.size() < 3)
      throw io_error(path + ": a llama2.c tokenizer needs at least <unk>, BOS and EOS, found " +
                     std::to_string(t.pieces_.size()) + " tokens");
    t.index();
    return t;
  }

  /// From pieces and scores held elsewhere (e.g. a GGUF's tokenizer.ggml.tokens/scores, with
  /// SentencePiece's U+2581 already turned into spaces). `where` names the source in errors.
  static llama2c_tokenizer from_pieces(std::vector<std::string> pieces, std::vector<float> scores,
                                       const std::string& where) {
    if (pieces.size() != scores.size())
      throw io_error(where + ": " + std::to_string(pieces.size()) + " tokens but " + std::to_string(scores.size()) +
                     " scores");
    if (pieces.size() < 3)
      throw io_error(where + ": a tokenizer needs at least <unk>, BOS and EOS, found " + std::to_string(pieces.size()));
    llama2c_tokenizer t;
    for (std::size_t i = 0; i < scores.size(); ++i) {
      if (!std::isfinite(scores[i])) throw io_error(where + ": token " + std::to_string(i) + " has a non-finite score");
      t.max_token_length_ = std::max(t.max_token_length_, int(pieces[i].size()));
    }
    t.pieces_ = std::move(pieces);
    t.scores_ = std::move(scores);
    t.index();
    return t;
  }

  std::size_t vocab_size() const noexcept { return pieces_.size(); }
  const std::string& piece(token_id id) const { return pieces_.at(check(id)); }
  float score(token_id id) const { return scores_.at(check(id)); }

  /// Token ids of `text`, as run.c's encode(text, bos, eos).
  std::vector<token_id> encode(std::string_view text, bool bos = true, bool eos = false) const {
    std::vector<token_id> ids;
    if (bos) ids.push_back(bos_id);
    if (!text.empty()) {
      const token_id space = lookup(" ");
      if (space < 0) throw io_error("llama2c_tokenizer: the vocabulary has no \" \" token for the dummy prefix");
      ids.push_back(space);
    }
    // Code points (up to 4 bytes) first; bytes of an unknown one fall back to <0xHH> tokens.
    std::string cp;
    for (std::size_t i = 0; i < text.size(); ++i) {
      if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) cp.clear();
      cp += text[i];
      const bool next_continues = i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
      if (next_continues && cp.size() < 4) continue;
      const token_id id = lookup(cp);
      if (id >= 0) {
        ids.push_back(id);
      } else {
        for (unsigned char b : cp) ids.push_back(byte_token(b));
      }
      cp.clear();
    }
    merge_best_pairs(ids);
    if (eos) ids.push_back(eos_id);
    return ids;
  }

  /// run.c's merge loop: while some adjacent pair's concatenation is in the vocabulary, merge the
  /// one with the best score (the leftmost among equals). run.c rescans every pair per merge,
  /// O(n^2) (a 64 KB prompt took 24 s); this keeps the candidates in a heap, O(n log n), and
  /// picks exactly the same pair each time (tests compare the two).
  void merge_best_pairs(std::vector<token_id>& ids) const {
    const std::size_t n = ids.size();
    std::vector<int> next(n), prev(n);
    for (std::size_t k = 0; k < n; ++k) {
      next[k] = k + 1 < n ? int(k + 1) : -1;
      prev[k] = int(k) - 1;
    }
    struct cand {
      float score;
      int left;
      token_id a, b, merged;
      bool operator<(const cand& o) const noexcept {  // heap top: best score, then leftmost
        return score != o.score ? score < o.score : left > o.left;
      }
    };
    std::priority_queue<cand> heap;
    std::string joined;
    auto consider = [&](int left) {
      if (left < 0 || next[std::size_t(left)] < 0) return;
      const token_id a = ids[std::size_t(left)], b = ids[std::size_t(next[std::size_t(left)])];
      joined.assign(pieces_[std::size_t(a)]);
      joined += pieces_[std::size_t(b)];
      const token_id m = lookup(joined);
      if (m >= 0 && scores_[std::size_t(m)] > -1e10f) heap.push({scores_[std::size_t(m)], left, a, b, m});
    };
    for (std::size_t k = 0; k + 1 < n; ++k) consider(int(k));
    while (!heap.empty()) {
      const cand c = heap.top();
      heap.pop();
      const int r = next[std::size_t(c.left)];
      if (ids[std::size_t(c.left)] != c.a || r < 0 || ids[std::size_t(r)] != c.b) continue;  // stale
      ids[std::size_t(c.left)] = c.merged;
      next[std::size_t(c.left)] = next[std::size_t(r)];
      if (next[std::size_t(r)] >= 0) prev[std::size_t(next[std::size_t(r)])] = c.left;
      ids[std::size_t(r)] = -1;  // dead
      consider(prev[std::size_t(c.left)]);
      consider(c.left);
    }
    std::size_t out = 0;
    for (int k = n ? 0 : -1; k >= 0; k = next[std::size_t(k)]) ids[out++] = ids[std::size_t(k)];
    ids.resize(out);
  }

  /// The bytes token `id` stands for after `prev`, as run.c's decode: a leading space is dropped
  /// after BOS, and <0xHH> pieces become the raw byte.
  std::string decode_piece(token_id prev, token_id id) const {
    std::string_view p = pieces_.at(check(id));
    if (prev == bos_id && !p.empty() && p[0] == ' ') p.remove_prefix(1);
    return piece_bytes(p);
  }

  /// The bytes a stored piece stands for: a <0xHH> byte piece as that byte, others as they are.
  static std::string piece_bytes(std::string_view p) {
    if (p.size() == 6 && p.substr(0, 3) == "<0x" && p[5] == '>' && is_hex(p[3]) && is_hex(p[4]))
      return std::string(1, static_cast<char>(hex(p[3]) * 16 + hex(p[4])));
    return std::string(p);
  }

  /// The text of `ids` (prev = ids[i-1], the first id taken as following BOS when no prev).
  std::string decode(std::span<const token_id> ids, token_id prev = bos_id) const {
    std::string out;
    for (token_id id : ids) {
      if (id == bos_id) {
        prev = id;
        continue;
      }
      out += decode_piece(prev, id);
      prev = id;
    }
    return out;
  }

  /// What run.c's safe_printf would print for a piece: single bytes that are neither printable
  /// nor whitespace (raw bytes >= 0x80, control bytes) are dropped.
  static std::string printable(std::string piece) {
    if (piece.size() == 1) {
      const auto c = static_cast<unsigned char>(piece[0]);
      if (c >= 0x80 || !(std::isprint(c) || std::isspace(c))) return {};
    }
    return piece;
  }

 private:
  static bool is_hex(char c) noexcept { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }
  static int hex(char c) noexcept { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }
  std::size_t check(token_id id) const {
    if (id < 0 || std::size_t(id) >= pieces_.size())
      throw shape_error("llama2c_tokenizer: token id " + std::to_string(id) + " outside [0, " +
                        std::to_string(pieces_.size()) + ")");
    return std::size_t(id);
  }
  token_id lookup(const std::string& s) const {
    auto it = ids_.find(s);
    return it == ids_.end() ? -1 : it->second;
  }
  token_id byte_token(unsigned char b) const {
    if (!has_byte_fallback_)
      throw io_error("llama2c_tokenizer: byte " + std::to_string(b) +
                     " is not in the vocabulary and the tokenizer has no <0xHH> byte tokens at ids 3..258");
    return static_cast<token_id>(b) + 3;
  }
  void index() {
    ids_.reserve(pieces_.size());
    for (std::size_t i = 0; i < pieces_.size(); ++i) ids_.emplace(pieces_[i], static_cast<token_id>(i));
    has_byte_fallback_ = pieces_.size() >= 259;
    static const char* digits = "0123456789ABCDEF";
    for (int b = 0; has_byte_fallback_ && b < 256; ++b) {
      const std::string want = std::string("<0x") + digits[b / 16] + digits[b % 16] + ">";
      if (pieces_[3 + b] != want) has_byte_fallback_ = false;
    }
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, token_id> ids_;
  int max_token_length_ = 0;
  bool has_byte_fallback_ = false;
};

}  // namespace ipa
