// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes as a safetensors file. Must parse or throw ipa::error, never crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include <ipa/core/compact_matrix.hpp>
#include <ipa/io/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const ipa::safetensors_file f(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const auto& [name, e] : f.tensors())
      if (e.dtype == "F32" || e.dtype == "F16" || e.dtype == "BF16" || e.dtype == "F64")
        (void)f.floats(name, e.elements());
    // every tensor read in place as a matrix (its own shape, rows x last dimension), each row
    // decoded: a view must stay inside the file whatever the header claimed
    for (const auto& [name, e] : f.tensors()) {
      if (e.shape.empty() || e.shape.size() > 2 || e.elements() == 0) continue;
      const std::uint64_t rows = e.shape.size() == 2 ? e.shape[0] : 1, cols = e.shape.back();
      const ipa::compact_matrix m = f.compact(name, rows, cols);
      float row[64];
      if (m.cols <= 64)
        for (std::size_t r = 0; r < m.rows; ++r) ipa::dequantize_row(m, r, row);
    }
  } catch (const ipa::error&) {
  }
  return 0;
}
