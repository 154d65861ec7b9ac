// SPDX-License-Identifier: MIT
// libFuzzer target: any text as a --reward spec. Parsing either throws an ipa::error or yields a
// reward whose built-in terms score a fixed batch to finite numbers; a cmd: term is parsed (its
// command is never run here).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <variant>
#include <vector>

#include <ipa/core/error.hpp>
#include <ipa/reward/spec.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    ipa::spec_reward r = ipa::spec_reward::parse(text);
    for (const auto& t : r.terms())
      if (std::holds_alternative<ipa::process_reward>(t.reward) || !std::isfinite(t.weight)) return 0;
    const std::vector<std::string> texts = {"", "The dog was sad.", text};
    std::vector<ipa::sample_view> views;
    for (const auto& s : texts) views.push_back({{}, {}, "", s});
    std::vector<double> scores(views.size());
    r.score(views, scores);
    for (double s : scores)
      if (std::isnan(s)) std::abort();  // a finding: a NaN reward from finite weights
  } catch (const ipa::error&) {
  }
  return 0;
}
