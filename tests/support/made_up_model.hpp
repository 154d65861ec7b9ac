// SPDX-License-Identifier: MIT
// Test and bench support: the 110M shape the benches measure beside llama.cpp (llama2.c's
// stories110M hyper-parameters, random weights) and a made-up vocabulary of 32000 pieces
// (llama.cpp will not load a GGUF without one).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <ipa/core/error.hpp>
#include <ipa/model/llama_weights.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>

namespace ipa_bench {

/// dim 768, hidden 2048, 12 layers, 12 heads, vocab 32000, context 1024.
inline ipa::llama_config shape_110m() {
  ipa::llama_config c;
  c.dim = 768, c.hidden_dim = 2048, c.n_layers = 12, c.n_heads = 12, c.n_kv_heads = 12, c.vocab_size = 32000;
  c.seq_len = 1024;
  return c;
}

/// <unk>, <s>, </s>, the 256 byte tokens, then " t259" ... " t31999".
inline std::vector<std::string> made_up_pieces() {
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    pieces.push_back(hex);
  }
  while (pieces.size() < 32000) pieces.push_back(" t" + std::to_string(pieces.size()));
  return pieces;
}

/// The made-up pieces as a tokenizer, all scored 0.
inline ipa::llama2c_tokenizer made_up_tokenizer() {
  const auto pieces = made_up_pieces();
  return ipa::llama2c_tokenizer::from_pieces(pieces, std::vector<float>(pieces.size(), 0.0f), "bench");
}

/// Writes weights as a llama2.c legacy checkpoint (what run.c reads: the 7 x int32 header, the
/// weights in llama2.c's order, zero RoPE tables, a separate classifier after them) and the
/// made-up pieces as its tokenizer.bin. For benches beside run.c; ipa itself never writes .bin.
inline void write_llama2c(const std::string& path, const std::string& tokenizer_path, const ipa::llama_weights& w) {
  const ipa::llama_config& c = w.config();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw ipa::io_error(path + ": cannot write");
  const std::int32_t header[7] = {c.dim,     c.hidden_dim, c.n_layers,
                                  c.n_heads, c.n_kv_heads, c.shared_classifier ? c.vocab_size : -c.vocab_size,
                                  c.seq_len};
  const auto data = w.data();
  const std::size_t classifier = c.shared_classifier ? 0 : std::size_t(c.vocab_size) * std::size_t(c.dim);
  const std::vector<float> rope(std::size_t(c.seq_len) * std::size_t(c.head_size()));
  bool ok = std::fwrite(header, sizeof header, 1, f) == 1 &&
            std::fwrite(data.data(), 4, data.size() - classifier, f) == data.size() - classifier &&
            std::fwrite(rope.data(), 4, rope.size(), f) == rope.size() &&
            std::fwrite(data.data() + data.size() - classifier, 4, classifier, f) == classifier;
  ok = std::fclose(f) == 0 && ok;
  if (!ok) throw ipa::io_error(path + ": short write");
  const auto pieces = made_up_pieces();
  std::FILE* t = std::fopen(tokenizer_path.c_str(), "wb");
  if (!t) throw ipa::io_error(tokenizer_path + ": cannot write");
  const std::int32_t longest = 8;
  ok = std::fwrite(&longest, 4, 1, t) == 1;
  for (const std::string& p : pieces) {
    const float score = 0;
    const auto n = std::int32_t(p.size());
    ok = ok && std::fwrite(&score, 4, 1, t) == 1 && std::fwrite(&n, 4, 1, t) == 1 &&
         std::fwrite(p.data(), 1, p.size(), t) == p.size();
  }
  ok = std::fclose(t) == 0 && ok;
  if (!ok) throw ipa::io_error(tokenizer_path + ": short write");
}

}  // namespace ipa_bench
