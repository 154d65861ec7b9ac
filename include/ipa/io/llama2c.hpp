// SPDX-License-Identifier: MIT
// Reader for llama2.c checkpoints (karpathy/llama2.c, legacy "version 0" export): a 7 x int32
// header, then float32 weights; a negative vocab_size means a separate classifier follows.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "ipa/core/error.hpp"
#include "ipa/io/binary_reader.hpp"
#include "ipa/model/llama_weights.hpp"

namespace ipa {

/// Loads a llama2.c legacy checkpoint. Every size is checked against the file before anything
/// is allocated; a truncated, oversized or non-finite file throws io_error saying what it found.
inline llama_weights load_llama2c(const std::string& path) {
  binary_reader in(path);
  std::int32_t h[7];
  in.read_bytes(h, sizeof h, "the 7 x int32 llama2.c header");
  if (static_cast<std::uint32_t>(h[0]) == 0x616b3432u)  // "ak42": llama2.c's version-1/2 export
    throw io_error(path +
                   ": llama2.c version-1/2 exports (magic \"ak42\") are not supported; "
                   "export with llama2.c's legacy format (export.py --version 0)");
  llama_config c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.shared_classifier = h[5] > 0;
  c.vocab_size = h[5] == INT32_MIN ? 0 : std::abs(h[5]);
  c.seq_len = h[6];
  try {
    c.validate();
  } catch (const config_error& e) {
    throw io_error(path + ": not a llama2.c checkpoint, its header is impossible: " + e.what() + " (header: dim=" +
                   std::to_string(h[0]) + " hidden_dim=" + std::to_string(h[1]) + " n_layers=" + std::to_string(h[2]) +
                   " n_heads=" + std::to_string(h[3]) + " n_kv_heads=" + std::to_string(h[4]) +
                   " vocab_size=" + std::to_string(h[5]) + " seq_len=" + std::to_string(h[6]) + ")");
  }
  // Weights, then the unused RoPE tables freq_cis_real/imag (seq_len x head_size/2 each), then
  // the classifier when it is not shared.
  const std::uint64_t rope_floats = std::uint64_t(c.seq_len) * std::uint64_t(c.head_size());
  const std::uint64_t expected = sizeof h + 4 * (c.parameter_count() + rope_floats);
  if (in.size() != expected)
    throw io_error(path + ": " + (in.size() < expected ? "truncated" : "oversized") +
                   ": a llama2.c checkpoint with dim=" + std::to_string(c.dim) +
                   ", n_layers=" + std::to_string(c.n_layers) + ", vocab_size=" + std::to_string(c.vocab_size) +
                   (c.shared_classifier ? " (shared classifier)" : " (separate classifier)") + " has " +
                   std::to_string(expected) + " bytes, this file has " + std::to_string(in.size()));

  llama_weights w(c);
  auto data = w.data();
  const std::size_t before_rope = data.size() - (c.shared_classifier ? 0 : std::size_t(c.vocab_size) * c.dim);
  in.read_bytes(data.data(), 4 * std::uint64_t(before_rope), "the weights");
  in.skip(4 * rope_floats, "freq_cis_real/imag");  // ipa computes its own RoPE table
  in.read_bytes(data.data() + before_rope, 4 * std::uint64_t(data.size() - before_rope), "the classifier");

  for (const tensor_slot& s : w.slots()) {
    auto t = w.tensor(s.name);
    for (std::size_t i = 0; i < t.size(); ++i)
      if (!std::isfinite(t[i]))
        throw io_error(path + ": corrupt weights: " + s.name + "[" + std::to_string(i) + "] is " +
                       std::to_string(t[i]) + "; a checkpoint holds finite floats only");
  }
  return w;
}

}  // namespace ipa
