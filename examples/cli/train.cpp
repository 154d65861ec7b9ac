// SPDX-License-Identifier: MIT
// `ipa train` (an adapter against a reward, with checkpoints and exact resume) and `ipa eval`
// (mean reward, base-model perplexity, distinct-1/2 of sampled continuations).
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <ipa/ipa.hpp>

#include "cli/common.hpp"

namespace ipa_cli {

// Samples continuations of the prompts in o.prompts (o.samples each, or o.rows in all) and
// scores them: the summary `ipa eval` prints (below, beside eval()).
nlohmann::json sample_and_score(const eval_options& o);

namespace {

ipa::lr_decay parse_decay(const std::string& s) {
  if (s == "constant") return ipa::lr_decay::constant;
  if (s == "linear") return ipa::lr_decay::linear;
  if (s == "cosine") return ipa::lr_decay::cosine;
  throw usage_error("--decay must be constant, linear or cosine, found '" + s + "'");
}

ipa::rl_config make_config(const train_options& o) {
  ipa::rl_config c;
  c.algorithm = ipa::parse_rl_algorithm(o.algo);
  c.prompts_per_step = o.batch;
  const bool grouped = c.algorithm == ipa::rl_algorithm::rloo || c.algorithm == ipa::rl_algorithm::grpo;
  c.samples_per_prompt = o.samples_per_prompt ? o.samples_per_prompt : grouped ? 4 : 1;
  if (grouped && !o.samples_per_prompt) c.prompts_per_step = std::max<std::size_t>(1, o.batch / 4);
  c.max_new_tokens = o.max_new_tokens;
  c.temperature = o.temperature;
  c.top_p = o.top_p;
  c.eos_id = ipa::llama2c_tokenizer::eos_id;
  c.stop_tokens = {ipa::llama2c_tokenizer::bos_id};  // llama2.c stories end with BOS
  c.alpha = o.alpha;
  c.tune_base = o.tune_base;
  c.lr = {o.lr, o.warmup, o.steps, parse_decay(o.decay), 0.0};
  c.kl = {o.kl_coef, o.kl_target, 10000};
  c.entropy_coef = o.entropy_coef;
  c.quark_bins = int(o.bins);
  c.quark_updates = o.quark_updates;
  c.quark_minibatch = o.quark_minibatch;
  c.quark_train_bins = int(o.quark_train_bins);
  c.adam.eps = o.adam_eps;
  c.max_grad_norm = o.max_grad_norm;
  c.pool_capacity = o.pool;
  c.ppo_epochs = o.ppo_epochs;
  c.clip_eps = o.clip;
  c.gamma = o.gamma;
  c.lambda = o.lambda;
  c.micro_batch = o.micro_batch;
  c.frozen = o.frozen;
  c.seed = o.seed;
  return c;
}

// The adapter a run starts from. `base` is null for a remote base: then `base_config` holds only
// what the server told (vocabulary, context) and ipa's defaults.
ipa::llama_weights initial_adapter(const train_options& o, const ipa::llama_weights* base,
                                   const ipa::llama_config& base_config) {
  if (!base && (o.tune_base || o.adapter_init == "base"))
    throw usage_error("--tune-base and --adapter-init base copy the base's weights; a --base URL has none here");
  if (o.tune_base) {
    if (o.adapter_init != "zero" && o.adapter_init != "base")
      throw usage_error("--tune-base trains a copy of the base; --adapter-init must be base (or left out)");
    return *base;
  }
  if (o.adapter_init == "base") return *base;
  if (o.adapter_init == "zero") {
    ipa::llama_config c = base_config;
    c.dim = o.adapter_dim;
    c.n_layers = o.adapter_layers;
    c.n_heads = o.adapter_heads;
    c.n_kv_heads = o.adapter_heads;
    c.hidden_dim = (8 * o.adapter_dim / 3 + 3) / 4 * 4;
    c.extra_tokens = 0;
    c.validate("--adapter-dim/--adapter-layers/--adapter-heads");
    return ipa::llama_weights::zero_output_adapter(c, o.seed);
  }
  return load_model(o.adapter_init);  // an adapter folder, HF folder, GGUF or llama2.c file
}

// Keeps the lines of a resumed run's metrics.jsonl for the steps before `step`: the steps after
// its checkpoint are done again, and a line torn by a kill is dropped (written atomically).
void keep_metrics_before(const std::string& path, std::size_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_unsigned() && j["step"].get<std::size_t>() < step)
      kept += line + '\n';
  }
  ipa::write_file_atomic(path, kept);
}

std::string clock(double seconds) {
  const long s = long(std::max(0.0, seconds));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

// Quark: does the trained adapter follow its control token? o.control_check continuations of
// the check's prompts (the training prompts unless o.control_check_prompts names others, taken in
// turn) with the best bin's token, as trained, then with the worst bin's. Rewards less than two
// standard errors of their difference apart mean the adapter ignores the token: then it has
// learned its whole pool, failures too. Printed, and written to OUT/control_tokens.json.
void report_control_tokens(const train_options& o) {
  eval_options e;
  e.base = o.base, e.tokenizer = o.tokenizer, e.reward = o.reward, e.reward_timeout = o.reward_timeout;
  e.prompts = o.control_check_prompts.empty() ? o.prompts : o.control_check_prompts;
  e.rows = o.control_check, e.max_new_tokens = o.max_new_tokens;
  e.temperature = o.temperature, e.top_p = o.top_p, e.seed = o.seed + 100, e.remote = o.remote;
  e.adapters.paths = {o.out + "/adapter"};
  e.adapters.control_bin = 0;
  const nlohmann::json best = sample_and_score(e);
  e.adapters.control_bin = o.bins - 1;
  const nlohmann::json worst = sample_and_score(e);
  const auto se2 = [](const nlohmann::json& j) {
    return std::pow(j["reward_sd"].get<double>(), 2) / j["samples"].get<double>();
  };
  const double gap = best["reward"].get<double>() - worst["reward"].get<double>();
  const double two_se = 2 * std::sqrt(se2(best) + se2(worst));
  const bool follows = gap > two_se;
  char rewards[96];
  std::snprintf(rewards, sizeof rewards, "reward %.3f with the best bin's, %.3f with the worst's (bin %zu)",
                best["reward"].get<double>(), worst["reward"].get<double>(), o.bins - 1);
  std::cerr << "control tokens (" << best["samples"].get<std::size_t>() << " samples of "
            << (o.control_check_prompts.empty() ? "the training prompts" : o.control_check_prompts)
            << " each): " << rewards << "; "
            << (follows ? "the adapter follows its control token"
                        : "within two standard errors: the adapter ignores its control token, so it has learned "
                          "its whole pool, failures too (--quark-train-bins 1 trains on the best bin alone)")
            << "\n";
  const nlohmann::json report = {{"prompts", e.prompts},
                                 {"best_bin", best},
                                 {"worst_bin", worst},
                                 {"worst_bin_index", o.bins - 1},
                                 {"reward_gap", gap},
                                 {"two_standard_errors", two_se},
                                 {"follows_control_token", follows}};
  ipa::write_file_atomic(o.out + "/control_tokens.json", report.dump(2) + "\n");
}

}  // namespace

int train(train_request r) {
  train_options& o = r.options;
  const bool resume = r.resume;
  if (!resume) std::filesystem::create_directories(o.out);
  else if (!std::filesystem::is_directory(o.out))
    throw ipa::io_error(o.out + ": --resume, but there is no such folder");
  // one run per folder at a time; then what a killed run left half-written goes
  const ipa::dir_lock lock(o.out);
  ipa::remove_uncommitted(o.out);
  std::string checkpoint;
  if (resume) {
    checkpoint = ipa::latest_checkpoint(o.out);
    if (checkpoint.empty()) throw ipa::io_error(o.out + ": --resume, but there is no checkpoint (no 'latest' file)");
    const std::string out = o.out;  // where the run lives now (it may have been moved or copied)
    o = ipa::checkpoint_run(checkpoint).get<train_options>();  // the run's own options
    o.out = out;
  }
  // a resumed run reads the options and paths stored with it: say so when one is bad or gone
  auto stored = [&](auto&& load) {
    try {
      return load();
    } catch (const std::exception& e) {
      if (!resume) throw;
      throw ipa::io_error(std::string(e.what()) + " (from the options stored with the run in " + checkpoint +
                          "/trainer.json; resume where the run was started, or put the file back)");
    }
  };
  if (r.steps) o.steps = *r.steps;
  if (o.base.empty() || o.reward.empty() || o.prompts.empty())
    throw usage_error("train needs --base MODEL, --reward SPEC and --prompts FILE (or --resume)");
  const ipa::rl_config config = stored([&] { return make_config(o); });  // algorithm, decay, numbers
  const std::optional<double> max_minutes = r.max_minutes;
  // a Quark run ends by checking its control token (not with --quark-train-bins: then the worst
  // bin's token was never trained, nothing to compare); the check reads its prompts after
  // training, so a bad file is refused now instead
  const bool check_control =
      config.algorithm == ipa::rl_algorithm::quark && !o.tune_base && o.control_check && !o.quark_train_bins;
  if (check_control && !o.control_check_prompts.empty())
    stored([&] { return read_lines(o.control_check_prompts, "--control-check-prompts"); });
  auto reward = stored([&] { return ipa::spec_reward::parse(o.reward, o.reward_timeout); });

  // the loop, whatever the base
  auto run_training = [&](auto& trainer) {
    if (resume) {
      ipa::load_checkpoint(checkpoint, trainer);
      std::cerr << "resumed from " << checkpoint << " at step " << trainer.steps_done() << "\n";
      keep_metrics_before(o.out + "/metrics.jsonl", trainer.steps_done());
    } else {
      if (!ipa::latest_checkpoint(o.out).empty())
        throw ipa::io_error(o.out + " already holds a run; pass --resume to continue it or choose another --out");
      std::ofstream(o.out + "/metrics.jsonl", std::ios::trunc);
    }
    const nlohmann::json run = o;
    std::ofstream metrics(o.out + "/metrics.jsonl", std::ios::app);
    const bool tty = isatty(2);
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    const std::size_t first = trainer.steps_done();
    bool stopped_by_clock = false;
    // the step of the newest checkpoint that holds this state (a resumed run's: the one it loaded)
    std::size_t saved_step = resume ? trainer.steps_done() : std::size_t(-1);
    while (trainer.steps_done() < o.steps) {
      if (max_minutes && elapsed() >= *max_minutes * 60) {
        stopped_by_clock = true;
        break;
      }
      const ipa::step_metrics m = trainer.step();
      nlohmann::json j = {{"step", m.step},       {"reward", m.reward_mean},
                          {"kl", m.kl},           {"entropy", m.entropy},
                          {"loss", m.loss},       {"grad_norm", m.grad_norm},
                          {"lr", m.lr},           {"kl_coef", m.kl_coef},
                          {"samples", m.samples}, {"response_tokens", m.response_tokens},
                          {"seconds", m.seconds}, {"tokens_per_second", m.tokens_per_second},
                          {"elapsed", elapsed()}};
      if (!m.quark_bins.size.empty()) {  // Quark: the pool's bins; sampling conditions on bin 0
        j["conditioning_bin"] = 0;
        j["bin_sizes"] = m.quark_bins.size;
        j["bin_mean_rewards"] = m.quark_bins.mean_reward;
      }
      metrics << j.dump() << '\n' << std::flush;
      const std::size_t done = trainer.steps_done() - first, left = o.steps - trainer.steps_done();
      const double eta = elapsed() / double(done) * double(left);
      char line[256];
      std::snprintf(line, sizeof line, "step %zu/%zu  reward %.3f  kl %.4f  tok/s %.0f  ETA %s", trainer.steps_done(),
                    o.steps, m.reward_mean, m.kl, m.tokens_per_second, clock(eta).c_str());
      if (tty) {
        const int width = 20, filled = int(width * double(trainer.steps_done()) / double(o.steps));
        std::fprintf(stderr, "\r[%s%s] %s   ", std::string(std::size_t(filled), '#').c_str(),
                     std::string(std::size_t(width - filled), '-').c_str(), line);
      } else if (trainer.steps_done() % 10 == 0 || trainer.steps_done() == o.steps) {
        std::fprintf(stderr, "%s\n", line);
      }
      if (o.save_every && trainer.steps_done() % o.save_every == 0) {
        ipa::save_checkpoint(o.out, trainer, run);
        saved_step = trainer.steps_done();
      }
    }
    if (tty) std::fprintf(stderr, "\n");
    if (saved_step != trainer.steps_done()) ipa::save_checkpoint(o.out, trainer, run);  // unless saved or loaded
    std::cerr << (stopped_by_clock ? "stopped at --max-minutes; " : "") << "saved " << ipa::latest_checkpoint(o.out)
              << " (adapter: " << o.out << "/adapter)\n";
    if (check_control) report_control_tokens(o);
    return 0;
  };

  if (is_url(o.base)) {
    require_remote_build(o.base);
#if IPA_CLI_REMOTE
    const ipa::remote_base base = connect_remote(o.base, o.tokenizer, o.remote, /*renormalize_top_k=*/true);
    const auto tok = load_tokenizer(o.tokenizer, o.tokenizer, base.vocab_size());
    base.check_tokens(ipa::table_of(tok));
    ipa::prompt_list prompts;
    for (const auto& line : read_lines(o.prompts)) prompts.push_back(tok.encode(line));
    ipa::llama_config served;  // what an adapter needs of the base: its vocabulary and context
    served.vocab_size = int(base.vocab_size());
    served.seq_len = int(std::min<std::size_t>(base.context_length(), 1 << 16));
    ipa::rl_trainer<ipa::spec_reward, ipa::llama2c_tokenizer, ipa::remote_base> trainer(
        &base, initial_adapter(o, nullptr, served), tok, std::move(reward), prompts, config);
    return run_training(trainer);
#endif
  }
  ipa::llama_model base = stored([&] { return load_llama_for_decoding(o.base); });
  base.set_kv_cache_type(kv_cache_type_of(o.kv_cache));
  std::optional<ipa::llama_weights> base_weights;  // only to start from a copy of the base
  if (o.tune_base || o.adapter_init == "base") base_weights = stored([&] { return load_model(o.base); });
  const auto tok = stored([&] { return load_tokenizer(o.base, o.tokenizer, base.vocab_size()); });
  ipa::prompt_list prompts;
  for (const auto& line : stored([&] { return read_lines(o.prompts); })) prompts.push_back(tok.encode(line));
  ipa::rl_trainer trainer(o.tune_base ? nullptr : &base,
                          initial_adapter(o, base_weights ? &*base_weights : nullptr, base.config()), tok,
                          std::move(reward), prompts, config);
  return run_training(trainer);
}

nlohmann::json sample_and_score(const eval_options& o) {
  const std::string &base_path = o.base, &tok_path = o.tokenizer, &prompts_file = o.prompts;
  std::vector<std::string> banned_words;
  for (const auto& list : o.banned_words)
    for (const auto& w : ipa::words_of(list)) banned_words.push_back(w);
  auto reward = ipa::spec_reward::parse(o.reward, o.reward_timeout);

  // Samples with `decoder`; base_nll(prompt, response, rollout, row, nll, tokens) adds the base's
  // negative log-likelihood of a continuation.
  auto evaluate = [&](const auto& decoder, const ipa::llama2c_tokenizer& tok, const loaded_adapters& adapters,
                      ipa::keep_base keep, std::size_t cached_rows, auto&& base_nll) {
    ipa::generation_config g;
    g.keep_base_logits = keep;
    g.max_new_tokens = o.max_new_tokens;
    g.eos_id = ipa::llama2c_tokenizer::eos_id;
    g.stop_tokens = {ipa::llama2c_tokenizer::bos_id};
    // --ban-words: each word, lower case and capitalised, as the tokenizer spells it mid-sentence
    // (with its leading space), banned as a token sequence (Hugging Face's bad_words_ids)
    ipa::ban_sequences banned;
    for (std::string w : banned_words) {
      for (int variant = 0; variant < 2; ++variant) {
        if (variant == 1) w[0] = char(std::toupper(static_cast<unsigned char>(w[0])));
        banned.sequences.push_back(tok.encode(w, false, false));
      }
    }
    auto sampler = ipa::make_standard_sampler(o.temperature, 0, o.top_p);
    ipa::xoshiro256 rng(o.seed);

    const auto lines = read_lines(prompts_file, "--prompts", false, /*pipe_ok=*/true, o.prompts_wait);
    double reward_sum = 0, reward_sq = 0, nll = 0, d1 = 0, d2 = 0, length = 0;
    std::size_t n = 0, tokens = 0;
    // rows per decoder call: 64, or as many as a server keeps prompt caches for
    const std::size_t chunk = std::clamp<std::size_t>(cached_rows, 1, 64);
    ipa::prompt_list batch;
    auto flush = [&] {
      if (batch.empty()) return;
      const std::vector<ipa::prompt_list> adapter_prompts = adapters.prompts_for(batch);
      const ipa::rollout r = decoder.generate(batch, g, sampler, rng, adapter_prompts, banned);
      std::vector<std::string> ptext(batch.size()), rtext(batch.size());
      std::vector<std::vector<ipa::token_id>> resp(batch.size());
      std::vector<ipa::sample_view> views(batch.size());
      for (std::size_t b = 0; b < batch.size(); ++b) {
        resp[b] = r.response(b);
        ptext[b] = tok.decode(batch[b]);
        rtext[b] = tok.decode(resp[b], batch[b].back());
        base_nll(batch[b], resp[b], r, b, nll, tokens);
        d1 += ipa::distinct_n(rtext[b], 1);
        d2 += ipa::distinct_n(rtext[b], 2);
        length += double(resp[b].size());
      }
      for (std::size_t b = 0; b < batch.size(); ++b) views[b] = {batch[b], resp[b], ptext[b], rtext[b]};
      std::vector<double> scores(batch.size());
      reward.score(views, scores);
      for (double s : scores) reward_sum += s, reward_sq += s * s;
      n += batch.size();
      batch.clear();
    };
    auto add = [&](const std::string& line) {
      batch.push_back(tok.encode(line + o.prompt_suffix));
      if (batch.size() == chunk) flush();
    };
    if (o.rows) {
      for (std::size_t r = 0; r < o.rows; ++r) add(lines[r % lines.size()]);
    } else {
      for (const auto& line : lines)
        for (std::size_t k = 0; k < o.samples; ++k) add(line);
    }
    flush();
    const double ppl = std::exp(nll / double(std::max<std::size_t>(tokens, 1)));
    const double mean = reward_sum / double(n);
    const double sd = n > 1 ? std::sqrt(std::max(0.0, (reward_sq - double(n) * mean * mean) / double(n - 1))) : 0.0;
    return nlohmann::json{{"samples", n},
                          {"reward", mean},
                          {"reward_sd", sd},
                          {"base_perplexity", ppl},
                          {"distinct_1", d1 / double(n)},
                          {"distinct_2", d2 / double(n)},
                          {"mean_length", length / double(n)}};
  };

  if (is_url(base_path)) {
    require_remote_build(base_path);
#if IPA_CLI_REMOTE
    if (!o.policy.empty()) throw usage_error("--policy samples from a local model; it needs a local --base");
    const ipa::remote_base base = connect_remote(base_path, tok_path, o.remote, /*renormalize_top_k=*/false);
    const auto tok = load_tokenizer(tok_path, tok_path, base.vocab_size());
    base.check_tokens(ipa::table_of(tok));
    const loaded_adapters adapters(o.adapters, ipa::table_of(tok), base.vocab_size());
    // the base's perplexity from the top-k it revealed while decoding; a token outside them gets
    // the leftover mass spread evenly (the server shows nothing more)
    const std::size_t V = base.vocab_size(), K = base.top_k();
    return evaluate(ipa::ipa_decoder<ipa::remote_base, ipa::vocab_mapped<ipa::llama_model>>(base, adapters.experts),
                    tok, adapters, ipa::keep_base::top_k, base.cached_rows() ? base.cached_rows() : 64,
                    [&](const auto&, const std::vector<ipa::token_id>& resp, const ipa::rollout& r, std::size_t b,
                        double& nll, std::size_t& tokens) {
                      for (std::size_t t = 0; t < resp.size(); ++t, ++tokens) {
                        const std::span<const ipa::token_id> ids(&r.base_top_k_ids(b, t, 0), K);
                        const std::span<const float> lps(&r.base_top_k_log_probs(b, t, 0), K);
                        const auto at = std::find(ids.begin(), ids.end(), resp[t]);
                        nll -= at != ids.end() ? lps[std::size_t(at - ids.begin())]
                                               : ipa::tail_log_prob(lps, V, ipa::tail_policy::uniform);
                      }
                    });
#endif
  }
  ipa::llama_model base = load_llama_for_decoding(base_path);
  base.set_kv_cache_type(kv_cache_type_of(o.kv_cache));
  const auto tok = load_tokenizer(base_path, tok_path, base.vocab_size());
  const loaded_adapters adapters(o.adapters, ipa::table_of(tok), base.vocab_size());
  std::optional<ipa::llama_model> policy;
  if (!o.policy.empty()) {
    if (!o.adapters.paths.empty()) throw usage_error("--policy replaces the base and its adapters; drop --adapter");
    policy.emplace(load_llama_for_decoding(o.policy));
    if (policy->vocab_size() != base.vocab_size())
      throw ipa::shape_error("--policy: vocabulary differs from the base's");
  }
  // the base's perplexity of the continuation: run the (original) base over prompt + response
  const std::size_t V = base.vocab_size();
  auto base_nll = [&](const std::vector<ipa::token_id>& prompt, const std::vector<ipa::token_id>& resp,
                      const ipa::rollout&, std::size_t, double& nll, std::size_t& tokens) {
    std::vector<ipa::token_id> seq = prompt;
    seq.insert(seq.end(), resp.begin(), resp.end());
    seq.pop_back();
    if (resp.empty() || seq.size() > base.context_length()) return;
    auto state = base.new_state(1, int(seq.size()));
    std::vector<int> rows(seq.size(), 0);
    std::vector<std::size_t> items(resp.size());
    for (std::size_t t = 0; t < items.size(); ++t) items[t] = prompt.size() - 1 + t;
    std::vector<float> logits(items.size() * V);
    base.forward(state, rows, seq, items, logits);
    for (std::size_t t = 0; t < resp.size(); ++t) {
      const std::span<const float> row(logits.data() + t * V, V);
      nll -= row[std::size_t(resp[t])] - ipa::log_sum_exp(row);
      ++tokens;
    }
  };
  return evaluate(ipa::ipa_decoder(policy ? *policy : base, adapters.experts), tok, adapters, ipa::keep_base::none, 64,
                  base_nll);
}

int eval(const eval_options& o) {
  const nlohmann::json out = sample_and_score(o);
  if (o.json) {
    std::cout << out.dump() << '\n';
  } else {
    std::printf("samples %zu  reward %.4f  base perplexity %.3f  distinct-1 %.4f  distinct-2 %.4f  length %.1f\n",
                out["samples"].get<std::size_t>(), out["reward"].get<double>(), out["base_perplexity"].get<double>(),
                out["distinct_1"].get<double>(), out["distinct_2"].get<double>(), out["mean_length"].get<double>());
  }
  return 0;
}

int convert(const convert_options& o) {
  const std::string &model_path = o.model, &tok_path = o.tokenizer, &to = o.to, &out = o.out;
  if (architecture_of(model_path) == "gpt2") {
    if (to != "gguf" && to != "gguf-f16" && to != "hf")
      throw usage_error("--to " + to + " writes Llama models only (GPT-2: gguf, gguf-f16 or hf)");
    const ipa::any_model m = load_any_model(model_path);
    const ipa::gpt2_weights& w = m.gpt2()->weights();
    if (to == "hf") {
      ipa::save_hf_gpt2(out, w);
    } else {
      std::optional<ipa::gpt2_tokenizer> tok;  // the model's own vocabulary travels with it
      if (has_gpt2_tokenizer(tok_path.empty() ? model_path : tok_path))
        tok.emplace(load_gpt2_tokenizer(tok_path.empty() ? model_path : tok_path, m.vocab_size()));
      ipa::save_gguf_gpt2(out, w, tok ? &*tok : nullptr, to == "gguf-f16");
    }
    std::cerr << "wrote " << out << "\n";
    return 0;
  }
  const ipa::llama_weights w = load_model(model_path);
  if (to.rfind("gguf", 0) == 0) {
    std::optional<ipa::llama2c_tokenizer> tok;
    if (!tok_path.empty() || is_gguf(model_path) || std::filesystem::exists(default_tokenizer(model_path)))
      tok = load_tokenizer(model_path, tok_path, std::size_t(w.config().vocab_size));
    const ipa::weight_type type = to == "gguf-f16"    ? ipa::weight_type::f16
                                  : to == "gguf-q8_0" ? ipa::weight_type::q8_0
                                                      : ipa::weight_type::f32;
    ipa::save_gguf_llama(out, w, tok ? &*tok : nullptr, type);
  } else if (to == "hf" || to == "hf-f16" || to == "hf-bf16") {
    ipa::save_hf_llama(out, w, to == "hf" ? "F32" : to == "hf-f16" ? "F16" : "BF16");
  } else {
    throw usage_error("--to must be gguf, gguf-f16, gguf-q8_0, hf, hf-f16 or hf-bf16, found '" + to + "'");
  }
  std::cerr << "wrote " << out << "\n";
  return 0;
}

}  // namespace ipa_cli
