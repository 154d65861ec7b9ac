// SPDX-License-Identifier: MIT
// The API tour: load a base and an adapter, fuse them (alpha = 0.5), sample a continuation.
// usage: 00_generate MODEL_DIR   (the folder with stories260K.bin and tok512.bin)
#include <iostream>
#include <string>

#include <ipa/ipa.hpp>

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "../shared/models";
  const ipa::llama_model base(ipa::load_llama2c(dir + "/stories260K.bin"));
  const ipa::llama_model adapter(ipa::load_llama2c(dir + "/stories260K.bin"));  // any model, same vocab
  const auto tok = ipa::llama2c_tokenizer::load(dir + "/tok512.bin", base.vocab_size());

  const ipa::ipa_decoder decoder(base, {ipa::with_alpha(adapter, 0.5f)});  // base + 0.5 * adapter
  auto sampler = ipa::sampler(ipa::temperature(0.8f), ipa::top_p(0.9), ipa::categorical{});
  ipa::xoshiro256 rng(42);  // all randomness comes from here

  ipa::generation_config cfg;
  cfg.max_new_tokens = 40;
  cfg.stop_tokens = {ipa::llama2c_tokenizer::bos_id};  // llama2.c models end a story with BOS
  const auto prompt = tok.encode("Once upon a time");
  const ipa::rollout r = decoder.generate({prompt}, cfg, sampler, rng);

  std::cout << "Once upon a time" << tok.decode(r.response(0), prompt.back()) << "\n";
  for (std::size_t t = 0; t < 5; ++t)  // what a trainer reads: behaviour vs tailored log-probs
    std::cout << "token " << r.response_ids(0, t) << ": log pi_sampled " << r.log_probs(0, t) << ", log pi_tailored "
              << r.tailored_log_probs(0, t) << "\n";
}
