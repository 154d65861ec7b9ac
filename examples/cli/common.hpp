// SPDX-License-Identifier: MIT
// Helpers shared by the `ipa` subcommands' source files: prompt files, loading models and
// tokenizers by format, adapters, and connecting to a base behind a server.
#pragma once
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <ipa/core/error.hpp>
#include <ipa/decode/decoder.hpp>
#include <ipa/decode/vocab_mapped.hpp>
#include <ipa/io/binary_reader.hpp>
#include <ipa/io/gguf.hpp>
#include <ipa/io/gguf_gpt2.hpp>
#include <ipa/io/hf_gpt2.hpp>
#include <ipa/io/hf_llama.hpp>
#include <ipa/io/llama2c.hpp>
#include <ipa/model/any_model.hpp>
#include <ipa/model/llama.hpp>
#include <ipa/text/gpt2_tokenizer.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>
#include <ipa/text/vocabulary.hpp>
#include <ipa/train/checkpoint.hpp>
#include <ipa/train/trainer.hpp>
#if IPA_CLI_REMOTE
#include <ipa/remote/remote_base.hpp>
#endif

#include "cli/options.hpp"

namespace ipa_cli {

/// The tokenizer.bin next to a model file.
inline std::string default_tokenizer(const std::string& model) {
  const auto slash = model.find_last_of('/');
  return (slash == std::string::npos ? std::string() : model.substr(0, slash + 1)) + "tokenizer.bin";
}

/// Seconds as a person writes them: "60", "0.5".
inline std::string seconds_text(double s) {
  std::ostringstream out;
  out << s;
  return out.str();
}

/// The bytes of a prompts file, read once. A regular file is read whole. A pipe or FIFO (`--prompts-file
/// <(grep ...)`) is read only where `pipe_ok` (training prompts are read again on --resume): without
/// blocking in open(), giving up after `wait_s` seconds in which nothing arrives, so a FIFO that no
/// program writes to is an error, not a hang. Anything else (a device: /dev/zero never ends) is refused.
inline std::string read_prompt_bytes(const std::string& path, const std::string& option, bool pipe_ok, double wait_s) {
  const std::string where = option + " " + path;
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_type type = fs::status(path, ec).type();
  if (type == fs::file_type::not_found || ec) throw ipa::io_error(where + ": cannot open the file");
  if (type == fs::file_type::regular) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw ipa::io_error(where + ": cannot open the file");
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  if (type != fs::file_type::fifo)  // (an anonymous pipe, /dev/fd/N, is a FIFO too)
    throw ipa::io_error(where + ": expected a regular file" + (pipe_ok ? " or a pipe" : "") + ", found " +
                        ipa::detail::file_kind(type));
  if (!pipe_ok)
    throw ipa::io_error(where + ": expected a regular file, found a pipe (training prompts are read again by " +
                        "--resume: save them to a file)");
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw ipa::io_error(where + ": cannot open the pipe");
  std::string bytes;
  constexpr std::size_t max_bytes = std::size_t(1) << 30;  // a runaway writer ends here, not in swap
  for (char chunk[1 << 16];;) {
    pollfd pfd{fd, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, int(std::min(wait_s * 1000.0, 2e9)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {  // (on Linux a FIFO that never had a writer reports nothing, not a hang-up)
      ::close(fd);
      throw ipa::io_error(where + ": nothing arrived from the pipe for " + seconds_text(wait_s) + " s (" +
                          (bytes.empty() ? "no program writes to it" : "the writer stopped") +
                          "; --prompts-wait sets the limit)");
    }
    const ssize_t got = ::read(fd, chunk, sizeof chunk);
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (got <= 0) break;  // 0: every writer closed its end
    bytes.append(chunk, std::size_t(got));
    if (bytes.size() > max_bytes) {
      ::close(fd);
      throw ipa::io_error(where + ": the pipe gave more than 1 GiB of prompts");
    }
  }
  ::close(fd);
  return bytes;
}

/// The prompts of a file (see read_prompt_bytes), one per line: the non-empty lines, or every line
/// when `keep_empty` (an empty prompt is BOS alone). `option` names the flag.
inline std::vector<std::string> read_lines(const std::string& path, const std::string& option = "--prompts",
                                           bool keep_empty = false, bool pipe_ok = false, double wait_s = 60) {
  std::istringstream in(read_prompt_bytes(path, option, pipe_ok, wait_s));
  std::vector<std::string> lines;
  bool any = false;
  for (std::string line; std::getline(in, line); any = true)
    if (keep_empty || !line.empty()) lines.push_back(std::move(line));
  if (lines.empty())
    throw ipa::io_error(option + " " + path + (any ? ": every line is empty" : ": the file is empty") +
                        " (one prompt per line expected)");
  return lines;
}

/// True when the file starts with GGUF's magic.
inline bool is_gguf(const std::string& path) {
  if (!std::filesystem::is_regular_file(path)) return false;  // (never open a FIFO: it may block)
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
inline bool named_gguf(const std::string& path) {
  return path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
}
inline ipa::llama_weights load_model(const std::string& path) {
  if (is_adapter_folder(path)) return ipa::load_adapter(path).weights;
  if (std::filesystem::is_directory(path)) return ipa::load_hf_llama(path);
  if (is_gguf(path)) return ipa::load_gguf_llama(ipa::gguf_file::load(path));
  if (named_gguf(path)) {
    ipa::detail::require_regular_file(path);
    throw ipa::io_error(path + ": not a GGUF file (it does not start with the magic 'GGUF')");
  }
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

/// "gpt2" for a Hugging Face GPT-2 folder or a GGUF of the gpt2 architecture, else "llama".
inline std::string architecture_of(const std::string& path) {
  if (std::filesystem::is_directory(path) && std::filesystem::exists(path + "/config.json") &&
      !is_adapter_folder(path)) {
    const nlohmann::json config = ipa::detail::read_json(path + "/config.json");
    if (!config.is_object()) throw ipa::io_error(path + "/config.json: not a JSON object");
    const auto type = config.find("model_type");
    return type != config.end() && *type == "gpt2" ? "gpt2" : "llama";
  }
  if (is_gguf(path)) return ipa::gguf_architecture(ipa::gguf_file::load(path)) == "gpt2" ? "gpt2" : "llama";
  return "llama";
}

/// How a Llama model stored in f32 (a llama2.c checkpoint, an F32 GGUF) is kept for decoding:
/// used where it lies (mapped: start-up in a blink, as fast at batch 1), or repacked into ipa's
/// f32 layout (a copy that takes seconds for a 110M model, ~3.6x faster at batch 16: for train
/// and eval, which decode in batches). Measured in bench/RESULTS.md, session 17.
enum class f32_model { in_place, repacked };

/// A Llama model to decode with (a base, a --policy): a GGUF that stores compact matrices (F16,
/// BF16, Q4_0, Q8_0, Q3_K-Q6_K) or a Hugging Face folder of F16/BF16 matrices is read where it
/// lies, mapped, with no f32 copy; an f32 model as `f32` says; an adapter folder is loaded in f32
/// and repacked.
inline ipa::llama_model load_llama_for_decoding(const std::string& path, f32_model f32 = f32_model::repacked) {
  if (std::filesystem::is_directory(path) && !is_adapter_folder(path)) {
    const ipa::hf_folder folder(path);  // parsed once, for the dtype and the loader
    const std::string q = "model.layers.0.self_attn.q_proj.weight";
    const std::string dtype = folder.contains(q) ? folder.entry(q).dtype : "";
    if (f32 == f32_model::in_place || dtype == "F16" || dtype == "BF16")
      return ipa::llama_model(ipa::load_hf_llama_compact(folder));
    return ipa::llama_model(ipa::load_hf_llama(folder));
  }
  if (!is_gguf(path)) {
    const bool llama2c = std::filesystem::is_regular_file(path) && !named_gguf(path);
    if (llama2c && f32 == f32_model::in_place) return ipa::llama_model(ipa::load_llama2c_compact(path));
    return ipa::llama_model(load_model(path));
  }
  const auto f = ipa::gguf_file::load(path);
  const bool compact = f32 == f32_model::in_place || std::any_of(f.tensors().begin(), f.tensors().end(),
                                                                 [](const auto& t) { return t.second.type != 0; });
  return compact ? ipa::llama_model(ipa::load_gguf_llama_compact(f)) : ipa::llama_model(ipa::load_gguf_llama(f));
}

/// --kv-cache's value as a kv_cache_type (a resumed run's stored value is checked here too).
inline ipa::kv_cache_type kv_cache_type_of(const std::string& name) {
  if (name == "f32") return ipa::kv_cache_type::f32;
  if (name == "f16") return ipa::kv_cache_type::f16;
  throw ipa::config_error("--kv-cache: expected f32 or f16, found \"" + name + "\"");
}

/// A base model of either architecture, by format.
inline ipa::any_model load_any_model(const std::string& path, f32_model f32 = f32_model::repacked) {
  if (architecture_of(path) == "gpt2") {
    if (is_gguf(path)) return ipa::gpt2_model(ipa::load_gguf_gpt2(ipa::gguf_file::load(path)));
    return ipa::gpt2_model(ipa::load_hf_gpt2(path));
  }
  return load_llama_for_decoding(path, f32);
}

/// True when `path` holds a GPT-2 byte-level BPE: a GGUF whose tokenizer is "gpt2", a folder
/// with encoder.json + vocab.bpe, vocab.json + merges.txt or tokenizer.json, or a .json file.
inline bool has_gpt2_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  if (is_gguf(path)) {
    const auto f = ipa::gguf_file::load(path);
    return f.has("tokenizer.ggml.model") && f.value("tokenizer.ggml.model").as_string("tokenizer.ggml.model") == "gpt2";
  }
  if (fs::is_directory(path))
    return (fs::exists(path + "/encoder.json") && fs::exists(path + "/vocab.bpe")) ||
           (fs::exists(path + "/vocab.json") && fs::exists(path + "/merges.txt")) ||
           fs::exists(path + "/tokenizer.json");
  return path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0 && fs::exists(path);
}

/// The GPT-2 tokenizer at `path` (see has_gpt2_tokenizer); its size must equal `vocab`.
inline ipa::gpt2_tokenizer load_gpt2_tokenizer(const std::string& path, std::size_t vocab) {
  auto tok =
      is_gguf(path) ? ipa::load_gguf_gpt2_tokenizer(ipa::gguf_file::load(path)) : ipa::gpt2_tokenizer::load(path);
  if (tok.vocab_size() != vocab)
    throw ipa::shape_error(path + ": the tokenizer has " + std::to_string(tok.vocab_size()) + " tokens, the model " +
                           std::to_string(vocab));
  return tok;
}

/// The tokenizer of a generate run: llama2.c's SentencePiece BPE (BOS first; a story ends with
/// BOS or EOS) or GPT-2's byte-level BPE (no BOS; <|endoftext|> ends a text and starts an empty
/// prompt, as Hugging Face does).
class any_tokenizer {
 public:
  /// `tok_path` when given (tokenizer.bin, GGUF, GPT-2 folder or tokenizer.json), else the
  /// GGUF's own, else what sits with the model (tokenizer.bin next to it, or the HF folder's
  /// vocabulary files); its size must equal `vocab`.
  any_tokenizer(const std::string& model_path, const std::string& tok_path, std::size_t vocab) {
    const std::string from = tok_path.empty() ? model_path : tok_path;
    if (has_gpt2_tokenizer(from)) gpt2_.emplace(load_gpt2_tokenizer(from, vocab));
    else if (tok_path.empty() && architecture_of(model_path) == "gpt2")
      throw ipa::io_error(model_path +
                          ": no GPT-2 tokenizer with the model (vocab.json + merges.txt, tokenizer.json "
                          "or a GGUF's); pass --tokenizer");
    else llama_.emplace(load_tokenizer(model_path, tok_path, vocab));
  }

  bool is_gpt2() const noexcept { return gpt2_.has_value(); }
  ipa::token_table table() const { return gpt2_ ? ipa::table_of(*gpt2_) : ipa::table_of(*llama_); }
  const ipa::llama2c_tokenizer* llama() const noexcept { return llama_ ? &*llama_ : nullptr; }

  std::vector<ipa::token_id> encode_prompt(const std::string& text) const {
    if (llama_) return llama_->encode(text);
    auto ids = gpt2_->encode(text);
    if (ids.empty()) {
      if (gpt2_->eot_id() < 0)
        throw ipa::config_error("an empty prompt needs <|endoftext|>, which this vocabulary lacks");
      ids.push_back(gpt2_->eot_id());
    }
    return ids;
  }

  /// End of text: llama2.c's EOS (and BOS, which its stories end with), or <|endoftext|>.
  void set_stops(ipa::generation_config& g) const {
    if (llama_) {
      g.eos_id = ipa::llama2c_tokenizer::eos_id;
      g.stop_tokens = {ipa::llama2c_tokenizer::bos_id};
    } else {
      g.eos_id = gpt2_->eot_id();
    }
  }

  /// The text of `ids` following `prev` (the prompt's last token).
  std::string text(ipa::token_id prev, std::span<const ipa::token_id> ids) const {
    if (gpt2_) return gpt2_->decode(ids);
    std::string out;
    for (ipa::token_id t : ids) out += llama_->decode_piece(prev, t), prev = t;
    return out;
  }

  /// Prompt and continuation as printed: run.c's way for llama2.c models (every piece after BOS
  /// through safe_printf), the plain decoded bytes for GPT-2.
  std::string shown(const std::vector<ipa::token_id>& prompt, std::span<const ipa::token_id> response) const {
    std::vector<ipa::token_id> all(prompt.begin(), prompt.end());
    all.insert(all.end(), response.begin(), response.end());
    if (gpt2_) {
      if (!all.empty() && all.front() == gpt2_->eot_id()) all.erase(all.begin());
      return gpt2_->decode(all);
    }
    std::string out;
    for (std::size_t t = 1; t < all.size(); ++t)
      out += ipa::llama2c_tokenizer::printable(llama_->decode_piece(all[t - 1], all[t]));
    return out;
  }

 private:
  std::optional<ipa::llama2c_tokenizer> llama_;
  std::optional<ipa::gpt2_tokenizer> gpt2_;
};

/// The token table stored with a model, when it has one: a GGUF's tokenizer metadata, a folder's
/// GPT-2 vocabulary files, or the tokenizer.bin next to a llama2.c checkpoint. ipa's adapter
/// folders carry none (they share their base's).
inline std::optional<ipa::token_table> stored_token_table(const std::string& path, std::size_t vocab) {
  namespace fs = std::filesystem;
  if (is_gguf(path)) {
    const auto f = ipa::gguf_file::load(path);
    if (!f.has("tokenizer.ggml.model")) return std::nullopt;
    if (has_gpt2_tokenizer(path)) return ipa::table_of(ipa::load_gguf_gpt2_tokenizer(f));
    return ipa::table_of(ipa::load_gguf_tokenizer(f));
  }
  if (fs::is_directory(path)) {
    if (is_adapter_folder(path) || !has_gpt2_tokenizer(path)) return std::nullopt;
    return ipa::table_of(ipa::gpt2_tokenizer::load(path));
  }
  if (fs::exists(default_tokenizer(path)))
    return ipa::table_of(ipa::llama2c_tokenizer::load(default_tokenizer(path), vocab));
  return std::nullopt;
}

/// The --adapter models of generate/eval: llama2.c/GGUF/HF files, or folders written by
/// `ipa train` (their alpha and control token inside). An --alpha of NaN means "from the folder".
/// An adapter that stores a tokenizer is checked against the base's token table and seen through
/// the id mapping (appended tokens, padding); one without is assumed to share the base's
/// tokenizer, so its size must match.
struct loaded_adapters {
  std::vector<ipa::llama_model> models;
  std::vector<ipa::vocab_mapped<ipa::llama_model>> mapped;                  // point into models
  std::vector<ipa::weighted<ipa::vocab_mapped<ipa::llama_model>>> experts;  // point into mapped
  std::vector<ipa::token_id> controls;                                      // -1: none
  std::vector<std::string> adapter_paths;

  loaded_adapters(const adapter_flags& flags, const ipa::token_table& base_table, std::size_t base_vocab)
      : adapter_paths(flags.paths) {
    const std::vector<std::string>& paths = flags.paths;
    const std::vector<float>& alphas = flags.alphas;
    models.reserve(paths.size());  // mapped and experts hold pointers: no reallocation
    mapped.reserve(paths.size());
    for (std::size_t i = 0; i < paths.size(); ++i) {
      ipa::saved_adapter saved;
      if (is_adapter_folder(paths[i])) saved = ipa::load_adapter(paths[i]);
      else saved.weights = load_model(paths[i]);
      models.emplace_back(std::move(saved.weights));
      const std::size_t vocab = models.back().vocab_size();
      ipa::vocab_map map = ipa::vocab_map::identity(base_vocab);
      if (const auto table = stored_token_table(paths[i], vocab)) {
        try {
          map = ipa::map_vocabularies(base_table, base_vocab, *table, vocab);
        } catch (const ipa::error& e) {
          throw ipa::config_error(paths[i] + ": " + e.what());
        }
      } else if (vocab != base_vocab) {
        throw ipa::shape_error(paths[i] + ": the adapter predicts " + std::to_string(vocab) + " tokens, the base " +
                               std::to_string(base_vocab) +
                               "; they must share a vocabulary (or the adapter must "
                               "store its tokenizer, so that ipa can map the ids)");
      }
      if (!map.is_identity() && saved.control_token >= 0)
        throw ipa::config_error(paths[i] + ": an adapter with a control token must share the base's vocabulary");
      if (saved.control_token >= 0 && flags.control_bin > 0) {
        // Quark's bin tokens follow the vocabulary, best first: the saved one is bin 0's
        const std::size_t tokens = std::size_t(models.back().config().input_vocab() - saved.control_token);
        if (flags.control_bin >= tokens)
          throw usage_error("--control-bin " + std::to_string(flags.control_bin) + ": " + paths[i] +
                            " was trained with " + std::to_string(tokens) + " reward bins (0.." +
                            std::to_string(tokens - 1) + ")");
        saved.control_token += ipa::token_id(flags.control_bin);
      }
      mapped.emplace_back(models.back(), std::move(map));
      const bool own_alpha = i >= alphas.size() || std::isnan(alphas[i]);  // no --alpha: the folder's own
      experts.push_back(ipa::with_alpha(mapped.back(), own_alpha ? saved.alpha : alphas[i]));
      controls.push_back(saved.control_token);
    }
    if (flags.control_bin > 0 && std::none_of(controls.begin(), controls.end(), [](ipa::token_id c) { return c >= 0; }))
      throw usage_error(
          "--control-bin needs an adapter trained with Quark (a folder whose config.json has a control token)");
  }
  loaded_adapters(const loaded_adapters&) = delete;

  /// Each adapter's prompts (its control token after BOS); empty when no adapter has one.
  /// An adapter must be able to read every prompt token (ids it lacks are banned from what it
  /// generates, but a prompt cannot be read around): one that cannot is named here.
  std::vector<ipa::prompt_list> prompts_for(const ipa::prompt_list& prompts) const {
    for (std::size_t i = 0; i < mapped.size(); ++i)
      for (std::size_t b = 0; b < prompts.size() && !mapped[i].map().is_identity(); ++b)
        for (ipa::token_id t : prompts[b])
          if (mapped[i].map().adapter_id(t) < 0)
            throw ipa::config_error(adapter_paths[i] + ": prompt " + std::to_string(b) + " holds token " +
                                    std::to_string(t) + ", which this adapter's vocabulary (" +
                                    std::to_string(models[i].vocab_size()) +
                                    " tokens) lacks; an adapter must know every token of a prompt");
    std::vector<ipa::prompt_list> out;
    if (std::none_of(controls.begin(), controls.end(), [](ipa::token_id c) { return c >= 0; })) return out;
    for (ipa::token_id c : controls) {
      out.emplace_back();
      for (const auto& p : prompts) out.back().push_back(ipa::with_control_token(p, c));
    }
    return out;
  }
};

/// True when --base names a server (http:// or https://) rather than a file.
inline bool is_url(const std::string& base) { return base.rfind("http://", 0) == 0 || base.rfind("https://", 0) == 0; }

#if IPA_CLI_REMOTE
/// Connects to the server(s) named by `urls` (comma-separated), whose tokenizer is `tok_path`.
/// `renormalize_top_k` where only the tailored policy is read (the CLI decodes with
/// tail_policy::restrict_to_top_k, to which a constant per row makes no difference), not where
/// the base's own log-probs are (eval's base perplexity).
inline ipa::remote_base connect_remote(const std::string& urls, const std::string& tok_path, const remote_flags& f,
                                       bool renormalize_top_k) {
  if (tok_path.empty()) throw usage_error("a --base URL needs --tokenizer TOK (the served model's tokenizer)");
  ipa::remote_options o;
  for (std::size_t at = 0; at <= urls.size();) {
    const std::size_t comma = std::min(urls.find(',', at), urls.size());
    if (comma > at) o.urls.push_back(urls.substr(at, comma - at));
    at = comma + 1;
  }
  // (remote_base checks the numbers; a protocol name can also come from a resumed run's options)
  if (f.protocol == "llama") o.protocol = ipa::remote_protocol::llama_cpp;
  else if (f.protocol == "openai") o.protocol = ipa::remote_protocol::openai;
  else if (!f.protocol.empty())
    throw ipa::config_error("--base-protocol must be llama or openai, found '" + f.protocol + "'");
  o.top_k = f.top_k;
  o.give_up_after_s = f.give_up_after_s;
  o.batch_rows = !f.per_row;
  o.renormalize_top_k = renormalize_top_k;
  return ipa::remote_base(std::move(o));
}
#endif

/// Fails clearly when this CLI was built without the remote base.
inline void require_remote_build([[maybe_unused]] const std::string& base) {
#if !IPA_CLI_REMOTE
  throw ipa::config_error("--base " + base +
                          ": this ipa was built without the remote base (libcurl's development files, Debian "
                          "libcurl4-openssl-dev, were missing at configure time)");
#endif
}

}  // namespace ipa_cli
