// SPDX-License-Identifier: MIT
// Decoding throughput (tokens/s) of the base alone and base + one adapter, at batch 1 and 16, on
// stories260K and on random-weight models of the stories15M and stories110M shapes (built in
// memory). Also measures this machine's memory read bandwidth and multiply-add throughput, and for
// the 110M shape reports the weight bytes streamed per second at batch 1 as a fraction of the
// bandwidth (memory-bound; beside it the same fraction for llama2.c's plain row-major products over
// the same weights) and the FLOP/s at batch 16 as a fraction of the FMA peak (compute-bound).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ipa/ipa.hpp>

#include "measure.hpp"

namespace {

using ipa_bench::fma_throughput;
using ipa_bench::memory_read_bandwidth;
using ipa_bench::round_ratios;

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
    else m = std::make_unique<ipa::llama_model>(ipa::llama_weights::random(config_of(s), 1234));
  }
  return *m;
}

void BM_memory_read_bandwidth(benchmark::State& state) {
  double bandwidth = 0;
  for (auto _ : state) bandwidth = memory_read_bandwidth();
  state.counters["GB/s"] = bandwidth / 1e9;
}

void BM_fma_throughput(benchmark::State& state) {
  double one = 0, all = 0;
  for (auto _ : state) one = fma_throughput(1), all = fma_throughput(ipa::max_threads());
  state.counters["GFLOP/s_1_thread"] = one / 1e9;
  state.counters["GFLOP/s_all_threads"] = all / 1e9;
  state.counters["threads_speedup"] = all / one;
}

// Greedy decoding of `new_tokens` per row from BOS, the base alone or with itself as the adapter.
class greedy_decode {
 public:
  greedy_decode(const ipa::llama_model& base, std::size_t batch, bool with_adapter, std::size_t new_tokens)
      : adapters_(with_adapter ? 1 : 0, ipa::with_alpha(base, 1.0f)),
        decoder_(base, adapters_),
        prompts_(batch, std::vector<ipa::token_id>{1}) {
    cfg_.max_new_tokens = new_tokens;
  }
  /// One generate call: the tokens generated over all rows.
  std::size_t operator()() {
    const auto r = decoder_.generate(prompts_, cfg_, pick_, rng_);
    benchmark::DoNotOptimize(r.response_ids.data());
    std::size_t tokens = 0;
    for (std::size_t b = 0; b < prompts_.size(); ++b) tokens += r.response_length(b);
    return tokens;
  }

 private:
  std::vector<ipa::weighted<ipa::llama_model>> adapters_;
  ipa::ipa_decoder<ipa::llama_model, ipa::llama_model> decoder_;
  ipa::prompt_list prompts_;
  ipa::generation_config cfg_;
  ipa::sampler<ipa::greedy> pick_{ipa::greedy{}};
  ipa::xoshiro256 rng_{1};
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One greedy decode: generated tokens per second.
double decode_tokens_per_s(const ipa::llama_model& base, std::size_t batch, bool with_adapter, std::size_t new_tokens) {
  greedy_decode decode(base, batch, with_adapter, new_tokens);
  const auto start = std::chrono::steady_clock::now();
  const std::size_t tokens = decode();
  return double(tokens) / seconds_since(start);
}

// args: shape, batch, adapters (0 or 1), new tokens per row
void BM_decode(benchmark::State& state) {
  const auto s = static_cast<shape>(state.range(0));
  const auto batch = static_cast<std::size_t>(state.range(1));
  const bool with_adapter = state.range(2) != 0;
  const ipa::llama_model& base = model(s);
  greedy_decode decode(base, batch, with_adapter, static_cast<std::size_t>(state.range(3)));
  std::size_t tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) tokens += decode();
  const double seconds = seconds_since(start);
  state.counters["tokens/s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
  if (s == stories110M && batch == 1 && !with_adapter) {
    // every weight is read once per token (the classifier is the embedding table)
    const double weight_bytes_per_s = double(tokens) * double(base.weights().data().size()) * sizeof(float) / seconds;
    const double bandwidth = memory_read_bandwidth();
    state.counters["weight_GB/s"] = weight_bytes_per_s / 1e9;
    state.counters["bandwidth_GB/s"] = bandwidth / 1e9;
    state.counters["of_bandwidth"] = weight_bytes_per_s / bandwidth;
  }
  if (s == stories110M && batch == 16 && !with_adapter) {
    // two FLOPs per weight per token (the attention's are under 1% at these lengths)
    const double flops_per_s = 2.0 * double(tokens) * double(base.weights().data().size()) / seconds;
    const double peak = fma_throughput(ipa::max_threads());
    state.counters["GFLOP/s"] = flops_per_s / 1e9;
    state.counters["fma_peak_GFLOP/s"] = peak / 1e9;
    state.counters["of_fma_peak"] = flops_per_s / peak;
  }
  state.SetLabel(std::string(s == stories260K  ? "stories260K"
                             : s == stories15M ? "15M-shape"
                                               : "110M-shape") +
                 " B=" + std::to_string(batch) + (with_adapter ? " base+adapter" : " base"));
}

// a() and b() back to back, the order flipping from call to call (so neither side always runs on
// the warmer or the cooler machine); returns {a(), b()}.
template <class A, class B>
std::pair<double, double> alternately(bool& b_first, A&& a, B&& b) {
  double first = 0, second = 0;
  if (b_first) second = b();
  first = a();
  if (!b_first) second = b();
  b_first = !b_first;
  return {first, second};
}

// The reference point for the batch-1 share of the bandwidth: the products of a decoding step done
// as llama2.c's run.c does them, over the same row-major weights. Each output is one dot product
// of a weight row (one vector accumulator: what GCC makes of run.c's loop under -Ofast), each
// matrix's rows split evenly over the threads, the threads meeting after each matrix (run.c's
// `omp parallel for` per product). Activations stay fixed: only the weight reads are timed.
// Returns the weight bytes read per second.
double plain_gemv_bytes_per_s(const ipa::llama_weights& w, std::size_t tokens) {
  const ipa::llama_config& c = w.config();
  const std::size_t d = std::size_t(c.dim), kv = std::size_t(c.kv_dim()), hd = std::size_t(c.hidden_dim),
                    vocab = std::size_t(c.vocab_size), layers = std::size_t(c.n_layers);
  std::vector<float> x(std::max(d, hd), 0.01f), out(std::max(vocab, hd));
  auto gemv = [&](const ipa::team& t, const float* m, std::size_t rows, std::size_t cols) {
    const auto [first, last] = t.share(rows);
    for (std::size_t r = first; r < last; ++r) {
      ipa::detail::v8f acc = {};
      for (std::size_t j = 0; j < cols; j += 8) acc += ipa::detail::load8(m + r * cols + j) * ipa::detail::load8(&x[j]);
      out[r] = ipa::detail::tree_sum8(acc);
    }
    t.sync();
  };
  const double bytes = double(layers * (2 * d * d + 2 * kv * d + 3 * hd * d) + vocab * d) * sizeof(float);
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t token = 0; token < tokens; ++token)
    ipa::run_team(ipa::max_threads(), [&](const ipa::team& t) noexcept {
      for (int l = 0; l < c.n_layers; ++l) {
        gemv(t, w.wq(l), d, d), gemv(t, w.wk(l), kv, d), gemv(t, w.wv(l), kv, d), gemv(t, w.wo(l), d, d);
        gemv(t, w.w1(l), hd, d), gemv(t, w.w3(l), hd, d), gemv(t, w.w2(l), d, hd);
      }
      gemv(t, w.classifier(), vocab, d);
    });
  benchmark::DoNotOptimize(out.data());
  return bytes * double(tokens) / seconds_since(start);
}

// 110M shape at batch 1: the weight bytes read per second over the read bandwidth measured just
// before and just after the decode (the higher of the two: the stricter yardstick); beside it,
// in the same rounds and over the same yardstick, the plain row-major products above.
void BM_rounds_110M_B1_of_bandwidth(benchmark::State& state) {
  const ipa::llama_model& base = model(stories110M);
  const double bytes_per_token = double(base.weights().data().size()) * sizeof(float);
  round_ratios decoder, plain;
  bool plain_first = false;
  for (auto _ : state) {
    const double before = memory_read_bandwidth();
    const auto [decode_bytes_per_s, plain_bytes_per_s] = alternately(
        plain_first, [&] { return decode_tokens_per_s(base, 1, false, 32) * bytes_per_token; },
        [&] { return plain_gemv_bytes_per_s(base.weights(), 32); });
    const double after = memory_read_bandwidth();
    decoder.add(decode_bytes_per_s, std::max(before, after));
    plain.add(plain_bytes_per_s, std::max(before, after));
  }
  decoder.report(state, "of_bandwidth", 1e-9, "weight_GB/s");
  plain.report_ratios(state, "plain_gemv_of_bandwidth");
}

// Where the batch-1 decode's bytes/s goes, on the 110M shape. One matrix of the model's size
// (440 MB) in the decoder's 4-panel chunks, handed to the threads as the decoder hands them out,
// is read eight passes at a time, summed (a plain read, four panels in lockstep as the kernel
// reads them) and multiplied by one row (the decoder's batch-1 product kernel); with them, in
// rotating order each round, a decode of 32 tokens and this bench's bandwidth yardstick
// (memory_read_bandwidth: the best of ten 2 GiB passes). Medians of the per-round ratios:
// kernel over read, decode over kernel and read over yardstick multiply to the decode's share of
// the bandwidth; best_kernel_over_yardstick is the kernel's fastest pass over the yardstick.
void BM_rounds_110M_B1_where_bandwidth_goes(benchmark::State& state) {
  const ipa::llama_model& base = model(stories110M);
  const std::size_t bytes_per_token = base.weights().data().size() * sizeof(float), k = 768;
  static const ipa::packed_matrix w = [&] {
    std::vector<float> rows(bytes_per_token / sizeof(float) / k / 64 * 64 * k);
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = float(i % 251) * 1e-3f;
    return ipa::packed_matrix(rows.data(), k, rows.size() / k, k);
  }();
  const std::size_t panels = w.panels(), chunk = 4;  // the decoder's chunk of a streamed matrix
  const double bytes = double(panels) * ipa::packed_matrix::panel * k * sizeof(float);
  std::vector<float> x(k, 0.5f), out(w.rows()), sums(panels);
  auto one_pass = [&](bool multiply) {
    ipa::run_team(ipa::max_threads(), [&](const ipa::team& t) noexcept {
      t.for_each_chunk(panels, chunk, [&](std::size_t p0, std::size_t p1) {
        if (multiply) {
          ipa::matmul_packed_panels(out.data(), w.rows(), x.data(), 1, w, p0, p1);
          return;
        }
        const std::size_t len = ipa::packed_matrix::panel * k;  // one panel, contiguous
        ipa::detail::v8f acc[4][2] = {};
        for (std::size_t i = 0; i < len; i += 16)
          for (std::size_t q = 0; q < p1 - p0; ++q) {
            acc[q][0] += ipa::detail::load8(w.panel_data(p0 + q) + i);
            acc[q][1] += ipa::detail::load8(w.panel_data(p0 + q) + i + 8);
          }
        ipa::detail::v8f total = {};
        for (const auto& a : acc) total += a[0] + a[1];
        sums[p0] = ipa::detail::tree_sum8(total);
      });
    });
    benchmark::DoNotOptimize(sums.data());
    benchmark::DoNotOptimize(out.data());
  };
  struct rate {
    double mean = 0, best = 0;  // GB/s
  };
  auto passes = [&](bool multiply) {
    rate r;
    double seconds = 0;
    for (int pass = 0; pass < 8; ++pass) {
      const auto start = std::chrono::steady_clock::now();
      one_pass(multiply);
      const double s = seconds_since(start);
      seconds += s;
      r.best = std::max(r.best, bytes / s / 1e9);
    }
    r.mean = 8 * bytes / seconds / 1e9;
    return r;
  };
  rate read, kernel;
  double decode = 0, yardstick = 0;
  std::function<void()> parts[4] = {
      [&] { read = passes(false); }, [&] { kernel = passes(true); },
      [&] { decode = decode_tokens_per_s(base, 1, false, 32) * double(bytes_per_token) / 1e9; },
      [&] { yardstick = memory_read_bandwidth() / 1e9; }};
  round_ratios kernel_over_read, decode_over_kernel, read_over_yardstick, best_kernel_over_yardstick;
  std::size_t round = 0;
  for (auto _ : state) {
    for (std::size_t i = 0; i < 4; ++i) parts[(round + i) % 4]();
    ++round;
    kernel_over_read.add(kernel.mean, read.mean);
    decode_over_kernel.add(decode, kernel.mean);
    read_over_yardstick.add(read.mean, yardstick);
    best_kernel_over_yardstick.add(kernel.best, yardstick);
  }
  kernel_over_read.report(state, "kernel_over_read", 1.0, "kernel_GB/s");
  decode_over_kernel.report_ratios(state, "decode_over_kernel");
  read_over_yardstick.report_ratios(state, "read_over_yardstick");
  best_kernel_over_yardstick.report_ratios(state, "best_kernel_over_yardstick");
}

// Rounds of numerator() and denominator() back to back, their order flipping from round to
// round: the per-round ratios numerator / denominator.
template <class N, class D>
round_ratios alternating_rounds(benchmark::State& state, N&& numerator, D&& denominator) {
  round_ratios r;
  bool denominator_first = false;
  for (auto _ : state) {
    const auto [n, d] = alternately(denominator_first, numerator, denominator);
    r.add(n, d);
  }
  return r;
}

// 110M shape: tokens/s at batch 16 over batch 1.
void BM_rounds_110M_B16_over_B1(benchmark::State& state) {
  const ipa::llama_model& base = model(stories110M);
  alternating_rounds(
      state, [&] { return decode_tokens_per_s(base, 16, false, 32); },
      [&] { return decode_tokens_per_s(base, 1, false, 32); })
      .report(state, "B16_over_B1", 1.0, "B16_tokens/s");
}

// stories260K at batch 1: base + adapter (the same model) over the base alone, in time per token
// (the base's tokens/s over the fused decode's), and the base's tokens/s.
void BM_rounds_260K_adapter_cost(benchmark::State& state) {
  const ipa::llama_model& base = model(stories260K);
  alternating_rounds(
      state, [&] { return decode_tokens_per_s(base, 1, false, 256); },
      [&] { return decode_tokens_per_s(base, 1, true, 256); })
      .report(state, "adapter_time_ratio", 1.0, "B1_base_tokens/s");
}

}  // namespace

BENCHMARK(BM_memory_read_bandwidth)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_fma_throughput)->Iterations(1)->Unit(benchmark::kMillisecond);
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

BENCHMARK(BM_rounds_260K_adapter_cost)->Iterations(41)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_rounds_110M_B1_of_bandwidth)->Iterations(7)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_rounds_110M_B16_over_B1)->Iterations(7)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_rounds_110M_B1_where_bandwidth_goes)->Iterations(7)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
