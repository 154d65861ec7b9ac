// SPDX-License-Identifier: MIT
// What this machine can do, measured now, for the benches' yardsticks: the memory read bandwidth
// and the multiply-add throughput of the threads, and the rounds that set a measurement beside one.
#pragma once
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include <ipa/core/matmul.hpp>
#include <ipa/core/parallel.hpp>
#include <ipa/model/attention.hpp>

namespace ipa_bench {

// Read bandwidth in bytes/s, measured now: sums a 2 GiB buffer (far beyond the caches) over all
// threads, the best of 5 passes of each of two read patterns: one sequential stream per chunk,
// and four interleaved streams per chunk (on AMD Zen 3 the four streams read 1.1x as fast as
// one, and the decoder reads four panels at once: one stream alone would understate the
// machine). This project's VM measured 25-48 GB/s within one session (other tenants of the
// host), so the 110M case measures it again right after decoding.
inline double memory_read_bandwidth() {
  constexpr std::size_t n = (std::size_t{2} << 30) / sizeof(float), chunks = 64, chunk = n / chunks;
  static const std::vector<float> buf(n, 1.0f);
  std::vector<float> partial(chunks);
  auto pass = [&]<int Streams>() {
    const auto t0 = std::chrono::steady_clock::now();
    ipa::parallel_for(chunks, [&](std::size_t c) {
      constexpr std::size_t len = chunk / Streams;
      const float* p = buf.data() + c * chunk;
      ipa::detail::v8f acc[Streams][4] = {};
      for (std::size_t i = 0; i < len; i += 32)
        for (int s = 0; s < Streams; ++s)
          for (int j = 0; j < 4; ++j) acc[s][j] += ipa::detail::load8(p + s * len + i + 8 * j);
      ipa::detail::v8f total = {};
      for (int s = 0; s < Streams; ++s) total += (acc[s][0] + acc[s][1]) + (acc[s][2] + acc[s][3]);
      partial[c] = ipa::detail::tree_sum8(total);
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(partial.data());
    return double(n * sizeof(float)) / seconds;
  };
  double best = 0;
  for (int rep = 0; rep < 5; ++rep)
    best = std::max({best, pass.template operator()<1>(), pass.template operator()<4>()});
  return best;
}

// Multiply-add throughput in FLOP/s on `threads` threads at once: ten independent 8-lane FMA chains
// per thread (more than the latency x throughput of any current x86 core), 3.2 GFLOP each. Batch-16
// decoding of the 110M shape is bound by it; on this project's 2-vCPU VMs two threads have
// measured anywhere from 1.0x (the host ran both vCPUs on one core's two hyperthreads) to 2.0x
// one thread, changing from minute to minute.
inline double fma_throughput(int threads) {
  constexpr long iterations = 20'000'000;
  const std::size_t count = std::size_t(threads);
  std::vector<float> sink(count, 0.0f);
  std::atomic<std::size_t> ran{0};
  const auto t0 = std::chrono::steady_clock::now();
  ipa::run_team(threads, [&](const ipa::team& t) noexcept {  // every thread at once
    ran += 1;
    ipa::detail::v8f acc[10];
    for (int j = 0; j < 10; ++j) acc[j] = ipa::detail::broadcast8(float(j) + float(t.rank()));
    const ipa::detail::v8f a = ipa::detail::broadcast8(0.999999f), b = ipa::detail::broadcast8(1e-7f);
    for (long i = 0; i < iterations; ++i)
      for (auto& v : acc) v = v * a + b;  // one FMA each (GCC's default -ffp-contract=fast)
    ipa::detail::v8f total = {};
    for (const auto& v : acc) total += v;
    sink[t.rank()] = ipa::detail::tree_sum8(total);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  benchmark::DoNotOptimize(sink.data());
  return 2.0 * 8 * 10 * double(iterations) * double(ran.load()) / seconds;
}

// The targets of issue 2 compare two measurements (bench_kernels: a tile's rate and the FMA
// peak). On a VM whose speed drifts 20-50% within minutes, the two sides taken by separate
// benchmarks seconds apart carry the drift into the ratio. These take both sides in alternating rounds, a few seconds
// each, and report the median of the per-round ratios (and the lowest and highest round).
struct round_ratios {
  std::vector<double> ratios, numerators;
  void add(double numerator, double denominator) {
    numerators.push_back(numerator);
    ratios.push_back(numerator / denominator);
  }
  static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }
  void report_ratios(benchmark::State& state, const std::string& name) const {
    state.counters[name] = median(ratios);
    state.counters[name + "_min"] = *std::min_element(ratios.begin(), ratios.end());
    state.counters[name + "_max"] = *std::max_element(ratios.begin(), ratios.end());
  }
  void report(benchmark::State& state, const std::string& name, double numerator_scale,
              const std::string& numerator_name) const {
    report_ratios(state, name);
    state.counters[numerator_name] = median(numerators) * numerator_scale;
    state.counters["rounds"] = double(ratios.size());
  }
};

}  // namespace ipa_bench
