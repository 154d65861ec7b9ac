// SPDX-License-Identifier: MIT
// GB/s of the fused fusion-softmax-sample kernel (base + one adapter, sampled) for B in
// {1, 8, 64, 256} and V in {512, 32000, 50257, 152064}, next to the device's own copy
// bandwidth (device-to-device cudaMemcpy: read + write bytes per second).
#include <cstdio>
#include <vector>

#include <benchmark/benchmark.h>

#include <ipa/cuda/cuda.cuh>

namespace {

// CUDA events time the device work alone.
template <class Fn>
void time_on_device(benchmark::State& state, Fn&& launch) {
  cudaEvent_t start, stop;
  IPA_CUDA_CHECK(cudaEventCreate(&start));
  IPA_CUDA_CHECK(cudaEventCreate(&stop));
  launch();  // warm-up
  for (auto _ : state) {
    IPA_CUDA_CHECK(cudaEventRecord(start));
    launch();
    IPA_CUDA_CHECK(cudaEventRecord(stop));
    IPA_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    IPA_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(double(ms) / 1e3);
  }
  IPA_CUDA_CHECK(cudaEventDestroy(start));
  IPA_CUDA_CHECK(cudaEventDestroy(stop));
}

void bench_fusion(benchmark::State& state) {
  const int B = int(state.range(0)), V = int(state.range(1));
  const std::size_t N = std::size_t(B) * std::size_t(V);
  const std::vector<float> host(N, 0.5f);
  const ipa::cuda::device_buffer<float> base{std::span<const float>(host)}, adapter{std::span<const float>(host)};
  ipa::cuda::device_buffer<int> tokens(static_cast<std::size_t>(B));
  ipa::cuda::device_buffer<float> lp(static_cast<std::size_t>(B)), tlp(static_cast<std::size_t>(B));
  ipa::cuda::fusion_inputs in;
  in.base = base.data();
  in.adapters[0] = adapter.data();
  in.alphas[0] = 1.0f;
  in.n_adapters = 1;
  in.batch = B;
  in.vocab = V;
  std::uint64_t step = 0;
  time_on_device(state, [&] { ipa::cuda::fuse_sample(in, {1.0f, 7, step++}, tokens.data(), lp.data(), tlp.data()); });
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(2 * N * sizeof(float)));
}
BENCHMARK(bench_fusion)
    ->ArgsProduct({{1, 8, 64, 256}, {512, 32000, 50257, 152064}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void bench_copy(benchmark::State& state) {
  const std::size_t bytes = std::size_t(state.range(0)) << 20;
  ipa::cuda::device_buffer<char> a(bytes), b(bytes);
  time_on_device(state, [&] { IPA_CUDA_CHECK(cudaMemcpy(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice)); });
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(2 * bytes));
}
BENCHMARK(bench_copy)->Arg(64)->Arg(256)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  if (ipa::cuda::device_count() == 0) {
    std::printf("no CUDA device: bench_fusion has nothing to measure here\n");
    return 0;
  }
  std::printf("CUDA device: %s\n", ipa::cuda::device_description().c_str());
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
