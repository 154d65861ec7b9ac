// SPDX-License-Identifier: MIT
// Decoding throughput (tokens/s) of the base alone and base + one adapter, at batch 1 and 16, on
// stories260K and on random-weight models of the stories15M and stories110M shapes (built in
// memory). Also measures this machine's memory read bandwidth, and for the 110M shape reports
// the weight bytes streamed per second as a fraction of it (batch-1 decoding is memory-bound).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <ipa/ipa.hpp>

namespace {

enum shape { stories260K, stories15M, stories110M };

ipa::llama_config config_of(shape s) {
  ipa::llama_config c;
  switch (s) {
    case stories260K: c = {64, 172, 5, 8, 4, 512, 512}; break;
    case stories15M: c = {288, 768, 6, 6, 6, 32000, 256}; break;
    case stories110M: c = {768, 2048, 12, 12, 12, 32000, 1024}; break;
  }
  return c;
}

// One model per shape, loaded or built once.
const ipa::llama_model& model(shape s) {
  static std::map<shape, std::unique_ptr<ipa::llama_model>> cache;
  auto& m = cache[s];
  if (!m) {
    const char* dir = std::getenv("IPA_MODEL_DIR");
    const std::string path = std::string(dir ? dir : IPA_BENCH_MODEL_DIR) + "/stories260K.bin";
    if (s == stories260K && std::filesystem::exists(path))
      m = std::make_unique<ipa::llama_model>(ipa::load_llama2c(path));
    else
      m = std::make_unique<ipa::llama_model>(ipa::llama_weights::random(config_of(s), 1234));
  }
  return *m;
}

// Read bandwidth in bytes/s: sums a 2 GiB buffer (far beyond the caches) over all threads.
double memory_read_bandwidth() {
  static double measured = [] {
    const std::size_t n = (std::size_t{2} << 30) / sizeof(float), chunks = 64;
    std::vector<float> buf(n, 1.0f);
    std::vector<float> partial(chunks);
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      ipa::parallel_for(chunks, [&](std::size_t c) {
        const float* p = buf.data() + c * (n / chunks);
        ipa::detail::v8f acc[4] = {};
        for (std::size_t i = 0; i < n / chunks; i += 32)
          for (int j = 0; j < 4; ++j) acc[j] += ipa::detail::load8(p + i + 8 * j);
        partial[c] = ipa::detail::tree_sum8(acc[0] + acc[1] + acc[2] + acc[3]);
      });
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      benchmark::DoNotOptimize(partial.data());
      best = std::max(best, double(n * sizeof(float)) / s);
    }
    return best;
  }();
  return measured;
}

void BM_memory_read_bandwidth(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(memory_read_bandwidth());
  state.counters["GB/s"] = memory_read_bandwidth() / 1e9;
}

// args: shape, batch, adapters (0 or 1), new tokens per row
void BM_decode(benchmark::State& state) {
  const auto s = static_cast<shape>(state.range(0));
  const auto batch = static_cast<std::size_t>(state.range(1));
  const bool with_adapter = state.range(2) != 0;
  const auto new_tokens = static_cast<std::size_t>(state.range(3));
  const ipa::llama_model& base = model(s);
  std::vector<ipa::weighted<ipa::llama_model>> adapters;
  if (with_adapter) adapters.push_back(ipa::with_alpha(base, 1.0f));  // the same model as adapter
  const ipa::ipa_decoder decoder(base, adapters);
  ipa::prompt_list prompts(batch, std::vector<ipa::token_id>{1});
  ipa::generation_config cfg;
  cfg.max_new_tokens = new_tokens;
  ipa::sampler<ipa::greedy> pick{ipa::greedy{}};
  ipa::xoshiro256 rng(1);
  std::size_t tokens = 0;
  for (auto _ : state) {
    const auto r = decoder.generate(prompts, cfg, pick, rng);
    for (std::size_t b = 0; b < batch; ++b) tokens += r.response_length(b);
    benchmark::DoNotOptimize(r.response_ids.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
  if (s == stories110M && batch == 1 && !with_adapter) {
    const double bytes_per_token = double(base.weights().data().size()) * sizeof(float);
    state.counters["weight_GB/s"] =
        benchmark::Counter(double(tokens) * bytes_per_token / 1e9, benchmark::Counter::kIsRate);
    state.counters["bandwidth_GB/s"] = memory_read_bandwidth() / 1e9;
  }
  state.SetLabel(std::string(s == stories260K ? "stories260K" : s == stories15M ? "15M-shape" : "110M-shape") +
                 " B=" + std::to_string(batch) + (with_adapter ? " base+adapter" : " base"));
}

}  // namespace

BENCHMARK(BM_memory_read_bandwidth)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_decode)
    ->ArgNames({"shape", "B", "adapter", "new"})
    ->Args({stories260K, 1, 0, 256})
    ->Args({stories260K, 1, 1, 256})
    ->Args({stories260K, 16, 0, 256})
    ->Args({stories260K, 16, 1, 256})
    ->Args({stories15M, 1, 0, 64})
    ->Args({stories15M, 16, 0, 64})
    ->Args({stories110M, 1, 0, 32})
    ->Args({stories110M, 16, 0, 32})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0)
    ->UseRealTime();

BENCHMARK_MAIN();
