// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes as a safetensors file. Must parse or throw ipa::error, never crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include <ipa/io/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const ipa::safetensors_file f(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const auto& [name, e] : f.tensors())
      if (e.dtype == "F32" || e.dtype == "F16" || e.dtype == "BF16" || e.dtype == "F64")
        (void)f.floats(name, e.elements());
  } catch (const ipa::error&) {
  }
  return 0;
}
