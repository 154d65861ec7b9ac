// SPDX-License-Identifier: MIT
// Compact weights read in place (F32, F16, Q8_0 GGUFs) beside llama.cpp's llama-bench on the same
// files, in one run: the 110M shape (dim 768, 12 layers, hidden 2048, vocab 32000) with random
// weights, written by ipa once into IPA_BENCH_TMP (default /tmp). Per type: the time to load,
// tokens/s at batch 1 and 16, prompt processing of 128 tokens; llama-bench's tg64 and pp128 right
// after (2 threads each). ipa's f32 model repacked for its f32 kernels is the third column.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ipa/io/gguf.hpp>
#include <ipa/model/llama.hpp>

#include "made_up_model.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

std::string model_file(ipa::weight_type type) {
  const char* dir = std::getenv("IPA_BENCH_TMP");
  const std::string path = std::string(dir ? dir : "/tmp") + "/ipa_bench_110m." + ipa::weight_type_name(type) + ".gguf";
  if (!std::filesystem::exists(path)) {  // (llama.cpp needs a vocabulary: a made-up one)
    const auto tok = ipa_bench::made_up_tokenizer();
    ipa::save_gguf_llama(path, ipa::llama_weights::random(ipa_bench::shape_110m(), 7), &tok, type);
  }
  return path;
}

// The model as the CLI decodes it: F16/Q8_0 in place; F32 in place too, or `repacked`.
ipa::llama_model load(ipa::weight_type type, bool repacked) {
  const auto f = ipa::gguf_file::load(model_file(type));
  return repacked ? ipa::llama_model(ipa::load_gguf_llama(f)) : ipa::llama_model(ipa::load_gguf_llama_compact(f));
}

// Decoding B rows (prompt: 4 tokens each), tokens/s over the steps; load seconds as a counter.
void BM_ipa(benchmark::State& state, ipa::weight_type type, bool repacked) {
  const int B = int(state.range(0));
  const auto t0 = clock_type::now();
  const ipa::llama_model m = load(type, repacked);
  state.counters["load_s"] = std::chrono::duration<double>(clock_type::now() - t0).count();
  std::vector<float> logits(std::size_t(B) * m.vocab_size());
  std::vector<int> rows(static_cast<std::size_t>(B));
  for (int i = 0; i < B; ++i) rows[std::size_t(i)] = i;
  std::vector<ipa::token_id> tokens(std::size_t(B), 5);
  std::size_t decoded = 0;
  for (auto _ : state) {
    auto s = m.new_state(B, 256);
    m.prefill(s, std::vector<std::vector<ipa::token_id>>(std::size_t(B), {1, 403, 407, 261}), logits);
    for (int step = 0; step < 32; ++step) m.step(s, rows, tokens, logits);
    decoded += std::size_t(B) * 32;
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(decoded), benchmark::Counter::kIsRate);
}

// Prompt processing: one prompt of 128 tokens.
void BM_ipa_pp128(benchmark::State& state, ipa::weight_type type, bool repacked) {
  const ipa::llama_model m = load(type, repacked);
  std::vector<float> logits(m.vocab_size());
  std::vector<ipa::token_id> prompt(128);
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = ipa::token_id(3 + i * 7 % 31000);
  std::size_t processed = 0;
  for (auto _ : state) {
    auto s = m.new_state(1, 256);
    m.prefill(s, std::vector<std::vector<ipa::token_id>>{prompt}, logits);
    processed += prompt.size();
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(processed), benchmark::Counter::kIsRate);
}

// llama-bench on the same file (2 threads): its mean tokens/s for tg64 or pp128.
void BM_llama_bench(benchmark::State& state, ipa::weight_type type, const char* test) {
  const char* peers = std::getenv("IPA_PEERS_DIR");
  const std::string bin = std::string(peers ? peers : IPA_BENCH_PEERS_DIR) + "/llama.cpp/bin/llama-bench";
  if (!std::filesystem::exists(bin)) {
    state.SkipWithError(("SKIPPED: no " + bin).c_str());
    return;
  }
  const bool tg = std::string(test) == "tg64";
  const std::string cmd = bin + " -m " + model_file(type) + " -t 2 -r 3 -o json " + (tg ? "-p 0 -n 64" : "-p 128 -n 0");
  double ts = 0;
  for (auto _ : state) {
    std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(cmd.c_str(), "r"), ::pclose);
    std::string out;
    for (char buf[4096]; pipe && std::fgets(buf, sizeof buf, pipe.get());) out += buf;
    const auto j = nlohmann::json::parse(out, nullptr, false);
    if (!j.is_array() || j.empty()) {
      state.SkipWithError(("llama-bench printed no JSON: " + out.substr(0, 200)).c_str());
      return;
    }
    ts = j[0].value("avg_ts", 0.0);
  }
  state.counters["tokens_per_s"] = ts;
}

constexpr auto f32 = ipa::weight_type::f32, f16 = ipa::weight_type::f16, q8_0 = ipa::weight_type::q8_0;

// ipa and llama-bench alternate, type by type, so that both see the same moment of the host.
BENCHMARK_CAPTURE(BM_ipa, f32_repacked, f32, true)->Arg(1)->Arg(16)->Iterations(2)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, f32_in_place, f32, false)->Arg(1)->Arg(16)->Iterations(2)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, f32_tg64, f32, "tg64")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, f16_in_place, f16, false)->Arg(1)->Arg(16)->Iterations(2)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, f16_tg64, f16, "tg64")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa, q8_0_in_place, q8_0, false)->Arg(1)->Arg(16)->Iterations(2)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, q8_0_tg64, q8_0, "tg64")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa_pp128, f32_repacked, f32, true)->Iterations(2)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, f32_pp128, f32, "pp128")->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_ipa_pp128, q8_0_in_place, q8_0, false)->Iterations(2)->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_llama_bench, q8_0_pp128, q8_0, "pp128")->Iterations(1)->Unit(benchmark::kSecond);

}  // namespace

BENCHMARK_MAIN();
