// SPDX-License-Identifier: MIT
// Train a small adapter with RLOO so that stories260K's stories mention a dog, then save it for
// `ipa generate --adapter`. Usage: 02_train_adapter [MODEL_DIR] [STEPS] [OUT]
#include <cstdio>
#include <string>

#include <ipa/ipa.hpp>

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "../shared/models";
  const std::size_t steps = argc > 2 ? std::stoul(argv[2]) : 50;
  const std::string out = argc > 3 ? argv[3] : "dog_adapter";

  const ipa::llama_weights base_weights = ipa::load_llama2c(dir + "/stories260K.bin");
  const ipa::llama_model base(base_weights);  // frozen: it only runs inside the decoder
  const auto tok = ipa::llama2c_tokenizer::load(dir + "/tok512.bin", base.vocab_size());

  ipa::llama_config shape = base_weights.config();  // same vocabulary, smaller body
  shape.dim = 64, shape.n_layers = 2, shape.n_heads = shape.n_kv_heads = 8;
  const auto adapter = ipa::llama_weights::zero_output_adapter(shape, 1);  // starts exactly at the base

  ipa::rl_config cfg;
  cfg.algorithm = ipa::rl_algorithm::rloo;
  cfg.prompts_per_step = 4, cfg.samples_per_prompt = 4, cfg.max_new_tokens = 96;
  cfg.stop_tokens = {ipa::llama2c_tokenizer::bos_id};  // llama2.c stories end with BOS
  ipa::prompt_list prompts = {tok.encode("Once upon a time"), tok.encode("One day, Tom went outside."),
                              tok.encode("Lily had a red ball.")};
  ipa::rl_trainer trainer(&base, adapter, tok, ipa::keyword_coverage({std::vector<std::string>{"dog", "dogs"}}),
                          prompts, cfg);

  for (std::size_t s = 0; s < steps; ++s) {
    const ipa::step_metrics m = trainer.step();
    if (s % 10 == 0 || s + 1 == steps) std::printf("step %zu  reward %.3f  kl %.4f\n", s, m.reward_mean, m.kl);
  }
  ipa::save_adapter(out, trainer.policy().to_weights(), cfg.alpha, trainer.best_control_token());
  std::printf("saved %s: try ipa generate --base %s/stories260K.bin --adapter %s --prompt \"Once upon a time\"\n",
              out.c_str(), dir.c_str(), out.c_str());
}
