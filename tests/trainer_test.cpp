// SPDX-License-Identifier: MIT
// The RL trainer with the real base (stories260K): the base never runs in an update, a fresh
// adapter starts exactly at the base, resume is exact, and checkpoints survive a kill mid-write.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ipa/decode/decoder.hpp>
#include <ipa/io/hf_gpt2.hpp>
#include <ipa/io/llama2c.hpp>
#include <ipa/model/gpt2.hpp>
#include <ipa/reward/reward.hpp>
#include <ipa/text/llama2c_tokenizer.hpp>
#include <ipa/train/checkpoint.hpp>
#include <ipa/train/trainer.hpp>

#include "test_data.hpp"

namespace {

// A base that counts every call into it.
struct counting_base {
  using state_type = ipa::llama_state;
  const ipa::llama_model* model;
  mutable int calls = 0;
  std::size_t vocab_size() const noexcept { return model->vocab_size(); }
  std::size_t context_length() const noexcept { return model->context_length(); }
  state_type new_state(int b, int cap) const { return model->new_state(b, cap); }
  void prefill(state_type& s, const ipa::prompt_list& p, std::span<float> logits) const {
    ++calls;
    model->prefill(s, p, logits);
  }
  void step(state_type& s, std::span<const int> rows, std::span<const ipa::token_id> t, std::span<float> logits) const {
    ++calls;
    model->step(s, rows, t, logits);
  }
};
static_assert(ipa::Policy<counting_base>);

struct fixture {
  ipa::llama_weights base_weights = ipa::load_llama2c(ipa_test::model_path());
  ipa::llama_model base{base_weights};
  ipa::llama2c_tokenizer tok = ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path(), 512);
  ipa::prompt_list prompts = {tok.encode("Once upon a time"), tok.encode("Tom had a ball."),
                              tok.encode("One day, Lily went"), tok.encode("The sun was hot.")};

  ipa::llama_weights adapter() const {
    ipa::llama_config c = base_weights.config();
    c.dim = 32;
    c.hidden_dim = 64;
    c.n_layers = 1;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    return ipa::llama_weights::zero_output_adapter(c, 7);
  }
  static ipa::rl_config config(ipa::rl_algorithm a) {
    ipa::rl_config c;
    c.algorithm = a;
    c.prompts_per_step = 2;
    c.samples_per_prompt = a == ipa::rl_algorithm::rloo || a == ipa::rl_algorithm::grpo ? 2 : 1;
    c.max_new_tokens = 12;
    c.stop_tokens = {1};
    c.lr.peak = 3e-3;
    c.ppo_epochs = 2;
    c.quark_updates = 2;
    c.pool_capacity = 6;  // exercises eviction
    c.seed = 5;
    return c;
  }
};

const ipa::rl_algorithm all_algorithms[] = {ipa::rl_algorithm::quark, ipa::rl_algorithm::ppo,
                                            ipa::rl_algorithm::reinforce, ipa::rl_algorithm::rloo,
                                            ipa::rl_algorithm::grpo};

std::string temp_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("ipa_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir.string();
}

}  // namespace

TEST_CASE("an update never runs the base; the rollout's logits are all it needs") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  fixture f;
  const counting_base counted{&f.base};
  for (auto algo : all_algorithms) {
    CAPTURE(ipa::to_string(algo));
    ipa::rl_trainer<ipa::avoid_words, ipa::llama2c_tokenizer, counting_base> t(
        &counted, f.adapter(), f.tok, ipa::avoid_words({"sad"}), f.prompts, fixture::config(algo));
    const auto samples = t.rollout_and_score();
    const int after_rollout = counted.calls;
    CHECK(after_rollout > 0);
    ipa::step_metrics m;
    t.update(samples, m);
    CHECK(counted.calls == after_rollout);  // zero base forward calls in the update
    CHECK(std::isfinite(m.loss));
    counted.calls = 0;
  }
}

TEST_CASE("Quark's updates draw from the best bins only where asked, and from every bin otherwise") {
  const std::vector<int> bins{0, 4, 0, 2, 1};
  CHECK(ipa::quark_trainable(bins, 0) == std::vector<std::size_t>{0, 1, 2, 3, 4});
  CHECK(ipa::quark_trainable(bins, 1) == std::vector<std::size_t>{0, 2});
  CHECK(ipa::quark_trainable(bins, 3) == std::vector<std::size_t>{0, 2, 3, 4});
}

TEST_CASE("Quark's recipe knobs: pool minibatch size, AdamW's epsilon, clipping off; nonsense is refused") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  fixture f;
  ipa::rl_config cfg = fixture::config(ipa::rl_algorithm::quark);
  cfg.quark_minibatch = 1, cfg.quark_updates = 3, cfg.adam.eps = 1e-5, cfg.max_grad_norm = 0;
  ipa::rl_trainer<ipa::avoid_words, ipa::llama2c_tokenizer, ipa::llama_model> t(
      &f.base, f.adapter(), f.tok, ipa::avoid_words({"sad"}), f.prompts, cfg);
  const ipa::step_metrics m = t.step();
  CHECK(std::isfinite(m.loss));
  CHECK(m.grad_norm > 0);
  // a one-sample minibatch trains on fewer tokens than the whole rollout: another loss
  ipa::rl_config whole = cfg;
  whole.quark_minibatch = 0;
  ipa::rl_trainer<ipa::avoid_words, ipa::llama2c_tokenizer, ipa::llama_model> u(
      &f.base, f.adapter(), f.tok, ipa::avoid_words({"sad"}), f.prompts, whole);
  CHECK(u.step().loss != m.loss);
  // updates that draw from bin 0 alone (reward-filtered fine-tuning; which entries: the test above)
  ipa::rl_config best_only = whole;
  best_only.quark_train_bins = 1;
  ipa::rl_trainer<ipa::avoid_words, ipa::llama2c_tokenizer, ipa::llama_model> b(
      &f.base, f.adapter(), f.tok, ipa::avoid_words({"sad"}), f.prompts, best_only);
  const ipa::step_metrics mb = b.step();
  CHECK(std::isfinite(mb.loss));
  CHECK(mb.grad_norm > 0);
  best_only.quark_train_bins = 6;
  CHECK_THROWS_WITH_AS(best_only.validate(), doctest::Contains("quark_train_bins must be in [0, quark_bins]"),
                       ipa::config_error);
  cfg.max_grad_norm = -1;
  CHECK_THROWS_WITH_AS(cfg.validate(), doctest::Contains("max_grad_norm must be >= 0"), ipa::config_error);
  cfg.max_grad_norm = 1, cfg.adam.eps = 0;
  CHECK_THROWS_WITH_AS(cfg.validate(), doctest::Contains("eps must be > 0"), ipa::config_error);
}

TEST_CASE("a zero-output adapter leaves the tailored policy exactly equal to the base") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  fixture f;
  const ipa::llama_model adapter(f.adapter());
  ipa::generation_config g;
  g.max_new_tokens = 30;
  ipa::sampler<ipa::greedy> pick{ipa::greedy{}};
  ipa::xoshiro256 rng(1);
  const auto alone = ipa::ipa_decoder<ipa::llama_model>(f.base).generate(f.prompts, g, pick, rng);
  const auto tailored =
      ipa::ipa_decoder<ipa::llama_model>(f.base, {ipa::with_alpha(adapter, 2.0f)}).generate(f.prompts, g, pick, rng);
  CHECK(alone.response_ids == tailored.response_ids);
  CHECK(alone.tailored_log_probs == tailored.tailored_log_probs);
}

TEST_CASE("PPO fine-tuning the base itself (tune_base) reports its KL to the reference") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  fixture f;
  ipa::rl_config c = fixture::config(ipa::rl_algorithm::ppo);
  c.tune_base = true;
  c.lr.peak = 1e-2;  // move far from the reference in two updates
  ipa::rl_trainer<ipa::avoid_words, ipa::llama2c_tokenizer, ipa::llama_model> t(
      nullptr, f.base_weights, f.tok, ipa::avoid_words({"sad", "the"}), f.prompts, c);
  const ipa::step_metrics first = t.step();
  CHECK(first.kl == 0.0);  // the policy is still the reference when the first rollout is scored
  ipa::step_metrics later = t.step();
  for (int i = 0; i < 3 && later.kl == 0.0; ++i) later = t.step();
  CHECK(std::isfinite(later.kl));
  CHECK(later.kl != 0.0);  // was always 0: the metric only knew the KL to a base
}

TEST_CASE("resume: the next update after loading a checkpoint equals the uninterrupted run's") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  fixture f;
  for (auto algo : all_algorithms) {
    CAPTURE(ipa::to_string(algo));
    const std::string dir = temp_dir(std::string("resume_") + ipa::to_string(algo));
    ipa::rl_trainer straight(&f.base, f.adapter(), f.tok, ipa::avoid_words({"sad", "the"}), f.prompts,
                             fixture::config(algo));
    ipa::rl_trainer first(&f.base, f.adapter(), f.tok, ipa::avoid_words({"sad", "the"}), f.prompts,
                          fixture::config(algo));
    for (int i = 0; i < 3; ++i) {
      straight.step();
      first.step();
    }
    ipa::save_checkpoint(dir, first);
    const ipa::step_metrics expected = straight.step();

    ipa::rl_trainer resumed(&f.base, f.adapter(), f.tok, ipa::avoid_words({"sad", "the"}), f.prompts,
                            fixture::config(algo));
    ipa::load_checkpoint(ipa::latest_checkpoint(dir), resumed);
    CHECK(resumed.steps_done() == 3);
    const ipa::step_metrics got = resumed.step();
    CHECK(got.loss == expected.loss);  // exactly
    CHECK(got.reward_mean == expected.reward_mean);
    CHECK(got.response_tokens == expected.response_tokens);
    const auto a = straight.policy().parameters(), b = resumed.policy().parameters();
    CHECK(std::equal(a.begin(), a.end(), b.begin()));
    std::filesystem::remove_all(dir);
  }
}

TEST_CASE("resume with a black-box base: Quark's pool keeps the top-k, and the next update is exact") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  fixture f;
  const ipa::top_k_view<ipa::llama_model> api(f.base, 20);
  using trainer = ipa::rl_trainer<ipa::avoid_words, ipa::llama2c_tokenizer, ipa::top_k_view<ipa::llama_model>>;
  const std::string dir = temp_dir("resume_sparse");
  auto config = fixture::config(ipa::rl_algorithm::quark);
  trainer straight(&api, f.adapter(), f.tok, ipa::avoid_words({"sad", "the"}), f.prompts, config);
  trainer first(&api, f.adapter(), f.tok, ipa::avoid_words({"sad", "the"}), f.prompts, config);
  for (int i = 0; i < 3; ++i) {
    straight.step();
    first.step();
  }
  ipa::save_checkpoint(dir, first);
  const ipa::step_metrics expected = straight.step();
  trainer resumed(&api, f.adapter(), f.tok, ipa::avoid_words({"sad", "the"}), f.prompts, config);
  ipa::load_checkpoint(ipa::latest_checkpoint(dir), resumed);
  REQUIRE(resumed.pool().entries.size() == first.pool().entries.size());
  for (std::size_t i = 0; i < first.pool().entries.size(); ++i) {
    const auto &a = first.pool().entries[i], &b = resumed.pool().entries[i];
    CHECK(a.base_logits.empty());
    CHECK(a.base_top_k_ids.size() == a.response.size() * 20);
    CHECK(a.base_top_k_ids == b.base_top_k_ids);
    CHECK(a.base_top_k_log_probs == b.base_top_k_log_probs);
  }
  const ipa::step_metrics got = resumed.step();
  CHECK(got.loss == expected.loss);  // exactly
  CHECK(got.reward_mean == expected.reward_mean);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a checkpoint killed mid-write leaves the previous one loadable; corrupt ones give clear errors") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  fixture f;
  const std::string dir = temp_dir("crash");
  ipa::rl_trainer t(&f.base, f.adapter(), f.tok, ipa::avoid_words({"sad"}), f.prompts,
                    fixture::config(ipa::rl_algorithm::quark));
  t.step();
  ipa::save_checkpoint(dir, t);
  // a second save at the same step never replaces the folder `latest` names: it takes a new one
  CHECK(ipa::save_checkpoint(dir, t) == dir + "/checkpoint-000001.1");
  CHECK(ipa::latest_checkpoint(dir) == dir + "/checkpoint-000001.1");
  CHECK_FALSE(std::filesystem::exists(dir + "/checkpoint-000001"));
  // A child saves checkpoints in a loop (steps 2, 3, ...) and is killed at random moments.
  for (int round = 0; round < 6; ++round) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      for (;;) {
        ++t.step_count();
        ipa::save_checkpoint(dir, t);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(3 + 7 * round));
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    const std::string latest = ipa::latest_checkpoint(dir);
    REQUIRE_FALSE(latest.empty());
    ipa::rl_trainer check(&f.base, f.adapter(), f.tok, ipa::avoid_words({"sad"}), f.prompts,
                          fixture::config(ipa::rl_algorithm::quark));
    ipa::load_checkpoint(latest, check);  // must not throw: the commit point is atomic
    const auto a = t.policy().parameters(), b = check.policy().parameters();
    CHECK(std::equal(a.begin(), a.end(), b.begin()));
  }

  // corrupted copies: truncated weights, garbage JSON, a lying `latest`
  const std::string ckpt = ipa::latest_checkpoint(dir);
  ipa::rl_trainer fresh(&f.base, f.adapter(), f.tok, ipa::avoid_words({"sad"}), f.prompts,
                        fixture::config(ipa::rl_algorithm::quark));
  const std::string weights = ckpt + "/adapter/model.safetensors";
  const auto size = std::filesystem::file_size(weights);
  std::filesystem::resize_file(weights, size - 100);
  CHECK_THROWS_WITH_AS(ipa::load_checkpoint(ckpt, fresh), doctest::Contains("safetensors"), ipa::io_error);
  std::ofstream(ckpt + "/trainer.json") << "{ not json";
  CHECK_THROWS_WITH_AS(ipa::load_checkpoint(ckpt, fresh), doctest::Contains("not valid JSON"), ipa::io_error);
  std::ofstream(dir + "/latest") << "../../etc";
  CHECK_THROWS_WITH_AS(ipa::latest_checkpoint(dir), doctest::Contains("corrupt"), ipa::io_error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a black-box base (top-k log-probs only) trains an adapter inside its top-k") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  fixture f;
  const ipa::top_k_view<ipa::llama_model> api(f.base, 20);
  for (auto algo : {ipa::rl_algorithm::quark, ipa::rl_algorithm::ppo, ipa::rl_algorithm::rloo}) {
    CAPTURE(ipa::to_string(algo));
    ipa::rl_trainer t(&api, f.adapter(), f.tok, ipa::avoid_words({"sad"}), f.prompts, fixture::config(algo));
    const auto samples = t.rollout_and_score();
    // the rollout keeps the base's top-k, O(K) per position, never a dense V-wide row
    for (const auto& s : samples) {
      CHECK(s.base_logits.empty());
      REQUIRE(s.base_top_k_ids.size() == s.response.size() * 20);
      REQUIRE(s.base_top_k_log_probs.size() == s.response.size() * 20);
      CHECK(std::all_of(s.base_top_k_log_probs.begin(), s.base_top_k_log_probs.end(),
                        [](float lp) { return std::isfinite(lp) && lp <= 0; }));
    }
    ipa::step_metrics m;
    t.update(samples, m);
    CHECK(std::isfinite(m.loss));
    CHECK(std::isfinite(m.kl));
    for (float p : t.policy().parameters()) REQUIRE(std::isfinite(p));
  }
}

// A reward that varies from sample to sample on any text: the share of the letter 'e'.
struct letter_e_share {
  void score(std::span<const ipa::sample_view> batch, std::span<double> scores) const {
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const auto text = batch[i].response_text;
      scores[i] = text.empty() ? 0.0 : double(std::count(text.begin(), text.end(), 'e')) / double(text.size());
    }
  }
};

TEST_CASE("a GPT-2 base (Hugging Face folder) tailored by a Llama-architecture adapter trains") {
  // the tiny golden GPT-2 has a 512-token vocabulary: tok512 stands in for its tokenizer, as in
  // the CLI tests
  const std::string folder = ipa_test::golden_dir() + "/gpt2_tiny";
  if (!ipa_test::have(ipa_test::model_path()) || !ipa_test::have(folder + "/model.safetensors")) return;
  fixture f;
  const ipa::gpt2_model gpt2(ipa::load_hf_gpt2(folder));
  REQUIRE(gpt2.vocab_size() == f.base.vocab_size());
  for (auto algo : {ipa::rl_algorithm::rloo, ipa::rl_algorithm::ppo, ipa::rl_algorithm::quark}) {
    const std::string name = ipa::to_string(algo);
    CAPTURE(name);
    ipa::rl_trainer t(&gpt2, f.adapter(), f.tok, letter_e_share{}, f.prompts, fixture::config(algo));
    const std::vector<float> before(t.policy().parameters().begin(), t.policy().parameters().end());
    for (int s = 0; s < 2; ++s) {
      const auto m = t.step();
      CHECK(std::isfinite(m.loss));
      CHECK(std::isfinite(m.kl));
    }
    const auto after = t.policy().parameters();
    CHECK_FALSE(std::equal(before.begin(), before.end(), after.begin()));
  }
}
