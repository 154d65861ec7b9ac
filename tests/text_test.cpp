// SPDX-License-Identifier: MIT
// The llama2.c tokenizer against run.c's encode/decode on every golden line.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <ipa/core/rng.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>

#include "test_data.hpp"

namespace {
std::string from_hex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}
}  // namespace

TEST_CASE("tok512: encode matches run.c and decode round-trips on every golden line") {
  const std::string golden = ipa_test::golden_dir() + "/tok512/tok512_encode.jsonl";
  if (!ipa_test::have(ipa_test::tokenizer_path()) || !ipa_test::have(golden)) return;
  const auto tok = ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path(), 512);
  std::ifstream in(golden);
  int lines = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    const std::string text = from_hex(j["text_utf8_hex"].get<std::string>());
    const auto expected = j["ids"].get<std::vector<ipa::token_id>>();
    CAPTURE(line);
    const auto ids = tok.encode(text);
    CHECK(ids == expected);
    // run.c decode piece by piece, and what safe_printf prints
    std::string decoded, printed;
    const auto pieces = j["decode_pieces_hex"];
    for (std::size_t i = 1; i < ids.size(); ++i) {
      const std::string piece = tok.decode_piece(ids[i - 1], ids[i]);
      CHECK(piece == from_hex(pieces[i - 1].get<std::string>()));
      decoded += piece;
      printed += ipa::llama2c_tokenizer::printable(piece);
    }
    CHECK(decoded == text);
    CHECK(tok.decode(ids) == text);
    CHECK(printed == j["runc_printed"].get<std::string>());
    ++lines;
  }
  CHECK(lines == 37);
}

// ---- GPT-2 byte-level BPE ----
#include <fstream>

#include <nlohmann/json.hpp>

#include <ipa/text/gpt2_tokenizer.hpp>

namespace {
const ipa::gpt2_tokenizer& gpt2() {
  static const ipa::gpt2_tokenizer t = ipa::gpt2_tokenizer::load(ipa_test::golden_dir() + "/gpt2_bpe");
  return t;
}
}  // namespace

TEST_CASE("GPT-2 BPE: every golden line's ids, and decode(encode(s)) == s") {
  const std::string dir = ipa_test::golden_dir() + "/gpt2_bpe";
  if (!ipa_test::have(dir + "/gpt2_encode.jsonl")) return;
  CHECK(gpt2().vocab_size() == 50257);
  CHECK(gpt2().eot_id() == 50256);
  std::ifstream in(dir + "/gpt2_encode.jsonl");
  int lines = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    const std::string text = from_hex(j["text_utf8_hex"].get<std::string>());
    const auto expected = j["ids"].get<std::vector<ipa::token_id>>();
    INFO("text: " << j["text"].get<std::string>());
    const auto ids = gpt2().encode(text);
    CHECK(ids == expected);
    CHECK(gpt2().decode(ids) == text);
    ++lines;
  }
  CHECK(lines == 71);
  // Python's whitespace set (U+0085 is \s, U+FEFF is not), not JavaScript's
  std::ifstream ws(dir + "/js_vs_python_whitespace_differences.jsonl");
  int ws_lines = 0;
  for (std::string line; std::getline(ws, line);) {
    const auto j = nlohmann::json::parse(line);
    const std::string text = from_hex(j["text_utf8_hex"].get<std::string>());
    CHECK(gpt2().encode(text) == j["ids_openai_gpt2_encoder_py"].get<std::vector<ipa::token_id>>());
    ++ws_lines;
  }
  CHECK(ws_lines == 2);
}

TEST_CASE("GPT-2 BPE: special tokens only on request, invalid UTF-8 round-trips, long pieces") {
  if (!ipa_test::have(ipa_test::golden_dir() + "/gpt2_bpe/encoder.json")) return;
  CHECK(gpt2().encode("<|endoftext|>") == std::vector<ipa::token_id>{27, 91, 437, 1659, 5239, 91, 29});
  CHECK(gpt2().encode_with_special("a<|endoftext|>b") == std::vector<ipa::token_id>{64, 50256, 65});
  const std::string junk = std::string("ok \xff\xfe\xc3 \xe2\x82 x\xf0\x9f\0", 14);  // and a NUL
  CHECK(gpt2().decode(gpt2().encode(junk)) == junk);
  const std::string long_word(100000, 'a');  // one piece: the heap-based merge stays fast
  CHECK(gpt2().decode(gpt2().encode(long_word)) == long_word);
  CHECK_THROWS_AS(gpt2().token_bytes(50257), ipa::shape_error);
}

TEST_CASE("GPT-2 BPE: broken vocabulary and merge files give clear errors") {
  const std::string dir = ipa_test::golden_dir() + "/gpt2_bpe";
  if (!ipa_test::have(dir + "/encoder.json")) return;
  const auto tmp = std::filesystem::temp_directory_path() / ("ipa_bpe_" + std::to_string(::getpid()));
  std::filesystem::create_directories(tmp);
  auto write = [&](const char* name, const std::string& text) { std::ofstream(tmp / name) << text; };
  write("v.json", "{\"a\": 0, \"b\": 1");
  write("m.txt", "#version: 0.2\na b\n");
  CHECK_THROWS_WITH_AS(ipa::gpt2_tokenizer::from_files((tmp / "v.json").string(), (tmp / "m.txt").string()),
                       doctest::Contains("not valid JSON"), ipa::io_error);
  write("v.json", "{\"a\": 0, \"b\": 1}");
  CHECK_THROWS_WITH_AS(ipa::gpt2_tokenizer::from_files((tmp / "v.json").string(), (tmp / "m.txt").string()),
                       doctest::Contains("needs all 256"), ipa::io_error);
  write("bad_merges.txt", "#version: 0.2\nĠ t\nthis line has three\n");
  CHECK_THROWS_WITH_AS(ipa::gpt2_tokenizer::from_files(dir + "/encoder.json", (tmp / "bad_merges.txt").string()),
                       doctest::Contains("line 3"), ipa::io_error);
  write("missing.txt", "#version: 0.2\nzq zq\n");
  CHECK_THROWS_WITH_AS(ipa::gpt2_tokenizer::from_files(dir + "/encoder.json", (tmp / "missing.txt").string()),
                       doctest::Contains("missing from the vocabulary"), ipa::io_error);
  CHECK_THROWS_WITH_AS(ipa::gpt2_tokenizer::load(tmp.string()), doctest::Contains("no GPT-2 tokenizer here"),
                       ipa::io_error);
  std::filesystem::remove_all(tmp);
}

namespace {
// run.c's merge loop as written there (rescan every pair per merge): the reference.
std::vector<ipa::token_id> runc_merges(const ipa::llama2c_tokenizer& t, std::vector<ipa::token_id> ids) {
  for (;;) {
    float best = -1e10f;
    int best_id = -1;
    std::size_t at = 0;
    for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
      const std::string joined = t.piece(ids[i]) + t.piece(ids[i + 1]);
      for (std::size_t v = 0; v < t.vocab_size(); ++v)
        if (t.piece(ipa::token_id(v)) == joined && t.score(ipa::token_id(v)) > best) {
          best = t.score(ipa::token_id(v)), best_id = int(v), at = i;
          break;
        }
    }
    if (best_id < 0) return ids;
    ids[at] = best_id;
    ids.erase(ids.begin() + std::ptrdiff_t(at) + 1);
  }
}
}  // namespace

TEST_CASE("llama2.c tokenizer: the heap merge picks exactly run.c's pairs; long input stays fast") {
  if (!ipa_test::have(ipa_test::tokenizer_path())) return;
  const auto tok = ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path());
  ipa::xoshiro256 rng(17);
  const std::string alphabet = "abcdeehilnorstuy ,.'!\n\xc3\xa9";
  for (int trial = 0; trial < 300; ++trial) {
    std::string text;
    const std::size_t len = 1 + rng() % 60;
    for (std::size_t i = 0; i < len; ++i) text += alphabet[rng() % alphabet.size()];
    const auto ids = tok.encode(text);
    // the reference merges from the same starting point: code points, byte fallback
    std::vector<ipa::token_id> start = {1};  // BOS, then the dummy-prefix space
    for (std::size_t v = 0; v < tok.vocab_size(); ++v)
      if (tok.piece(ipa::token_id(v)) == " ") start.push_back(ipa::token_id(v));
    for (std::size_t i = 0; i < text.size();) {
      std::size_t n = 1;  // a code point: the byte and the continuation bytes after it (run.c's rule)
      while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
      const std::string cp = text.substr(i, n);
      ipa::token_id id = -1;
      for (std::size_t v = 0; v < tok.vocab_size(); ++v)
        if (tok.piece(ipa::token_id(v)) == cp) id = ipa::token_id(v);
      if (id >= 0) start.push_back(id);
      else
        for (unsigned char b : cp) start.push_back(ipa::token_id(b) + 3);
      i += n;
    }
    INFO("text: " << text);
    REQUIRE(ids == runc_merges(tok, start));
  }
  const std::string long_text(200000, 'a');
  CHECK(tok.decode(tok.encode(long_text)) == long_text);  // decode drops the dummy space after BOS
}
