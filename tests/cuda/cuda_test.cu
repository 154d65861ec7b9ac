// SPDX-License-Identifier: MIT
// The CUDA backend against its CPU twins: the fused fusion-softmax-sample kernel against
// fused_sample_reference (same tokens, log-probs to 1e-5 relative), cuBLAS against
// matmul_nt_reference. Without a CUDA device the program says so and exits 77, which ctest
// reports as skipped (never as passed).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <ipa/core/matmul.hpp>
#include <ipa/cuda/cuda.cuh>
#include <ipa/decode/fused_sample.hpp>

namespace {

std::vector<float> random_logits(std::size_t n, std::uint64_t seed, float scale) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

double rel(double got, double want) { return std::abs(got - want) / std::max(1.0, std::abs(want)); }

}  // namespace

TEST_CASE("fused kernel: the CPU twin's tokens and log-probs for B x V grids, 0-3 adapters, greedy and sampled") {
  for (int B : {1, 7, 64})
    for (int V : {512, 32000, 50257})
      for (int n_adapters : {0, 1, 3})
        for (float temperature : {0.0f, 0.7f, 1.0f}) {
          CAPTURE(B);
          CAPTURE(V);
          CAPTURE(n_adapters);
          CAPTURE(temperature);
          const std::size_t N = std::size_t(B) * std::size_t(V);
          const auto base = random_logits(N, 1, 3.0f);
          std::vector<std::vector<float>> adapters;
          std::vector<ipa::cuda::device_buffer<float>> d_adapters;
          ipa::cuda::fusion_inputs in;
          const ipa::cuda::device_buffer<float> d_base{std::span<const float>(base)};
          in.base = d_base.data();
          for (int i = 0; i < n_adapters; ++i) {
            adapters.push_back(random_logits(N, 10 + std::uint64_t(i), 2.0f));
            d_adapters.emplace_back(std::span<const float>(adapters.back()));
          }
          std::vector<float> alphas = {0.5f, -0.25f, 1.5f};
          for (int i = 0; i < n_adapters; ++i)
            in.adapters[i] = d_adapters[std::size_t(i)].data(), in.alphas[i] = alphas[std::size_t(i)];
          in.n_adapters = n_adapters;
          in.batch = B;
          in.vocab = V;
          const ipa::fused_sample_params p{temperature, 1234, 5};
          ipa::cuda::device_buffer<int> tokens(static_cast<std::size_t>(B));
          ipa::cuda::device_buffer<float> lp(static_cast<std::size_t>(B)), tlp(static_cast<std::size_t>(B));
          ipa::cuda::fuse_sample(in, p, tokens.data(), lp.data(), tlp.data());
          IPA_CUDA_CHECK(cudaDeviceSynchronize());
          const auto t = tokens.download();
          const auto l = lp.download(), tl = tlp.download();
          for (int b = 0; b < B; ++b) {
            std::vector<const float*> rows;
            for (const auto& a : adapters) rows.push_back(a.data() + std::size_t(b) * std::size_t(V));
            const auto want = ipa::fused_sample_reference(
                std::span<const float>(base.data() + std::size_t(b) * std::size_t(V), std::size_t(V)), rows,
                std::span<const float>(alphas.data(), std::size_t(n_adapters)), p, std::uint64_t(b));
            CHECK(t[std::size_t(b)] == want.token);
            CHECK(rel(l[std::size_t(b)], want.log_prob) < 1e-5);
            CHECK(rel(tl[std::size_t(b)], want.tailored_log_prob) < 1e-5);
          }
        }
}

TEST_CASE("fused kernel: sampled tokens follow the tailored distribution") {
  // V = 4 with known probabilities: frequencies over 64 rows x 200 steps within 3 sigma
  const int B = 64, V = 4;
  std::vector<float> base(std::size_t(B) * V);
  for (int b = 0; b < B; ++b)
    for (int v = 0; v < V; ++v) base[std::size_t(b) * V + std::size_t(v)] = std::log(float(v + 1));  // p = v+1 / 10
  const ipa::cuda::device_buffer<float> d_base{std::span<const float>(base)};
  ipa::cuda::fusion_inputs in;
  in.base = d_base.data();
  in.batch = B;
  in.vocab = V;
  ipa::cuda::device_buffer<int> tokens(B);
  ipa::cuda::device_buffer<float> lp(B), tlp(B);
  std::vector<int> count(V, 0);
  for (std::uint64_t step = 0; step < 200; ++step) {
    ipa::cuda::fuse_sample(in, {1.0f, 99, step}, tokens.data(), lp.data(), tlp.data());
    for (int t : tokens.download()) ++count[std::size_t(t)];
  }
  const double n = 64.0 * 200.0;
  for (int v = 0; v < V; ++v) {
    const double p = (v + 1) / 10.0;
    CHECK(std::abs(count[std::size_t(v)] / n - p) < 3.0 * std::sqrt(p * (1 - p) / n));
  }
}

TEST_CASE("cuBLAS matmul_nt matches the CPU reference; bad sizes and bad calls throw") {
  const int n = 13, m = 97, k = 64;
  const auto x = random_logits(std::size_t(n) * k, 3, 1.0f), w = random_logits(std::size_t(m) * k, 4, 1.0f);
  std::vector<float> want(std::size_t(n) * m);
  ipa::matmul_nt_reference(want.data(), std::size_t(m), x.data(), std::size_t(k), std::size_t(n), w.data(),
                           std::size_t(k), std::size_t(m), std::size_t(k));
  const ipa::cuda::device_buffer<float> dx{std::span<const float>(x)}, dw{std::span<const float>(w)};
  ipa::cuda::device_buffer<float> out(want.size());
  const ipa::cuda::cublas blas;
  blas.matmul_nt(out.data(), dx.data(), dw.data(), n, m, k);
  const auto got = out.download();
  for (std::size_t i = 0; i < got.size(); ++i) CHECK(rel(got[i], want[i]) < 1e-5);
  CHECK_THROWS_AS(blas.matmul_nt(out.data(), dx.data(), dw.data(), 0, m, k), ipa::shape_error);
  CHECK_THROWS_WITH_AS(IPA_CUDA_CHECK(cudaMemcpy(nullptr, x.data(), 4, cudaMemcpyHostToDevice)),
                       doctest::Contains("cudaMemcpy"), ipa::cuda_error);
}

int main(int argc, char** argv) {
  if (ipa::cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device (the CUDA tests compiled and linked; run them on a GPU machine)\n");
    return 77;
  }
  std::printf("CUDA device: %s\n", ipa::cuda::device_description().c_str());
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
