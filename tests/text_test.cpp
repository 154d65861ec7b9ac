// SPDX-License-Identifier: MIT
// The llama2.c tokenizer against run.c's encode/decode on every golden line.
#include <doctest/doctest.h>

#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include <ipa/text/llama2c_tokenizer.hpp>

#include "test_data.hpp"

namespace {
std::string from_hex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
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
