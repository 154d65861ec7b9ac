// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes as a GGUF file, then as a llama model and its tokenizer.
#include <cstddef>
#include <cstdint>
#include <string>

#include <ipa/io/gguf.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const ipa::gguf_file f(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    try {
      (void)ipa::load_gguf_tokenizer(f).encode("Once upon a time");
    } catch (const ipa::error&) {
    }
    if (f.tensors().size() < 64) (void)ipa::load_gguf_llama(f);  // bounded: a valid header may ask for a big model
  } catch (const ipa::error&) {
  }
  return 0;
}
