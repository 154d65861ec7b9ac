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
namespace {

constexpr const char* train_usage = R"(usage: ipa train --base MODEL --reward SPEC --prompts FILE --out DIR [options]

  --tokenizer TOK          default: tokenizer.bin next to MODEL
  --algo ALGO              rloo (default: the most sample-efficient here), quark (the paper's),
                           ppo, reinforce, grpo
  --steps N                RL iterations in all (default 300; with --resume: up to N in all)
  --max-minutes X          stop cleanly (and save) after X minutes
  --adapter-init INIT      zero (default: a fresh adapter whose tailored policy starts equal to
                           the base), base (a copy of the base), or an adapter folder / .bin file
  --adapter-dim D --adapter-layers L --adapter-heads H   shape of a zero adapter (64, 2, 8)
  --tune-base              no fusion: fine-tune a copy of the base itself (the costly baseline)
  --resume                 continue the run saved in DIR (its stored options win, except DIR)
  --alpha A                adapter weight (default 1)
  --lr LR                  peak learning rate (default 1e-3); --warmup N, --decay constant|linear|cosine
  --batch B                prompts per step (default 16); --samples-per-prompt K (rloo/grpo: default 4)
  --max-new-tokens N       (default 128)  --temperature T (1)  --top-p P (1)
  --kl-coef C              KL weight (default 0.05); --kl-target K makes it adaptive
  --entropy-coef C         Quark's entropy bonus (default 0.06); --bins K (5); --quark-updates N
                           (gradient steps on the pool per rollout, 2); --pool N (samples kept, 4096)
  --ppo-epochs N (4)  --clip C (0.2)  --gamma G (1)  --lambda L (1: the sparse end-of-text reward
                           reaches every token; 0.95 starves early tokens of a 128-token story)
  --freeze NAME            keep a tensor fixed (repeatable), e.g. tok_embeddings
  --micro-batch N          samples per forward/backward (gradient accumulation)
  --save-every N           checkpoint every N steps (default 25) and at the end
  --seed S                 (default 1)

Writes DIR/metrics.jsonl (one JSON line per step), DIR/checkpoint-N/ and DIR/adapter (for
`ipa generate --adapter DIR/adapter`). Reward SPEC: TERM ('+' TERM)*, TERM = [W '*'] NAME ':' ARGS
with avoid:w1,w2  keywords:k1,k2|k2s  keywords-all:...  length:N  distinct:N  cmd:COMMAND.
)";

constexpr const char* eval_usage = R"(usage: ipa eval --base MODEL --reward SPEC --prompts FILE [options]

  --tokenizer TOK  --adapter ADAPTER [--alpha X] (repeatable)  --samples K (per prompt, default 4)
  --max-new-tokens N (128)  --temperature T (1)  --top-p P (1)  --seed S (1)
  --policy MODEL           sample from this model alone instead of the base (+ adapters), e.g.
                           OUT/adapter of `ipa train --tune-base`; perplexity is still the base's
  --ban-words w1,w2        ban the words at decoding time (each as the token sequence of ' word' and
                           ' Word', as Hugging Face's bad_words_ids): the decoding-time baseline
  --prompt-suffix TEXT     append TEXT to every prompt (e.g. to force a keyword into it)
  --json                   print the summary as one JSON object

Prints the mean reward, the base model's perplexity of the continuations, distinct-1 and
distinct-2 (per continuation, averaged) and the mean length in tokens.
)";

// Every option of a run, so that --resume continues with exactly the same settings.
struct train_options {
  std::string base, tokenizer, reward, prompts, out, adapter_init = "zero";
  std::string algo = "rloo", decay = "constant";
  std::size_t steps = 300, batch = 16, samples_per_prompt = 0, max_new_tokens = 128, warmup = 0;
  std::size_t ppo_epochs = 4, bins = 5, micro_batch = 0, save_every = 25, quark_updates = 2, pool = 4096;
  int adapter_dim = 64, adapter_layers = 2, adapter_heads = 8;
  double lr = 1e-3, top_p = 1.0, kl_coef = 0.05, kl_target = 0, entropy_coef = 0.06, clip = 0.2, gamma = 1.0,
         lambda = 1.0;
  float alpha = 1.0f, temperature = 1.0f;
  bool tune_base = false;
  std::vector<std::string> frozen;
  std::uint64_t seed = 1;
  remote_flags remote;  // a --base URL's settings

  // (with defaults: a checkpoint written before an option existed still resumes)
  NLOHMANN_DEFINE_TYPE_INTRUSIVE_WITH_DEFAULT(train_options, base, tokenizer, reward, prompts, out, adapter_init, algo,
                                              decay, steps, batch, samples_per_prompt, max_new_tokens, warmup,
                                              ppo_epochs, bins, micro_batch, save_every, adapter_dim, adapter_layers,
                                              adapter_heads, lr, top_p, kl_coef, kl_target, entropy_coef, clip, gamma,
                                              lambda, alpha, temperature, tune_base, frozen, seed, quark_updates, pool,
                                              remote)
};

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

std::string clock(double seconds) {
  const long s = long(std::max(0.0, seconds));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

}  // namespace

int train(args& a) {
  train_options o;
  std::optional<double> max_minutes;
  std::optional<std::size_t> steps_flag;
  bool resume = false;
  while (!a.done()) {
    const std::string f = a.flag();
    if (f == "--help" || f == "-h") {
      std::cout << train_usage << '\n' << remote_usage;
      return 0;
    }
    if (o.remote.take(f, a)) continue;
    if (f == "--base") o.base = a.value(f);
    else if (f == "--tokenizer") o.tokenizer = a.value(f);
    else if (f == "--reward") o.reward = a.value(f);
    else if (f == "--prompts") o.prompts = a.value(f);
    else if (f == "--out") o.out = a.value(f);
    else if (f == "--algo") o.algo = a.value(f);
    else if (f == "--steps") steps_flag = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--max-minutes") max_minutes = parse_number<double>(f, a.value(f));
    else if (f == "--adapter-init") o.adapter_init = a.value(f);
    else if (f == "--adapter-dim") o.adapter_dim = parse_number<int>(f, a.value(f));
    else if (f == "--adapter-layers") o.adapter_layers = parse_number<int>(f, a.value(f));
    else if (f == "--adapter-heads") o.adapter_heads = parse_number<int>(f, a.value(f));
    else if (f == "--tune-base") o.tune_base = true;
    else if (f == "--resume") resume = true;
    else if (f == "--alpha") o.alpha = parse_number<float>(f, a.value(f));
    else if (f == "--lr") o.lr = parse_number<double>(f, a.value(f));
    else if (f == "--warmup") o.warmup = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--decay") o.decay = a.value(f);
    else if (f == "--batch") o.batch = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--samples-per-prompt") o.samples_per_prompt = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--max-new-tokens") o.max_new_tokens = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--temperature") o.temperature = parse_number<float>(f, a.value(f));
    else if (f == "--top-p") o.top_p = parse_number<double>(f, a.value(f));
    else if (f == "--kl-coef") o.kl_coef = parse_number<double>(f, a.value(f));
    else if (f == "--kl-target") o.kl_target = parse_number<double>(f, a.value(f));
    else if (f == "--entropy-coef") o.entropy_coef = parse_number<double>(f, a.value(f));
    else if (f == "--bins") o.bins = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--quark-updates") o.quark_updates = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--pool") o.pool = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--ppo-epochs") o.ppo_epochs = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--clip") o.clip = parse_number<double>(f, a.value(f));
    else if (f == "--gamma") o.gamma = parse_number<double>(f, a.value(f));
    else if (f == "--lambda") o.lambda = parse_number<double>(f, a.value(f));
    else if (f == "--freeze") o.frozen.push_back(a.value(f));
    else if (f == "--micro-batch") o.micro_batch = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--save-every") o.save_every = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--seed") o.seed = parse_number<std::uint64_t>(f, a.value(f));
    else throw usage_error("unknown option for train: " + f);
  }
  if (o.out.empty()) throw usage_error("train needs --out DIR");
  std::string checkpoint;
  if (resume) {
    checkpoint = ipa::latest_checkpoint(o.out);
    if (checkpoint.empty()) throw ipa::io_error(o.out + ": --resume, but there is no checkpoint (no 'latest' file)");
    const std::string out = o.out;  // where the run lives now (it may have been moved or copied)
    o = ipa::checkpoint_run(checkpoint).get<train_options>();  // the run's own options
    o.out = out;
  }
  if (steps_flag) o.steps = *steps_flag;
  if (o.base.empty() || o.reward.empty() || o.prompts.empty())
    throw usage_error("train needs --base MODEL, --reward SPEC and --prompts FILE");
  if (max_minutes && !(*max_minutes > 0)) throw usage_error("--max-minutes must be > 0");
  auto reward = ipa::spec_reward::parse(o.reward);

  // the loop, whatever the base
  auto run_training = [&](auto& trainer) {
    if (resume) {
      ipa::load_checkpoint(checkpoint, trainer);
      std::cerr << "resumed from " << checkpoint << " at step " << trainer.steps_done() << "\n";
    } else {
      std::filesystem::create_directories(o.out);
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
    std::size_t saved_step = std::size_t(-1);  // the step of the newest checkpoint this process wrote
    while (trainer.steps_done() < o.steps) {
      if (max_minutes && elapsed() >= *max_minutes * 60) {
        stopped_by_clock = true;
        break;
      }
      const ipa::step_metrics m = trainer.step();
      const nlohmann::json j = {{"step", m.step},       {"reward", m.reward_mean},
                                {"kl", m.kl},           {"entropy", m.entropy},
                                {"loss", m.loss},       {"grad_norm", m.grad_norm},
                                {"lr", m.lr},           {"kl_coef", m.kl_coef},
                                {"samples", m.samples}, {"response_tokens", m.response_tokens},
                                {"seconds", m.seconds}, {"tokens_per_second", m.tokens_per_second},
                                {"elapsed", elapsed()}};
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
    if (saved_step != trainer.steps_done()) ipa::save_checkpoint(o.out, trainer, run);  // unless just saved
    std::cerr << (stopped_by_clock ? "stopped at --max-minutes; " : "") << "saved " << ipa::latest_checkpoint(o.out)
              << " (adapter: " << o.out << "/adapter)\n";
    return 0;
  };

  if (is_url(o.base)) {
    require_remote_build(o.base);
#if IPA_CLI_REMOTE
    const ipa::remote_base base = connect_remote(o.base, o.tokenizer, o.remote);
    const auto tok = load_tokenizer(o.tokenizer, o.tokenizer, base.vocab_size());
    base.check_tokens(ipa::table_of(tok));
    ipa::prompt_list prompts;
    for (const auto& line : read_lines(o.prompts)) prompts.push_back(tok.encode(line));
    ipa::llama_config served;  // what an adapter needs of the base: its vocabulary and context
    served.vocab_size = int(base.vocab_size());
    served.seq_len = int(std::min<std::size_t>(base.context_length(), 1 << 16));
    ipa::rl_trainer<ipa::spec_reward, ipa::llama2c_tokenizer, ipa::remote_base> trainer(
        &base, initial_adapter(o, nullptr, served), tok, std::move(reward), prompts, make_config(o));
    return run_training(trainer);
#endif
  }
  const ipa::llama_weights base_weights = load_model(o.base);
  const ipa::llama_model base(base_weights);
  const auto tok = load_tokenizer(o.base, o.tokenizer, base.vocab_size());
  ipa::prompt_list prompts;
  for (const auto& line : read_lines(o.prompts)) prompts.push_back(tok.encode(line));
  ipa::rl_trainer trainer(o.tune_base ? nullptr : &base, initial_adapter(o, &base_weights, base_weights.config()), tok,
                          std::move(reward), prompts, make_config(o));
  return run_training(trainer);
}

int eval(args& a) {
  std::string base_path, tok_path, spec, prompts_file, suffix, policy_path;
  std::vector<std::string> adapter_paths, banned_words;
  std::vector<float> alphas;
  std::size_t samples = 4, max_new = 128;
  float temperature = 1.0f;
  double top_p = 1.0;
  std::uint64_t seed = 1;
  bool json = false;
  remote_flags remote;
  while (!a.done()) {
    const std::string f = a.flag();
    if (f == "--help" || f == "-h") {
      std::cout << eval_usage << '\n' << remote_usage;
      return 0;
    }
    if (remote.take(f, a)) continue;
    if (f == "--base") base_path = a.value(f);
    else if (f == "--tokenizer") tok_path = a.value(f);
    else if (f == "--adapter") adapter_paths.push_back(a.value(f)), alphas.push_back(NAN);
    else if (f == "--alpha") {
      if (alphas.empty()) throw usage_error("--alpha must follow the --adapter it weights");
      alphas.back() = parse_number<float>(f, a.value(f));
      ipa::check_alpha(alphas.back(), "--alpha");
    } else if (f == "--reward") spec = a.value(f);
    else if (f == "--prompts") prompts_file = a.value(f);
    else if (f == "--samples") samples = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--max-new-tokens") max_new = parse_number<std::size_t>(f, a.value(f));
    else if (f == "--temperature") temperature = parse_number<float>(f, a.value(f));
    else if (f == "--top-p") top_p = parse_number<double>(f, a.value(f));
    else if (f == "--seed") seed = parse_number<std::uint64_t>(f, a.value(f));
    else if (f == "--ban-words") {
      for (const auto& w : ipa::words_of(a.value(f))) banned_words.push_back(w);
    } else if (f == "--prompt-suffix") suffix = a.value(f);
    else if (f == "--policy") policy_path = a.value(f);
    else if (f == "--json") json = true;
    else throw usage_error("unknown option for eval: " + f);
  }
  if (base_path.empty() || spec.empty() || prompts_file.empty())
    throw usage_error("eval needs --base MODEL, --reward SPEC and --prompts FILE");
  if (samples == 0) throw usage_error("--samples must be >= 1");
  auto reward = ipa::spec_reward::parse(spec);

  // Samples with `decoder`; base_nll(prompt, response, rollout, row, nll, tokens) adds the base's
  // negative log-likelihood of a continuation.
  auto evaluate = [&](const auto& decoder, const ipa::llama2c_tokenizer& tok, const loaded_adapters& adapters,
                      ipa::keep_base keep, std::size_t cached_rows, auto&& base_nll) {
    ipa::generation_config g;
    g.keep_base_logits = keep;
    g.max_new_tokens = max_new;
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
    auto sampler = ipa::make_standard_sampler(temperature, 0, top_p);
    ipa::xoshiro256 rng(seed);

    const auto lines = read_lines(prompts_file);
    double reward_sum = 0, nll = 0, d1 = 0, d2 = 0, length = 0;
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
      for (double s : scores) reward_sum += s;
      n += batch.size();
      batch.clear();
    };
    for (const auto& line : lines)
      for (std::size_t k = 0; k < samples; ++k) {
        batch.push_back(tok.encode(line + suffix));
        if (batch.size() == chunk) flush();
      }
    flush();
    const double ppl = std::exp(nll / double(std::max<std::size_t>(tokens, 1)));
    const nlohmann::json out = {{"samples", n},
                                {"reward", reward_sum / double(n)},
                                {"base_perplexity", ppl},
                                {"distinct_1", d1 / double(n)},
                                {"distinct_2", d2 / double(n)},
                                {"mean_length", length / double(n)}};
    if (json) std::cout << out.dump() << '\n';
    else
      std::printf("samples %zu  reward %.4f  base perplexity %.3f  distinct-1 %.4f  distinct-2 %.4f  length %.1f\n", n,
                  reward_sum / double(n), ppl, d1 / double(n), d2 / double(n), length / double(n));
    return 0;
  };

  if (is_url(base_path)) {
    require_remote_build(base_path);
#if IPA_CLI_REMOTE
    if (!policy_path.empty()) throw usage_error("--policy samples from a local model; it needs a local --base");
    const ipa::remote_base base = connect_remote(base_path, tok_path, remote);
    const auto tok = load_tokenizer(tok_path, tok_path, base.vocab_size());
    base.check_tokens(ipa::table_of(tok));
    const loaded_adapters adapters(adapter_paths, alphas, ipa::table_of(tok), base.vocab_size());
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
  const ipa::llama_model base(load_model(base_path));
  const auto tok = load_tokenizer(base_path, tok_path, base.vocab_size());
  const loaded_adapters adapters(adapter_paths, alphas, ipa::table_of(tok), base.vocab_size());
  std::optional<ipa::llama_model> policy;
  if (!policy_path.empty()) {
    if (!adapter_paths.empty()) throw usage_error("--policy replaces the base and its adapters; drop --adapter");
    policy.emplace(load_model(policy_path));
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

int convert(args& a) {
  std::string model_path, tok_path, to, out;
  while (!a.done()) {
    const std::string f = a.flag();
    if (f == "--model") model_path = a.value(f);
    else if (f == "--tokenizer") tok_path = a.value(f);
    else if (f == "--to") to = a.value(f);
    else if (f == "--out") out = a.value(f);
    else throw usage_error("unknown option for convert: " + f);
  }
  if (model_path.empty() || to.empty() || out.empty()) throw usage_error("convert needs --model, --to and --out");
  if (to != "gguf" && to != "gguf-f16" && to != "hf")
    throw usage_error("--to must be gguf, gguf-f16 or hf, found '" + to + "'");
  if (architecture_of(model_path) == "gpt2") {
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
  if (to == "gguf" || to == "gguf-f16") {
    std::optional<ipa::llama2c_tokenizer> tok;
    if (!tok_path.empty() || is_gguf(model_path) || std::filesystem::exists(default_tokenizer(model_path)))
      tok = load_tokenizer(model_path, tok_path, std::size_t(w.config().vocab_size));
    ipa::save_gguf_llama(out, w, tok ? &*tok : nullptr, to == "gguf-f16");
  } else if (to == "hf") {
    ipa::save_hf_llama(out, w);
  } else {
    throw usage_error("--to must be gguf, gguf-f16 or hf, found '" + to + "'");
  }
  std::cerr << "wrote " << out << "\n";
  return 0;
}

}  // namespace ipa_cli
