// SPDX-License-Identifier: MIT
// A consumer program: fuse two rows and sample, with nothing but <ipa/ipa.hpp>.
#include <cstdio>
#include <vector>

#include <ipa/ipa.hpp>

int main() {
  std::vector<float> tailored = {0.0f, 1.0f, 2.0f};
  ipa::add_expert(tailored, std::vector<float>{3.0f, 0.0f, 0.0f}, 1.0f);  // -> {3, 1, 2}
  ipa::sampler<ipa::greedy> pick{ipa::greedy{}};
  ipa::xoshiro256 rng(1);
  const auto s = pick(tailored, rng);
  std::printf("ipa %d.%d.%d consumer picked %d\n", IPA_VERSION_MAJOR, IPA_VERSION_MINOR, IPA_VERSION_PATCH, s.token);
  return s.token == 0 ? 0 : 1;
}
