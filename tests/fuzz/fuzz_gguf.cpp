// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes as a GGUF file, then as a llama or gpt2 model and its tokenizer.
#include <cstddef>
#include <cstdint>
#include <string>

#include <ipa/io/gguf.hpp>
#include <ipa/io/gguf_gpt2.hpp>

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
      (void)ipa::load_gguf_gpt2(f);
    }  // bounded: a valid header may ask for a big model
  } catch (const ipa::error&) {
  }
  return 0;
}
