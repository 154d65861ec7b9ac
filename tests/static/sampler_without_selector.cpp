// SPDX-License-Identifier: MIT
// Must NOT compile: a sampler chain whose last stage is a transform, not a selector.
#include <ipa/decode/sampler.hpp>

int main() {
  ipa::sampler<ipa::temperature, ipa::top_p> chain{ipa::temperature(0.7f), ipa::top_p(0.9)};
  (void)chain;
}
