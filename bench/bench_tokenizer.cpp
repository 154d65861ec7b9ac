// SPDX-License-Identifier: MIT
// GPT-2 byte-level BPE encoding speed (MB/s, one thread) on 1 MB of English text: TinyStories
// stories sampled from stories260K (deterministic seed), re-encoded with the original GPT-2
// vocabulary. "cold" clears the word cache before every pass (a first read of new text);
// "warm" keeps it (the steady state of a long corpus).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

#include <ipa/ipa.hpp>
#include <ipa/text/gpt2_tokenizer.hpp>

namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

const std::string& english_text() {
  static const std::string text = [] {
    const std::string dir = env_or("IPA_MODEL_DIR", IPA_BENCH_MODEL_DIR);
    const ipa::llama_model model(ipa::load_llama2c(dir + "/stories260K.bin"));
    const auto tok = ipa::llama2c_tokenizer::load(dir + "/tok512.bin", model.vocab_size());
    const ipa::ipa_decoder<ipa::llama_model> decoder(model);
    auto sampler = ipa::make_standard_sampler(1.0f);
    ipa::xoshiro256 rng(2024);
    ipa::generation_config g;
    g.max_new_tokens = 400;
    std::string out;
    const ipa::prompt_list prompts(64, tok.encode("Once upon a time"));
    while (out.size() < (1u << 20)) {
      const auto r = decoder.generate(prompts, g, sampler, rng);
      for (std::size_t b = 0; b < prompts.size(); ++b)
        out += "Once upon a time" + tok.decode(r.response(b), prompts[b].back()) + "\n";
    }
    out.resize(1u << 20);
    return out;
  }();
  return text;
}

const ipa::gpt2_tokenizer& gpt2() {
  static const ipa::gpt2_tokenizer t =
      ipa::gpt2_tokenizer::load(env_or("IPA_GOLDEN_DIR", IPA_BENCH_GOLDEN_DIR) + "/gpt2_bpe");
  return t;
}

void BM_gpt2_encode(benchmark::State& state) {
  const bool cold = state.range(0) == 0;
  const std::string& text = english_text();
  std::size_t tokens = 0;
  gpt2().clear_cache();
  for (auto _ : state) {
    if (cold) gpt2().clear_cache();
    const auto ids = gpt2().encode(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(std::int64_t(text.size()) * state.iterations());
  state.counters["tokens"] = double(tokens);
}

}  // namespace

BENCHMARK(BM_gpt2_encode)->ArgName("warm")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
