// SPDX-License-Identifier: MIT
// Must NOT compile: a selector in the middle of the chain.
#include <ipa/decode/sampler.hpp>

int main() {
  ipa::sampler<ipa::greedy, ipa::top_p, ipa::categorical> chain{ipa::greedy{}, ipa::top_p(0.9), ipa::categorical{}};
  (void)chain;
}
