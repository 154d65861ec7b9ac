// SPDX-License-Identifier: MIT
// A reward chosen at run time from a text spec (the command line's --reward): a weighted sum of
// built-in terms. This is the one type-erased reward; library code composes rewards statically.
//
//   SPEC = TERM ('+' TERM)*        TERM = [WEIGHT '*'] NAME ':' ARGS
//   avoid:w1,w2,...        1 if the response has none of the words (whole words, any case)
//   keywords:k1,k2|k2s,... ordered keyword coverage; '|' separates accepted inflections
//   keywords-all:...       the binary variant (1 only when all are covered, in order)
//   length:N               max(0, 1 - |tokens - N| / N)
//   distinct:N             distinct-N of the response's words
//   cmd:COMMAND            an external process (reward/process.hpp); it takes the rest of the
//                          spec, so it must be the last term
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "ipa/core/error.hpp"
#include "ipa/reward/process.hpp"
#include "ipa/reward/reward.hpp"

namespace ipa {

/// A weighted sum of built-in rewards parsed from a spec string (see the file comment).
class spec_reward {
 public:
  using any_term = std::variant<keyword_coverage, avoid_words, target_length, distinct_reward, process_reward>;
  struct term {
    double weight = 1;
    std::string name;
    any_term reward;
  };

  /// `command_timeout_s` bounds each run of a cmd: term's process (see process_reward).
  static spec_reward parse(std::string_view spec, double command_timeout_s = 60) {
    spec_reward out;
    std::string_view rest = trim(spec);
    if (rest.empty()) throw config_error("reward spec is empty; e.g. 'avoid:sad,cry' or 'keywords:dog'");
    while (!rest.empty()) {
      std::string_view text = rest;
      // cmd: swallows the rest (a shell command may contain '+')
      const auto colon = rest.find(':');
      if (colon == std::string_view::npos) fail(spec, "a term needs NAME:ARGS, found '" + std::string(rest) + "'");
      std::string_view head = trim(rest.substr(0, colon));
      double weight = 1;
      if (const auto star = head.find('*'); star != std::string_view::npos) {
        weight = number(spec, trim(head.substr(0, star)));
        head = trim(head.substr(star + 1));
      }
      if (head == "cmd") {
        text = rest.substr(colon + 1);
        rest = {};
      } else {
        const auto plus = rest.find('+', colon);
        text = rest.substr(colon + 1, plus == std::string_view::npos ? std::string_view::npos : plus - colon - 1);
        rest = plus == std::string_view::npos ? std::string_view() : trim(rest.substr(plus + 1));
        if (plus != std::string_view::npos && rest.empty()) fail(spec, "a '+' with no term after it");
      }
      out.terms_.push_back({weight, std::string(head), make(spec, head, trim(text), command_timeout_s)});
    }
    return out;
  }

  const std::vector<term>& terms() const noexcept { return terms_; }

  void score(std::span<const sample_view> batch, std::span<double> scores) {
    detail::check_batch(batch, scores, "spec_reward");
    std::fill(scores.begin(), scores.end(), 0.0);
    std::vector<double> part(batch.size());
    for (term& t : terms_) {
      std::visit([&](auto& r) { r.score(batch, part); }, t.reward);
      for (std::size_t i = 0; i < part.size(); ++i) scores[i] += t.weight * part[i];
    }
  }

 private:
  [[noreturn]] static void fail(std::string_view spec, const std::string& why) {
    throw config_error("reward spec '" + std::string(spec) + "': " + why);
  }
  static std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  }
  static double number(std::string_view spec, std::string_view s) {
    try {
      std::size_t used = 0;
      const double v = std::stod(std::string(s), &used);
      if (used == s.size() && std::isfinite(v)) return v;
    } catch (const std::exception&) {
    }
    fail(spec, "'" + std::string(s) + "' is not a number");
  }
  static std::vector<std::string> split(std::string_view s, char sep) {
    std::vector<std::string> out;
    std::size_t at = 0;
    for (;;) {
      const auto next = s.find(sep, at);
      const auto piece = trim(s.substr(at, next == std::string_view::npos ? std::string_view::npos : next - at));
      if (!piece.empty()) out.emplace_back(piece);
      if (next == std::string_view::npos) return out;
      at = next + 1;
    }
  }
  static any_term make(std::string_view spec, std::string_view name, std::string_view args, double command_timeout_s) {
    if (args.empty()) fail(spec, "'" + std::string(name) + "' needs arguments after ':'");
    try {
      if (name == "avoid") return avoid_words(split(args, ','));
      if (name == "keywords" || name == "keywords-all") {
        std::vector<std::vector<std::string>> forms;
        for (const auto& k : split(args, ',')) forms.push_back(split(k, '|'));
        return keyword_coverage(std::move(forms), name == "keywords-all");
      }
      if (name == "length" || name == "distinct") {
        const double n = number(spec, args);
        if (n < 1 || n != std::floor(n) || n > 1e6) fail(spec, std::string(name) + " needs a whole number >= 1");
        if (name == "length") return target_length(std::size_t(n));
        return distinct_reward(std::size_t(n));
      }
      if (name == "cmd") return process_reward(std::string(args), command_timeout_s);
    } catch (const config_error& e) {
      fail(spec, e.what());
    }
    fail(spec,
         "unknown reward '" + std::string(name) + "'; expected avoid, keywords, keywords-all, length, distinct or cmd");
  }

  std::vector<term> terms_;
};

}  // namespace ipa
