// SPDX-License-Identifier: MIT
// Where the tests find ../shared/models and ../shared/golden, and what they do when it is absent.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>

#include <doctest/doctest.h>

namespace ipa_test {

inline std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
inline std::string model_dir() { return env_or("IPA_MODEL_DIR", IPA_TEST_MODEL_DIR); }
inline std::string golden_dir() { return env_or("IPA_GOLDEN_DIR", IPA_TEST_GOLDEN_DIR); }
inline std::string model_path() { return model_dir() + "/stories260K.bin"; }
inline std::string tokenizer_path() { return model_dir() + "/tok512.bin"; }
inline bool under_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

/// True when `path` exists. Otherwise says so in the output; under CI=true that is a failure.
inline bool have(const std::string& path) {
  if (std::filesystem::exists(path)) return true;
  if (under_ci()) FAIL("missing test data " << path << " (set IPA_MODEL_DIR / IPA_GOLDEN_DIR)");
  MESSAGE("SKIPPED: missing test data " << path << " (set IPA_MODEL_DIR / IPA_GOLDEN_DIR)");
  return false;
}

}  // namespace ipa_test
