// SPDX-License-Identifier: MIT
// Helpers shared by the `ipa` command line's source files: argv as "--flag value" pairs,
// number parsing with clear messages, prompt files, and loading a base model.
#pragma once
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <ipa/core/error.hpp>
#include <ipa/io/binary_reader.hpp>
#include <ipa/io/gguf.hpp>
#include <ipa/io/hf_llama.hpp>
#include <ipa/decode/decoder.hpp>
#include <ipa/model/llama.hpp>
#include <ipa/train/checkpoint.hpp>
#include <ipa/train/trainer.hpp>
#include <ipa/io/llama2c.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>

namespace ipa_cli {

/// A mistake in the command line itself: printed with the usage text, exit status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// argv as a queue of "--flag value" pairs.
struct args {
  std::vector<std::string> items;
  std::size_t at = 0;
  bool done() const { return at >= items.size(); }
  std::string flag() { return items[at++]; }
  std::string value(const std::string& flag) {
    if (done()) throw usage_error(flag + " needs a value");
    return items[at++];
  }
};

template <class T>
T parse_number(const std::string& flag, const std::string& text) {
  try {
    std::size_t used = 0;
    T v;
    if constexpr (std::is_floating_point_v<T>) v = static_cast<T>(std::stod(text, &used));
    else {
      const long long n = std::stoll(text, &used);
      if (std::is_unsigned_v<T> && n < 0) throw std::invalid_argument(text);
      v = static_cast<T>(n);
    }
    if (used != text.size()) throw std::invalid_argument(text);
    return v;
  } catch (const std::exception&) {
    throw usage_error(flag + " expects " + (std::is_unsigned_v<T> ? "a whole number >= 0" : "a number") +
                      ", found '" + text + "'");
  }
}

/// The tokenizer.bin next to a model file.
inline std::string default_tokenizer(const std::string& model) {
  const auto slash = model.find_last_of('/');
  return (slash == std::string::npos ? std::string() : model.substr(0, slash + 1)) + "tokenizer.bin";
}

/// Non-empty lines of a text file (one prompt each).
inline std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ipa::io_error(path + ": cannot open prompts file");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  if (lines.empty()) throw ipa::io_error(path + ": no prompts (one per line expected)");
  return lines;
}

/// True when the file starts with GGUF's magic.
inline bool is_gguf(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::string(magic, 4) == "GGUF";
}

/// A model by format: a folder is an ipa adapter (config.json with "architecture") or a Hugging
/// Face Llama folder; a file is GGUF (by its magic) or a llama2.c checkpoint.
inline bool is_adapter_folder(const std::string& path) {
  return std::filesystem::is_directory(path) && std::filesystem::exists(path + "/config.json") &&
         ipa::detail::read_json(path + "/config.json").contains("architecture");
}
inline ipa::llama_weights load_model(const std::string& path) {
  if (is_adapter_folder(path)) return ipa::load_adapter(path).weights;
  if (std::filesystem::is_directory(path)) return ipa::load_hf_llama(path);
  if (is_gguf(path)) return ipa::load_gguf_llama(ipa::gguf_file::load(path));
  return ipa::load_llama2c(path);
}

/// The tokenizer for a model: `tok_path` when given, else the GGUF's own, else the
/// tokenizer.bin next to the model; its size must equal `vocab`.
inline ipa::llama2c_tokenizer load_tokenizer(const std::string& model_path, const std::string& tok_path,
                                             std::size_t vocab) {
  if (tok_path.empty() && is_gguf(model_path)) {
    auto t = ipa::load_gguf_tokenizer(ipa::gguf_file::load(model_path));
    if (t.vocab_size() != vocab)
      throw ipa::shape_error(model_path + ": the tokenizer has " + std::to_string(t.vocab_size()) +
                             " tokens, the model " + std::to_string(vocab));
    return t;
  }
  if (!tok_path.empty() && is_gguf(tok_path)) return load_tokenizer(tok_path, "", vocab);
  return ipa::llama2c_tokenizer::load(tok_path.empty() ? default_tokenizer(model_path) : tok_path, vocab);
}

/// The --adapter models of generate/eval: llama2.c/GGUF/HF files, or folders written by
/// `ipa train` (their alpha and control token inside). An --alpha of NaN means "from the folder".
struct loaded_adapters {
  std::vector<ipa::llama_model> models;
  std::vector<ipa::weighted<ipa::llama_model>> experts;  // point into models
  std::vector<ipa::token_id> controls;                  // -1: none

  loaded_adapters(const std::vector<std::string>& paths, const std::vector<float>& alphas) {
    models.reserve(paths.size());  // experts hold pointers: no reallocation
    for (std::size_t i = 0; i < paths.size(); ++i) {
      ipa::saved_adapter saved;
      if (is_adapter_folder(paths[i])) saved = ipa::load_adapter(paths[i]);
      else
        saved.weights = load_model(paths[i]);
      models.emplace_back(std::move(saved.weights));
      experts.push_back(ipa::with_alpha(models.back(), std::isnan(alphas[i]) ? saved.alpha : alphas[i]));
      controls.push_back(saved.control_token);
    }
  }
  loaded_adapters(const loaded_adapters&) = delete;

  /// Each adapter's prompts (its control token after BOS); empty when no adapter has one.
  std::vector<ipa::prompt_list> prompts_for(const ipa::prompt_list& prompts) const {
    std::vector<ipa::prompt_list> out;
    if (std::none_of(controls.begin(), controls.end(), [](ipa::token_id c) { return c >= 0; })) return out;
    for (ipa::token_id c : controls) {
      out.emplace_back();
      for (const auto& p : prompts) out.back().push_back(ipa::with_control_token(p, c));
    }
    return out;
  }
};

int train(args& a);
int convert(args& a);
int eval(args& a);

}  // namespace ipa_cli
