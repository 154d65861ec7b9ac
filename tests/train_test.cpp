// SPDX-License-Identifier: MIT
// Training: the Llama backward against llama2.c model.py's float64 gradients, the fusion
// gradient against finite differences, optimizer and trainer math against hand-computed cases.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <ipa/core/rng.hpp>
#include <ipa/io/llama2c.hpp>
#include <ipa/io/npy.hpp>
#include <ipa/model/llama_train.hpp>
#include <ipa/train/advantages.hpp>
#include <ipa/train/losses.hpp>
#include <ipa/train/optimizer.hpp>

#include "test_data.hpp"

TEST_CASE("stories260K gradients of the mean next-token cross-entropy match model.py") {
  const std::string golden = ipa_test::golden_dir() + "/llama_stories260K";
  if (!ipa_test::have(ipa_test::model_path()) || !ipa_test::have(golden + "/grad_norm.npy")) return;
  ipa::trainable_llama<float> model(ipa::load_llama2c(ipa_test::model_path()));
  const auto tokens = ipa::load_npy<ipa::token_id>(golden + "/tokens.npy");
  const std::size_t T = tokens.size(), V = std::size_t(model.config().vocab_size);
  std::vector<ipa::token_id> ids(tokens.begin(), tokens.end()), targets(T, -1);
  for (std::size_t t = 0; t + 1 < T; ++t) targets[t] = ids[t + 1];

  model.forward(ids, 1, T);
  std::vector<float> dlogits(T * V);
  const double loss = ipa::cross_entropy<float>(model.logits(), targets, V, dlogits);
  CHECK(std::abs(loss - ipa::load_npy<double>(golden + "/loss_f64.npy")[0]) < 1e-5);
  model.zero_grad();
  model.backward(dlogits);

  std::size_t checked = 0;
  double worst = 0;
  auto compare = [&](const std::string& file, std::span<const float> got) {
    const auto expected = ipa::load_npy<float>(golden + "/grad_" + file + ".npy");
    REQUIRE(expected.size() == got.size());
    double max_ref = 0, max_diff = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      max_ref = std::max(max_ref, std::abs(double(expected[i])));
      max_diff = std::max(max_diff, std::abs(double(got[i]) - expected[i]));
    }
    INFO(file << ": max |diff| " << max_diff << ", max |golden| " << max_ref);
    CHECK(max_diff <= 1e-4 * max_ref);
    worst = std::max(worst, max_diff / max_ref);
    ++checked;
  };
  compare("tok_embeddings", model.gradient("tok_embeddings"));
  compare("norm", model.gradient("norm"));
  const auto& c = model.config();
  for (const char* name : {"attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"}) {
    const auto all = model.gradient(name);
    const std::size_t per = all.size() / std::size_t(c.n_layers);
    for (int l = 0; l < c.n_layers; ++l)
      compare("layers." + std::to_string(l) + "." + name, all.subspan(std::size_t(l) * per, per));
  }
  CHECK(checked == 47);
  MESSAGE("47 gradient tensors; worst max|diff| / max|golden| = " << worst);
}

namespace {

// A tiny Llama (GQA, separate classifier) with random weights, for gradient checks.
ipa::llama_weights tiny_weights(std::uint64_t seed, int extra_tokens = 0) {
  ipa::llama_config c;
  c.dim = 8;
  c.hidden_dim = 12;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 11;
  c.seq_len = 16;
  c.shared_classifier = false;
  c.extra_tokens = extra_tokens;
  auto w = ipa::llama_weights::random(c, seed);
  for (float& v : w.data()) v *= 20.0f;  // N(0, 0.4): gradients well away from zero
  return w;
}

// The loss of one IPA training step on a tiny batch, through the fusion with a fixed base:
// sum over response positions of -A * log pi(y) + kl_coef * KL(pi || base) - ent * H(pi).
struct fusion_case {
  std::vector<ipa::token_id> tokens;  // (B, T)
  std::size_t B = 2, T = 6;
  std::vector<float> base;        // (B*T, V)
  std::vector<double> advantage;  // per row
  double alpha = 0.7, kl_coef = 0.3, entropy_coef = 0.1;

  double loss(ipa::trainable_llama<double>& m, bool with_grad) const {
    const std::size_t V = std::size_t(m.config().vocab_size);
    m.forward(tokens, B, T);
    std::vector<double> dlogits(B * T * V, 0.0), log_pi(V), dz(V), log_q(V);
    double total = 0;
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t t = 2; t + 1 < T; ++t) {  // positions 2.. predict the "response"
        const std::size_t i = b * T + t;
        const std::span<const float> base_row(base.data() + i * V, V);
        ipa::tailored_log_softmax<double>(base_row, m.logits().subspan(i * V, V), alpha, log_pi);
        std::vector<double> adapter_zero(V, 0.0);
        ipa::tailored_log_softmax<double>(base_row, adapter_zero, 0.0, log_q);
        std::fill(dz.begin(), dz.end(), 0.0);
        const ipa::token_id y = tokens[i + 1] % ipa::token_id(V);
        total -= advantage[b] * log_pi[std::size_t(y)];
        ipa::add_log_prob_grad<double>(log_pi, y, -advantage[b], dz);
        total += kl_coef * ipa::add_kl_grad<double>(log_pi, log_q, kl_coef, dz);
        total -= entropy_coef * ipa::add_entropy_grad<double>(log_pi, -entropy_coef, dz);
        for (std::size_t v = 0; v < V; ++v) dlogits[i * V + v] = alpha * dz[v];
      }
    if (with_grad) {
      m.zero_grad();
      m.backward(dlogits);
    }
    return total;
  }
};

}  // namespace

TEST_CASE("the gradient through the fusion matches finite differences (float64, tiny adapter)") {
  ipa::trainable_llama<double> m(tiny_weights(3, /*extra_tokens=*/2));
  fusion_case fc;
  ipa::xoshiro256 rng(11);
  for (std::size_t i = 0; i < fc.B * fc.T; ++i) fc.tokens.push_back(ipa::token_id(rng() % 13));  // incl. extra ids
  for (std::size_t i = 0; i < fc.B * fc.T * 11; ++i) fc.base.push_back(float(4 * ipa::uniform01(rng) - 2));
  fc.advantage = {1.3, -0.6};
  fc.loss(m, true);
  const std::vector<double> grad(m.gradients().begin(), m.gradients().end());
  auto params = m.parameters();
  // every parameter, central differences
  double worst = 0;
  std::size_t nonzero = 0;
  for (double g : grad) nonzero += std::abs(g) > 1e-6;
  CHECK(nonzero > params.size() * 3 / 4);  // all but the embedding rows of ids absent from the batch
  for (std::size_t i = 0; i < params.size(); ++i) {
    const double keep = params[i], h = 1e-6;
    params[i] = keep + h;
    const double up = fc.loss(m, false);
    params[i] = keep - h;
    const double down = fc.loss(m, false);
    params[i] = keep;
    const double fd = (up - down) / (2 * h);
    const double err = std::abs(fd - grad[i]) / std::max(1e-2, std::abs(fd) + std::abs(grad[i]));
    worst = std::max(worst, err);
    INFO("parameter " << i << ": analytic " << grad[i] << ", finite difference " << fd);
    REQUIRE(err < 1e-5);
  }
  MESSAGE(params.size() << " parameters; worst relative error vs finite differences " << worst);
}

TEST_CASE("loss helpers: cross-entropy, KL and entropy by hand") {
  // pi = softmax([0, ln 3]) = (1/4, 3/4); q = (1/2, 1/2)
  const std::vector<float> base = {0.0f, 0.0f};
  const std::vector<double> adapter = {0.0, std::log(3.0)};
  std::vector<double> log_pi(2), log_q = {std::log(0.5), std::log(0.5)}, dz(2, 0.0);
  ipa::tailored_log_softmax<double>(base, adapter, 1.0, log_pi);
  CHECK(std::exp(log_pi[0]) == doctest::Approx(0.25));
  const double kl = ipa::add_kl_grad<double>(log_pi, log_q, 1.0, dz);
  CHECK(kl == doctest::Approx(0.25 * std::log(0.5) + 0.75 * std::log(1.5)));
  const double h = ipa::add_entropy_grad<double>(log_pi, 0.0, dz);
  CHECK(h == doctest::Approx(-(0.25 * std::log(0.25) + 0.75 * std::log(0.75))));
  // alpha scales the adapter: alpha 2 on [0, ln 3] gives (1/10, 9/10)
  ipa::tailored_log_softmax<double>(base, adapter, 2.0, log_pi);
  CHECK(std::exp(log_pi[1]) == doctest::Approx(0.9));
  // KL estimators at log pi = ln 0.5, log ref = ln 0.25: k1 = ln 2, k3 = 0.5 - 1 + ln 2
  CHECK(ipa::kl_estimate(ipa::kl_estimator::k1, std::log(0.5), std::log(0.25)) == doctest::Approx(std::log(2.0)));
  CHECK(ipa::kl_estimate(ipa::kl_estimator::k3, std::log(0.5), std::log(0.25)) ==
        doctest::Approx(-0.5 + std::log(2.0)));
}

TEST_CASE("advantages by hand: running mean, RLOO, groups, GAE, whitening") {
  ipa::running_mean_baseline b{0.5};
  const std::vector<double> r1 = {1, 3};
  CHECK(b.advantages(r1) == std::vector<double>{-1, 1});  // first batch: its own mean (2)
  const std::vector<double> r2 = {4, 0};
  CHECK(b.advantages(r2) == std::vector<double>{2, -2});  // baseline 2, then 0.5*2 + 0.5*2 = 2
  CHECK(b.value == doctest::Approx(2.0));

  const std::vector<double> g = {1, 2, 3, 10, 10, 10};
  const auto loo = ipa::rloo_advantages(g, 3);
  CHECK(loo[0] == doctest::Approx(1 - 2.5));
  CHECK(loo[2] == doctest::Approx(3 - 1.5));
  CHECK(loo[4] == doctest::Approx(0));
  const auto grp = ipa::group_normalised_advantages(g, 3);
  CHECK(grp[0] == doctest::Approx(-1 / std::sqrt(2.0 / 3.0)).epsilon(1e-5));
  CHECK(grp[3] == doctest::Approx(0));
  CHECK_THROWS_AS(ipa::rloo_advantages(g, 4), ipa::config_error);
  CHECK_THROWS_AS(ipa::rloo_advantages(g, 1), ipa::config_error);

  // GAE, T = 3, gamma 0.9, lambda 0.8, values (0.5, 0.2, 0.1), reward only at the end (1)
  const std::vector<double> rewards = {0, 0, 1}, values = {0.5, 0.2, 0.1};
  const auto ga = ipa::gae(rewards, values, 0.9, 0.8);
  const double d2 = 1 - 0.1, d1 = 0 + 0.9 * 0.1 - 0.2, d0 = 0 + 0.9 * 0.2 - 0.5;
  CHECK(ga.advantages[2] == doctest::Approx(d2));
  CHECK(ga.advantages[1] == doctest::Approx(d1 + 0.72 * d2));
  CHECK(ga.advantages[0] == doctest::Approx(d0 + 0.72 * (d1 + 0.72 * d2)));
  CHECK(ga.returns[0] == doctest::Approx(ga.advantages[0] + 0.5));
  // lambda = 1, gamma = 1: advantage = return - value, return = reward-to-go
  const auto mc = ipa::gae(rewards, values, 1.0, 1.0);
  CHECK(mc.returns[0] == doctest::Approx(1.0));
  CHECK(mc.advantages[1] == doctest::Approx(0.8));

  std::vector<double> w = {1, 2, 3, 4};
  ipa::whiten(w);
  CHECK(w[0] + w[1] + w[2] + w[3] == doctest::Approx(0).epsilon(1e-12));
  CHECK(w[3] == doctest::Approx(1.5 / std::sqrt(1.25)).epsilon(1e-6));
}

TEST_CASE("PPO clipping and value loss by hand") {
  // ratio 1.5 > 1 + 0.2 with A > 0: clipped, no gradient
  auto l = ipa::ppo_clip_loss(std::log(1.5), 0.0, 2.0, 0.2);
  CHECK(l.clipped);
  CHECK(l.loss == doctest::Approx(-2.0 * 1.2));
  CHECK(l.dloss_dlogp == 0.0);
  // ratio 1.5 with A < 0: the unclipped (worse) term counts, gradient -A * r
  l = ipa::ppo_clip_loss(std::log(1.5), 0.0, -2.0, 0.2);
  CHECK_FALSE(l.clipped);
  CHECK(l.loss == doctest::Approx(3.0));
  CHECK(l.dloss_dlogp == doctest::Approx(3.0));
  // inside the trust region: -A r
  l = ipa::ppo_clip_loss(std::log(0.9), 0.0, 1.0, 0.2);
  CHECK(l.loss == doctest::Approx(-0.9));
  CHECK(l.dloss_dlogp == doctest::Approx(-0.9));
  // ratio 0.5 < 0.8 with A > 0: unclipped is smaller objective -> larger loss, it counts
  l = ipa::ppo_clip_loss(std::log(0.5), 0.0, 1.0, 0.2);
  CHECK(l.loss == doctest::Approx(-0.5));
  // value: v = 2, old 1, clip 0.5, return 0 -> unclipped 0.5*4 = 2 > clipped 0.5*1.5^2
  auto v = ipa::ppo_value_loss(2.0, 1.0, 0.0, 0.5);
  CHECK(v.loss == doctest::Approx(2.0));
  CHECK(v.dloss_dvalue == doctest::Approx(2.0));
  // v = 2, old 1, return 3: clipped 1.5 is further from 3 -> its loss counts, v outside: no grad
  v = ipa::ppo_value_loss(2.0, 1.0, 3.0, 0.5);
  CHECK(v.loss == doctest::Approx(0.5 * 1.5 * 1.5));
  CHECK(v.dloss_dvalue == 0.0);
}

TEST_CASE("quantile bins") {
  const std::vector<double> r = {0.1, 0.9, 0.5, 0.7, 0.3};
  CHECK(ipa::quantile_bins(r, 5) == std::vector<int>{4, 0, 2, 1, 3});
  CHECK(ipa::quantile_bins(r, 2) == std::vector<int>{1, 0, 0, 0, 1});  // ranks 0-2 -> bin 0
  // ties share the bin of their middle rank, except the best rewards, which are always bin 0:
  // 1s and 0s never share a bin, however rare either is
  const std::vector<double> binary = {1, 0, 1, 1, 0, 1};
  CHECK(ipa::quantile_bins(binary, 3) == std::vector<int>{0, 2, 0, 0, 2, 0});
  const std::vector<double> sparse = {0, 0, 0, 0, 1, 0, 0, 0, 0, 0};  // a rare success (keyword task)
  CHECK(ipa::quantile_bins(sparse, 5) == std::vector<int>{2, 2, 2, 2, 0, 2, 2, 2, 2, 2});
  const std::vector<double> dense = {1, 1, 0, 1, 1, 1, 1, 0, 1, 1};  // a common success (avoid task)
  CHECK(ipa::quantile_bins(dense, 5) == std::vector<int>{0, 0, 4, 0, 0, 0, 0, 4, 0, 0});
  CHECK_THROWS_AS(ipa::quantile_bins(r, 0), ipa::config_error);
}

TEST_CASE("Quark's bin 0 is 'reward 1' at every success rate of a 0/1 reward; quantiles for continuous ones") {
  for (int successes = 1; successes < 100; ++successes) {  // a pool of 100, successes spread through it
    CAPTURE(successes);
    std::vector<double> pool(100, 0.0);
    for (int i = 0; i < successes; ++i) pool[std::size_t(i * 100 / successes)] = 1.0;
    const auto bins = ipa::quantile_bins(pool, 5);
    for (std::size_t i = 0; i < pool.size(); ++i) CHECK((bins[i] == 0) == (pool[i] == 1.0));
    const auto summary = ipa::summarize_bins(pool, bins, 5);
    CHECK(summary.size[0] == std::size_t(successes));
    CHECK(summary.mean_reward[0] == 1.0);
    // the 0s sit at their middle rank's quantile: bin 2 at 10% success, 3 at 50%, 4 at 90%
    if (successes == 10) CHECK(bins[1] == 2);
    if (successes == 50) CHECK(bins[1] == 3);
    if (successes == 90) CHECK(bins[std::size_t(std::find(pool.begin(), pool.end(), 0.0) - pool.begin())] == 4);
  }
  std::vector<double> continuous(100);  // distinct rewards: a fifth of the pool in each bin, best first
  for (std::size_t i = 0; i < continuous.size(); ++i) continuous[i] = std::sin(double(i));
  const auto bins = ipa::quantile_bins(continuous, 5);
  const auto summary = ipa::summarize_bins(continuous, bins, 5);
  for (std::size_t b = 0; b < 5; ++b) CHECK(summary.size[b] == 20);
  for (std::size_t b = 0; b + 1 < 5; ++b) CHECK(summary.mean_reward[b] > summary.mean_reward[b + 1]);
  const std::vector<double> same(10, 0.5);  // one tie group: all of it bin 0
  CHECK(ipa::quantile_bins(same, 5) == std::vector<int>(10, 0));
}

TEST_CASE("KL controllers") {
  ipa::kl_controller fixed{0.1, 0.0, 100};
  fixed.update(5.0, 10);
  CHECK(fixed.coef == 0.1);
  ipa::kl_controller adaptive{0.1, 1.0, 100};
  adaptive.update(5.0, 10);  // error clipped to +0.2: coef *= 1 + 0.2 * 10 / 100
  CHECK(adaptive.coef == doctest::Approx(0.1 * 1.02));
  adaptive.update(0.9, 50);  // error -0.1: coef *= 1 - 0.05
  CHECK(adaptive.coef == doctest::Approx(0.1 * 1.02 * 0.95));
}

TEST_CASE("AdamW, schedules, clipping and frozen tensors by hand") {
  // one step from zero moments: update = lr * (g / (|g| + eps')) + lr * wd * p
  ipa::adamw opt(2, {0.9, 0.999, 1e-8, 0.1});
  std::vector<float> p = {1.0f, -2.0f}, g = {0.5f, -4.0f};
  opt.step<float>(p, g, 0.01);
  CHECK(p[0] == doctest::Approx(1.0 - 0.01 * (1.0 + 0.1 * 1.0)).epsilon(1e-6));
  CHECK(p[1] == doctest::Approx(-2.0 - 0.01 * (-1.0 + 0.1 * -2.0)).epsilon(1e-6));
  // second step: m = 0.9*0.1*g1 ... checked against the textbook formulas in double
  const double g0 = 0.5, m1 = 0.1 * g0, v1 = 0.001 * g0 * g0, g1 = 0.25;
  const double m2 = 0.9 * m1 + 0.1 * g1, v2 = 0.999 * v1 + 0.001 * g1 * g1;
  const double p1 = p[0];
  g = {0.25f, 0.0f};
  opt.step<float>(p, g, 0.01);
  const double expected = p1 - 0.01 * ((m2 / (1 - 0.81)) / (std::sqrt(v2 / (1 - 0.999 * 0.999)) + 1e-8) + 0.1 * p1);
  CHECK(p[0] == doctest::Approx(expected).epsilon(1e-6));

  ipa::lr_schedule s{1.0, 10, 110, ipa::lr_decay::cosine, 0.1};
  CHECK(s.at(0) == doctest::Approx(0.1));
  CHECK(s.at(9) == doctest::Approx(1.0));
  CHECK(s.at(60) == doctest::Approx(0.1 + 0.9 * 0.5));
  CHECK(s.at(110) == doctest::Approx(0.1));
  ipa::lr_schedule lin{1.0, 0, 100, ipa::lr_decay::linear, 0.0};
  CHECK(lin.at(25) == doctest::Approx(0.75));

  std::vector<float> grads = {3.0f, 4.0f};
  CHECK(ipa::clip_grad_norm<float>(grads, 1.0) == doctest::Approx(5.0));
  CHECK(grads[0] == doctest::Approx(0.6).epsilon(1e-5));
  CHECK(ipa::clip_grad_norm<float>(grads, 10.0) == doctest::Approx(1.0).epsilon(1e-5));

  // frozen tensors never move
  const auto w = tiny_weights(5);
  const auto mask = ipa::parameter_mask::freeze(w.slots(), {"tok_embeddings", "norm"});
  std::vector<float> params(w.data().begin(), w.data().end()), ones(params.size(), 1.0f);
  ipa::adamw all(params.size(), {});
  all.step<float>(params, ones, 0.1, mask);
  const auto& emb = w.slot("tok_embeddings");
  CHECK(params[emb.offset] == w.data()[emb.offset]);
  CHECK(params[w.slot("norm").offset] == w.data()[w.slot("norm").offset]);
  CHECK(params[w.slot("wq").offset] != w.data()[w.slot("wq").offset]);
  CHECK_THROWS_AS(ipa::parameter_mask::freeze(w.slots(), {"nope"}), ipa::config_error);
}

TEST_CASE("gradient accumulation: two half batches sum to the full batch's gradient") {
  ipa::trainable_llama<double> m(tiny_weights(9));
  const std::size_t V = 11, T = 5;
  std::vector<ipa::token_id> tokens = {1, 4, 2, 7, 3, 5, 6, 2, 9, 10};
  std::vector<ipa::token_id> targets = {4, 2, 7, 3, -1, 6, 2, 9, 10, -1};
  std::vector<double> d(2 * T * V);
  m.forward(tokens, 2, T);
  ipa::cross_entropy<double>(m.logits(), targets, V, d);
  m.zero_grad();
  m.backward(d);
  const std::vector<double> full(m.gradients().begin(), m.gradients().end());
  m.zero_grad();
  for (std::size_t b = 0; b < 2; ++b) {
    std::vector<double> half(T * V);
    m.forward(std::span<const ipa::token_id>(tokens).subspan(b * T, T), 1, T);
    ipa::cross_entropy<double>(m.logits(), std::span<const ipa::token_id>(targets).subspan(b * T, T), V, half);
    for (double& v : half) v *= 0.5;  // each half is a mean over 4 of the 8 targets
    m.backward(half);
  }
  for (std::size_t i = 0; i < full.size(); ++i) REQUIRE(m.gradients()[i] == doctest::Approx(full[i]).epsilon(1e-10));
}
