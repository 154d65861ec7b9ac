// SPDX-License-Identifier: MIT
// The Reward contract and the built-in rewards: ordered keyword coverage (CommonGen-style),
// word-list avoidance, target length, distinct-n; composites (weighted sum, product, clipping,
// running normalisation). Higher is better.
#pragma once
#include <algorithm>
#include <cctype>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/core/types.hpp"

namespace ipa {

/// One finished sample as a reward sees it: ids and text of the prompt and the response.
struct sample_view {
  std::span<const token_id> prompt, response;
  std::string_view prompt_text, response_text;
};

/// Scores a batch of finished samples into `scores` (one per sample); higher is better.
template <class R>
concept Reward = requires(R& r, std::span<const sample_view> batch, std::span<double> scores) {
  r.score(batch, scores);
};

/// The lower-cased words of a text: maximal runs of ASCII letters, digits and apostrophes
/// ("Don't cry!" -> don't, cry). Bytes >= 0x80 separate words too.
inline std::vector<std::string> words_of(std::string_view text) {
  std::vector<std::string> words;
  std::string cur;
  for (char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x80 && (std::isalnum(c) || c == '\'')) {
      cur.push_back(static_cast<char>(std::tolower(c)));
    } else if (!cur.empty()) {
      words.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) words.push_back(std::move(cur));
  return words;
}

namespace detail {
inline std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}
inline void check_batch(std::span<const sample_view> batch, std::span<double> scores, const char* who) {
  if (batch.size() != scores.size())
    throw shape_error(std::string(who) + ": " + std::to_string(batch.size()) + " samples but " +
                      std::to_string(scores.size()) + " score slots");
}
}  // namespace detail

/// Ordered keyword coverage: the fraction of keywords found in the response in the given order
/// (greedy left-to-right matching of whole words, case-insensitive). Each keyword may list
/// inflections ("dog", "dogs"); any of them counts. `binary`: 1 only when all are covered.
struct keyword_coverage {
  std::vector<std::vector<std::string>> keywords;  ///< each: the accepted forms of one keyword
  bool binary = false;

  keyword_coverage() = default;
  explicit keyword_coverage(std::vector<std::vector<std::string>> forms, bool is_binary = false)
      : keywords(std::move(forms)), binary(is_binary) {
    if (keywords.empty()) throw config_error("keyword_coverage: needs at least one keyword");
    for (auto& k : keywords) {
      if (k.empty()) throw config_error("keyword_coverage: a keyword has no forms");
      for (auto& f : k) {
        f = detail::lower(f);
        if (words_of(f).size() != 1 || words_of(f)[0] != f)
          throw config_error("keyword_coverage: '" + f + "' is not one word (letters, digits, apostrophes)");
      }
    }
  }

  double score_text(std::string_view text) const {
    const auto words = words_of(text);
    std::size_t at = 0, found = 0;
    for (const auto& forms : keywords) {
      auto hit = std::find_if(words.begin() + std::ptrdiff_t(at), words.end(), [&](const std::string& w) {
        return std::find(forms.begin(), forms.end(), w) != forms.end();
      });
      if (hit == words.end()) continue;  // missing: later keywords may still match after `at`
      ++found;
      at = std::size_t(hit - words.begin()) + 1;
    }
    const double coverage = double(found) / double(keywords.size());
    return binary ? (found == keywords.size() ? 1.0 : 0.0) : coverage;
  }
  void score(std::span<const sample_view> batch, std::span<double> scores) const {
    detail::check_batch(batch, scores, "keyword_coverage");
    for (std::size_t i = 0; i < batch.size(); ++i) scores[i] = score_text(batch[i].response_text);
  }
};

/// 1 when the response contains none of the words (whole words, any case), else 0.
struct avoid_words {
  std::set<std::string> words;

  avoid_words() = default;
  explicit avoid_words(const std::vector<std::string>& list) {
    if (list.empty()) throw config_error("avoid_words: needs at least one word");
    for (const auto& w : list) words.insert(detail::lower(w));
  }
  double score_text(std::string_view text) const {
    for (const auto& w : words_of(text))
      if (words.count(w)) return 0.0;
    return 1.0;
  }
  void score(std::span<const sample_view> batch, std::span<double> scores) const {
    detail::check_batch(batch, scores, "avoid_words");
    for (std::size_t i = 0; i < batch.size(); ++i) scores[i] = score_text(batch[i].response_text);
  }
};

/// max(0, 1 - |length - target| / target), length in response tokens.
struct target_length {
  std::size_t target = 64;
  explicit target_length(std::size_t n = 64) : target(n) {
    if (n == 0) throw config_error("target_length: the target must be >= 1 token");
  }
  void score(std::span<const sample_view> batch, std::span<double> scores) const {
    detail::check_batch(batch, scores, "target_length");
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const double len = double(batch[i].response.size()), t = double(target);
      scores[i] = std::max(0.0, 1.0 - std::abs(len - t) / t);
    }
  }
};

/// distinct-n of a text: unique word n-grams / all word n-grams (1 when it has none).
inline double distinct_n(std::string_view text, std::size_t n) {
  const auto words = words_of(text);
  if (words.size() < n) return 1.0;
  std::set<std::vector<std::string>> unique;
  for (std::size_t i = 0; i + n <= words.size(); ++i)
    unique.insert(std::vector<std::string>(words.begin() + std::ptrdiff_t(i), words.begin() + std::ptrdiff_t(i + n)));
  return double(unique.size()) / double(words.size() - n + 1);
}

/// Repetition as a reward: the response's distinct-n.
struct distinct_reward {
  std::size_t n = 2;
  explicit distinct_reward(std::size_t order = 2) : n(order) {
    if (order == 0) throw config_error("distinct_reward: n must be >= 1");
  }
  void score(std::span<const sample_view> batch, std::span<double> scores) const {
    detail::check_batch(batch, scores, "distinct_reward");
    for (std::size_t i = 0; i < batch.size(); ++i) scores[i] = distinct_n(batch[i].response_text, n);
  }
};

/// sum_i w_i * r_i over compile-time rewards.
template <Reward... R>
struct weighted_sum {
  std::tuple<std::pair<double, R>...> terms;
  explicit weighted_sum(std::pair<double, R>... t) : terms(std::move(t)...) {}
  void score(std::span<const sample_view> batch, std::span<double> scores) {
    std::fill(scores.begin(), scores.end(), 0.0);
    std::vector<double> part(batch.size());
    std::apply([&](auto&... term) { (add(term.first, term.second, batch, part, scores), ...); }, terms);
  }

 private:
  template <class One>
  static void add(double w, One& r, std::span<const sample_view> batch, std::vector<double>& part,
                  std::span<double> out) {
    r.score(batch, part);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] += w * part[i];
  }
};

/// prod_i r_i over compile-time rewards (all must hold at once).
template <Reward... R>
struct product_reward {
  std::tuple<R...> terms;
  explicit product_reward(R... r) : terms(std::move(r)...) {}
  void score(std::span<const sample_view> batch, std::span<double> scores) {
    std::fill(scores.begin(), scores.end(), 1.0);
    std::vector<double> part(batch.size());
    std::apply([&](auto&... r) { ((r.score(batch, part), multiply(part, scores)), ...); }, terms);
  }

 private:
  static void multiply(const std::vector<double>& part, std::span<double> out) {
    for (std::size_t i = 0; i < out.size(); ++i) out[i] *= part[i];
  }
};

/// A reward clipped into [lo, hi].
template <Reward R>
struct clipped_reward {
  R inner;
  double lo = -1, hi = 1;
  void score(std::span<const sample_view> batch, std::span<double> scores) {
    inner.score(batch, scores);
    for (double& s : scores) s = std::clamp(s, lo, hi);
  }
};

/// A reward normalised by running statistics of everything it has scored: (r - mean) / std
/// (Welford; the batch's own scores are included before normalising).
template <Reward R>
struct normalised_reward {
  R inner;
  double count = 0, mean = 0, m2 = 0;
  void score(std::span<const sample_view> batch, std::span<double> scores) {
    inner.score(batch, scores);
    for (double s : scores) {
      count += 1;
      const double delta = s - mean;
      mean += delta / count;
      m2 += delta * (s - mean);
    }
    const double sd = count > 1 ? std::sqrt(m2 / count) : 0.0;
    for (double& s : scores) s = (s - mean) / (sd > 1e-8 ? sd : 1.0);
  }
};

}  // namespace ipa
