// SPDX-License-Identifier: MIT
// The `ipa` command line: generate, train, eval, convert and tokenize. This file only reads the
// command line (CLI11) into the structs of cli/options.hpp; cli/*.cpp run them. `ipa --help`,
// `ipa COMMAND --help` and `ipa --version` say the rest.
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <ipa/version.hpp>

#include "cli/options.hpp"

namespace {

using ipa_cli::usage_error;

constexpr double inf = std::numeric_limits<double>::infinity();
constexpr double float_max = std::numeric_limits<float>::max();

std::string shown(double x) {
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

/// A finite number in [lo, hi], or in (lo, hi] when `above_lo`. Every number goes through here:
/// CLI11 2.1's own Range lets NaN through, and it reads a float that overflows as inf.
CLI::Validator number_in(double lo, double hi, bool above_lo = false) {
  const std::string range = (above_lo ? "(" : "[") + shown(lo) + ", " + shown(hi) + (std::isinf(hi) ? ")" : "]");
  return CLI::Validator(
      [lo, hi, above_lo, range](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = text.empty() ? NAN : std::strtod(text.c_str(), &end);  // underflow to 0 is fine
        if (text.empty() || end != text.c_str() + text.size()) return "expects a number, found '" + text + "'";
        if (!std::isfinite(v) || v < lo || v > hi || (above_lo && v == lo))
          return "expects a finite number in " + range + ", found '" + text + "'";
        return {};
      },
      "in " + range);
}

/// A finite number in (0, hi].
CLI::Validator positive_up_to(double hi) { return number_in(0, hi, true); }

/// A whole number in [lo, hi]. (CLI11 2.1 reads "-1" into an unsigned option as 2^64 - 1.)
CLI::Validator whole_in(std::uint64_t lo, std::uint64_t hi = std::numeric_limits<std::uint64_t>::max()) {
  const std::string range = hi == std::numeric_limits<std::uint64_t>::max()
                                ? ">= " + std::to_string(lo)
                                : "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        std::uint64_t v = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (ec != std::errc() || end != text.data() + text.size() || v < lo || v > hi)
          return "expects a whole number " + range + ", found '" + text + "'";
        return {};
      },
      lo == 0 && hi == std::numeric_limits<std::uint64_t>::max() ? "" : range);
}

constexpr std::uint64_t int_max = std::numeric_limits<int>::max();

/// An option that may be given again and again, one value each time (--prompt a --prompt b).
CLI::Option* repeatable(CLI::Option* o) {
  return o->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->allow_extra_args(false);
}

/// --adapter ADAPTER [--alpha X] pairs (generate, eval): each --alpha weights the --adapter
/// before it, which only the order of the command line tells.
struct adapter_options {
  CLI::Option *adapter = nullptr, *alpha = nullptr;
  std::vector<float> alpha_values;  // in command-line order

  void add_to(CLI::App& sub, ipa_cli::adapter_flags& flags, const std::string& alpha_help) {
    adapter = repeatable(sub.add_option("--adapter", flags.paths, "ADAPTER: an adapter model (repeatable)"));
    alpha = repeatable(sub.add_option("--alpha", alpha_values, alpha_help))->check(number_in(-1e6, 1e6));
    sub.add_option("--control-bin", flags.control_bin,
                   "adapters trained with Quark: condition on reward bin K's control token (0: the best, as "
                   "trained; the last: the worst; alike scores mean the adapter ignores its control token)")
        ->check(whole_in(0, 1 << 20));
  }

  /// The alpha of each --adapter of `sub`: the --alpha after it, else NaN (the folder's own, else 1).
  std::vector<float> alphas(const CLI::App& sub) const {
    std::vector<float> out;
    std::size_t next = 0;
    bool weighted = false;  // the last --adapter already has its --alpha
    for (const CLI::Option* o : sub.parse_order()) {
      if (o == adapter) {
        out.push_back(NAN);
        weighted = false;
      } else if (o == alpha) {
        if (out.empty() || weighted) throw usage_error("--alpha must follow the --adapter it weights");
        out.back() = alpha_values.at(next++);
        weighted = true;
      }
    }
    return out;
  }
};

void add_kv_cache(CLI::App& sub, std::string& kv_cache) {
  sub.add_option("--kv-cache", kv_cache,
                 "what a local base's KV cache stores: f32, or f16 (llama.cpp's default: half the memory)")
      ->check(CLI::IsMember({"f32", "f16"}));
}

void add_remote_options(CLI::App& sub, ipa_cli::remote_flags& r) {
  const char* group = "Base behind a server (--base http://HOST:PORT[/v1][,URL2...])";
  sub.add_option("--base-top-k", r.top_k,
                 "log-probs the server returns per step (generate and train ask llama-server for them "
                 "renormalised over the K: the same tailored policy, and no sort of the whole vocabulary)")
      ->check(whole_in(1, 1 << 20))
      ->group(group);
  sub.add_option("--base-protocol", r.protocol,
                 "llama (native /completion) or openai (/v1/completions); default: from the URL")
      ->check(CLI::IsMember({"llama", "openai"}))
      ->group(group);
  sub.add_flag("--base-per-row", r.per_row,
               "one request per row and step, pinned to a llama-server slot (default: one request per server "
               "and step holding all of its rows, which the server evaluates as one batch)")
      ->group(group);
  sub.add_option("--base-give-up-after", r.give_up_after_s,
                 "seconds without a usable answer before the run ends (train: --resume continues it)")
      ->check(positive_up_to(1e9))
      ->group(group);
}

constexpr const char* model_formats =
    R"(MODEL is a llama2.c checkpoint (e.g. stories260K.bin), a GGUF file (llama or gpt2 architecture; F32, F16, BF16,
Q8_0, Q4_0, Q3_K, Q4_K, Q5_K, Q6_K), a Hugging Face Llama or GPT-2 folder (config.json + safetensors), or the http://
URL of an inference server: llama.cpp's llama-server (http://HOST:PORT, native /completion) or an OpenAI-compatible
/v1/completions (http://HOST:PORT/v1: vLLM with --return-tokens-as-token-ids, llama-server's /v1); several
servers as URL1,URL2 (rows are spread over them; --tokenizer is then required). TOK is a tokenizer.bin, a
GGUF, or a GPT-2 BPE folder / tokenizer.json; by default the GGUF's own, else the tokenizer.bin next to
MODEL, else the HF folder's vocabulary files. ADAPTER is a Llama model in any of those formats or a folder
written by `ipa train` (OUT/adapter: its alpha and control token come from its config.json). An adapter that
stores a tokenizer is checked against the base's token table; tables that differ only by appended tokens or
padding are mapped, and ids the adapter lacks are banned. A negative --alpha makes an anti-expert.)";

constexpr const char* reward_spec =
    R"(Reward SPEC: TERM ('+' TERM)*, TERM = [W '*'] NAME ':' ARGS with avoid:w1,w2  keywords:k1,k2|k2s
keywords-all:...  length:N  distinct:N  cmd:COMMAND (the last term; run by /bin/sh once per batch: it
reads one JSON object per sample on stdin, {"prompt", "response", "prompt_ids", "response_ids"}, and
prints one number per sample, of magnitude <= 1e6, then exits with status 0, within --reward-timeout).)";

void add_tokenize(CLI::App& app, ipa_cli::tokenize_options& o) {
  CLI::App* sub = app.add_subcommand("tokenize", "Print the token ids of a text");
  sub->add_option("--tokenizer", o.tokenizer, "TOK: tokenizer.bin, a GGUF, or a GPT-2 BPE folder / tokenizer.json")
      ->required();
  sub->add_option("--text", o.text, "the text")->required();
}

void add_generate(CLI::App& app, ipa_cli::generate_options& o, adapter_options& adapters) {
  CLI::App* sub = app.add_subcommand("generate", "Decode a base model (+ adapters) on prompts");
  sub->add_option("--base", o.base, "MODEL: the base model (see below)")->required();
  sub->add_option("--tokenizer", o.tokenizer, "TOK: the base's tokenizer (see below)");
  adapters.add_to(*sub, o.adapters, "weight of the --adapter before it (default: its folder's, else 1)");
  repeatable(sub->add_option("--prompt", o.prompts, "a prompt (repeatable)"));
  sub->add_option("--prompts-file", o.prompts_file,
                  "FILE: one prompt per line (an empty line: an empty prompt); a pipe is read once")
      ->check(CLI::ExistingFile);
  sub->add_option("--prompts-wait", o.prompts_wait, "seconds a pipe given as --prompts-file may stay silent")
      ->check(positive_up_to(1e6));
  sub->add_option("--max-new-tokens", o.max_new_tokens, "tokens to generate at most")->check(whole_in(0, 1 << 24));
  sub->add_option("--min-new-tokens", o.min_new_tokens, "no end of text before this many")->check(whole_in(0, 1 << 24));
  sub->add_option("--temperature", o.temperature, "0 decodes greedily")->check(number_in(0, float_max));
  sub->add_option("--top-k", o.top_k, "keep the K likeliest tokens (0: all)")->check(whole_in(0, int_max));
  sub->add_option("--top-p", o.top_p, "nucleus sampling: the smallest set with this mass")->check(positive_up_to(1));
  sub->add_option("--min-p", o.min_p, "drop tokens below P times the likeliest's probability")->check(number_in(0, 1));
  sub->add_option("--repetition-penalty", o.repetition_penalty, "CTRL's penalty on tokens already present")
      ->check(positive_up_to(float_max));
  sub->add_option("--seed", o.seed, "sampling seed")->check(whole_in(0));
  sub->add_option("--batch", o.batch, "prompts decoded together (a base behind a server: at most its slots)")
      ->check(whole_in(1, 1 << 16));
  sub->add_flag("--json", o.json,
                "one JSON object per line (prompt, text, prompt_ids, ids, logprobs, tailored_logprobs, finish_reason)");
  add_kv_cache(*sub, o.kv_cache);
  add_remote_options(*sub, o.remote);
  sub->footer(std::string("\n") + model_formats +
              "\n\nPrompts decode in batches of --batch; each continuation is printed as llama2.c's run.c prints it "
              "(or as JSON), batch by batch, with progress on stderr when there is more than one batch.");
}

void add_train(CLI::App& app, ipa_cli::train_request& r, CLI::Option*& steps, CLI::Option*& max_minutes,
               double& minutes) {
  ipa_cli::train_options& o = r.options;
  CLI::App* sub = app.add_subcommand("train", "Train an adapter against a reward (checkpoints, exact --resume)");
  sub->add_option("--base", o.base, "MODEL: the frozen base (Llama architecture, or a URL)");
  sub->add_option("--tokenizer", o.tokenizer, "TOK: default: the GGUF's own, else tokenizer.bin next to MODEL");
  sub->add_option("--reward", o.reward, "SPEC: what to maximise (see below)");
  sub->add_option("--prompts", o.prompts, "FILE: training prompts, one per line")->check(CLI::ExistingFile);
  sub->add_option("--reward-timeout", o.reward_timeout, "seconds a cmd: reward may take per batch")
      ->check(positive_up_to(1e6));
  sub->add_option("--out", o.out, "DIR: where the run lives (metrics.jsonl, checkpoint-N/, adapter/)")->required();
  sub->add_flag("--resume", r.resume, "continue the run saved in DIR (its stored options win, except --steps)");
  sub->add_option("--algo", o.algo, "rloo (the most sample-efficient here), quark (the paper's), ppo, reinforce, grpo")
      ->check(CLI::IsMember({"rloo", "quark", "ppo", "reinforce", "grpo"}));
  steps =
      sub->add_option("--steps", o.steps, "RL iterations in all (with --resume: up to N in all)")->check(whole_in(0));
  max_minutes = sub->add_option("--max-minutes", minutes, "stop cleanly (and save) after this many minutes")
                    ->check(positive_up_to(1e9))
                    ->default_str("none");
  sub->add_option("--adapter-init", o.adapter_init,
                  "zero (a fresh adapter whose tailored policy starts equal to the base), base (a copy of the "
                  "base), or an adapter folder / model file");
  const char* shape = "Shape of a zero adapter";
  sub->add_option("--adapter-dim", o.adapter_dim, "model width")->check(whole_in(1, 1 << 16))->group(shape);
  sub->add_option("--adapter-layers", o.adapter_layers, "layers")->check(whole_in(1, 1024))->group(shape);
  sub->add_option("--adapter-heads", o.adapter_heads, "attention heads")->check(whole_in(1, 1024))->group(shape);
  sub->add_flag("--tune-base", o.tune_base, "no fusion: fine-tune a copy of the base itself (the costly baseline)");
  sub->add_option("--alpha", o.alpha, "adapter weight")->check(number_in(-1e6, 1e6));
  sub->add_option("--lr", o.lr, "peak learning rate")->check(number_in(0, 1e3));
  sub->add_option("--warmup", o.warmup, "linear warm-up steps")->check(whole_in(0));
  sub->add_option("--decay", o.decay, "learning-rate decay after the warm-up")
      ->check(CLI::IsMember({"constant", "linear", "cosine"}));
  sub->add_option("--batch", o.batch, "prompts per step")->check(whole_in(1, 1 << 20));
  sub->add_option("--samples-per-prompt", o.samples_per_prompt, "samples per prompt (0: rloo/grpo 4, else 1)")
      ->check(whole_in(0, 1 << 20));
  sub->add_option("--max-new-tokens", o.max_new_tokens, "response length at most")->check(whole_in(1, 1 << 24));
  sub->add_option("--temperature", o.temperature, "sampling temperature of the rollouts")
      ->check(positive_up_to(float_max));
  sub->add_option("--top-p", o.top_p, "nucleus sampling of the rollouts")->check(positive_up_to(1));
  sub->add_option("--kl-coef", o.kl_coef, "KL(pi || base) weight")->check(number_in(0, 1e6));
  sub->add_option("--kl-target", o.kl_target, "a target KL makes the weight adaptive (0: fixed)")
      ->check(number_in(0, 1e6));
  sub->add_option("--entropy-coef", o.entropy_coef, "Quark's entropy bonus")->check(number_in(0, 1e6));
  sub->add_option("--bins", o.bins, "Quark's reward quantiles")->check(whole_in(1, 1024));
  sub->add_option("--quark-updates", o.quark_updates, "Quark's gradient steps on the pool per rollout")
      ->check(whole_in(1, 1 << 20));
  sub->add_option("--pool", o.pool, "Quark's pool: samples kept")->check(whole_in(1));
  sub->add_option("--quark-minibatch", o.quark_minibatch,
                  "Quark's samples drawn from the pool per update (0: as many as a rollout has)")
      ->check(whole_in(0, 1 << 20));
  sub->add_option("--quark-train-bins", o.quark_train_bins,
                  "Quark's updates draw from the best N bins only (0: every bin; 1: reward-filtered fine-tuning)")
      ->check(whole_in(0, 1024));
  sub->add_option("--control-check", o.control_check,
                  "Quark: after training, sample N continuations of the training prompts (or --control-check-prompts) "
                  "with the best and the "
                  "worst bin's control token and say whether the adapter follows it (0: skip)")
      ->check(whole_in(0, 1 << 20));
  sub->add_option("--control-check-prompts", o.control_check_prompts,
                  "FILE: the control-token check's prompts, one per line (default: the training prompts)")
      ->check(CLI::ExistingFile);
  sub->add_option("--adam-eps", o.adam_eps, "AdamW's epsilon")->check(number_in(0, 1, true));
  sub->add_option("--max-grad-norm", o.max_grad_norm, "gradient clipping by global norm (0: none)")
      ->check(number_in(0, 1e9));
  sub->add_option("--ppo-epochs", o.ppo_epochs, "PPO's passes over a rollout")->check(whole_in(1, 1 << 20));
  sub->add_option("--clip", o.clip, "PPO's clipping epsilon")->check(number_in(0, 1e3));
  sub->add_option("--gamma", o.gamma, "discount")->check(number_in(0, 1));
  sub->add_option("--lambda", o.lambda,
                  "GAE lambda (1: the end-of-text reward reaches every token; 0.95 starves early tokens)")
      ->check(number_in(0, 1));
  repeatable(sub->add_option("--freeze", o.frozen, "keep a tensor fixed (repeatable), e.g. tok_embeddings"));
  sub->add_option("--micro-batch", o.micro_batch, "samples per forward/backward (0: all; gradient accumulation)")
      ->check(whole_in(0, 1 << 20));
  sub->add_option("--save-every", o.save_every, "checkpoint every N steps (0: only at the end)")->check(whole_in(0));
  sub->add_option("--seed", o.seed, "seed of the run")->check(whole_in(0));
  add_kv_cache(*sub, o.kv_cache);
  add_remote_options(*sub, o.remote);
  sub->footer(std::string("\nWrites DIR/metrics.jsonl (one JSON line per step), DIR/checkpoint-N/ and DIR/adapter (for "
                          "`ipa generate --adapter DIR/adapter`). --base, --reward and --prompts are required unless "
                          "--resume.\n") +
              reward_spec);
}

void add_eval(CLI::App& app, ipa_cli::eval_options& o, adapter_options& adapters) {
  CLI::App* sub = app.add_subcommand("eval", "Mean reward, base perplexity and distinct-1/2 of sampled continuations");
  sub->add_option("--base", o.base, "MODEL: the base (Llama architecture, or a URL)")->required();
  sub->add_option("--tokenizer", o.tokenizer, "TOK: the base's tokenizer");
  sub->add_option("--reward", o.reward, "SPEC: the reward (see below)")->required();
  sub->add_option("--prompts", o.prompts, "FILE: prompts, one per line; a pipe is read once")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("--prompts-wait", o.prompts_wait, "seconds a pipe given as --prompts may stay silent")
      ->check(positive_up_to(1e6));
  sub->add_option("--reward-timeout", o.reward_timeout, "seconds a cmd: reward may take per batch")
      ->check(positive_up_to(1e6));
  adapters.add_to(*sub, o.adapters, "weight of the --adapter before it (default: its folder's, else 1)");
  sub->add_option("--samples", o.samples, "samples per prompt")->check(whole_in(1, 1 << 20));
  sub->add_option("--max-new-tokens", o.max_new_tokens, "tokens per continuation at most")->check(whole_in(1, 1 << 24));
  sub->add_option("--temperature", o.temperature, "sampling temperature")->check(positive_up_to(float_max));
  sub->add_option("--top-p", o.top_p, "nucleus sampling")->check(positive_up_to(1));
  sub->add_option("--seed", o.seed, "sampling seed")->check(whole_in(0));
  sub->add_option("--policy", o.policy,
                  "MODEL: sample from this model alone instead of the base (+ adapters), e.g. OUT/adapter of "
                  "`ipa train --tune-base`; perplexity is still the base's")
      ->excludes(adapters.adapter);
  repeatable(sub->add_option("--ban-words", o.banned_words,
                             "w1,w2: ban the words at decoding time (' word' and ' Word' as token sequences, as "
                             "Hugging Face's bad_words_ids): the decoding-time baseline"));
  sub->add_option("--prompt-suffix", o.prompt_suffix, "TEXT: appended to every prompt");
  sub->add_flag("--json", o.json, "print the summary as one JSON object");
  add_kv_cache(*sub, o.kv_cache);
  add_remote_options(*sub, o.remote);
  sub->footer(std::string("\n") + reward_spec);
}

void add_convert(CLI::App& app, ipa_cli::convert_options& o) {
  CLI::App* sub = app.add_subcommand("convert", "Write a model as GGUF (F32 or F16) or as a Hugging Face folder");
  sub->add_option("--model", o.model, "MODEL: a model file or folder")->required();
  sub->add_option("--to", o.to,
                  "gguf, gguf-f16, gguf-q8_0 (compact: llama.cpp reads them), hf, hf-f16 or hf-bf16 (Llama: read in "
                  "place by ipa)")
      ->required()
      ->check(CLI::IsMember({"gguf", "gguf-f16", "gguf-q8_0", "hf", "hf-f16", "hf-bf16"}));
  sub->add_option("--out", o.out, "PATH: the file (GGUF) or folder (hf) to write")->required();
  sub->add_option("--tokenizer", o.tokenizer, "TOK: stored in a GGUF (default: the model's own, if any)");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("ipa " IPA_VERSION_STRING
               ": Inference-Time Policy Adapters (Lu et al. 2023). A frozen base model is decoded in "
               "lockstep with small adapters (logits added, weighted by alpha); the adapters are trained with RL.",
               "ipa");
  app.set_version_flag("--version", "ipa " IPA_VERSION_STRING);
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();  // --help shows each option's default
  // an option given twice: the last one wins (repeatable ones, like --prompt, take every value)
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

  ipa_cli::tokenize_options tokenize;
  ipa_cli::generate_options generate;
  ipa_cli::train_request train;
  ipa_cli::eval_options eval;
  ipa_cli::convert_options convert;
  adapter_options generate_adapters, eval_adapters;
  CLI::Option *steps = nullptr, *max_minutes = nullptr;
  double minutes = 0;
  add_generate(app, generate, generate_adapters);
  add_train(app, train, steps, max_minutes, minutes);
  add_eval(app, eval, eval_adapters);
  add_convert(app, convert);
  add_tokenize(app, tokenize);

  const std::string command = argc > 1 ? argv[1] : "";
  const std::string help = app.get_subcommands([&](CLI::App* s) { return s->get_name() == command; }).empty()
                               ? "ipa --help"
                               : "ipa " + command + " --help";
  try {
    try {
      app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
      return app.exit(CLI::CallForHelp());
    } catch (const CLI::CallForAllHelp&) {
      return app.exit(CLI::CallForAllHelp());
    } catch (const CLI::CallForVersion& e) {
      return app.exit(e);
    } catch (const CLI::ParseError& e) {
      throw usage_error(e.what());
    }
    const CLI::App* sub = app.get_subcommands().front();
    const std::string name = sub->get_name();
    if (name == "tokenize") return ipa_cli::tokenize(tokenize);
    if (name == "generate") {
      generate.adapters.alphas = generate_adapters.alphas(*sub);
      return ipa_cli::generate(generate);
    }
    if (name == "train") {
      if (steps->count()) train.steps = train.options.steps;
      if (max_minutes->count()) train.max_minutes = minutes;
      return ipa_cli::train(train);
    }
    if (name == "eval") {
      eval.adapters.alphas = eval_adapters.alphas(*sub);
      return ipa_cli::eval(eval);
    }
    return ipa_cli::convert(convert);
  } catch (const usage_error& e) {
    std::cerr << "ipa: " << e.what() << "\nRun '" << help << "' for the options.\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ipa: error: " << e.what() << "\n";
    return 1;
  }
}
