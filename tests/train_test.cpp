// SPDX-License-Identifier: MIT
// Training: the Llama backward against llama2.c model.py's float64 gradients, the fusion
// gradient against finite differences, optimizer and trainer math against hand-computed cases.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include <ipa/core/rng.hpp>
#include <ipa/io/llama2c.hpp>
#include <ipa/io/npy.hpp>
#include <ipa/model/llama_train.hpp>
#include <ipa/train/losses.hpp>

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
  std::vector<float> base;             // (B*T, V)
  std::vector<double> advantage;       // per row
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
