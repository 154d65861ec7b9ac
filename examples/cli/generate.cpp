// SPDX-License-Identifier: MIT
// `ipa generate` (a base, local or behind a server, + adapters on prompts, batch by batch) and
// `ipa tokenize` (token ids of a text).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <ipa/ipa.hpp>
#include <ipa/text/gpt2_tokenizer.hpp>

#include "cli/common.hpp"

namespace ipa_cli {

int tokenize(const tokenize_options& o) {
  // GPT-2's byte-level BPE (a folder of its files, a tokenizer.json, a GGUF holding one) adds
  // no BOS; a llama2.c tokenizer.bin or a SentencePiece GGUF puts BOS first.
  std::vector<ipa::token_id> ids;
  if (has_gpt2_tokenizer(o.tokenizer))
    ids = (is_gguf(o.tokenizer) ? ipa::load_gguf_gpt2_tokenizer(ipa::gguf_file::load(o.tokenizer))
                                : ipa::gpt2_tokenizer::load(o.tokenizer))
              .encode(o.text);
  else if (is_gguf(o.tokenizer)) ids = ipa::load_gguf_tokenizer(ipa::gguf_file::load(o.tokenizer)).encode(o.text);
  else ids = ipa::llama2c_tokenizer::load(o.tokenizer).encode(o.text);
  for (std::size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? " " : "", ids[i]);
  std::printf("\n");
  return 0;
}

namespace {

/// "generate: 640/10000 prompts, 12 s" on stderr (stdout stays the continuations): redrawn in
/// place on a terminal, else a line every 5 seconds and one at the end.
class progress_line {
 public:
  explicit progress_line(std::size_t total) : total_(total), tty_(isatty(2) != 0) {}

  void update(std::size_t done) {
    const double now = seconds();
    if (!tty_ && done < total_ && now - last_ < 5) return;
    last_ = now;
    std::fprintf(stderr, "%sgenerate: %zu/%zu prompts, %.0f s%s", tty_ ? "\r" : "", done, total_, now,
                 tty_ && done < total_ ? "" : "\n");
  }

 private:
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  std::size_t total_;
  bool tty_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  double last_ = 0;
};

}  // namespace

int generate(const generate_options& o) {
  std::vector<std::string> prompts = o.prompts;
  if (!o.prompts_file.empty()) {
    std::vector<std::string> lines =
        read_lines(o.prompts_file, "--prompts-file", /*keep_empty=*/true, /*pipe_ok=*/true, o.prompts_wait);
    prompts.insert(prompts.end(), std::make_move_iterator(lines.begin()), std::make_move_iterator(lines.end()));
  }
  if (prompts.empty()) throw usage_error("generate needs --prompt TEXT or --prompts-file FILE");
  ipa::generation_config cfg;
  cfg.max_new_tokens = o.max_new_tokens;
  cfg.min_new_tokens = o.min_new_tokens;
  cfg.repetition_penalty = o.repetition_penalty;

  // Decodes `batch` prompts at a time, printing each batch's continuations as it finishes, so
  // that memory stays bounded however long the prompts file is.
  auto decode = [&](const auto& decoder, const any_tokenizer& tok, const loaded_adapters& adapters, std::size_t batch) {
    tok.set_stops(cfg);
    ipa::xoshiro256 rng(o.seed);
    // validate the sampling parameters even when greedy decoding ignores them
    auto sampler = ipa::make_standard_sampler(o.temperature > 0 ? o.temperature : 1.0f, static_cast<long long>(o.top_k),
                                              o.top_p, o.min_p);
    ipa::sampler<ipa::greedy> greedy{ipa::greedy{}};
    std::optional<progress_line> progress;
    if (prompts.size() > batch) progress.emplace(prompts.size());

    for (std::size_t first = 0; first < prompts.size(); first += batch) {
      const std::size_t rows = std::min(batch, prompts.size() - first);
      ipa::prompt_list ids;
      for (std::size_t b = 0; b < rows; ++b) ids.push_back(tok.encode_prompt(prompts[first + b]));
      const std::vector<ipa::prompt_list> adapter_prompts = adapters.prompts_for(ids);
      const ipa::rollout r = o.temperature == 0.0f ? decoder.generate(ids, cfg, greedy, rng, adapter_prompts)
                                                   : decoder.generate(ids, cfg, sampler, rng, adapter_prompts);
      for (std::size_t b = 0; b < rows; ++b) {
        const std::vector<ipa::token_id> response = r.response(b);
        const bool ended_by_token =
            r.finish[b] == ipa::finish_reason::eos || r.finish[b] == ipa::finish_reason::stop_token;
        const std::span<const ipa::token_id> shown(response.data(), response.size() - (ended_by_token ? 1 : 0));
        if (!o.json) {
          std::cout << tok.shown(ids[b], shown) << '\n';
          continue;
        }
        nlohmann::json j;
        j["prompt"] = prompts[first + b];
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
      }
      std::cout.flush();
      if (progress) progress->update(first + rows);
    }
    return 0;
  };

  if (is_url(o.base)) {
    require_remote_build(o.base);
#if IPA_CLI_REMOTE
    const ipa::remote_base base = connect_remote(o.base, o.tokenizer, o.remote, /*renormalize_top_k=*/true);
    const any_tokenizer tok(o.tokenizer, o.tokenizer, base.vocab_size());
    base.check_tokens(tok.table());
    const loaded_adapters adapters(o.adapters, tok.table(), base.vocab_size());
    // rows beyond the servers' slots would wait for a slot and lose their prompt caches
    const std::size_t batch = base.cached_rows() ? std::min(o.batch, base.cached_rows()) : o.batch;
    return decode(ipa::ipa_decoder<ipa::remote_base, ipa::vocab_mapped<ipa::llama_model>>(base, adapters.experts), tok,
                  adapters, batch);
#endif
  }
  // a few prompts: start at once from the file where it lies; many: decode them in repacked batches
  const bool few_rows = o.prompts_file.empty() && o.prompts.size() <= 4;
  ipa::any_model base = load_any_model(o.base, few_rows ? f32_model::in_place : f32_model::repacked);
  base.set_kv_cache_type(kv_cache_type_of(o.kv_cache));
  const any_tokenizer tok(o.base, o.tokenizer, base.vocab_size());
  const loaded_adapters adapters(o.adapters, tok.table(), base.vocab_size());
  return decode(ipa::ipa_decoder(base, adapters.experts), tok, adapters, o.batch);
}

}  // namespace ipa_cli
