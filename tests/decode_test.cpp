// SPDX-License-Identifier: MIT
// Fusion by hand-computed tables, samplers (1e5 draws against the distribution they claim),
// processors, and the decoder on the real model (greedy golden, alone and inside a batch).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <ipa/ipa.hpp>

#include "test_data.hpp"

namespace {

// A fixed-table policy: the logits depend only on the last token, from a (V x V) table.
struct table_policy {
  struct state_type {
    std::vector<ipa::token_id> last;
    std::vector<int> length;
  };
  std::vector<std::vector<float>> table;  // table[last token] = next logits
  std::size_t context = 64;
  std::size_t vocab_size() const { return table.size(); }
  std::size_t context_length() const { return context; }
  state_type new_state(int b, int) const { return {std::vector<ipa::token_id>(b), std::vector<int>(b)}; }
  void prefill(state_type& s, const ipa::prompt_list& prompts, std::span<float> logits) const {
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      s.last[b] = prompts[b].back();
      std::copy(table[s.last[b]].begin(), table[s.last[b]].end(), logits.begin() + b * vocab_size());
    }
  }
  void step(state_type& s, std::span<const int> rows, std::span<const ipa::token_id> tokens,
            std::span<float> logits) const {
    for (std::size_t i = 0; i < rows.size(); ++i) {
      s.last[rows[i]] = tokens[i];
      std::copy(table[tokens[i]].begin(), table[tokens[i]].end(), logits.begin() + i * vocab_size());
    }
  }
};
static_assert(ipa::Policy<table_policy>);

std::vector<double> softmax_of(std::vector<double> x) {
  double m = *std::max_element(x.begin(), x.end()), s = 0;
  for (double& v : x) s += (v = std::exp(v - m));
  for (double& v : x) v /= s;
  return x;
}

table_policy uniform_rows(std::vector<float> row) {
  table_policy p;
  p.table.assign(row.size(), row);
  return p;
}

}  // namespace

TEST_CASE("fusion: hand-computed product-of-experts tables") {
  const std::vector<float> base = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  SUBCASE("alpha = 0 gives the base") {
    std::vector<float> t = base;
    ipa::add_expert(t, std::vector<float>{5.f, -3.f, 1.f}, 0.0f);
    ipa::log_softmax(t);
    for (int v = 0; v < 3; ++v) CHECK(std::exp(t[v]) == doctest::Approx(std::exp(base[v])).epsilon(1e-6));
  }
  SUBCASE("base + adapter equal to base with alpha 1 gives p^2 renormalised") {
    std::vector<float> t = base;
    ipa::add_expert(t, base, 1.0f);
    ipa::softmax(t);
    // 0.25, 0.09, 0.04 / 0.38
    CHECK(t[0] == doctest::Approx(0.25 / 0.38).epsilon(1e-6));
    CHECK(t[1] == doctest::Approx(0.09 / 0.38).epsilon(1e-6));
    CHECK(t[2] == doctest::Approx(0.04 / 0.38).epsilon(1e-6));
  }
  SUBCASE("negative alpha is an anti-expert: p_base / p_adapter^0.5") {
    const std::vector<float> anti = {std::log(0.8f), std::log(0.1f), std::log(0.1f)};
    std::vector<float> t = base;
    ipa::add_expert(t, anti, -0.5f);
    ipa::softmax(t);
    const double a = 0.5 / std::sqrt(0.8), b = 0.3 / std::sqrt(0.1), c = 0.2 / std::sqrt(0.1), z = a + b + c;
    CHECK(t[0] == doctest::Approx(a / z).epsilon(1e-6));
    CHECK(t[1] == doctest::Approx(b / z).epsilon(1e-6));
    CHECK(t[2] == doctest::Approx(c / z).epsilon(1e-6));
  }
  SUBCASE("two adapters add up") {
    std::vector<float> t = {0.f, 0.f, 0.f};
    ipa::add_expert(t, std::vector<float>{1.f, 0.f, 0.f}, 2.0f);
    ipa::add_expert(t, std::vector<float>{0.f, 1.f, 0.f}, 1.0f);
    CHECK(t == std::vector<float>{2.f, 1.f, 0.f});
  }
  SUBCASE("non-finite alpha is rejected") {
    CHECK_THROWS_AS(ipa::check_alpha(std::nanf("")), ipa::config_error);
    CHECK_THROWS_AS(ipa::check_alpha(INFINITY), ipa::config_error);
  }
}

TEST_CASE("sparse base: both tail policies by hand") {
  const std::vector<ipa::token_id> ids = {2, 0};
  const std::vector<float> lps = {std::log(0.6f), std::log(0.3f)};
  std::vector<float> row(5);
  SUBCASE("restrict to top-k") {
    ipa::densify_top_k(ids, lps, ipa::tail_policy::restrict_to_top_k, row);
    ipa::softmax(row);
    CHECK(row[2] == doctest::Approx(2.0 / 3));
    CHECK(row[0] == doctest::Approx(1.0 / 3));
    CHECK(row[1] == 0.0f);
    CHECK(row[4] == 0.0f);
  }
  SUBCASE("uniform tail: 0.1 spread over the 3 unrevealed ids") {
    ipa::densify_top_k(ids, lps, ipa::tail_policy::uniform, row);
    ipa::softmax(row);
    CHECK(row[2] == doctest::Approx(0.6).epsilon(1e-6));
    CHECK(row[0] == doctest::Approx(0.3).epsilon(1e-6));
    for (int v : {1, 3, 4}) CHECK(row[v] == doctest::Approx(0.1 / 3).epsilon(1e-5));
  }
  SUBCASE("garbage is rejected") {
    CHECK_THROWS_AS(ipa::densify_top_k(std::vector<ipa::token_id>{0, 0}, lps, ipa::tail_policy::uniform, row),
                    ipa::shape_error);
    CHECK_THROWS_AS(ipa::densify_top_k(std::vector<ipa::token_id>{9, 0}, lps, ipa::tail_policy::uniform, row),
                    ipa::shape_error);
    CHECK_THROWS_AS(ipa::densify_top_k(ids, std::vector<float>{0.5f, -1.f}, ipa::tail_policy::uniform, row),
                    ipa::config_error);
  }
}

TEST_CASE("argmax: the eight-lane scan agrees with the plain loop (ties, NaN, -inf, every tail)") {
  std::mt19937 gen(5);
  std::uniform_int_distribution<int> pick(0, 9);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (std::size_t n = 1; n <= 80; ++n)
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<float> x(n);
      for (float& v : x) {  // few distinct values: ties everywhere; some NaN, +-inf, signed zeros
        const int c = pick(gen);
        v = c == 0 ? nan : c == 1 ? -inf : c == 2 ? inf * float(trial % 7 == 0) : c == 3 ? -0.0f : float(c % 3);
      }
      if (trial % 5 == 0) std::fill(x.begin(), x.end(), -inf);
      if (trial % 11 == 0) x[0] = nan;
      REQUIRE(ipa::argmax(x) == ipa::argmax_reference(x));
    }
  std::vector<float> row(32000, 0.0f);
  row[31999] = 1.0f;
  CHECK(ipa::argmax(row) == 31999);
  row[7] = 1.0f;
  CHECK(ipa::argmax(row) == 7);
}

TEST_CASE("transforms by hand-computed tables") {
  const std::vector<float> logits = {std::log(0.1f), std::log(0.4f), std::log(0.2f), std::log(0.3f)};
  auto kept = [](const std::vector<float>& x) {
    std::vector<int> k;
    for (std::size_t i = 0; i < x.size(); ++i) k.push_back(std::isinf(x[i]) ? 0 : 1);
    return k;
  };
  SUBCASE("top_k = 2") {
    auto x = logits;
    ipa::top_k(2).apply(x);
    CHECK(kept(x) == std::vector<int>{0, 1, 0, 1});
  }
  SUBCASE("top_p = 0.65 keeps 0.4 + 0.3") {
    auto x = logits;
    ipa::top_p(0.65).apply(x);
    CHECK(kept(x) == std::vector<int>{0, 1, 0, 1});
  }
  SUBCASE("top_p = 0.75 keeps 0.4 + 0.3 + 0.2") {
    auto x = logits;
    ipa::top_p(0.75).apply(x);
    CHECK(kept(x) == std::vector<int>{0, 1, 1, 1});
  }
  SUBCASE("min_p = 0.45 keeps p >= 0.18") {
    auto x = logits;
    ipa::min_p(0.45).apply(x);
    CHECK(kept(x) == std::vector<int>{0, 1, 1, 1});
  }
  SUBCASE("temperature 2 halves logits") {
    auto x = logits;
    ipa::temperature(2.0f).apply(x);
    CHECK(x[1] == doctest::Approx(logits[1] / 2));
  }
  SUBCASE("a temperature so small that logits / t overflow decodes greedily, never NaN") {
    for (float t : {1e-40f, 1e-37f, 1e-30f, std::numeric_limits<float>::denorm_min()}) {
      CAPTURE(t);
      std::vector<float> x = {1.0f, 3.0f, 2.0f, -std::numeric_limits<float>::infinity(), 3.0f - 1e-6f};
      ipa::temperature(t).apply(x);
      std::vector<float> lp = x;
      ipa::log_softmax(lp);
      CHECK(lp[1] == 0.0f);  // all the mass on the best token
      for (std::size_t i : {0u, 2u, 3u, 4u}) CHECK(lp[i] < -1e20f);
      if (1.0f / t > std::numeric_limits<float>::max()) {  // 1/t overflows: the shifted form
        CHECK(x[1] == 0.0f);
        for (std::size_t i : {0u, 2u, 3u, 4u}) CHECK(x[i] < -1e30f);
      }
    }
    std::vector<float> tied = {5.0f, 5.0f, 1.0f};  // a tie stays a tie: sampled evenly
    ipa::temperature(1e-40f).apply(tied);
    CHECK((tied[0] == 0.0f && tied[1] == 0.0f && tied[2] < -1e30f));
    std::vector<float> banned(3, -std::numeric_limits<float>::infinity());  // nothing to scale
    ipa::temperature(1e-40f).apply(banned);
    CHECK(std::isinf(banned[0]));
  }
  SUBCASE("nonsense parameters throw") {
    CHECK_THROWS_AS(ipa::top_p(0.0), ipa::config_error);
    CHECK_THROWS_AS(ipa::top_p(1.5), ipa::config_error);
    CHECK_THROWS_AS(ipa::top_p(std::nan("")), ipa::config_error);
    CHECK_THROWS_AS(ipa::temperature(0.0f), ipa::config_error);
    CHECK_THROWS_AS(ipa::temperature(-1.0f), ipa::config_error);
    CHECK_THROWS_AS(ipa::top_k(-1), ipa::config_error);
    CHECK_THROWS_AS(ipa::min_p(2.0), ipa::config_error);
    CHECK_THROWS_AS(ipa::repetition_penalty(0.0f), ipa::config_error);
  }
}

TEST_CASE("processors") {
  std::vector<float> x = {1.f, 2.f, -1.f, 0.5f};
  const std::vector<ipa::token_id> prompt = {0}, gen = {2};
  const ipa::sequence_view seq{prompt, gen};
  ipa::repetition_penalty(2.0f).apply(x, seq);
  CHECK(x == std::vector<float>{0.5f, 2.f, -2.f, 0.5f});
  ipa::ban_tokens{{1}}.apply(x, seq);
  CHECK(std::isinf(x[1]));
  ipa::min_new_tokens{2, {3}}.apply(x, seq);  // 1 generated < 2: token 3 banned
  CHECK(std::isinf(x[3]));
  CHECK_THROWS_AS(ipa::ban_tokens{{7}}.apply(x, seq), ipa::shape_error);
}

TEST_CASE("the recorded log-prob is the log of the distribution actually sampled (1e5 draws)") {
  // base p = (0.05, 0.15, 0.3, 0.5); adapter (alpha 0.7) skews it; then temperature 0.8 and
  // top-p 0.9 truncate. Counting draws checks the claim exp(log_prob) = sampling frequency.
  const std::vector<float> base = {std::log(0.05f), std::log(0.15f), std::log(0.3f), std::log(0.5f)};
  const std::vector<float> adapter = {1.0f, 0.0f, -0.5f, 0.2f};
  table_policy b = uniform_rows(base), a = uniform_rows(adapter);
  b.context = a.context = 2000;  // 1000 new tokens per row
  const ipa::ipa_decoder<table_policy> decoder(b, {ipa::with_alpha(a, 0.7f)});
  auto sampler = ipa::sampler(ipa::temperature(0.8f), ipa::top_p(0.9), ipa::categorical{});
  ipa::xoshiro256 rng(1);
  ipa::generation_config cfg;
  cfg.max_new_tokens = 1000;
  std::map<ipa::token_id, int> count;
  std::map<ipa::token_id, float> lp, tlp;
  const ipa::prompt_list prompts(100, std::vector<ipa::token_id>{0});
  const auto r = decoder.generate(prompts, cfg, sampler, rng);
  for (std::size_t i = 0; i < 100; ++i)
    for (std::size_t t = 0; t < 1000; ++t) {
      const auto tok = r.response_ids(i, t);
      ++count[tok];
      lp[tok] = r.log_probs(i, t);
      tlp[tok] = r.tailored_log_probs(i, t);
    }
  // by hand: tailored logits, then /0.8, then top-p 0.9
  std::vector<double> tl(4);
  for (int v = 0; v < 4; ++v) tl[v] = base[v] + 0.7 * adapter[v];
  const auto pi = softmax_of(tl);
  std::vector<double> tt(4);
  for (int v = 0; v < 4; ++v) tt[v] = tl[v] / 0.8;
  auto q = softmax_of(tt);
  // q sorted: which ids make up >= 0.9?
  std::vector<int> order = {0, 1, 2, 3};
  std::sort(order.begin(), order.end(), [&](int x, int y) { return q[x] > q[y]; });
  double cum = 0;
  std::vector<bool> keep(4, false);
  for (int id : order) {
    keep[id] = true;
    if ((cum += q[id]) >= 0.9) break;
  }
  double z = 0;
  for (int v = 0; v < 4; ++v) z += keep[v] ? q[v] : 0;
  const double n = 1e5;
  for (int v = 0; v < 4; ++v) {
    const double expected = keep[v] ? q[v] / z : 0.0;
    CAPTURE(v);
    CHECK(count[v] / n == doctest::Approx(expected).epsilon(0).scale(1).epsilon(0.01));
    if (count[v] > 0) {
      CHECK(std::exp(lp[v]) == doctest::Approx(expected).epsilon(1e-5));
      CHECK(std::exp(tlp[v]) == doctest::Approx(pi[v]).epsilon(1e-5));
    }
  }
}

TEST_CASE("decoder errors: vocabulary mismatch, NaN alpha, prompts that do not fit") {
  const table_policy b = uniform_rows({0.f, 0.f, 0.f, 0.f}), small = uniform_rows({0.f, 0.f, 0.f});
  CHECK_THROWS_AS(ipa::ipa_decoder<table_policy>(b, {ipa::with_alpha(small, 1.0f)}), ipa::shape_error);
  CHECK_THROWS_AS(ipa::ipa_decoder<table_policy>(b, {ipa::with_alpha(b, std::nanf(""))}), ipa::config_error);
  CHECK_THROWS_AS(ipa::ipa_decoder<table_policy>(b, {ipa::with_alpha(b, -INFINITY)}), ipa::config_error);
  const ipa::ipa_decoder<table_policy> d(b);
  ipa::sampler<ipa::greedy> g{ipa::greedy{}};
  ipa::xoshiro256 rng;
  ipa::generation_config cfg;
  CHECK_THROWS_AS(d.generate({std::vector<ipa::token_id>(64, 0)}, cfg, g, rng), ipa::shape_error);
  CHECK_THROWS_AS(d.generate({{}}, cfg, g, rng), ipa::shape_error);
  cfg.banned_tokens = {9};
  CHECK_THROWS_AS(d.generate({{0}}, cfg, g, rng), ipa::config_error);
}

TEST_CASE("decoder: stop tokens, EOS, min_new_tokens, context limit") {
  // token 3 is by far the most likely after anything
  const table_policy b = uniform_rows({0.f, 0.f, 0.f, 5.f});
  const ipa::ipa_decoder<table_policy> d(b);
  ipa::sampler<ipa::greedy> g{ipa::greedy{}};
  ipa::xoshiro256 rng;
  ipa::generation_config cfg;
  cfg.max_new_tokens = 10;
  cfg.eos_id = 3;
  auto r = d.generate({{0}, {1, 2}}, cfg, g, rng);
  CHECK(r.response_length(0) == 1);
  CHECK(r.finish[0] == ipa::finish_reason::eos);
  cfg.min_new_tokens = 4;
  r = d.generate({{0}}, cfg, g, rng);
  CHECK(r.response_length(0) == 5);
  CHECK(r.response(0) == std::vector<ipa::token_id>{0, 0, 0, 0, 3});
  CHECK(r.response_mask(0, 4) == 1);
  cfg = {};
  cfg.max_new_tokens = 1000;
  r = d.generate({{0, 0, 0}}, cfg, g, rng);  // context 64: 62 new tokens fit
  CHECK(r.finish[0] == ipa::finish_reason::context);
  CHECK(r.response_length(0) == 62);
}

TEST_CASE("stories260K: greedy golden text alone and inside a batch of ragged prompts") {
  if (!ipa_test::have(ipa_test::model_path()) || !ipa_test::have(ipa_test::tokenizer_path())) return;
  const ipa::llama_model model(ipa::load_llama2c(ipa_test::model_path()));
  const auto tok = ipa::llama2c_tokenizer::load(ipa_test::tokenizer_path(), model.vocab_size());
  const std::string golden =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw "
      "a big, red ball. She wanted to play with it, but it was too high.\nLily";
  const ipa::ipa_decoder decoder(model);
  ipa::sampler<ipa::greedy> g{ipa::greedy{}};
  ipa::xoshiro256 rng;
  ipa::generation_config cfg;
  cfg.max_new_tokens = 60;
  cfg.stop_tokens = {1};
  const auto prompt = tok.encode("Once upon a time");
  auto text_of = [&](const ipa::rollout& r, std::size_t b, const std::vector<ipa::token_id>& p) {
    return "Once upon a time" + tok.decode(r.response(b), p.back());
  };
  const auto alone = decoder.generate({prompt}, cfg, g, rng);
  CHECK(text_of(alone, 0, prompt) == golden);
  const ipa::prompt_list batch = {tok.encode("Tom had a big red"), tok.encode(""), prompt,
                                  tok.encode("The little bird was sad because it could not fly over the tall tree"),
                                  prompt};
  const auto r = decoder.generate(batch, cfg, g, rng);
  CHECK(text_of(r, 2, prompt) == golden);
  CHECK(text_of(r, 4, prompt) == golden);
  CHECK(r.response(2) == alone.response(0));
  for (std::size_t t = 0; t < alone.response_length(0); ++t)  // batch-invariant to the bit
    CHECK(r.tailored_log_probs(2, t) == alone.tailored_log_probs(0, t));

  SUBCASE("an empty prompt decodes from BOS") {
    CHECK(batch[1] == std::vector<ipa::token_id>{1});
    CHECK(r.response_length(1) > 0);
  }
  SUBCASE("a prompt longer than the context is a clear error") {
    const ipa::prompt_list too_long = {std::vector<ipa::token_id>(600, 300)};
    CHECK_THROWS_WITH_AS(decoder.generate(too_long, cfg, g, rng), doctest::Contains("context holds 512"),
                         ipa::shape_error);
  }
  SUBCASE("a sparse top-k view of the model gives the same greedy text (restricting keeps the argmax)") {
    const ipa::top_k_view<ipa::llama_model> api(model, 5);
    const ipa::ipa_decoder<ipa::top_k_view<ipa::llama_model>, ipa::llama_model> sparse(api);
    const auto s = sparse.generate({prompt}, cfg, g, rng);
    CHECK(text_of(s, 0, prompt) == golden);
  }
  SUBCASE("keeping the base's logits stores exactly what the base said") {
    ipa::generation_config keep = cfg;
    keep.max_new_tokens = 8;
    keep.keep_base_logits = ipa::keep_base::dense;
    const auto k = decoder.generate({prompt}, keep, g, rng);
    auto st = model.new_state(1);
    std::vector<float> logits(model.vocab_size());
    model.prefill(st, ipa::prompt_list{prompt}, logits);
    for (std::size_t v = 0; v < logits.size(); ++v) REQUIRE(k.base_logits(0, 0, v) == logits[v]);
    keep.keep_base_logits = ipa::keep_base::top_k;
    keep.keep_top_k = 3;
    const auto kk = decoder.generate({prompt}, keep, g, rng);
    CHECK(kk.base_top_k_ids(0, 0, 0) == kk.response_ids(0, 0));
  }
}

TEST_CASE("results do not depend on the thread count") {
  if (!ipa_test::have(ipa_test::model_path())) return;
  const ipa::llama_model model(ipa::load_llama2c(ipa_test::model_path()));
  const ipa::ipa_decoder decoder(model, {ipa::with_alpha(model, 0.5f)});
  auto sample = [&] {
    auto s = ipa::make_standard_sampler(0.9f, 40, 0.95);
    ipa::xoshiro256 rng(3);
    ipa::generation_config cfg;
    cfg.max_new_tokens = 40;
    return decoder.generate({{1, 403}, {1}, {1, 300, 301}}, cfg, s, rng);
  };
  const auto many = sample();
#if defined(_OPENMP)
  // 1, and 3 (shares of uneven size: the model's threads split panels and kv heads 1:1:2)
  const int threads = omp_get_max_threads();
  for (const int other : {1, 3}) {
    omp_set_num_threads(other);
    const auto again = sample();
    omp_set_num_threads(threads);
    CHECK(many.response_ids == again.response_ids);
    CHECK(many.log_probs == again.log_probs);
  }
#else
  const auto one = sample();
  CHECK(many.response_ids == one.response_ids);
  CHECK(many.log_probs == one.log_probs);
#endif
}

TEST_CASE("a prompt prefilled by a team sees its own earlier tokens, also with fewer kv heads than threads") {
#if defined(_OPENMP)
  // With one kv head the team deals out tokens, so every key and value must be cached before
  // anyone attends. 40 tokens x ~0.47 MB of weights: a team even while teams count as contended.
  const int saved = omp_get_max_threads();
  for (const int kv_heads : {1, 4}) {
    const ipa::llama_model model(ipa::llama_weights::random({64, 172, 2, 8, kv_heads, 512, 64}, 7));
    std::vector<ipa::token_id> prompt(40);
    for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = ipa::token_id(1 + (i * 37) % 500);
    auto logits_on = [&](int threads) {  // after the prompt, then after one more token
      omp_set_num_threads(threads);
      auto st = model.new_state(1);
      std::vector<float> out(model.vocab_size()), next(model.vocab_size());
      model.prefill(st, ipa::prompt_list{prompt}, out);
      model.step(st, std::vector<int>{0}, std::vector<ipa::token_id>{5}, next);
      out.insert(out.end(), next.begin(), next.end());
      return out;
    };
    const auto one = logits_on(1);
    for (const int threads : {2, 3}) CHECK(logits_on(threads) == one);
  }
  omp_set_num_threads(saved);
#else
  MESSAGE("built without OpenMP: nothing to compare");
#endif
}

TEST_CASE("ban_sequences bans the last token of a sequence only right after the rest of it") {
  const ipa::ban_sequences ban{{{7}, {3, 4, 5}}};
  const std::vector<ipa::token_id> prompt = {1, 3}, generated = {4};
  std::vector<float> row(8, 0.0f);
  ban.apply(row, {prompt, generated});  // ... 3, 4 -> 5 banned (spanning prompt and output); 7 always
  CHECK(row[5] == -INFINITY);
  CHECK(row[7] == -INFINITY);
  CHECK(row[4] == 0.0f);
  std::vector<float> other(8, 0.0f);
  const std::vector<ipa::token_id> g2 = {4, 4};
  ban.apply(other, {prompt, g2});
  CHECK(other[5] == 0.0f);
  const ipa::ban_sequences bad{{{9}}};
  CHECK_THROWS_AS(bad.apply(other, {prompt, g2}), ipa::shape_error);
}

TEST_CASE("fused_sample_reference (the CUDA kernel's CPU twin): log-probs, greedy, Gumbel-max frequencies") {
  const std::vector<float> base = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  const std::vector<float> adapter = {1.0f, 0.0f, 0.0f, -1.0f};
  const float alpha = 0.5f;
  const float* adapters[] = {adapter.data()};
  const float alphas[] = {alpha};
  std::vector<double> z(4);
  double lse = 0;
  for (std::size_t v = 0; v < 4; ++v) z[v] = base[v] + alpha * adapter[v], lse += std::exp(z[v]);
  lse = std::log(lse);
  // greedy: argmax of z, tailored log-prob exact, behaviour log-prob 0 (as the decoder records)
  const auto g = ipa::fused_sample_reference(base, adapters, alphas, {0.0f, 1, 0}, 0);
  CHECK(g.token == 2);  // z = {0.5, 0.69, 1.10, 0.89}
  CHECK(g.tailored_log_prob == doctest::Approx(z[2] - lse).epsilon(1e-6));
  CHECK(g.log_prob == 0.0f);
  // sampling at T = 1 follows softmax(z); log_prob == tailored_log_prob
  std::vector<int> count(4, 0);
  const int n = 40000;
  for (int step = 0; step < n; ++step) {
    const auto r = ipa::fused_sample_reference(base, adapters, alphas, {1.0f, 7, std::uint64_t(step)}, 3);
    ++count[std::size_t(r.token)];
    if (step == 0) CHECK(r.log_prob == doctest::Approx(r.tailored_log_prob).epsilon(1e-6));
  }
  for (std::size_t v = 0; v < 4; ++v) {
    const double p = std::exp(z[v] - lse);
    CHECK(std::abs(count[v] / double(n) - p) < 4.0 * std::sqrt(p * (1 - p) / n));
  }
  // the noise is a function of (seed, row, step, v): same inputs, same token
  CHECK(ipa::fused_sample_reference(base, adapters, alphas, {1.0f, 7, 11}, 3).token ==
        ipa::fused_sample_reference(base, adapters, alphas, {1.0f, 7, 11}, 3).token);
  CHECK_THROWS_AS(ipa::fused_sample_reference(base, adapters, alphas, {-1.0f, 7, 11}, 3), ipa::config_error);
}

TEST_CASE("vocabularies compared by token table: identical, appended, padded, different") {
  const ipa::token_table t4 = {"a", "b", "c", "d"}, t5 = {"a", "b", "c", "d", "<|extra|>"};
  CHECK(ipa::map_vocabularies(t4, 4, t4, 4).is_identity());
  CHECK(ipa::map_vocabularies(t4, 8, t4, 8).is_identity());  // equal padding
  // adapter with an appended token: every base id known, the extra one unreachable
  const ipa::vocab_map more = ipa::map_vocabularies(t4, 4, t5, 5);
  CHECK_FALSE(more.is_identity());
  CHECK(more.base_size() == 4);
  CHECK(more.adapter_size() == 5);
  CHECK(more.mapped() == 4);
  // base with an appended token and padding rows: those ids are unknown to the adapter
  const ipa::vocab_map fewer = ipa::map_vocabularies(t5, 7, t4, 4);
  CHECK(fewer.mapped() == 4);
  for (ipa::token_id v : {4, 5, 6}) CHECK(fewer.adapter_id(v) == -1);
  CHECK(fewer.adapter_id(3) == 3);
  CHECK_THROWS_AS(fewer.adapter_id(7), ipa::shape_error);
  // a table that disagrees on a shared id: error naming the id and both tokens
  const ipa::token_table other = {"a", "b", "x\n", "d"};
  try {
    (void)ipa::map_vocabularies(t4, 4, other, 4);
    FAIL("different tables were accepted");
  } catch (const ipa::config_error& e) {
    const std::string m = e.what();
    CHECK(m.find("id 2") != std::string::npos);
    CHECK(m.find("'c'") != std::string::npos);
    CHECK(m.find("'x\\x0a'") != std::string::npos);
  }
  CHECK_THROWS_AS(ipa::map_vocabularies(t5, 4, t4, 4), ipa::shape_error);  // more tokens than logits
  CHECK_THROWS_AS(ipa::vocab_map::explicit_map({0, 5}, 5), ipa::shape_error);
  CHECK_THROWS_AS(ipa::vocab_map::explicit_map({0, -2}, 5), ipa::shape_error);

  // the real tokenizer against itself and against a copy with an added token
  const auto tok = ipa::llama2c_tokenizer::load(ipa_test::model_dir() + "/tok512.bin");
  ipa::token_table table = ipa::table_of(tok);
  CHECK(table.size() == 512);
  CHECK(ipa::map_vocabularies(table, 512, table, 512).is_identity());
  // llama.cpp's GGUF of the same model spells BOS/EOS as SentencePiece does: the same table
  const auto gguf =
      ipa::table_of(ipa::load_gguf_tokenizer(ipa::gguf_file::load(ipa_test::model_dir() + "/stories260K.gguf")));
  CHECK(gguf == table);
  CHECK(table[1] == "<s>");
  table.push_back("<ctrl>");
  CHECK(ipa::map_vocabularies(ipa::table_of(tok), 512, table, 513).mapped() == 512);
}

TEST_CASE("vocab_mapped: an adapter with another vocabulary, seen with the base's ids") {
  // adapter of 5 tokens whose logits name the last token: row[last] = 1, row[4] = 9 (an id the
  // base lacks and must never sample)
  table_policy adapter;
  for (int last = 0; last < 5; ++last) {
    std::vector<float> row(5, 0.0f);
    row[std::size_t(last)] = 1.0f, row[4] = 9.0f;
    adapter.table.push_back(row);
  }
  const ipa::vocab_mapped<table_policy> mapped(
      adapter, ipa::map_vocabularies({"a", "b", "c", "d"}, 4, {"a", "b", "c", "d", "e"}, 5));
  static_assert(ipa::Policy<ipa::vocab_mapped<table_policy>>);
  CHECK(mapped.vocab_size() == 4);
  auto s = mapped.new_state(1, 8);
  std::vector<float> logits(4);
  mapped.prefill(s, {{2}}, logits);
  CHECK(logits == std::vector<float>{0, 0, 1, 0});

  // reversed ids through an explicit map: base id v is adapter id 3 - v, and back
  const ipa::vocab_mapped<table_policy> reversed(adapter, ipa::vocab_map::explicit_map({3, 2, 1, 0}, 5));
  reversed.prefill(s, {{0}}, logits);  // the adapter reads 3
  CHECK(logits == std::vector<float>{1, 0, 0, 0});
  const std::vector<int> rows = {0};
  const std::vector<ipa::token_id> next = {1};  // the adapter reads 2
  reversed.step(s, rows, next, logits);
  CHECK(logits == std::vector<float>{0, 1, 0, 0});

  // a base with two ids the adapter lacks (an appended token, a padding row): they get -inf and
  // the tailored policy never samples them, for positive and negative alpha
  table_policy base = uniform_rows({0.f, 0.f, 0.f, 0.f, 5.f, 5.f});
  // (the adapter's id 4 is now one of its own padding rows)
  const ipa::vocab_mapped<table_policy> under(
      adapter, ipa::map_vocabularies({"a", "b", "c", "d", "z"}, 6, {"a", "b", "c", "d"}, 5));
  for (const float alpha : {1.0f, -1.0f}) {
    const ipa::ipa_decoder<table_policy, ipa::vocab_mapped<table_policy>> d(base, {ipa::with_alpha(under, alpha)});
    ipa::sampler<ipa::categorical> pick{ipa::categorical{}};
    ipa::xoshiro256 rng(7);
    ipa::generation_config cfg;
    cfg.max_new_tokens = 40;
    const ipa::rollout r = d.generate({{0}, {1, 2}}, cfg, pick, rng);
    for (std::size_t b = 0; b < 2; ++b)
      for (const ipa::token_id t : r.response(b)) CHECK(t < 4);
  }
  // a prompt token the adapter cannot read is an error, not garbage
  std::vector<float> wide(6);
  CHECK_THROWS_AS(under.prefill(s, {{4}}, wide), ipa::config_error);
}
