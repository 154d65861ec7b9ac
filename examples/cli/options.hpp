// SPDX-License-Identifier: MIT
// What each `ipa` subcommand was asked to do, as plain structs: examples/ipa.cpp fills them from
// the command line (CLI11), the subcommands' source files run them. Neither side sees the other's
// library: the parser is compiled once, in one translation unit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ipa_cli {

/// A mistake in the command line itself: printed with a pointer to --help, exit status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The --base-* options of a base behind a server.
struct remote_flags {
  std::string protocol;  // "", "llama" or "openai"
  std::size_t top_k = 20;
  double give_up_after_s = 60;
  bool per_row = false;  // one request per row and step (else one per server and step)
  // (with defaults: runs saved before a field existed still resume)
  NLOHMANN_DEFINE_TYPE_INTRUSIVE_WITH_DEFAULT(remote_flags, protocol, top_k, give_up_after_s, per_row)
};

/// --adapter ADAPTER [--alpha X] pairs; an alpha of NaN means "the adapter folder's own".
struct adapter_flags {
  std::vector<std::string> paths;
  std::vector<float> alphas;    // one per path, NaN (or none) for the folder's own
  std::size_t control_bin = 0;  // Quark adapters: condition on this reward bin's token (0: the best)
};

struct tokenize_options {
  std::string tokenizer, text;
};

struct generate_options {
  std::string base, tokenizer, prompts_file;
  std::vector<std::string> prompts;
  adapter_flags adapters;
  std::size_t max_new_tokens = 256, min_new_tokens = 0, top_k = 0;
  std::size_t batch = 64;  // rows decoded together (a remote base: as many as it keeps caches for)
  float temperature = 1.0f, repetition_penalty = 1.0f;
  double top_p = 1.0, min_p = 0.0, prompts_wait = 60;
  std::uint64_t seed = 42;
  bool json = false;
  std::string kv_cache = "f32";  // the base's KV cache: f32 or f16
  remote_flags remote;
};

/// Every option of a training run, so that --resume continues with exactly the same settings.
struct train_options {
  std::string base, tokenizer, reward, prompts, out, adapter_init = "zero";
  std::string algo = "rloo", decay = "constant";
  std::size_t steps = 300, batch = 16, samples_per_prompt = 0, max_new_tokens = 128, warmup = 0;
  std::size_t ppo_epochs = 4, bins = 5, micro_batch = 0, save_every = 25, quark_updates = 2, pool = 4096;
  std::size_t quark_minibatch = 0, quark_train_bins = 0;
  std::size_t control_check = 256;    // Quark: samples per control token in the closing check (0: none)
  std::string control_check_prompts;  // the check's prompts file (empty: the training prompts)
  double adam_eps = 1e-8, max_grad_norm = 1.0;
  int adapter_dim = 64, adapter_layers = 2, adapter_heads = 8;
  double lr = 1e-3, top_p = 1.0, kl_coef = 0.05, kl_target = 0, entropy_coef = 0.06, clip = 0.2, gamma = 1.0,
         lambda = 1.0, reward_timeout = 60;
  float alpha = 1.0f, temperature = 1.0f;
  bool tune_base = false;
  std::vector<std::string> frozen;
  std::uint64_t seed = 1;
  std::string kv_cache = "f32";  // the local base's KV cache: f32 or f16
  remote_flags remote;           // a --base URL's settings

  // (with defaults: a checkpoint written before an option existed still resumes)
  NLOHMANN_DEFINE_TYPE_INTRUSIVE_WITH_DEFAULT(train_options, base, tokenizer, reward, prompts, out, adapter_init, algo,
                                              decay, steps, batch, samples_per_prompt, max_new_tokens, warmup,
                                              ppo_epochs, bins, micro_batch, save_every, adapter_dim, adapter_layers,
                                              adapter_heads, lr, top_p, kl_coef, kl_target, entropy_coef, clip, gamma,
                                              lambda, alpha, temperature, tune_base, frozen, seed, quark_updates, pool,
                                              remote, reward_timeout, quark_minibatch, adam_eps, max_grad_norm,
                                              quark_train_bins, control_check, control_check_prompts, kv_cache)
};

/// What `ipa train` takes besides the run's stored options.
struct train_request {
  train_options options;
  bool resume = false;
  std::optional<std::size_t> steps;  // --steps given (it overrides a resumed run's)
  std::optional<double> max_minutes;
};

struct eval_options {
  std::string base, tokenizer, reward, prompts, prompt_suffix, policy;
  adapter_flags adapters;
  std::vector<std::string> banned_words;  // each "w1,w2"
  std::size_t samples = 4, max_new_tokens = 128;
  std::size_t rows = 0;  // when set: this many samples in all, the prompts taken in turn (not `samples` each)
  float temperature = 1.0f;
  double top_p = 1.0, reward_timeout = 60, prompts_wait = 60;
  std::uint64_t seed = 1;
  bool json = false;
  std::string kv_cache = "f32";  // the base's KV cache: f32 or f16
  remote_flags remote;
};

struct convert_options {
  std::string model, tokenizer, to, out;
};

int tokenize(const tokenize_options& o);
int generate(const generate_options& o);
int train(train_request r);
int eval(const eval_options& o);
int convert(const convert_options& o);

}  // namespace ipa_cli
