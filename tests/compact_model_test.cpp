// SPDX-License-Identifier: MIT
// A Llama model on compact weights of every quantized kind (a Q4_K_M-like layer, a Q8_0/Q4_0
// layer) gives each row the same bits alone and inside a batch: a 20-token prompt fed at once
// (16 rows a group on AVX-512 VNNI, then four) against one token at a time, and one step of 17
// rows against each row in a state of its own. Built in ipa_tests (the AVX2 row tiles) and in
// ipa_native_tests (-march=native: the group tiles where the CPU has them).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <ipa/core/compact_matrix.hpp>
#include <ipa/core/rng.hpp>
#include <ipa/io/gguf.hpp>
#include <ipa/model/llama.hpp>

namespace {
// rows x cols random blocks of `type`: random quants, scales that keep the weights small.
ipa::compact_matrix random_compact(ipa::weight_type type, std::size_t rows, std::size_t cols, ipa::xoshiro256& rng,
                                   std::vector<std::shared_ptr<const void>>& storage) {
  const ipa::block_layout b = ipa::layout_of(type);
  const std::size_t row_bytes = ipa::compact_matrix::row_bytes(type, cols);
  auto bytes = std::make_shared<std::vector<unsigned char>>(rows * row_bytes);
  for (auto& v : *bytes) v = static_cast<unsigned char>(rng() & 0xFF);
  auto put_half = [](unsigned char* p, double v) {
    const std::uint16_t h = ipa::to_f16(float(v));
    std::memcpy(p, &h, 2);
  };
  for (std::size_t i = 0; i < bytes->size() / b.bytes; ++i) {
    unsigned char* block = bytes->data() + i * b.bytes;
    const double d = 0.002 + 0.004 * ipa::uniform01(rng);
    switch (type) {
      case ipa::weight_type::q8_0:
      case ipa::weight_type::q4_0: put_half(block, type == ipa::weight_type::q8_0 ? d / 16 : d); break;
      case ipa::weight_type::q4_k:
      case ipa::weight_type::q5_k:
        put_half(block, type == ipa::weight_type::q5_k ? d / 40 : d / 20);
        put_half(block + 2, d / 40);
        break;
      case ipa::weight_type::q6_k: put_half(block + 208, d / 100); break;
      case ipa::weight_type::q3_k: put_half(block + 108, d / 3); break;
      default: break;
    }
  }
  storage.push_back(bytes);
  return {type, bytes->data(), rows, cols};
}

// A Q4_K_M-like layer and a Q8_0/Q4_0 layer, each matrix named in `sources` as a file's would be.
ipa::llama_compact_weights quantized_weights() {
  ipa::llama_compact_weights w;
  ipa::llama_config& c = w.config;
  c.dim = 256, c.hidden_dim = 768, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 512;
  c.seq_len = 64, c.shared_classifier = false;
  const auto d = std::size_t(c.dim), hd = std::size_t(c.hidden_dim), kv = std::size_t(c.kv_dim());
  ipa::xoshiro256 rng(21);
  using ipa::weight_type;
  w.tok_embeddings = random_compact(weight_type::q8_0, 512, d, rng, w.storage);
  w.output = random_compact(weight_type::q6_k, 512, d, rng, w.storage);
  for (const bool k_quants : {true, false}) {
    const weight_type main = k_quants ? weight_type::q4_k : weight_type::q8_0;
    ipa::llama_compact_weights::layer l;
    l.wq = random_compact(main, d, d, rng, w.storage);
    l.wk = random_compact(k_quants ? weight_type::q5_k : main, kv, d, rng, w.storage);  // Q5_K_M's
    l.wv = random_compact(k_quants ? weight_type::q6_k : weight_type::q4_0, kv, d, rng, w.storage);
    l.wo = random_compact(main, d, d, rng, w.storage);
    l.w1 = random_compact(main, hd, d, rng, w.storage);
    l.w2 = random_compact(k_quants ? weight_type::q6_k : weight_type::q4_0, d, hd, rng, w.storage);
    l.w3 = random_compact(k_quants ? weight_type::q3_k : main, hd, d, rng, w.storage);  // Q3_K_M's
    w.layers.push_back(l);
  }
  w.attention_norm.assign(2 * d, 1.0f);
  w.ffn_norm.assign(2 * d, 1.0f);
  w.norm.assign(d, 1.0f);
  auto name = [&](const ipa::compact_matrix& m, std::string n) { w.sources.push_back({"test", std::move(n), m}); };
  name(w.tok_embeddings, "token_embd");
  name(w.output, "output");
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    const auto& in = w.layers[l];
    const std::string b = "blk." + std::to_string(l) + ".";
    using named = std::pair<const ipa::compact_matrix*, const char*>;
    for (const auto& [m, n] : std::initializer_list<named>{{&in.wq, "attn_q"},
                                                           {&in.wk, "attn_k"},
                                                           {&in.wv, "attn_v"},
                                                           {&in.wo, "attn_output"},
                                                           {&in.w1, "ffn_gate"},
                                                           {&in.w2, "ffn_down"},
                                                           {&in.w3, "ffn_up"}})
      name(*m, b + n);
  }
  return w;
}
ipa::llama_model quantized_model() { return ipa::llama_model(quantized_weights()); }
}  // namespace

namespace {
void same_bits_alone_and_batched(ipa::kv_cache_type kv) {
  ipa::llama_model m = quantized_model();
  m.set_kv_cache_type(kv);
  const std::size_t V = m.vocab_size();
  std::vector<ipa::token_id> prompt(20);
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = ipa::token_id((37 * i + 11) % 512);

  // the prompt at once (every product sees 20 rows) against one token at a time
  std::vector<float> at_once(V), one_by_one(V);
  auto s = m.new_state(1, 32);
  m.prefill(s, std::vector<std::vector<ipa::token_id>>{prompt}, at_once);
  auto t = m.new_state(1, 32);
  const int row0[] = {0};
  for (const ipa::token_id token : prompt) m.step(t, row0, std::span(&token, 1), one_by_one);
  bool finite = true;
  for (float v : at_once) finite = finite && std::isfinite(v);
  CHECK(finite);
  CHECK(at_once == one_by_one);

  // one step of 17 rows (the classifier too sees a group) against each row in its own state
  constexpr int B = 17;
  auto batch = m.new_state(B, 8);
  std::vector<std::vector<ipa::token_id>> prompts;
  for (int r = 0; r < B; ++r) prompts.push_back({ipa::token_id(r + 1), ipa::token_id(3 * r + 5)});
  std::vector<float> logits(B * V);
  m.prefill(batch, prompts, logits);
  std::vector<int> rows(B);
  std::vector<ipa::token_id> next(B);
  for (int r = 0; r < B; ++r) rows[std::size_t(r)] = r, next[std::size_t(r)] = ipa::token_id(100 + r);
  m.step(batch, rows, next, logits);
  for (int r = 0; r < B; ++r) {
    CAPTURE(r);
    auto alone = m.new_state(1, 8);
    std::vector<float> own(V);
    m.prefill(alone, std::vector<std::vector<ipa::token_id>>{prompts[std::size_t(r)]}, own);
    m.step(alone, row0, std::span(&next[std::size_t(r)], 1), own);
    CHECK(std::equal(own.begin(), own.end(), logits.begin() + std::ptrdiff_t(r * V)));
  }
}
}  // namespace

TEST_CASE("a compact Q4_K/Q6_K/Q8_0/Q4_0 model gives a row the same bits alone and in a batch of 16 or more") {
  SUBCASE("f32 KV cache") { same_bits_alone_and_batched(ipa::kv_cache_type::f32); }
  SUBCASE("f16 KV cache") { same_bits_alone_and_batched(ipa::kv_cache_type::f16); }
}

// The loaders leave the values of a file's matrices to the model (llama_compact_weights): a NaN
// or Inf scale in any matrix of any quantized type reaches the logits of the first step (through
// attention, the SwiGLU and the int8 inputs, whose scales carry it), which then names the matrix.
TEST_CASE("a non-finite scale anywhere in a compact model: the first step names its matrix") {
  ipa::llama_compact_weights w = quantized_weights();
  const std::vector<ipa::token_id> prompt = {5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37};
  const std::uint16_t nan_half = 0x7e00, inf_half = 0x7c00;
  for (const ipa::llama_compact_weights::source& source : w.sources) {
    const ipa::compact_matrix& m = source.matrix;
    const ipa::block_layout b = ipa::layout_of(m.type);
    // a block of the row of token 9 (the embeddings: a token of the prompt), or of a middle row
    const std::size_t row = source.name == "token_embd" ? 9 : m.rows / 2, block = m.cols / b.elements / 2;
    // the scale that block_is_finite reads: d first (Q4_K, Q5_K: d, then dmin), Q6_K's d at byte
    // 208, Q3_K's at 108
    const std::size_t scale_at = m.type == ipa::weight_type::q6_k ? 208 : m.type == ipa::weight_type::q3_k ? 108 : 0;
    auto* at = const_cast<unsigned char*>(m.row(row)) + block * b.bytes + scale_at;  // our own bytes
    std::vector<std::size_t> offsets = {0};
    if (m.type == ipa::weight_type::q4_k || m.type == ipa::weight_type::q5_k) offsets.push_back(2);  // dmin
    for (const std::size_t offset : offsets)
      for (const std::uint16_t bad : {nan_half, inf_half}) {
        CAPTURE(source.name);
        CAPTURE(offset);
        CAPTURE(bad);
        std::uint16_t kept;
        std::memcpy(&kept, at + offset, 2);
        std::memcpy(at + offset, &bad, 2);
        const ipa::llama_model model(w);
        for (const std::size_t n : {prompt.size(), std::size_t(1)}) {  // groups of 16 rows and one row
          auto s = model.new_state(1, 32);
          std::vector<float> logits(model.vocab_size());
          const std::vector<std::vector<ipa::token_id>> p = {n == 1 ? std::vector<ipa::token_id>{9} : prompt};
          CHECK_THROWS_WITH_AS(
              model.prefill(s, p, logits),
              doctest::Contains(("test: tensor '" + source.name + "' holds a non-finite value").c_str()),
              ipa::io_error);
        }
        std::memcpy(at + offset, &kept, 2);
      }
  }
  // finite weights whose activations overflow: no matrix to name, and the error says so
  for (auto* norm : {&w.attention_norm, &w.ffn_norm, &w.norm})  // an RMS-normed row's largest |x| exceeds 1
    norm->assign(norm->size(), std::numeric_limits<float>::max());
  const ipa::llama_model overflowing(w);
  auto s = overflowing.new_state(1, 4);
  std::vector<float> logits(overflowing.vocab_size());
  CHECK_THROWS_WITH_AS(overflowing.prefill(s, std::vector<std::vector<ipa::token_id>>{{1}}, logits),
                       doctest::Contains("although every weight is finite: the activations overflowed"), ipa::error);
}

// AVX-512 VNNI builds interleave a model's Q8_0 and Q4_0 matrices when it loads and hand the
// mapped file's pages of them back: what the mapping shows afterwards is still the file (the pages
// read again from it), bytes held in memory are never handed back (that would zero them), and the
// two models give the same logits.
TEST_CASE("a Q8_0 GGUF read from its mapping: the file's bytes and the logits of the same bytes held in memory") {
  ipa::llama_config c;
  c.dim = 64, c.hidden_dim = 128, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 512;
  c.seq_len = 32, c.shared_classifier = true;
  const auto path =
      std::filesystem::temp_directory_path() / ("ipa_mapped_q8_0_" + std::to_string(::getpid()) + ".gguf");
  ipa::save_gguf_llama(path.string(), ipa::llama_weights::random(c, 17), nullptr, ipa::weight_type::q8_0);
  const ipa::gguf_file mapped = ipa::gguf_file::load(path.string());
  std::ifstream file(path, std::ios::binary);
  const ipa::gguf_file in_memory(std::string(std::istreambuf_iterator<char>(file), {}), path.string());
  std::filesystem::remove(path);  // (the mapping keeps the file)
  CHECK(mapped.is_mapped());
  CHECK(!in_memory.is_mapped());
  const ipa::llama_compact_weights from_mapping = ipa::load_gguf_llama_compact(mapped),
                                   from_memory = ipa::load_gguf_llama_compact(in_memory);
  CHECK(from_mapping.storage_is_mapped);
  CHECK(!from_memory.storage_is_mapped);
  const ipa::llama_model a(from_mapping), b(from_memory);
  REQUIRE(from_mapping.sources.size() == from_memory.sources.size());
  for (std::size_t i = 0; i < from_mapping.sources.size(); ++i) {
    const ipa::compact_matrix &m = from_mapping.sources[i].matrix, &n = from_memory.sources[i].matrix;
    CAPTURE(from_mapping.sources[i].name);
    CHECK(m.type == ipa::weight_type::q8_0);
    CHECK(std::memcmp(m.data, n.data, m.bytes()) == 0);
  }
  const std::vector<std::vector<ipa::token_id>> prompts = {{1, 5, 9, 200, 300, 511}, {7, 7, 400}};
  std::vector<float> la(2 * a.vocab_size()), lb(2 * b.vocab_size());
  auto sa = a.new_state(2, 16), sb = b.new_state(2, 16);
  a.prefill(sa, prompts, la);
  b.prefill(sb, prompts, lb);
  CHECK(la == lb);
  const int rows[] = {0, 1};
  for (const ipa::token_id t : {3, 100, 450}) {
    const ipa::token_id next[] = {t, ipa::token_id(t + 1)};
    a.step(sa, rows, next, la);
    b.step(sb, rows, next, lb);
    CHECK(la == lb);
  }
}
