// SPDX-License-Identifier: MIT
// Test and bench support: the 110M shape the benches measure beside llama.cpp (llama2.c's
// stories110M hyper-parameters, random weights) and a made-up vocabulary of 32000 pieces
// (llama.cpp will not load a GGUF without one).
#pragma once
#include <cstdio>
#include <string>
#include <vector>

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

/// <unk>, <s>, </s>, the 256 byte tokens, then " t259" ... " t31999", all scored 0.
inline ipa::llama2c_tokenizer made_up_tokenizer() {
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    pieces.push_back(hex);
  }
  while (pieces.size() < 32000) pieces.push_back(" t" + std::to_string(pieces.size()));
  return ipa::llama2c_tokenizer::from_pieces(pieces, std::vector<float>(pieces.size(), 0.0f), "bench");
}

}  // namespace ipa_bench
