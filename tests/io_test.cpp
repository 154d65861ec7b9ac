// SPDX-License-Identifier: MIT
// Bad input: truncated, oversized and corrupted checkpoints, tokenizers and .npy files each give
// a clear ipa:: exception naming what was expected and what was found.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include <unistd.h>

#include <ipa/core/bf16.hpp>
#include <ipa/core/compact_matrix.hpp>
#include <ipa/core/rng.hpp>
#include <ipa/io/gguf.hpp>
#include <ipa/io/hf_llama.hpp>
#include <ipa/io/llama2c.hpp>
#include <ipa/io/npy.hpp>
#include <ipa/io/safetensors.hpp>
#include <ipa/model/llama.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>

#include "test_data.hpp"

namespace {
// The first step of a model (BOS): where a model read in place checks its weights' values.
void first_step(const ipa::llama_model& m) {
  auto s = m.new_state(1, 4);
  std::vector<float> logits(m.vocab_size());
  m.prefill(s, std::vector<std::vector<ipa::token_id>>{{1}}, logits);
}

std::vector<char> slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A scratch file that removes itself.
struct temp_file {
  std::string path;
  explicit temp_file(const std::vector<char>& bytes, const std::string& name) {
    path = (std::filesystem::temp_directory_path() / ("ipa_test_" + name)).string();
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  ~temp_file() { std::filesystem::remove(path); }
};

template <class T>
void poke(std::vector<char>& bytes, std::size_t offset, T value) {
  std::memcpy(bytes.data() + offset, &value, sizeof value);
}

}  // namespace

TEST_CASE("llama2.c checkpoint: truncated, oversized and corrupted copies") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  const auto good = slurp(ipa_test::model_path());

  SUBCASE("a missing file") {
    CHECK_THROWS_WITH_AS(ipa::load_llama2c("/nonexistent/model.bin"),
                         doctest::Contains("/nonexistent/model.bin: no such file"), ipa::io_error);
  }
  SUBCASE("truncated at several places") {
    for (std::size_t size :
         {std::size_t(0), std::size_t(3), std::size_t(27), std::size_t(28), good.size() / 2, good.size() - 1}) {
      CAPTURE(size);
      temp_file f(std::vector<char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(size)), "trunc.bin");
      CHECK_THROWS_WITH_AS(ipa::load_llama2c(f.path), doctest::Contains("truncated"), ipa::io_error);
    }
  }
  SUBCASE("trailing bytes") {
    auto bytes = good;
    bytes.resize(bytes.size() + 4);
    temp_file f(bytes, "over.bin");
    CHECK_THROWS_WITH_AS(ipa::load_llama2c(f.path), doctest::Contains("oversized"), ipa::io_error);
  }
  SUBCASE("impossible headers") {
    for (const auto& field_value : std::vector<std::pair<int, std::int32_t>>{
             {0, 0}, {0, -5}, {3, 7}, {4, 3}, {6, 0}, {1, 1 << 30}, {5, INT32_MIN}}) {
      const int field = field_value.first;  // not a structured binding: CAPTURE's lambda takes it
      const std::int32_t value = field_value.second;
      auto bytes = good;
      poke(bytes, 4 * std::size_t(field), value);
      temp_file f(bytes, "header.bin");
      CAPTURE(field);
      CHECK_THROWS_AS(ipa::load_llama2c(f.path), ipa::io_error);
    }
  }
  SUBCASE("a wrong vocabulary size in the header no longer matches the file") {
    auto bytes = good;
    poke(bytes, 20, std::int32_t{32000});
    temp_file f(bytes, "vocab.bin");
    CHECK_THROWS_WITH_AS(ipa::load_llama2c(f.path), doctest::Contains("vocab_size=32000"), ipa::io_error);
  }
  SUBCASE("a NaN weight") {
    auto bytes = good;
    poke(bytes, 28 + 4 * 1000, std::numeric_limits<float>::quiet_NaN());
    temp_file f(bytes, "nan.bin");
    CHECK_THROWS_WITH_AS(ipa::load_llama2c(f.path), doctest::Contains("tok_embeddings[1000]"), ipa::io_error);
  }
  SUBCASE("mapped in place: the same checks") {
    for (std::size_t size : {std::size_t(0), std::size_t(27), std::size_t(28), good.size() - 1}) {
      CAPTURE(size);
      temp_file f(std::vector<char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(size)), "trunc.bin");
      CHECK_THROWS_WITH_AS(ipa::load_llama2c_compact(f.path), doctest::Contains("truncated"), ipa::io_error);
    }
    auto bytes = good;
    poke(bytes, 20, std::int32_t{32000});
    temp_file wrong_vocab(bytes, "vocab.bin");
    CHECK_THROWS_WITH_AS(ipa::load_llama2c_compact(wrong_vocab.path), doctest::Contains("vocab_size=32000"),
                         ipa::io_error);
    bytes = good;
    // token 15, weight 40: the matrices' values are checked when used (llama_compact_weights),
    // and stories260K's classifier is its embeddings, so the first step's logits name it
    poke(bytes, 28 + 4 * 1000, std::numeric_limits<float>::quiet_NaN());
    temp_file nan(bytes, "nan.bin");
    CHECK_THROWS_WITH_AS(first_step(ipa::llama_model(ipa::load_llama2c_compact(nan.path))),
                         doctest::Contains("tensor 'tok_embeddings' holds a non-finite value (row 15)"), ipa::io_error);
    bytes = good;
    // the last final-norm weight, before the RoPE tables (seq_len 512 x head_size 8 floats): the
    // norms are checked at load
    poke(bytes, bytes.size() - 4 * 512 * 8 - 4, std::numeric_limits<float>::infinity());
    temp_file inf(bytes, "inf.bin");
    CHECK_THROWS_WITH_AS(ipa::load_llama2c_compact(inf.path),
                         doctest::Contains("tensor 'rms_final_weight' holds a non-finite value (row 0)"),
                         ipa::io_error);
  }
  SUBCASE("the untouched file loads") {
    const auto w = ipa::load_llama2c(ipa_test::model_path());
    CHECK(w.config().dim == 64);
    CHECK(w.config().n_kv_heads == 4);
    CHECK(w.config().shared_classifier);
  }
}

TEST_CASE("tokenizer.bin: truncated, corrupted, wrong vocabulary size") {
  if (!ipa_test::have(ipa_test::tokenizer_path())) return;
  const auto good = slurp(ipa_test::tokenizer_path());
  SUBCASE("truncated inside a token") {
    for (std::size_t size : {std::size_t(2), std::size_t(6), good.size() / 3, good.size() - 1}) {
      CAPTURE(size);
      temp_file f(std::vector<char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(size)), "tok.bin");
      CHECK_THROWS_WITH_AS(ipa::llama2c_tokenizer::load(f.path), doctest::Contains("truncated"), ipa::io_error);
    }
  }
  SUBCASE("a token length beyond max_token_length") {
    auto bytes = good;
    poke(bytes, 8, std::int32_t{1 << 20});  // token 0's length
    temp_file f(bytes, "toklen.bin");
    CHECK_THROWS_WITH_AS(ipa::llama2c_tokenizer::load(f.path), doctest::Contains("token 0 has length"), ipa::io_error);
  }
  SUBCASE("a negative max_token_length") {
    auto bytes = good;
    poke(bytes, 0, std::int32_t{-1});
    temp_file f(bytes, "tokmax.bin");
    CHECK_THROWS_AS(ipa::llama2c_tokenizer::load(f.path), ipa::io_error);
  }
  SUBCASE("a model with another vocabulary size") {
    CHECK_THROWS_WITH_AS(ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path(), 32000),
                         doctest::Contains("vocabulary has 32000"), ipa::shape_error);
    CHECK_THROWS_AS(ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path(), 100), ipa::shape_error);
  }
  SUBCASE("a model file given as the tokenizer") {
    if (ipa_test::have(ipa_test::model_path()))
      CHECK_THROWS_AS(ipa::llama2c_tokenizer::load(ipa_test::model_path(), 512), ipa::error);
  }
}

TEST_CASE(".npy: round trip and lying headers") {
  xt::xarray<float> a = {{1.f, 2.f, 3.f}, {4.f, 5.f, 6.f}};
  const std::string path = (std::filesystem::temp_directory_path() / "ipa_test_roundtrip.npy").string();
  ipa::save_npy(path, a);
  CHECK(ipa::load_npy<float>(path) == a);
  CHECK(ipa::load_npy<double>(path)(1, 2) == 6.0);
  CHECK_THROWS_AS(ipa::load_npy<std::int32_t>(path), ipa::io_error);
  auto bytes = slurp(path);
  std::filesystem::remove(path);
  SUBCASE("a shape that claims more data than the file has") {
    std::string s(bytes.begin(), bytes.end());
    const auto at = s.find("(2, 3)");
    REQUIRE(at != std::string::npos);
    s.replace(at, 6, "(9, 9)");
    temp_file f(std::vector<char>(s.begin(), s.end()), "lie.npy");
    CHECK_THROWS_WITH_AS(ipa::load_npy<float>(f.path), doctest::Contains("needs 324 data bytes"), ipa::io_error);
  }
  SUBCASE("a huge shape is refused before any allocation") {
    std::string s(bytes.begin(), bytes.end());
    s.replace(s.find("(2, 3)"), 6, "(999999999, 99999)");
    temp_file f(std::vector<char>(s.begin(), s.end()), "huge.npy");
    CHECK_THROWS_AS(ipa::load_npy<float>(f.path), ipa::io_error);
  }
  SUBCASE("truncated") {
    temp_file f(std::vector<char>(bytes.begin(), bytes.begin() + 20), "short.npy");
    CHECK_THROWS_AS(ipa::load_npy<float>(f.path), ipa::io_error);
  }
}

// ---- GGUF ----

TEST_CASE("GGUF: stories260K converted by llama.cpp gives the llama2.c model's logits and tokenizer") {
  const std::string gguf = ipa_test::model_dir() + "/stories260K.gguf";
  if (!ipa_test::have(gguf) || !ipa_test::have(ipa_test::model_path())) return;
  const auto file = ipa::gguf_file::load(gguf);
  CHECK(file.version() == 3);
  const ipa::llama_model from_gguf(ipa::load_gguf_llama(file));
  const ipa::llama_model from_bin(ipa::load_llama2c(ipa_test::model_path()));
  CHECK(from_gguf.config().dim == 64);
  CHECK(from_gguf.config().n_kv_heads == 4);
  const std::vector<std::vector<ipa::token_id>> prompts = {{1, 403, 407, 261, 378, 432, 13}};
  std::vector<float> a(512), b(512);
  auto sa = from_gguf.new_state(1, 16), sb = from_bin.new_state(1, 16);
  from_gguf.prefill(sa, prompts, a);
  from_bin.prefill(sb, prompts, b);
  CHECK(a == b);                                                        // the same float32 weights: the same bits
  const ipa::llama_model in_place(ipa::load_gguf_llama_compact(file));  // F32 read where it lies
  CHECK(in_place.is_compact());
  std::size_t matrix_bytes = 0;  // read per token: every matrix but the embeddings, and the classifier
  for (const auto& [name, t] : file.tensors())
    if (t.dims.size() == 2 && name != "token_embd.weight") matrix_bytes += t.bytes;
  if (from_bin.config().shared_classifier && !file.tensors().count("output.weight")) matrix_bytes += 4 * 512 * 64;
  CHECK(in_place.weight_bytes() == matrix_bytes);
  std::vector<float> c(512);
  auto sc = in_place.new_state(1, 16);
  in_place.prefill(sc, prompts, c);
  for (std::size_t i = 0; i < c.size(); ++i) CHECK(c[i] == doctest::Approx(a[i]).epsilon(1e-5));
  // the llama2.c checkpoint mapped in place: the same matrices, the same kernels, the same bits
  const ipa::llama_model bin_in_place(ipa::load_llama2c_compact(ipa_test::model_path()));
  CHECK(bin_in_place.is_compact());
  CHECK(bin_in_place.weight_bytes() == matrix_bytes);
  std::vector<float> d(512);
  auto sd = bin_in_place.new_state(1, 16);
  bin_in_place.prefill(sd, prompts, d);
  CHECK(d == c);
  const auto tok = ipa::load_gguf_tokenizer(file);
  const auto ref = ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path());
  for (const char* text : {"Once upon a time", "Lily's dog ran, fast!", "\xc3\xa9t\xc3\xa9 \xe2\x9c\x93"})
    CHECK(tok.encode(text) == ref.encode(text));
}

TEST_CASE("GGUF: truncated and corrupted files give clear errors") {
  const std::string gguf = ipa_test::model_dir() + "/stories260K.gguf";
  if (!ipa_test::have(gguf)) return;
  const std::string bytes = ipa::read_file(gguf);
  auto parse = [](std::string b) { return ipa::gguf_file(std::move(b), "test.gguf"); };
  CHECK_THROWS_WITH_AS(parse("GGUX" + bytes.substr(4)), doctest::Contains("magic"), ipa::io_error);
  std::string v1 = bytes;
  v1[4] = 1;
  CHECK_THROWS_WITH_AS(parse(v1), doctest::Contains("version 1 is not supported"), ipa::io_error);
  for (std::size_t cut : {std::size_t(10), std::size_t(30), std::size_t(2000), std::size_t(9000), bytes.size() - 1})
    CHECK_THROWS_WITH_AS(parse(bytes.substr(0, cut)), doctest::Contains("truncated"), ipa::io_error);
  std::string lying = bytes;  // a metadata count of 2^60
  const std::uint64_t huge = std::uint64_t(1) << 60;
  std::memcpy(lying.data() + 16, &huge, 8);
  CHECK_THROWS_WITH_AS(parse(lying), doctest::Contains("impossible"), ipa::io_error);
  std::string no_metadata = bytes;  // a metadata count of 0: the first key is read as a tensor
  std::memset(no_metadata.data() + 16, 0, 8);
  CHECK_THROWS_WITH_AS(parse(no_metadata), doctest::Contains("after the 0 metadata entries the header counts"),
                       ipa::io_error);
  // the first tensor info's type -> Q4_1 (3), which ipa does not read: refused by name; -> Q4_K
  // (12), whose blocks of 256 do not divide its rows of 64: refused, saying so
  const auto at = bytes.find("token_embd.weight");
  REQUIRE(at != std::string::npos);
  std::string retyped = bytes;
  const std::size_t type_at = at + std::strlen("token_embd.weight") + 4 + 2 * 8;
  retyped[type_at] = 3;
  CHECK_THROWS_WITH_AS(parse(retyped), doctest::Contains("ggml type Q4_1 (3)"), ipa::io_error);
  retyped[type_at] = 99;
  CHECK_THROWS_WITH_AS(parse(retyped), doctest::Contains("ggml type unknown (99)"), ipa::io_error);
  retyped[type_at] = 12;
  CHECK_THROWS_WITH_AS(parse(retyped),
                       doctest::Contains("Q4_K tensor 'token_embd.weight' has rows of 64 weights, not a multiple of "
                                         "its block of 256"),
                       ipa::io_error);
  // random byte flips never crash: they parse or throw ipa::io_error
  ipa::xoshiro256 rng(99);
  for (int i = 0; i < 200; ++i) {
    std::string flipped = bytes.substr(0, 20000);
    flipped[24 + rng() % 19000] = char(rng());
    try {
      parse(flipped);
    } catch (const ipa::io_error&) {
    }
  }
}

// ---- safetensors ----

TEST_CASE("safetensors: round trip, and every malformed header is a clear error") {
  ipa::safetensors_writer w;
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  const std::vector<std::int32_t> ids = {1, -2, 3};
  const std::vector<std::uint16_t> half = {ipa::to_bf16(1.0f), ipa::to_bf16(-0.5f)};
  w.add_f32("a", {2, 3}, a);
  w.add<std::int32_t>("ids", "I32", {3}, ids);
  w.add<std::uint16_t>("h", "BF16", {2}, half);
  w.metadata("format", "pt");
  const std::string bytes = w.bytes();
  const ipa::safetensors_file f(bytes, "mem");
  CHECK(f.floats("a", 6) == a);
  CHECK(f.raw<std::int32_t>("ids", "I32", 3) == ids);
  CHECK(f.floats("h", 2) == std::vector<float>{1.0f, -0.5f});
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.entry("a").shape == std::vector<std::uint64_t>{2, 3});
  CHECK_THROWS_WITH_AS(f.floats("a", 5), doctest::Contains("expected 5"), ipa::io_error);
  CHECK_THROWS_WITH_AS(f.raw<std::int32_t>("a", "I32", 6), doctest::Contains("expected I32"), ipa::io_error);
  CHECK_THROWS_WITH_AS(f.floats("nope", 1), doctest::Contains("no tensor named 'nope'"), ipa::io_error);
  // IEEE half: 1.0, -2.0, 65504 (max), a subnormal
  CHECK(ipa::from_f16(0x3C00) == 1.0f);
  CHECK(ipa::from_f16(0xC000) == -2.0f);
  CHECK(ipa::from_f16(0x7BFF) == 65504.0f);
  CHECK(ipa::from_f16(0x0001) == doctest::Approx(5.96046448e-8f));

  auto with_header = [](const std::string& json, std::size_t data) {
    std::string out(8, '\0');
    const std::uint64_t n = json.size();
    std::memcpy(out.data(), &n, 8);
    return out + json + std::string(data, '\0');
  };
  auto bad = [](const std::string& b) { return ipa::safetensors_file(b, "bad.safetensors"); };
  CHECK_THROWS_WITH_AS(bad("abc"), doctest::Contains("truncated"), ipa::io_error);
  CHECK_THROWS_WITH_AS(bad(bytes.substr(0, bytes.size() - 4)), doctest::Contains("spans bytes"), ipa::io_error);
  std::string huge = bytes;
  const std::uint64_t big = std::uint64_t(1) << 40;
  std::memcpy(huge.data(), &big, 8);
  CHECK_THROWS_WITH_AS(bad(huge), doctest::Contains("100 MiB"), ipa::io_error);
  CHECK_THROWS_WITH_AS(bad(with_header("{\"x\": 1", 0)), doctest::Contains("not valid JSON"), ipa::io_error);
  CHECK_THROWS_WITH_AS(bad(with_header(R"({"x": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}})", 1)),
                       doctest::Contains("unsupported dtype"), ipa::io_error);
  CHECK_THROWS_WITH_AS(bad(with_header(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", 4)),
                       doctest::Contains("needs 8 bytes"), ipa::io_error);
  CHECK_THROWS_WITH_AS(bad(with_header(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                           "y": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}})",
                                       8)),
                       doctest::Contains("overlap"), ipa::io_error);
  CHECK_THROWS_WITH_AS(bad(with_header(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8)),
                       doctest::Contains("hole"), ipa::io_error);
  CHECK_THROWS_WITH_AS(bad(with_header(R"({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4)),
                       doctest::Contains("whole number"), ipa::io_error);
}

TEST_CASE("safetensors tensors read in place: F32, F16 and BF16 as compact matrices; other dtypes refused") {
  ipa::safetensors_writer st;
  const std::vector<float> f = {1, 2, 3, 4, 5, 6};
  std::vector<std::uint16_t> b(f.size()), h(f.size());
  std::transform(f.begin(), f.end(), b.begin(), ipa::to_bf16);
  std::transform(f.begin(), f.end(), h.begin(), ipa::to_f16);
  st.add_f32("f", {2, 3}, f);
  st.add<std::uint16_t>("b", "BF16", {2, 3}, b);
  st.add<std::uint16_t>("h", "F16", {3}, std::span<const std::uint16_t>(h).first(3));
  const std::vector<double> d = {1.0, 2.0};
  st.add<double>("d", "F64", {2}, d);
  const ipa::safetensors_file file(st.bytes(), "t.safetensors");
  float row[3];
  const auto mf = file.compact("f", 2, 3);
  CHECK(mf.type == ipa::weight_type::f32);
  ipa::dequantize_row(mf, 1, row);
  CHECK(row[2] == 6.0f);
  const auto mb = file.compact("b", 2, 3);
  CHECK(mb.type == ipa::weight_type::bf16);
  ipa::dequantize_row(mb, 1, row);
  CHECK(row[0] == 4.0f);
  const auto mh = file.compact("h", 1, 3);  // a vector as one row
  CHECK(mh.type == ipa::weight_type::f16);
  ipa::dequantize_row(mh, 0, row);
  CHECK(row[1] == 2.0f);
  CHECK_THROWS_WITH_AS(file.compact("d", 1, 2),
                       doctest::Contains("tensor 'd' has dtype F64, expected F32, F16 or BF16"), ipa::io_error);
  CHECK_THROWS_WITH_AS(file.compact("f", 3, 2), doctest::Contains("tensor 'f' has shape [2, 3], expected [3, 2]"),
                       ipa::io_error);
  CHECK_THROWS_WITH_AS(file.compact("x", 1, 1), doctest::Contains("no tensor named 'x'"), ipa::io_error);
  CHECK(file.storage() != nullptr);
}

// ---- writers: GGUF and Hugging Face folders, read back ----

namespace {
template <class Weights>  // llama_weights or llama_compact_weights
std::vector<float> logits_of(Weights w) {
  const ipa::llama_model m(std::move(w));
  const std::vector<std::vector<ipa::token_id>> prompts = {{1, 403, 407, 261, 378, 432, 13, 300}};
  std::vector<float> out(m.vocab_size());
  auto s = m.new_state(1, 16);
  m.prefill(s, prompts, out);
  return out;
}
}  // namespace

TEST_CASE("stories260K written as GGUF (F32, F16) and as a Hugging Face folder loads back with the same logits") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  const auto w = ipa::load_llama2c(ipa_test::model_path());
  const auto tok = ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path());
  const auto tmp = std::filesystem::temp_directory_path() / ("ipa_writers_" + std::to_string(::getpid()));
  std::filesystem::create_directories(tmp);
  const auto expected = logits_of(w);

  const std::string gguf = (tmp / "m.gguf").string();
  ipa::save_gguf_llama(gguf, w, &tok);
  const auto back = ipa::gguf_file::load(gguf);
  CHECK(logits_of(ipa::load_gguf_llama(back)) == expected);  // F32: identical bits
  CHECK(ipa::load_gguf_tokenizer(back).encode("Once upon a time, Lily's dog") ==
        tok.encode("Once upon a time, Lily's dog"));

  ipa::save_gguf_llama(gguf, w, &tok, ipa::weight_type::f16);
  const auto half = logits_of(ipa::load_gguf_llama(ipa::gguf_file::load(gguf)));
  double worst = 0;
  for (std::size_t i = 0; i < half.size(); ++i) worst = std::max(worst, double(std::abs(half[i] - expected[i])));
  CHECK(worst < 0.05);  // F16 weights (11-bit mantissa) on logits of magnitude ~20
  CHECK(worst > 0);
  // the same F16 file read in place (compact weights, no f32 copy; inputs rounded to F16 as
  // llama.cpp rounds them): close to the widened model
  const auto half_in_place = logits_of(ipa::load_gguf_llama_compact(ipa::gguf_file::load(gguf)));
  worst = 0;
  for (std::size_t i = 0; i < half.size(); ++i) worst = std::max(worst, double(std::abs(half_in_place[i] - half[i])));
  CHECK(worst < 0.02);

  // Q8_0 (ffn_down, rows of 172, falls back to F16): in place (inputs quantized to Q8_0 too, as
  // llama.cpp does) close to the widened model; both within the error of 8-bit weights of the f32
  ipa::save_gguf_llama(gguf, w, &tok, ipa::weight_type::q8_0);
  const auto q8_file = ipa::gguf_file::load(gguf);
  CHECK(q8_file.tensors().at("blk.0.attn_q.weight").type == 8);
  CHECK(q8_file.tensors().at("blk.0.ffn_down.weight").type == 1);
  const auto q8 = logits_of(ipa::load_gguf_llama(q8_file));
  const auto q8_in_place = logits_of(ipa::load_gguf_llama_compact(q8_file));
  worst = 0;
  double worst_in_place = 0;
  for (std::size_t i = 0; i < q8.size(); ++i) {
    worst = std::max(worst, double(std::abs(q8[i] - expected[i])));
    worst_in_place = std::max(worst_in_place, double(std::abs(q8_in_place[i] - q8[i])));
  }
  MESSAGE("Q8_0 logits: widened vs f32 " << worst << ", in place vs widened " << worst_in_place);
  CHECK(worst < 0.3);
  CHECK(worst > 0);
  CHECK(worst_in_place < 0.3);
  {  // a NaN scale in one Q8_0 block of the file: it loads, and the first step names the tensor
    std::ifstream in(gguf, std::ios::binary);
    std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>{}};
    const ipa::gguf_file clean(bytes, gguf);
    const auto* base = static_cast<const std::string*>(clean.storage().get())->data();
    const auto at = reinterpret_cast<const char*>(clean.compact("blk.3.ffn_up.weight", 172, 64).row(100)) - base;
    const std::uint16_t nan_half = 0x7e00;
    std::memcpy(bytes.data() + at, &nan_half, 2);
    const ipa::gguf_file parsed(std::move(bytes), gguf);
    CHECK_THROWS_WITH_AS(first_step(ipa::llama_model(ipa::load_gguf_llama_compact(parsed))),
                         doctest::Contains("tensor 'blk.3.ffn_up.weight' holds a non-finite value (row 100)"),
                         ipa::io_error);
  }

  const std::string hf = (tmp / "hf").string();
  ipa::save_hf_llama(hf, w);
  CHECK(logits_of(ipa::load_hf_llama(hf)) == expected);  // q/k permuted out and back: identical
  // read in place: the F32 matrices where they lie, q/k rows in Hugging Face's order and RoPE
  // rotating halves; the same numbers up to the kernels' summation order
  auto max_gap = [](const std::vector<float>& a, const std::vector<float>& b) {
    double gap = 0;
    for (std::size_t i = 0; i < a.size(); ++i) gap = std::max(gap, double(std::abs(a[i] - b[i])));
    return gap;
  };
  const auto hf_in_place = ipa::load_hf_llama_compact(hf);
  CHECK(hf_in_place.rope == ipa::rope_pairs::halves);
  CHECK(hf_in_place.layers[0].wq.type == ipa::weight_type::f32);
  CHECK(max_gap(logits_of(hf_in_place), expected) < 1e-4);
  // BF16 and F16 folders (as most are published) stay compact; close to the same file widened
  for (const auto& [dtype, type, tolerance] :
       {std::tuple{"BF16", ipa::weight_type::bf16, 0.08}, std::tuple{"F16", ipa::weight_type::f16, 0.02}}) {
    const std::string folder = (tmp / (std::string("hf_") + dtype)).string();
    ipa::save_hf_llama(folder, w, dtype);
    const auto widened = logits_of(ipa::load_hf_llama(folder));
    const auto compact = ipa::load_hf_llama_compact(folder);
    CHECK(compact.layers[0].w2.type == type);
    CHECK(compact.tok_embeddings.type == type);
    const double gap = max_gap(logits_of(compact), widened);
    MESSAGE(std::string(dtype) << " folder: in place vs widened " << gap << ", widened vs f32 "
                               << max_gap(widened, expected));
    CHECK(gap < tolerance);
    CHECK(max_gap(widened, expected) > 0);
  }
  CHECK_THROWS_WITH_AS(ipa::save_hf_llama(hf + "_x", w, "F64"), doctest::Contains("expected F32, F16 or BF16"),
                       ipa::config_error);
  {  // a non-finite weight in a BF16 folder: named by the first step (the widening load: at once)
    auto broken = w;
    broken.tensor("w2")[5] = std::numeric_limits<float>::quiet_NaN();
    const std::string folder = (tmp / "hf_nan").string();
    ipa::save_hf_llama(folder, broken, "BF16");
    CHECK_THROWS_WITH_AS(first_step(ipa::llama_model(ipa::load_hf_llama_compact(folder))),
                         doctest::Contains("tensor 'model.layers.0.mlp.down_proj.weight' holds a non-finite value"),
                         ipa::io_error);
    CHECK_THROWS_WITH_AS(ipa::load_hf_llama(folder), doctest::Contains("non-finite"), ipa::io_error);
  }

  // corrupted copies
  const std::string st = hf + "/model.safetensors";
  std::filesystem::resize_file(st, std::filesystem::file_size(st) - 8);
  CHECK_THROWS_WITH_AS(ipa::load_hf_llama(hf), doctest::Contains("safetensors"), ipa::io_error);
  std::ofstream(hf + "/config.json") << "{\"hidden_size\": 64}";
  CHECK_THROWS_WITH_AS(ipa::load_hf_llama(hf), doctest::Contains("missing field 'intermediate_size'"), ipa::io_error);
  std::filesystem::resize_file(gguf, std::filesystem::file_size(gguf) / 2);
  CHECK_THROWS_WITH_AS(ipa::gguf_file::load(gguf), doctest::Contains("truncated"), ipa::io_error);
  std::filesystem::remove_all(tmp);
}

TEST_CASE("f16 conversion rounds to nearest even, both ways") {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 0.000061035156f, 5.9604645e-8f, 3.14159f})
    CHECK(ipa::from_f16(ipa::to_f16(v)) == doctest::Approx(v).epsilon(1e-3));
  CHECK(ipa::to_f16(1.0f) == 0x3C00);
  CHECK(ipa::to_f16(65520.0f) == 0x7C00);            // rounds past the largest half: inf
  CHECK(ipa::to_f16(1.0f + 1.0f / 2048) == 0x3C00);  // a tie goes to even
  CHECK(ipa::to_f16(1.0f + 3.0f / 2048) == 0x3C02);
  for (std::uint32_t h = 0; h < 0x7C00; ++h) REQUIRE(ipa::to_f16(ipa::from_f16(std::uint16_t(h))) == h);
}

TEST_CASE("model configs: a setting ipa does not implement is refused by name, never ignored") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  const auto w = ipa::load_llama2c(ipa_test::model_path());
  const auto tmp = std::filesystem::temp_directory_path() / ("ipa_configs_" + std::to_string(::getpid()));
  const std::string hf = (tmp / "hf").string();
  ipa::save_hf_llama(hf, w);
  const nlohmann::json good = nlohmann::json::parse(ipa::read_file(hf + "/config.json"));
  auto with = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json c = good;
    c[key] = value;
    std::ofstream(hf + "/config.json", std::ios::trunc) << c.dump();
  };
  struct refusal {
    const char* key;
    nlohmann::json value;
    const char* message;
  };
  const refusal cases[] = {
      {"hidden_act", "gelu", "'hidden_act' is \"gelu\": an activation other than SiLU is not implemented"},
      {"rope_scaling", {{"type", "linear"}, {"factor", 4}}, "'rope_scaling' is {\"factor\":4,\"type\":\"linear\"}"},
      {"attention_bias", true, "attention biases is not implemented"},
      {"mlp_bias", true, "MLP biases is not implemented"},
      {"head_dim", 16, "'head_dim' is 16"},
      {"hidden_size", 64.5, "'hidden_size' must be a whole number in [1, 1048576], found 64.5"},
      {"num_hidden_layers", 1099511627776LL,
       "'num_hidden_layers' must be a whole number in [1, 1048576], found 1099511627776"},
      {"vocab_size", "512", "'vocab_size' must be a whole number in [1, 16777216], found \"512\""},
      {"rms_norm_eps", -1, "'rms_norm_eps' must be a number in (0"},
      {"tie_word_embeddings", "yes", "'tie_word_embeddings' must be true or false"},
  };
  for (const refusal& r : cases) {
    CAPTURE(r.key);
    with(r.key, r.value);
    CHECK_THROWS_WITH_AS(ipa::load_hf_llama(hf), doctest::Contains(r.message), ipa::io_error);
    CHECK_THROWS_WITH_AS(ipa::load_hf_llama(hf), doctest::Contains("config.json"), ipa::io_error);
  }
  // the supported values, spelled out, load
  with("hidden_act", "silu");
  CHECK_NOTHROW(ipa::load_hf_llama(hf));
  with("rope_scaling", nullptr);
  CHECK_NOTHROW(ipa::load_hf_llama(hf));
  std::ofstream(hf + "/config.json", std::ios::trunc) << "[]";
  CHECK_THROWS_WITH_AS(ipa::load_hf_llama(hf), doctest::Contains("config.json: not a JSON object"), ipa::io_error);

  // GGUF: rope.dimension_count other than the head size (ipa's writer stores it as a u32)
  const std::string gguf = (tmp / "m.gguf").string();
  ipa::save_gguf_llama(gguf, w, nullptr);
  std::string bytes = ipa::read_file(gguf);
  const std::string key = "llama.rope.dimension_count";
  const auto at = bytes.find(key);
  REQUIRE(at != std::string::npos);
  const std::uint32_t zero = 0;
  std::memcpy(bytes.data() + at + key.size() + 4, &zero, 4);
  CHECK_THROWS_WITH_AS(ipa::load_gguf_llama(ipa::gguf_file(bytes, "m.gguf")),
                       doctest::Contains("llama.rope.dimension_count = 0; ipa implements only whole heads"),
                       ipa::io_error);
  std::filesystem::remove_all(tmp);
}
