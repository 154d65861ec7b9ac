// SPDX-License-Identifier: MIT
// Rewards: built-ins and composites by hand, the spec parser, the external-process reward.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include <ipa/reward/process.hpp>
#include <ipa/reward/reward.hpp>
#include <ipa/reward/spec.hpp>

namespace {
std::vector<double> score_texts(auto& reward, const std::vector<std::string>& texts) {
  std::vector<ipa::sample_view> views;
  for (const auto& t : texts) views.push_back({{}, {}, "", t});
  std::vector<double> out(texts.size());
  reward.score(views, out);
  return out;
}
}  // namespace

static_assert(ipa::Reward<ipa::keyword_coverage>);
static_assert(ipa::Reward<ipa::spec_reward>);
static_assert(ipa::Reward<ipa::process_reward>);
static_assert(!ipa::Reward<int>);

TEST_CASE("ordered keyword coverage, whole words, inflections, binary") {
  ipa::keyword_coverage k({{"dog", "dogs"}, {"park"}, {"ball"}});
  CHECK(k.score_text("The dogs ran to the park with a ball.") == doctest::Approx(1.0));
  CHECK(k.score_text("A ball, then the park, then a dog.") == doctest::Approx(1.0 / 3));  // order matters
  CHECK(k.score_text("The DOG went to the Park.") == doctest::Approx(2.0 / 3));           // any case
  CHECK(k.score_text("hotdog parking") == doctest::Approx(0.0));                          // whole words only
  CHECK(k.score_text("A park and a dog and a ball") == doctest::Approx(2.0 / 3));         // dog, ball after it
  ipa::keyword_coverage all({{"dog"}, {"park"}}, true);
  CHECK(all.score_text("dog park") == 1.0);
  CHECK(all.score_text("dog") == 0.0);
  CHECK_THROWS_AS(ipa::keyword_coverage({{"two words"}}), ipa::config_error);
}

TEST_CASE("word avoidance, length, distinct-n and composites") {
  ipa::avoid_words avoid({"sad", "cry"});
  CHECK(score_texts(avoid, {"She was happy.", "He was Sad!", "sadness is not a listed word", "Don't cry."}) ==
        std::vector<double>{1, 0, 1, 0});
  CHECK(ipa::distinct_n("a b a b", 1) == doctest::Approx(0.5));
  CHECK(ipa::distinct_n("a b a b", 2) == doctest::Approx(2.0 / 3));
  CHECK(ipa::distinct_n("a", 2) == 1.0);

  std::vector<ipa::token_id> ten(10, 5), five(5, 5);
  std::vector<ipa::sample_view> views = {{{}, ten, "", ""}, {{}, five, "", ""}};
  std::vector<double> s(2);
  ipa::target_length(10).score(views, s);
  CHECK(s == std::vector<double>{1.0, 0.5});

  ipa::weighted_sum sum(std::pair{2.0, ipa::avoid_words({"sad"})}, std::pair{1.0, ipa::keyword_coverage({{"dog"}})});
  CHECK(score_texts(sum, {"a dog", "a sad dog", "nothing"}) == std::vector<double>{3, 1, 2});
  ipa::product_reward prod(ipa::avoid_words({"sad"}), ipa::keyword_coverage({{"dog"}}));
  CHECK(score_texts(prod, {"a dog", "a sad dog"}) == std::vector<double>{1, 0});
  ipa::clipped_reward<ipa::weighted_sum<ipa::avoid_words>> clip{
      ipa::weighted_sum(std::pair{5.0, ipa::avoid_words({"x"})}), 0, 2};
  CHECK(score_texts(clip, {"y"}) == std::vector<double>{2});
  ipa::normalised_reward<ipa::avoid_words> norm{ipa::avoid_words({"x"})};
  const auto n = score_texts(norm, {"x", "y"});
  CHECK(n[0] == doctest::Approx(-1.0));
  CHECK(n[1] == doctest::Approx(1.0));
}

TEST_CASE("reward spec: weighted terms, and clear errors") {
  auto r = ipa::spec_reward::parse("avoid:sad,cry + 0.5*keywords:dog|dogs,park + length:4");
  REQUIRE(r.terms().size() == 3);
  CHECK(r.terms()[1].weight == 0.5);
  std::vector<ipa::token_id> four(4, 7);
  std::vector<ipa::sample_view> views = {{{}, four, "", "the dogs in the park"}};
  std::vector<double> s(1);
  r.score(views, s);
  CHECK(s[0] == doctest::Approx(1 + 0.5 * 1 + 1));
  CHECK_THROWS_WITH_AS(ipa::spec_reward::parse(""), doctest::Contains("empty"), ipa::config_error);
  CHECK_THROWS_WITH_AS(ipa::spec_reward::parse("happy:1"), doctest::Contains("unknown reward 'happy'"),
                       ipa::config_error);
  CHECK_THROWS_WITH_AS(ipa::spec_reward::parse("length:abc"), doctest::Contains("not a number"), ipa::config_error);
  CHECK_THROWS_WITH_AS(ipa::spec_reward::parse("x*avoid:a"), doctest::Contains("'x' is not a number"),
                       ipa::config_error);
  CHECK_THROWS_AS(ipa::spec_reward::parse("avoid:"), ipa::config_error);
  CHECK_THROWS_AS(ipa::spec_reward::parse("avoid:a +"), ipa::config_error);
  CHECK_THROWS_AS(ipa::spec_reward::parse("distinct:0"), ipa::config_error);
}

TEST_CASE("external-process reward: protocol, garbage, death and timeout") {
  // one JSON line per sample in, one number per line out: here, the length of the response text
  ipa::process_reward len(
      "while IFS= read -r line; do echo \"$line\" | sed 's/.*\"response\":\"\\([^\"]*\\)\".*/\\1/' | "
      "awk '{ print length($0) }'; done");
  CHECK(score_texts(len, {"abc", "hello world"}) == std::vector<double>{3, 11});
  CHECK(score_texts(len, {"x"}) == std::vector<double>{1});  // the same process, a second batch
  ipa::process_reward object("while read -r line; do echo '{\"score\": 0.25}'; done");
  CHECK(score_texts(object, {"a"}) == std::vector<double>{0.25});

  ipa::process_reward garbage("while read -r line; do echo 'banana'; done");
  CHECK_THROWS_WITH_AS(score_texts(garbage, {"a"}), doctest::Contains("answered 'banana'"), ipa::io_error);
  ipa::process_reward dies("exit 3");
  CHECK_THROWS_WITH_AS(score_texts(dies, {"a", "b"}), doctest::Contains("exited with status 3"), ipa::io_error);
  ipa::process_reward silent("sleep 5", 0.2);
  CHECK_THROWS_WITH_AS(score_texts(silent, {"a"}), doctest::Contains("no answer within"), ipa::io_error);
}
