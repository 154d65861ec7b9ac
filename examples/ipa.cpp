// SPDX-License-Identifier: MIT
// The `ipa` command line: `ipa generate` decodes a base (+ adapters) on prompts, `ipa tokenize`
// prints token ids. Run `ipa --help` for the options.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <ipa/ipa.hpp>
#include <ipa/text/gpt2_tokenizer.hpp>

#include "cli/common.hpp"

namespace {

using ipa_cli::args;
using ipa_cli::parse_number;
using ipa_cli::usage_error;

constexpr const char* usage = R"(usage:
  ipa generate --base MODEL [--tokenizer TOK] [--adapter ADAPTER [--alpha X]]...
               (--prompt TEXT)... | --prompts-file FILE
               [--max-new-tokens N] [--min-new-tokens N] [--temperature T] [--top-k K]
               [--top-p P] [--min-p P] [--repetition-penalty R] [--seed S] [--json]
  ipa train    --base MODEL --reward SPEC --prompts FILE --out DIR [--algo ALGO]
               [--steps N] [--max-minutes X] [--adapter-init zero|base|ADAPTER] [--resume] ...
  ipa eval     --base MODEL --reward SPEC --prompts FILE [--adapter ADAPTER [--alpha X]]...
               [--samples K] ...
  ipa convert  --model MODEL --to gguf|gguf-f16|hf --out PATH [--tokenizer TOK]
  ipa tokenize --tokenizer TOK --text TEXT     (TOK: tokenizer.bin, or a GPT-2 BPE folder / tokenizer.json)

MODEL is an http:// URL of an inference server (see below), a llama2.c checkpoint (e.g. stories260K.bin), a GGUF file (llama or gpt2 architecture;
F32, F16, Q8_0) or a Hugging Face Llama or GPT-2 folder (config.json + safetensors); TOK its
tokenizer (default: the GGUF's own, else the tokenizer.bin next to MODEL, else the HF folder's
vocab.json + merges.txt / tokenizer.json). `ipa train`/`eval` take Llama models. ADAPTER is a
Llama model in any of those formats or a folder written by `ipa train` (OUT/adapter: its alpha
and control token come from its config.json). An adapter that stores a tokenizer (GGUF, a
tokenizer.bin beside it) is checked against the base's token table; tables that differ only by
appended tokens or padding are mapped, and ids the adapter lacks are banned. Each --alpha
weights the --adapter before it (negative makes an anti-expert). --temperature 0 decodes
greedily. Prompts decode together as one batch; each continuation is printed as llama2.c's
run.c prints it, or as one JSON object per line with --json (prompt, text, prompt_ids, ids,
logprobs, tailored_logprobs, finish_reason). `ipa train --help` and `ipa eval --help` list
their options.

)";

int tokenize(args& a) {
  std::string tok_path;
  std::optional<std::string> text;
  while (!a.done()) {
    const std::string f = a.flag();
    if (f == "--tokenizer") tok_path = a.value(f);
    else if (f == "--text") text = a.value(f);
    else throw usage_error("unknown option for tokenize: " + f);
  }
  if (tok_path.empty() || !text) throw usage_error("tokenize needs --tokenizer and --text");
  // GPT-2's byte-level BPE (a folder of its files, a tokenizer.json, a GGUF holding one) adds
  // no BOS; a llama2.c tokenizer.bin or a SentencePiece GGUF puts BOS first.
  std::vector<ipa::token_id> ids;
  if (ipa_cli::has_gpt2_tokenizer(tok_path))
    ids = (ipa_cli::is_gguf(tok_path) ? ipa::load_gguf_gpt2_tokenizer(ipa::gguf_file::load(tok_path))
                                      : ipa::gpt2_tokenizer::load(tok_path))
              .encode(*text);
  else if (ipa_cli::is_gguf(tok_path)) ids = ipa::load_gguf_tokenizer(ipa::gguf_file::load(tok_path)).encode(*text);
  else ids = ipa::llama2c_tokenizer::load(tok_path).encode(*text);
  for (std::size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? " " : "", ids[i]);
  std::printf("\n");
  return 0;
}

int generate(args& a) {
  std::string base_path, tok_path, prompts_file;
  std::vector<std::string> prompts, adapter_paths;
  std::vector<float> alphas;
  ipa::generation_config cfg;
  cfg.max_new_tokens = 256;
  float temperature = 1.0f, repetition = 1.0f;
  long long top_k = 0, seed = 42;
  double top_p = 1.0, min_p = 0.0;
  bool json = false;
  ipa_cli::remote_flags remote;
  while (!a.done()) {
    const std::string f = a.flag();
    if (remote.take(f, a)) continue;
    if (f == "--base") base_path = a.value(f);
    else if (f == "--tokenizer") tok_path = a.value(f);
    else if (f == "--adapter") adapter_paths.push_back(a.value(f)), alphas.push_back(NAN);
    else if (f == "--alpha") {
      if (alphas.empty()) throw usage_error("--alpha must follow the --adapter it weights");
      alphas.back() = parse_number<float>(f, a.value(f));
      ipa::check_alpha(alphas.back(), "--alpha");
    } else if (f == "--prompt") prompts.push_back(a.value(f));
    else if (f == "--prompts-file") prompts_file = a.value(f);
    else if (f == "--max-new-tokens") cfg.max_new_tokens = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--min-new-tokens") cfg.min_new_tokens = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--temperature") temperature = parse_number<float>(f, a.value(f));
    else if (f == "--top-k") top_k = parse_number<long long>(f, a.value(f));
    else if (f == "--top-p") top_p = parse_number<double>(f, a.value(f));
    else if (f == "--min-p") min_p = parse_number<double>(f, a.value(f));
    else if (f == "--repetition-penalty") repetition = parse_number<float>(f, a.value(f));
    else if (f == "--seed") seed = parse_number<long long>(f, a.value(f));
    else if (f == "--json") json = true;
    else throw usage_error("unknown option for generate: " + f);
  }
  if (base_path.empty()) throw usage_error("generate needs --base MODEL");
  if (!prompts_file.empty()) {
    std::ifstream in(prompts_file);
    if (!in) throw ipa::io_error(prompts_file + ": cannot open prompts file");
    for (std::string line; std::getline(in, line);) prompts.push_back(line);
  }
  if (prompts.empty()) throw usage_error("generate needs --prompt TEXT or --prompts-file FILE");
  cfg.repetition_penalty = repetition;
  if (!(temperature >= 0.0f))
    throw ipa::config_error("--temperature must be >= 0, found " + std::to_string(temperature));

  // decodes with a base (local or remote) and its tokenizer, prints the continuations
  auto decode = [&](const auto& decoder, const ipa_cli::any_tokenizer& tok, const ipa_cli::loaded_adapters& adapters) {
    ipa::prompt_list ids;
    for (const auto& p : prompts) ids.push_back(tok.encode_prompt(p));
    const std::vector<ipa::prompt_list> adapter_prompts = adapters.prompts_for(ids);
    tok.set_stops(cfg);

    ipa::xoshiro256 rng(static_cast<std::uint64_t>(seed));
    // Validate sampling parameters even when greedy ignores them.
    auto sampler = ipa::make_standard_sampler(temperature > 0 ? temperature : 1.0f, top_k, top_p, min_p);
    ipa::rollout r;
    if (temperature == 0.0f) {
      ipa::sampler<ipa::greedy> pick{ipa::greedy{}};
      r = decoder.generate(ids, cfg, pick, rng, adapter_prompts);
    } else {
      r = decoder.generate(ids, cfg, sampler, rng, adapter_prompts);
    }

    for (std::size_t b = 0; b < ids.size(); ++b) {
      std::vector<ipa::token_id> response = r.response(b);
      const bool ended_by_token =
          r.finish[b] == ipa::finish_reason::eos || r.finish[b] == ipa::finish_reason::stop_token;
      std::vector<ipa::token_id> shown(response.begin(), response.end() - (ended_by_token ? 1 : 0));
      if (json) {
        nlohmann::json j;
        j["prompt"] = prompts[b];
        j["text"] = tok.text(ids[b].back(), shown);
        j["prompt_ids"] = ids[b];
        j["ids"] = response;
        std::vector<float> lp, tlp;
        for (std::size_t t = 0; t < response.size(); ++t)
          lp.push_back(r.log_probs(b, t)), tlp.push_back(r.tailored_log_probs(b, t));
        j["logprobs"] = lp;
        j["tailored_logprobs"] = tlp;
        j["finish_reason"] = ipa::to_string(r.finish[b]);
        std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
      } else {
        std::cout << tok.shown(ids[b], shown) << '\n';
      }
    }
    return 0;
  };

  if (ipa_cli::is_url(base_path)) {
    ipa_cli::require_remote_build(base_path);
#if IPA_CLI_REMOTE
    const ipa::remote_base base = ipa_cli::connect_remote(base_path, tok_path, remote);
    const ipa_cli::any_tokenizer tok(tok_path, tok_path, base.vocab_size());
    base.check_tokens(tok.table());
    const ipa_cli::loaded_adapters adapters(adapter_paths, alphas, tok.table(), base.vocab_size());
    return decode(ipa::ipa_decoder<ipa::remote_base, ipa::vocab_mapped<ipa::llama_model>>(base, adapters.experts), tok,
                  adapters);
#endif
  }
  const ipa::any_model base = ipa_cli::load_any_model(base_path);
  const ipa_cli::any_tokenizer tok(base_path, tok_path, base.vocab_size());
  const ipa_cli::loaded_adapters adapters(adapter_paths, alphas, tok.table(), base.vocab_size());
  return decode(ipa::ipa_decoder(base, adapters.experts), tok, adapters);
}

}  // namespace

int main(int argc, char** argv) {
  args a;
  for (int i = 1; i < argc; ++i) a.items.emplace_back(argv[i]);
  try {
    if (a.done()) throw usage_error("missing command");
    const std::string cmd = a.flag();
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      std::cout << usage << ipa_cli::remote_usage;
      return 0;
    }
    if (cmd == "generate") return generate(a);
    if (cmd == "tokenize") return tokenize(a);
    if (cmd == "train") return ipa_cli::train(a);
    if (cmd == "eval") return ipa_cli::eval(a);
    if (cmd == "convert") return ipa_cli::convert(a);
    throw usage_error("unknown command '" + cmd + "'");
  } catch (const usage_error& e) {
    std::cerr << "ipa: " << e.what() << "\n" << usage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ipa: error: " << e.what() << "\n";
    return 1;
  }
}
