// SPDX-License-Identifier: MIT
// Reader for llama2.c checkpoints (karpathy/llama2.c, legacy "version 0" export): a 7 x int32
// header, then float32 weights; a negative vocab_size means a separate classifier follows. Read
// into ipa's f32 layout (load_llama2c) or mapped and used in place (load_llama2c_compact).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ipa/core/compact_matrix.hpp"
#include "ipa/core/error.hpp"
#include "ipa/io/binary_reader.hpp"
#include "ipa/io/mapped_file.hpp"
#include "ipa/model/llama_weights.hpp"

namespace ipa {

namespace detail {

// RoPE tables that llama2.c's legacy export writes between the weights and a separate classifier
// (freq_cis_real/imag: seq_len x head_size/2 each); ipa computes its own.
inline std::uint64_t llama2c_rope_floats(const llama_config& c) {
  return std::uint64_t(c.seq_len) * std::uint64_t(c.head_size());
}

// The model a llama2.c header describes, checked for sense and against the file's size.
inline llama_config llama2c_config(const std::string& path, const std::int32_t (&h)[7], std::uint64_t file_size) {
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
  // Weights, then the RoPE tables, then the classifier when it is not shared.
  const std::uint64_t expected = sizeof h + 4 * (c.parameter_count() + llama2c_rope_floats(c));
  if (file_size != expected)
    throw io_error(path + ": " + (file_size < expected ? "truncated" : "oversized") +
                   ": a llama2.c checkpoint with dim=" + std::to_string(c.dim) +
                   ", n_layers=" + std::to_string(c.n_layers) + ", vocab_size=" + std::to_string(c.vocab_size) +
                   (c.shared_classifier ? " (shared classifier)" : " (separate classifier)") + " has " +
                   std::to_string(expected) + " bytes, this file has " + std::to_string(file_size));
  return c;
}

}  // namespace detail

/// Loads a llama2.c legacy checkpoint. Every size is checked against the file before anything
/// is allocated; a truncated, oversized or non-finite file throws io_error saying what it found.
inline llama_weights load_llama2c(const std::string& path) {
  binary_reader in(path);
  std::int32_t h[7];
  in.read_bytes(h, sizeof h, "the 7 x int32 llama2.c header");
  const llama_config c = detail::llama2c_config(path, h, in.size());
  const std::uint64_t rope_floats = detail::llama2c_rope_floats(c);

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

/// The same checkpoint mapped read-only and used where it lies: F32 matrices in place, no copy
/// (their values checked when used, see llama_compact_weights), so start-up is the mapping.
/// Decoding one or a few rows runs as fast as from load_llama2c's repacked copy; batches are
/// faster repacked (bench/RESULTS.md, session 17).
inline llama_compact_weights load_llama2c_compact(const std::string& path) {
  auto file = std::make_shared<const mapped_file>(path);
  const std::string_view bytes = file->bytes();
  std::int32_t h[7];
  if (bytes.size() < sizeof h)
    throw io_error(path + ": truncated: the 7 x int32 llama2.c header needs 28 bytes, the file has " +
                   std::to_string(bytes.size()));
  std::memcpy(h, bytes.data(), sizeof h);
  const llama_config c = detail::llama2c_config(path, h, bytes.size());
  llama_compact_weights w;
  w.config = c;
  const unsigned char* at = reinterpret_cast<const unsigned char*>(bytes.data()) + sizeof h;
  // the next rows x cols floats (sizes were checked against the file above)
  auto next = [&](std::size_t rows, std::size_t cols) {
    const compact_matrix m{weight_type::f32, at, rows, cols};
    at += 4 * rows * cols;
    return m;
  };
  auto take = [&](std::size_t rows, std::size_t cols, const std::string& name) {
    const compact_matrix m = next(rows, cols);
    w.sources.push_back({path, name, m});
    return m;
  };
  auto floats = [&](std::vector<float>& into, std::size_t n, const char* name) {
    const compact_matrix m = next(1, n);
    detail::require_finite(m, path, name);
    into.resize(n);
    std::memcpy(into.data(), m.data, 4 * n);
  };
  const std::size_t d = c.dim, kv = c.kv_dim(), hd = c.hidden_dim, L = c.n_layers, V = c.vocab_size;
  w.layers.resize(L);
  w.tok_embeddings = take(V, d, "tok_embeddings");
  floats(w.attention_norm, L * d, "rms_att_weight");
  // llama2.c stores each kind of matrix for all layers in turn: "wq of layer 3" names one
  auto each_layer = [&](compact_matrix llama_compact_weights::layer::*m, std::size_t rows, std::size_t cols,
                        const std::string& name) {
    for (std::size_t l = 0; l < L; ++l) w.layers[l].*m = take(rows, cols, name + " of layer " + std::to_string(l));
  };
  using layer = llama_compact_weights::layer;
  each_layer(&layer::wq, d, d, "wq");
  each_layer(&layer::wk, kv, d, "wk");
  each_layer(&layer::wv, kv, d, "wv");
  each_layer(&layer::wo, d, d, "wo");
  floats(w.ffn_norm, L * d, "rms_ffn_weight");
  each_layer(&layer::w1, hd, d, "w1");
  each_layer(&layer::w2, d, hd, "w2");
  each_layer(&layer::w3, hd, d, "w3");
  floats(w.norm, d, "rms_final_weight");
  at += 4 * detail::llama2c_rope_floats(c);
  if (!c.shared_classifier) w.output = take(V, d, "wcls");
  w.storage = {std::move(file)};
  return w;
}

}  // namespace ipa
