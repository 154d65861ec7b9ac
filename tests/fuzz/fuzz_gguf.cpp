// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes as a GGUF file, then as a llama (widened, or read in place and run
// for one token) or gpt2 model and its tokenizer.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <ipa/io/gguf.hpp>
#include <ipa/io/gguf_gpt2.hpp>
#include <ipa/model/llama.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const ipa::gguf_file f(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    try {
      (void)ipa::load_gguf_tokenizer(f).encode("Once upon a time");
    } catch (const ipa::error&) {
    }
    try {
      (void)ipa::load_gguf_gpt2_tokenizer(f).encode("Once upon a time");
    } catch (const ipa::error&) {
    }
    if (f.tensors().size() < 64) {  // bounded: a valid header may ask for a big model
      try {
        (void)ipa::load_gguf_llama(f);
      } catch (const ipa::error&) {
      }
      try {  // read in place (compact): a small model decodes one token from its views
        ipa::llama_compact_weights w = ipa::load_gguf_llama_compact(f);
        if (w.config.parameter_count() < (1u << 20)) {
          const ipa::llama_model m(std::move(w));
          auto s = m.new_state(1, 4);
          std::vector<float> logits(m.vocab_size());
          m.prefill(s, std::vector<std::vector<ipa::token_id>>{{0}}, logits);
        }
      } catch (const ipa::error&) {
      }
      (void)ipa::load_gguf_gpt2(f);
    }  // bounded: a valid header may ask for a big model
  } catch (const ipa::error&) {
  }
  return 0;
}
