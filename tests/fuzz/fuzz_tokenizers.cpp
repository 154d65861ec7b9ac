// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes as text for both tokenizers (GPT-2 BPE with the original OpenAI
// files, and tok512.bin): GPT-2 must round-trip every byte string exactly; the llama2.c
// tokenizer must encode without error or crash. Paths come from IPA_GOLDEN_DIR / IPA_MODEL_DIR.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <ipa/text/gpt2_tokenizer.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>

namespace {
std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const ipa::gpt2_tokenizer gpt2 =
      ipa::gpt2_tokenizer::load(env_or("IPA_GOLDEN_DIR", IPA_FUZZ_GOLDEN_DIR) + "/gpt2_bpe");
  static const ipa::llama2c_tokenizer llama =
      ipa::llama2c_tokenizer::load(env_or("IPA_MODEL_DIR", IPA_FUZZ_MODEL_DIR) + "/tok512.bin");
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (gpt2.decode(gpt2.encode(text)) != text) std::abort();  // a finding: not lossless
  (void)gpt2.encode_with_special(text);
  const auto ids = llama.encode(text);
  for (auto id : ids)
    if (id < 0 || std::size_t(id) >= llama.vocab_size()) std::abort();
  (void)llama.decode(ids);
  return 0;
}
