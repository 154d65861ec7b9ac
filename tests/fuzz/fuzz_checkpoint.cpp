// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes as a checkpoint's trainer.json (next to a real checkpoint's other
// files): --resume either restores the trainer or throws an ipa::error; never a crash, a hang or
// an out-of-range read. The model path comes from IPA_MODEL_DIR.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <ipa/ipa.hpp>

namespace {
std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

struct fixture {
  ipa::llama_model base;
  ipa::llama2c_tokenizer tok;
  std::unique_ptr<ipa::rl_trainer<ipa::spec_reward, ipa::llama2c_tokenizer>> trainer;
  std::string dir;

  fixture()
      : base(ipa::load_llama2c(env_or("IPA_MODEL_DIR", IPA_FUZZ_MODEL_DIR) + "/stories260K.bin")),
        tok(ipa::llama2c_tokenizer::load(env_or("IPA_MODEL_DIR", IPA_FUZZ_MODEL_DIR) + "/tok512.bin")) {
    ipa::llama_config c = base.weights().config();
    c.dim = 16, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 2, c.hidden_dim = 32;
    ipa::rl_config rc;
    rc.algorithm = ipa::rl_algorithm::quark;
    rc.prompts_per_step = 2;
    rc.max_new_tokens = 4;
    trainer = std::make_unique<ipa::rl_trainer<ipa::spec_reward, ipa::llama2c_tokenizer>>(
        &base, ipa::llama_weights::zero_output_adapter(c, 1), tok, ipa::spec_reward::parse("avoid:sad"),
        ipa::prompt_list{tok.encode("Once"), tok.encode("Tom")}, rc);
    trainer->step();
    const std::string out =
        std::filesystem::temp_directory_path() / ("ipa_fuzz_checkpoint_" + std::to_string(getpid()));
    dir = ipa::save_checkpoint(out, *trainer);
  }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fixture f;
  std::ofstream(f.dir + "/trainer.json", std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), std::streamsize(size));
  try {
    ipa::load_checkpoint(f.dir, *f.trainer);
    (void)ipa::checkpoint_run(f.dir);
  } catch (const ipa::error&) {
  }
  return 0;
}
