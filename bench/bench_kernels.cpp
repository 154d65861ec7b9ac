// SPDX-License-Identifier: MIT
// The decoder's products alone, by where their weights live: n packed rows (16: the batch-16
// step's tiles; 6: one tile; 1: batch 1) against a packed matrix with k = 768 sized for L2
// (384 KiB a thread, just over the size the library treats as cached, so it takes the streamed
// path the 110M shape takes), L3 (4.5 MiB) or memory (216 MiB), each thread on its own matrix,
// on one thread or all. Reports GFLOP/s and their fraction of the same threads' FMA peak measured
// just before and after, and for one row the weight bytes read per second: how far the batch-16 tiles are
// from the peak at each level, and whether threads scale. First, the same tiles with everything in
// L1, against the FMA peak in alternating rounds: the most of the peak they can keep on this host.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include <ipa/core/matmul.hpp>
#include <ipa/core/parallel.hpp>

#include "measure.hpp"

namespace {

enum level { l2, l3, memory };
constexpr std::size_t k = 768;

ipa::packed_matrix random_matrix(std::size_t rows, std::size_t k_, unsigned salt) {
  std::vector<float> w(rows * k_);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = float((i * 7 + salt) % 251) * 1e-3f - 0.125f;
  return ipa::packed_matrix(w.data(), k_, rows, k_);
}

// n rows of k_ inputs, packed as the decoder packs them for a product, one copy per thread.
std::vector<std::vector<float>> packed_rows(std::size_t n, std::size_t k_, std::size_t threads) {
  std::vector<float> x(n * k_);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(i % 97) * 1e-2f - 0.5f;
  std::vector<std::vector<float>> xp(threads, std::vector<float>(n * k_));
  for (auto& p : xp) ipa::pack_rows(x.data(), k_, n, k_, p.data());
  return xp;
}

// Seconds for `reps` products out[i] = xp[i] * w(i)^T on each of `threads` threads at once.
template <class Matrix>
double seconds_of_products(int threads, std::size_t reps, std::size_t n, std::vector<std::vector<float>>& out,
                           const std::vector<std::vector<float>>& xp, Matrix&& w) {
  const auto start = std::chrono::steady_clock::now();
  ipa::run_team(threads, [&](const ipa::team& t) noexcept {
    const std::size_t i = t.rank();
    const ipa::packed_matrix& wi = w(i);
    for (std::size_t r = 0; r < reps; ++r)
      ipa::matmul_packed_panels(out[i].data(), wi.rows(), xp[i].data(), n, wi, 0, wi.panels());
  });
  benchmark::DoNotOptimize(out.data());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string label(const std::string& where, std::size_t n, int threads) {
  return where + ", " + std::to_string(n) + " rows, " + std::to_string(threads) +
         (threads == 1 ? " thread" : " threads");
}

// The matrices of every thread for a level, built once (the memory level holds 216 MiB a thread).
std::vector<ipa::packed_matrix>& matrices(level l) {
  static std::map<level, std::vector<ipa::packed_matrix>> cache;
  auto& m = cache[l];
  if (m.empty()) {
    const std::size_t bytes = l == l2   ? std::size_t{384} << 10
                              : l == l3 ? std::size_t{4608} << 10
                                        : std::size_t{216} << 20;
    for (int t = 0; t < ipa::max_threads(); ++t)
      m.push_back(random_matrix(bytes / (k * sizeof(float)), k, unsigned(t)));
  }
  return m;
}

// args: rows n, level, threads (1 or all)
void BM_product(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto where = static_cast<level>(state.range(1));
  const int threads = state.range(2) == 1 ? 1 : ipa::max_threads();
  const auto& w = matrices(where);
  const std::size_t m = w[0].rows();
  const auto xp = packed_rows(n, k, w.size());
  std::vector<std::vector<float>> out(w.size(), std::vector<float>(n * m));
  // products per thread per iteration: ~0.4 GFLOP, so an iteration is tens of milliseconds
  const std::size_t reps = std::max<std::size_t>(1, std::size_t(4e8 / (2.0 * double(n * m * k))));
  const double peak_before = ipa_bench::fma_throughput(threads);
  double seconds = 0;
  for (auto _ : state)
    seconds += seconds_of_products(
        threads, reps, n, out, xp, [&](std::size_t i) -> const auto& { return w[i]; });
  const double products = double(state.iterations()) * double(reps) * threads;
  const double flops_per_s = products * 2.0 * double(n * m * k) / seconds;
  state.counters["GFLOP/s"] = flops_per_s / 1e9;
  // the higher of the peaks measured just before and just after: the stricter yardstick
  state.counters["of_fma_peak"] = flops_per_s / std::max(peak_before, ipa_bench::fma_throughput(threads));
  if (n == 1)
    state.counters["weight_GB/s"] =
        products * double(w[0].panels() * ipa::packed_matrix::panel * k * sizeof(float)) / seconds / 1e9;
  state.SetLabel(label(where == l2 ? "L2" : where == l3 ? "L3" : "memory", n, threads));
}

// The best case of the same tiles: one panel and its rows in L1 (k = 192: 12 KiB of weights and at
// most 12 KiB of rows), so nothing waits on L2 or memory, in rounds alternating with the FMA peak
// loop on the same threads. The peak loop holds no loads and runs at the same rate minute after
// minute on this project's VM; a loop that also loads from L1 does not, so the per-round ratio
// (median, lowest, highest) is how much of the peak any tile can keep here, before streaming.
void BM_l1_tile_of_fma_peak(benchmark::State& state) {
  constexpr std::size_t k1 = 192, m = ipa::packed_matrix::panel;
  const auto n = static_cast<std::size_t>(state.range(0));
  const int threads = state.range(1) == 1 ? 1 : ipa::max_threads();
  const ipa::packed_matrix panel = random_matrix(m, k1, 0);
  const auto xp = packed_rows(n, k1, std::size_t(threads));
  // each thread's output padded by a cache line: calls of a microsecond would otherwise bounce a
  // line shared by two threads' outputs between the cores
  std::vector<std::vector<float>> out(std::size_t(threads), std::vector<float>(n * m + 16));
  const std::size_t reps = std::size_t(3e8 / (2.0 * double(n * m * k1)));  // ~0.3 GFLOP a thread
  ipa_bench::round_ratios of_peak;
  for (auto _ : state) {
    const double peak = ipa_bench::fma_throughput(threads);
    const double seconds = seconds_of_products(
        threads, reps, n, out, xp, [&](std::size_t) -> const auto& { return panel; });
    of_peak.add(double(reps) * threads * 2.0 * double(n * m * k1) / seconds, peak);
  }
  of_peak.report_ratios(state, "of_fma_peak");
  state.SetLabel(label("L1", n, threads));
}

}  // namespace

BENCHMARK(BM_l1_tile_of_fma_peak)
    ->ArgNames({"rows", "threads"})
    ->ArgsProduct({{16, 6}, {1, 0}})
    ->Iterations(15)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_product)
    ->ArgNames({"rows", "level", "threads"})
    ->ArgsProduct({{16, 6, 1}, {l2, l3, memory}, {1, 0}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(0.5)
    ->UseRealTime();

BENCHMARK_MAIN();
