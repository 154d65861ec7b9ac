// SPDX-License-Identifier: MIT
// The contracts checked both ways at compile time (a failure here is a build failure).
#include <doctest/doctest.h>

#include <ipa/ipa.hpp>

namespace {
struct not_a_policy {};
struct half_policy {  // vocab but no decoding
  std::size_t vocab_size() const { return 1; }
};
}  // namespace

static_assert(ipa::Policy<ipa::llama_model>);
static_assert(!ipa::Policy<not_a_policy>);
static_assert(!ipa::Policy<half_policy>);
static_assert(ipa::SparsePolicy<ipa::top_k_view<ipa::llama_model>>);
static_assert(!ipa::SparsePolicy<ipa::llama_model>);
static_assert(ipa::BasePolicy<ipa::llama_model> && ipa::BasePolicy<ipa::top_k_view<ipa::llama_model>>);
static_assert(!ipa::BasePolicy<half_policy>);
static_assert(!ipa::Policy<ipa::top_k_view<ipa::llama_model>>);

static_assert(ipa::LogitTransform<ipa::temperature>);
static_assert(ipa::LogitTransform<ipa::top_k>);
static_assert(ipa::LogitTransform<ipa::top_p>);
static_assert(ipa::LogitTransform<ipa::min_p>);
static_assert(!ipa::LogitTransform<ipa::greedy>);
static_assert(!ipa::LogitTransform<int>);
static_assert(ipa::TokenSelector<ipa::greedy>);
static_assert(ipa::TokenSelector<ipa::categorical>);
static_assert(!ipa::TokenSelector<ipa::top_p>);
static_assert(!ipa::TokenSelector<int>);
static_assert(ipa::Sampler<ipa::standard_sampler>);
static_assert(ipa::Sampler<ipa::sampler<ipa::greedy>>);
static_assert(!ipa::Sampler<ipa::top_k>);

static_assert(ipa::LogitProcessor<ipa::ban_tokens>);
static_assert(ipa::LogitProcessor<ipa::repetition_penalty>);
static_assert(ipa::LogitProcessor<ipa::min_new_tokens>);
static_assert(!ipa::LogitProcessor<ipa::top_k>);

static_assert(std::uniform_random_bit_generator<ipa::xoshiro256>);

TEST_CASE("xoshiro256 is seedable and reproducible") {
  ipa::xoshiro256 a(5), b(5), c(6);
  CHECK(a() == b());
  CHECK(a() != c());
  const double u = ipa::uniform01(a);
  CHECK(u >= 0.0);
  CHECK(u < 1.0);
}
