// SPDX-License-Identifier: MIT
// GPT-2's byte-level BPE (Radford et al. 2019; openai/gpt-2 src/encoder.py), from encoder.json +
// vocab.bpe, vocab.json + merges.txt, or a Hugging Face tokenizer.json.
//
// Text is first cut by GPT-2's pre-tokenizer regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with Python's Unicode semantics (letters and numbers by general category, \s = White_Space),
// implemented as a hand-written scanner; each piece's UTF-8 bytes are then merged by rank.
// decode(encode(s)) == s for every byte string s. GPT-2 adds no BOS.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ipa/core/error.hpp"
#include "ipa/core/types.hpp"
#include "ipa/io/atomic_file.hpp"
#include "ipa/text/detail/unicode_tables.hpp"

namespace ipa {

namespace detail {

// One code point decoded from UTF-8; an invalid byte decodes as itself with cp = invalid_cp.
inline constexpr std::uint32_t invalid_cp = 0xFFFFFFFFu;
inline std::uint32_t next_code_point(std::string_view s, std::size_t i, std::size_t& len) noexcept {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  len = 1;
  if (c < 0x80) return c;
  // continuation bytes that follow the lead byte
  const int n = c >= 0xF0 && c <= 0xF4 ? 3 : c >= 0xE0 && c < 0xF0 ? 2 : c >= 0xC2 && c < 0xE0 ? 1 : -1;
  if (n < 0 || i + std::size_t(n) >= s.size()) return invalid_cp;
  std::uint32_t cp = c & (0x3F >> n);
  for (int k = 1; k <= n; ++k) {
    if ((b(i + std::size_t(k)) & 0xC0) != 0x80) return invalid_cp;
    cp = (cp << 6) | (b(i + std::size_t(k)) & 0x3F);
  }
  // overlong, surrogate and out-of-range forms are invalid
  if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
    return invalid_cp;
  len = std::size_t(n) + 1;
  return cp;
}

inline bool in_ranges(std::span<const code_point_range> table, std::uint32_t cp) noexcept {
  auto it = std::upper_bound(table.begin(), table.end(), cp,
                             [](std::uint32_t v, const code_point_range& r) { return v < r.first; });
  return it != table.begin() && cp <= (it - 1)->last;
}

// Python's \s in `regex`: Unicode White_Space.
inline bool is_white_space(std::uint32_t cp) noexcept {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

enum class char_class : std::uint8_t { letter, number, space, other };

inline char_class classify(std::uint32_t cp) noexcept {
  if (cp == invalid_cp) return char_class::other;
  if (is_white_space(cp)) return char_class::space;
  if (in_ranges(unicode_letters, cp)) return char_class::letter;
  if (in_ranges(unicode_numbers, cp)) return char_class::number;
  return char_class::other;
}

// GPT-2's bytes_to_unicode(): printable bytes map to themselves, the rest to U+0100 onwards.
inline std::array<std::uint32_t, 256> byte_to_code_point() {
  std::array<std::uint32_t, 256> map{};
  std::array<bool, 256> printable{};
  for (int b = 0; b < 256; ++b) printable[b] = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
  std::uint32_t next = 256;
  for (int b = 0; b < 256; ++b) map[b] = printable[b] ? std::uint32_t(b) : next++;
  return map;
}

}  // namespace detail

/// GPT-2 byte-level BPE. encode() is thread-safe (its word cache is guarded).
class gpt2_tokenizer {
 public:
  gpt2_tokenizer() = default;
  gpt2_tokenizer(gpt2_tokenizer&& o) noexcept  // the word cache (and its mutex) starts empty
      : id_to_bytes_(std::move(o.id_to_bytes_)),
        bytes_to_id_(std::move(o.bytes_to_id_)),
        merges_(std::move(o.merges_)),
        byte_id_(o.byte_id_),
        specials_(std::move(o.specials_)) {}

  /// encoder.json + vocab.bpe (OpenAI's names) or vocab.json + merges.txt (Hugging Face's).
  static gpt2_tokenizer from_files(const std::string& vocab_json, const std::string& merges_txt) {
    gpt2_tokenizer t;
    const nlohmann::json vocab = parse_json(vocab_json);
    if (!vocab.is_object()) throw io_error(vocab_json + ": expected a JSON object {token: id}");
    t.set_vocab(vocab, vocab_json);
    // merges: an optional "#version" line, then "A B" per line; rank = order
    const std::string text = read_file(merges_txt);
    std::vector<std::pair<std::string, std::string>> merges;
    std::size_t at = 0, line_no = 0;
    while (at < text.size()) {
      std::size_t end = text.find('\n', at);
      if (end == std::string::npos) end = text.size();
      std::string_view line(text.data() + at, end - at);
      at = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
      const auto sp = line.find(' ');
      if (sp == std::string_view::npos || sp == 0 || sp + 1 >= line.size() ||
          line.find(' ', sp + 1) != std::string_view::npos)
        throw io_error(merges_txt + ": line " + std::to_string(line_no) + " is not 'A B': '" +
                       std::string(line.substr(0, 80)) + "'");
      merges.emplace_back(std::string(line.substr(0, sp)), std::string(line.substr(sp + 1)));
    }
    t.set_merges(merges, merges_txt);
    if (t.bytes_to_id_.count("<|endoftext|>"))
      t.specials_.emplace_back("<|endoftext|>", t.bytes_to_id_["<|endoftext|>"]);
    return t;
  }

  /// A Hugging Face tokenizer.json with a BPE model (GPT-2 style byte-level).
  static gpt2_tokenizer from_tokenizer_json(const std::string& path) {
    const nlohmann::json j = parse_json(path);
    gpt2_tokenizer t;
    try {
      const auto& model = j.at("model");
      if (model.value("type", std::string("BPE")) != "BPE")
        throw io_error(path + ": model.type is '" + model.value("type", std::string()) + "', expected BPE");
      t.set_vocab(model.at("vocab"), path);
      std::vector<std::pair<std::string, std::string>> merges;
      for (const auto& m : model.at("merges")) {
        if (m.is_string()) {
          const std::string s = m.get<std::string>();
          const auto sp = s.find(' ');
          if (sp == std::string::npos) throw io_error(path + ": merge '" + s + "' is not 'A B'");
          merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
        } else if (m.is_array() && m.size() == 2) {
          merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
        } else {
          throw io_error(path + ": a merge is neither 'A B' nor [A, B]");
        }
      }
      t.set_merges(merges, path);
      if (j.contains("added_tokens"))
        for (const auto& a : j["added_tokens"]) {
          const token_id id = a.at("id").get<token_id>();
          const std::string content = a.at("content").get<std::string>();
          if (id < 0) throw io_error(path + ": added token '" + content + "' has a negative id");
          if (std::size_t(id) >= t.id_to_bytes_.size()) t.id_to_bytes_.resize(std::size_t(id) + 1);
          t.id_to_bytes_[std::size_t(id)] = content;
          t.bytes_to_id_[content] = id;
          if (a.value("special", false)) t.specials_.emplace_back(content, id);
        }
    } catch (const nlohmann::json::exception& e) {
      throw io_error(path + ": not a tokenizer.json with a BPE model: " + e.what());
    }
    return t;
  }

  /// From a token list in vocab.json's character form (id = index), merges "A B" in rank
  /// order and the ids of special tokens: how GGUF stores a GPT-2 tokenizer.
  static gpt2_tokenizer from_tokens(const std::vector<std::string>& tokens, const std::vector<std::string>& merges,
                                    const std::vector<token_id>& specials, const std::string& where) {
    nlohmann::json vocab = nlohmann::json::object();
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (vocab.contains(tokens[i])) throw io_error(where + ": token '" + tokens[i] + "' appears twice");
      vocab[tokens[i]] = i;
    }
    gpt2_tokenizer t;
    t.set_vocab(vocab, where);
    std::vector<std::pair<std::string, std::string>> pairs;
    pairs.reserve(merges.size());
    for (const auto& m : merges) {
      const auto sp = m.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 >= m.size())
        throw io_error(where + ": merge '" + m.substr(0, 80) + "' is not 'A B'");
      pairs.emplace_back(m.substr(0, sp), m.substr(sp + 1));
    }
    t.set_merges(pairs, where);
    for (token_id id : specials) {
      if (id < 0 || std::size_t(id) >= t.id_to_bytes_.size())
        throw io_error(where + ": special token id " + std::to_string(id) + " outside the vocabulary");
      t.specials_.emplace_back(t.id_to_bytes_[std::size_t(id)], id);
    }
    return t;
  }

  /// Token `id` in vocab.json's character form (GPT-2's bytes_to_unicode alphabet).
  std::string token_text(token_id id) const {
    static const auto fwd = detail::byte_to_code_point();
    std::string out;
    for (unsigned char b : token_bytes(id)) {
      const std::uint32_t cp = fwd[b];
      if (cp < 0x80) out.push_back(char(cp));
      else out += {char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};  // the alphabet ends at U+0143
    }
    return out;
  }

  /// The merges "A B" (character form) in rank order.
  std::vector<std::string> merge_list() const {
    std::uint32_t top = 0;
    for (const auto& [key, rule] : merges_) top = std::max(top, rule.rank + 1);
    std::vector<std::string> out(top);
    for (const auto& [key, rule] : merges_)
      out[rule.rank] = token_text(token_id(key >> 32)) + " " + token_text(token_id(key & 0xFFFFFFFFu));
    std::erase(out, std::string());  // ranks of ignored duplicate merges
    return out;
  }

  /// Ids of the special tokens (e.g. <|endoftext|>).
  std::vector<token_id> special_ids() const {
    std::vector<token_id> ids;
    for (const auto& [s, id] : specials_) ids.push_back(id);
    return ids;
  }

  /// A folder holding encoder.json + vocab.bpe, vocab.json + merges.txt or tokenizer.json, or
  /// a tokenizer.json file.
  static gpt2_tokenizer load(const std::string& path) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(path)) return from_tokenizer_json(path);
    auto has = [&](const char* f) { return fs::exists(fs::path(path) / f); };
    if (has("encoder.json") && has("vocab.bpe")) return from_files(path + "/encoder.json", path + "/vocab.bpe");
    if (has("vocab.json") && has("merges.txt")) return from_files(path + "/vocab.json", path + "/merges.txt");
    if (has("tokenizer.json")) return from_tokenizer_json(path + "/tokenizer.json");
    throw io_error(path +
                   ": no GPT-2 tokenizer here: expected encoder.json + vocab.bpe, vocab.json + merges.txt "
                   "or tokenizer.json");
  }

  std::size_t vocab_size() const noexcept { return id_to_bytes_.size(); }
  /// The raw bytes of one token.
  const std::string& token_bytes(token_id id) const {
    if (id < 0 || std::size_t(id) >= id_to_bytes_.size())
      throw shape_error("gpt2_tokenizer: id " + std::to_string(id) + " outside [0, " + std::to_string(vocab_size()) +
                        ")");
    return id_to_bytes_[std::size_t(id)];
  }
  /// Forgets the per-piece cache (benchmarks of cold encoding; bounded memory otherwise).
  void clear_cache() const {
    std::lock_guard lock(cache_mutex_);
    cache_.clear();
  }

  /// <|endoftext|>'s id, or -1.
  token_id eot_id() const noexcept {
    for (const auto& [s, id] : specials_)
      if (s == "<|endoftext|>") return id;
    return -1;
  }

  /// Ids of `text` (no BOS; special-token strings are ordinary text, as in OpenAI's encoder).
  std::vector<token_id> encode(std::string_view text) const {
    std::vector<token_id> ids;
    scan(text, [&](std::string_view piece) { encode_piece(piece, ids); });
    return ids;
  }

  /// Like encode(), but the special tokens' strings (e.g. <|endoftext|>) become their ids.
  std::vector<token_id> encode_with_special(std::string_view text) const {
    std::vector<token_id> ids;
    while (!text.empty()) {
      std::size_t best = text.size();
      token_id best_id = -1;
      std::size_t best_len = 0;
      for (const auto& [s, id] : specials_) {
        const auto at = text.find(s);
        if (at < best) best = at, best_id = id, best_len = s.size();
      }
      const auto plain = encode(text.substr(0, best));
      ids.insert(ids.end(), plain.begin(), plain.end());
      if (best_id < 0) break;
      ids.push_back(best_id);
      text.remove_prefix(best + best_len);
    }
    return ids;
  }

  /// The bytes of `ids`, concatenated.
  std::string decode(std::span<const token_id> ids) const {
    std::string out;
    for (token_id id : ids) out += token_bytes(id);
    return out;
  }

  /// Cuts text into the pre-tokenizer's pieces (exposed for tests).
  template <class Fn>
  static void scan(std::string_view s, Fn&& emit) {
    using detail::char_class;
    std::size_t i = 0;
    const std::size_t n = s.size();
    std::size_t len = 0;
    auto cls_at = [&](std::size_t at, std::size_t& l) { return detail::classify(detail::next_code_point(s, at, l)); };
    while (i < n) {
      // 's 't 're 've 'm 'll 'd
      if (s[i] == '\'' && i + 1 < n) {
        const std::string_view rest = s.substr(i + 1);
        std::size_t m = 0;
        if (rest[0] == 's' || rest[0] == 't' || rest[0] == 'm' || rest[0] == 'd') m = 1;
        else if (rest.rfind("re", 0) == 0 || rest.rfind("ve", 0) == 0 || rest.rfind("ll", 0) == 0) m = 2;
        if (m) {
          emit(s.substr(i, m + 1));
          i += m + 1;
          continue;
        }
      }
      // ' ?' then a run of letters / numbers / others (not space, letter or number)
      std::size_t start = i, j = i;
      if (s[j] == ' ' && j + 1 < n) ++j;
      const char_class c = cls_at(j, len);
      if (c != char_class::space && !(j == i && s[i] == ' ')) {
        std::size_t k = j + len;
        while (k < n) {
          std::size_t l2;
          if (cls_at(k, l2) != c) break;
          k += l2;
        }
        emit(s.substr(start, k - start));
        i = k;
        continue;
      }
      // whitespace: \s+(?!\S) leaves the last space for the next word; else \s+
      std::size_t k = i, last = i;
      while (k < n) {
        std::size_t l2;
        if (cls_at(k, l2) != char_class::space) break;
        last = k;
        k += l2;
      }
      if (k < n && last > i) k = last;  // followed by non-space: give the last one back
      emit(s.substr(i, k - i));
      i = k;
    }
  }

 private:
  static nlohmann::json parse_json(const std::string& path) {
    try {
      return nlohmann::json::parse(read_file(path));
    } catch (const nlohmann::json::exception& e) {
      throw io_error(path + ": not valid JSON: " + e.what());
    }
  }

  // A vocabulary key (bytes_to_unicode() characters) back to raw bytes.
  static std::string key_bytes(const std::string& key, const std::string& where) {
    static const auto inverse = [] {
      std::unordered_map<std::uint32_t, unsigned char> inv;
      const auto fwd = detail::byte_to_code_point();
      for (int b = 0; b < 256; ++b) inv[fwd[b]] = static_cast<unsigned char>(b);
      return inv;
    }();
    std::string out;
    for (std::size_t i = 0; i < key.size();) {
      std::size_t len;
      const std::uint32_t cp = detail::next_code_point(key, i, len);
      auto it = inverse.find(cp);
      if (it == inverse.end())
        throw io_error(where + ": token '" + key +
                       "' holds a character outside GPT-2's byte alphabet; not a "
                       "byte-level BPE vocabulary");
      out.push_back(static_cast<char>(it->second));
      i += len;
    }
    return out;
  }

  void set_vocab(const nlohmann::json& vocab, const std::string& where) {
    if (!vocab.is_object() || vocab.empty()) throw io_error(where + ": the vocabulary is empty or not an object");
    std::size_t max_id = 0;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!it->is_number_integer() || it->get<long long>() < 0 || it->get<long long>() > (1 << 24))
        throw io_error(where + ": token '" + it.key() + "' has an id that is not an integer in [0, 2^24]");
      max_id = std::max<std::size_t>(max_id, it->get<std::size_t>());
    }
    id_to_bytes_.assign(max_id + 1, std::string());
    std::vector<bool> seen(max_id + 1, false);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const std::size_t id = it->get<std::size_t>();
      if (seen[id]) throw io_error(where + ": id " + std::to_string(id) + " is used by two tokens");
      seen[id] = true;
      // special tokens such as <|endoftext|> are plain ASCII and map to themselves
      const std::string bytes = key_bytes(it.key(), where);
      id_to_bytes_[id] = bytes;
      bytes_to_id_.emplace(bytes, token_id(id));
    }
    for (int b = 0; b < 256; ++b) {
      auto it = bytes_to_id_.find(std::string(1, static_cast<char>(b)));
      if (it == bytes_to_id_.end())
        throw io_error(where + ": byte " + std::to_string(b) + " has no token; a byte-level BPE needs all 256");
      byte_id_[b] = it->second;
    }
  }

  void set_merges(const std::vector<std::pair<std::string, std::string>>& merges, const std::string& where) {
    merges_.reserve(merges.size() * 2);
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const std::string a = key_bytes(merges[r].first, where), b = key_bytes(merges[r].second, where);
      auto ia = bytes_to_id_.find(a), ib = bytes_to_id_.find(b), iab = bytes_to_id_.find(a + b);
      if (ia == bytes_to_id_.end() || ib == bytes_to_id_.end() || iab == bytes_to_id_.end())
        throw io_error(where + ": merge " + std::to_string(r + 1) + " ('" + merges[r].first + "' '" + merges[r].second +
                       "') uses or makes a token missing from the vocabulary");
      merges_.emplace(pair_key(ia->second, ib->second), merge_rule{std::uint32_t(r), iab->second});  // first wins
    }
  }

  static std::uint64_t pair_key(token_id a, token_id b) noexcept {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }

  // BPE on one piece: merge the lowest-ranked adjacent pair until none is left (a heap over
  // candidate pairs and a linked list of symbols: O(n log n) even for a 1 MB piece).
  void encode_piece(std::string_view piece, std::vector<token_id>& out) const {
    {
      std::lock_guard lock(cache_mutex_);
      if (auto it = cache_.find(std::string(piece)); it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const std::size_t n = piece.size();
    std::vector<token_id> id(n);
    std::vector<int> prev(n), next(n);
    for (std::size_t k = 0; k < n; ++k) {
      id[k] = byte_id_[static_cast<unsigned char>(piece[k])];
      prev[k] = int(k) - 1;
      next[k] = k + 1 < n ? int(k + 1) : -1;
    }
    struct cand {
      std::uint32_t rank;
      int left;
      token_id a, b;
      bool operator>(const cand& o) const noexcept { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<cand, std::vector<cand>, std::greater<cand>> heap;
    auto consider = [&](int left) {
      if (left < 0 || next[std::size_t(left)] < 0) return;
      const token_id a = id[std::size_t(left)], b = id[std::size_t(next[std::size_t(left)])];
      if (auto it = merges_.find(pair_key(a, b)); it != merges_.end()) heap.push({it->second.rank, left, a, b});
    };
    for (std::size_t k = 0; k + 1 < n; ++k) consider(int(k));
    while (!heap.empty()) {
      const cand c = heap.top();
      heap.pop();
      const int r = next[std::size_t(c.left)];
      if (id[std::size_t(c.left)] != c.a || r < 0 || id[std::size_t(r)] != c.b || id[std::size_t(c.left)] < 0)
        continue;  // stale
      id[std::size_t(c.left)] = merges_.at(pair_key(c.a, c.b)).merged;
      id[std::size_t(r)] = -1;  // dead
      next[std::size_t(c.left)] = next[std::size_t(r)];
      if (next[std::size_t(r)] >= 0) prev[std::size_t(next[std::size_t(r)])] = c.left;
      consider(prev[std::size_t(c.left)]);
      consider(c.left);
    }
    std::vector<token_id> ids;
    for (int k = n ? 0 : -1; k >= 0; k = next[std::size_t(k)]) ids.push_back(id[std::size_t(k)]);
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() > 200000) cache_.clear();  // bounded memory on endless distinct input
    cache_.emplace(std::string(piece), std::move(ids));
  }

  struct merge_rule {
    std::uint32_t rank;
    token_id merged;
  };
  std::vector<std::string> id_to_bytes_;
  std::unordered_map<std::string, token_id> bytes_to_id_;
  std::unordered_map<std::uint64_t, merge_rule> merges_;
  std::array<token_id, 256> byte_id_{};
  std::vector<std::pair<std::string, token_id>> specials_;
  mutable std::unordered_map<std::string, std::vector<token_id>> cache_;
  mutable std::mutex cache_mutex_;
};

}  // namespace ipa
