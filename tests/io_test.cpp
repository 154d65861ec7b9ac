// SPDX-License-Identifier: MIT
// Bad input: truncated, oversized and corrupted checkpoints, tokenizers and .npy files each give
// a clear ipa:: exception naming what was expected and what was found.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ipa/io/llama2c.hpp>
#include <ipa/io/npy.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>

#include "test_data.hpp"

namespace {

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
    CHECK_THROWS_WITH_AS(ipa::load_llama2c("/nonexistent/model.bin"), doctest::Contains("cannot open"), ipa::io_error);
  }
  SUBCASE("truncated at several places") {
    for (std::size_t size : {std::size_t(0), std::size_t(3), std::size_t(27), std::size_t(28), good.size() / 2, good.size() - 1}) {
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
    for (auto [field, value] : std::vector<std::pair<int, std::int32_t>>{{0, 0}, {0, -5}, {3, 7}, {4, 3}, {6, 0}, {1, 1 << 30}, {5, INT32_MIN}}) {
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
