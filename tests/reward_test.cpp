// SPDX-License-Identifier: MIT
// Rewards: built-ins and composites by hand, the spec parser, the external-process reward.
#include <doctest/doctest.h>

#include <chrono>
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

TEST_CASE("external-process reward: a filter per batch, exactly one finite score per sample") {
  // one JSON line per sample in, one number per line out: here, the length of the response text
  const ipa::process_reward len(
      "while IFS= read -r line; do echo \"$line\" | sed 's/.*\"response\":\"\\([^\"]*\\)\".*/\\1/' | "
      "awk '{ print length($0) }'; done");
  CHECK(score_texts(len, {"abc", "hello world"}) == std::vector<double>{3, 11});
  CHECK(score_texts(len, {"x"}) == std::vector<double>{1});  // a second batch, a second run
  const ipa::process_reward object("while read -r line; do echo '{\"score\": 0.25}'; done");
  CHECK(score_texts(object, {"a"}) == std::vector<double>{0.25});
  // a command that reads its input to the end before answering: stdin is closed after the batch
  const ipa::process_reward to_the_end("n=$(wc -l); i=0; while [ $i -lt $n ]; do echo 0.5; i=$((i+1)); done");
  CHECK(score_texts(to_the_end, {"a", "b", "c"}) == std::vector<double>{0.5, 0.5, 0.5});
  const ipa::process_reward crlf("printf '1\\r\\n2\\r\\n'; cat >/dev/null");
  CHECK(score_texts(crlf, {"a", "b"}) == std::vector<double>{1, 2});
}

TEST_CASE("external-process reward: every misbehaviour is a reward_error naming the command") {
  using doctest::Contains;
  auto fails_with = [](const std::string& command, const std::vector<std::string>& texts, const std::string& expected,
                       double timeout = 5) {
    CAPTURE(command);
    const auto start = std::chrono::steady_clock::now();
    const ipa::process_reward r(command, timeout);
    const std::string named = "reward command '" + command + "'";
    CHECK_THROWS_WITH_AS(score_texts(r, texts), Contains(expected.c_str()), ipa::reward_error);
    CHECK_THROWS_WITH_AS(score_texts(r, texts), Contains(named.c_str()), ipa::reward_error);
    // no hang: each failure is known within the timeout and a little
    CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 2 * (timeout + 1));
  };
  fails_with("while read -r line; do echo 'banana'; done", {"a"}, "answered 'banana' for sample 0");
  fails_with("while read -r line; do echo 0; echo 7; done", {"a", "b"}, "answered 4 line(s) for 2 sample(s)");
  fails_with("cat >/dev/null; echo 1", {"a", "b"}, "answered 1 line(s) for 2 sample(s)");
  fails_with("read -r line; echo 1; echo 2; echo x", {"a", "b", "c"}, "answered 'x' for sample 2");
  fails_with("while read -r line; do echo 1e308; done", {"a"}, "answered '1e308' for sample 0");
  fails_with("while read -r line; do echo NaN; done", {"a"}, "answered 'NaN'");
  fails_with("while read -r line; do echo; done", {"a"}, "answered '' for sample 0");
  fails_with("cat >/dev/null; exit 3", {"a", "b"}, "exited with status 3");
  fails_with("cat >/dev/null; echo 1; exit 1", {"a"}, "exited with status 1");
  fails_with("kill -9 $$", {"a"}, "was killed by signal 9");
  fails_with("sleep 100", {"a"}, "no answer within", 0.3);
  // answers, then lingers with a child holding its output open: killed as a group at the timeout
  fails_with("cat >/dev/null; echo 1; sleep 100", {"a"}, "no answer within", 0.3);
  // exits at once without reading a batch larger than a pipe holds: EPIPE, not SIGPIPE
  fails_with("echo 1", std::vector<std::string>(3000, std::string(100, 'x')), "answered 1 line(s) for 3000");
  CHECK_THROWS_AS(ipa::process_reward("   "), ipa::config_error);
  CHECK_THROWS_AS(ipa::process_reward("true", 0), ipa::config_error);
  CHECK_THROWS_AS(ipa::process_reward("true", NAN), ipa::config_error);
}
