// SPDX-License-Identifier: MIT
// The fused IPA step on the GPU: for each row of a (B, V) batch, one pass over the vocabulary
// forms z = base + sum_i alpha_i adapter_i, keeps the online log-sum-exp of z / T and of z, and
// the Gumbel-max argmax of z / T + g(seed, row, step, v) (counter-based noise: the token does
// not depend on the launch geometry). One block per row; memory-bound by design. The CPU
// reference is ipa::fused_sample_reference (decode/fused_sample.hpp): same noise, same token.
#pragma once
#include <cstdint>
#include <span>
#include <string>

#include "ipa/core/counter_rng.hpp"
#include "ipa/cuda/check.cuh"
#include "ipa/decode/fused_sample.hpp"

namespace ipa::cuda {

/// Up to this many adapters per launch (their pointers and alphas travel by value).
inline constexpr int max_fused_adapters = 8;

struct fusion_inputs {
  const float* base = nullptr;  ///< (B, V) row-major
  const float* adapters[max_fused_adapters] = {};
  float alphas[max_fused_adapters] = {};
  int n_adapters = 0;
  int batch = 0, vocab = 0;
};

namespace detail {

// Running state of one thread (and, after reduction, of the block).
struct fusion_partial {
  float max_t, sum_t;  // online log-sum-exp of z / T
  float max_u, sum_u;  // of z
  float best;          // best score and its index (lowest index on ties)
  int best_v;
};

__device__ inline void lse_merge(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2, s = s2;
    return;
  }
  if (m2 > m) {
    s = s * __expf(m - m2) + s2;
    m = m2;
  } else {
    s += s2 * __expf(m2 - m);
  }
}

__device__ inline void merge(fusion_partial& a, const fusion_partial& b) {
  lse_merge(a.max_t, a.sum_t, b.max_t, b.sum_t);
  lse_merge(a.max_u, a.sum_u, b.max_u, b.sum_u);
  if (b.best > a.best || (b.best == a.best && b.best_v < a.best_v)) a.best = b.best, a.best_v = b.best_v;
}

__device__ inline fusion_partial shuffle_down(const fusion_partial& p, int delta) {
  fusion_partial q;
  q.max_t = __shfl_down_sync(0xffffffffu, p.max_t, delta);
  q.sum_t = __shfl_down_sync(0xffffffffu, p.sum_t, delta);
  q.max_u = __shfl_down_sync(0xffffffffu, p.max_u, delta);
  q.sum_u = __shfl_down_sync(0xffffffffu, p.sum_u, delta);
  q.best = __shfl_down_sync(0xffffffffu, p.best, delta);
  q.best_v = __shfl_down_sync(0xffffffffu, p.best_v, delta);
  return q;
}

__device__ inline float tailored_logit(const fusion_inputs& in, std::size_t at) {
  float z = __ldg(in.base + at);
  for (int i = 0; i < in.n_adapters; ++i) z = __fmaf_rn(in.alphas[i], __ldg(in.adapters[i] + at), z);
  return z;
}

template <int Threads>
__global__ void __launch_bounds__(Threads)
    fuse_sample_kernel(fusion_inputs in, float inv_t, bool greedy, std::uint64_t seed, std::uint64_t step, int* tokens,
                       float* log_probs, float* tailored_log_probs) {
  const int row = blockIdx.x;
  const std::size_t row0 = std::size_t(row) * std::size_t(in.vocab);
  fusion_partial p{-INFINITY, 0.0f, -INFINITY, 0.0f, -INFINITY, 0x7fffffff};
  for (int v = threadIdx.x; v < in.vocab; v += Threads) {
    const float z = tailored_logit(in, row0 + std::size_t(v)), zt = __fmul_rn(z, inv_t);
    lse_merge(p.max_t, p.sum_t, zt, 1.0f);
    lse_merge(p.max_u, p.sum_u, z, 1.0f);
    const float score =
        greedy ? z : __fmaf_rn(z, inv_t, counter_gumbel(seed, std::uint64_t(row), step, std::uint64_t(v)));
    if (score > p.best) p.best = score, p.best_v = v;  // v grows per thread: first wins ties
  }
  // warp, then block
  for (int d = 16; d > 0; d /= 2) merge(p, shuffle_down(p, d));
  __shared__ fusion_partial warps[Threads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warps[warp] = p;
  __syncthreads();
  if (warp == 0) {
    p = lane < Threads / 32 ? warps[lane] : fusion_partial{-INFINITY, 0.0f, -INFINITY, 0.0f, -INFINITY, 0x7fffffff};
    for (int d = 16; d > 0; d /= 2) merge(p, shuffle_down(p, d));
    if (lane == 0) {
      const float z = tailored_logit(in, row0 + std::size_t(p.best_v));
      tokens[row] = p.best_v;
      tailored_log_probs[row] = z - p.max_u - logf(p.sum_u);
      log_probs[row] = greedy ? 0.0f : z * inv_t - p.max_t - logf(p.sum_t);
    }
  }
}

}  // namespace detail

/// Launches the fused step on `s` for every row: tokens, log_probs and tailored_log_probs are
/// device arrays of B entries. Temperature 0 is greedy.
inline void fuse_sample(const fusion_inputs& in, const fused_sample_params& p, int* tokens, float* log_probs,
                        float* tailored_log_probs, cudaStream_t s = nullptr) {
  if (in.batch <= 0 || in.vocab <= 0 || in.n_adapters < 0 || in.n_adapters > max_fused_adapters)
    throw shape_error("cuda::fuse_sample: batch " + std::to_string(in.batch) + ", vocab " + std::to_string(in.vocab) +
                      ", " + std::to_string(in.n_adapters) + " adapters (at most " +
                      std::to_string(max_fused_adapters) + ")");
  if (!(p.temperature >= 0.0f) || p.temperature == INFINITY)
    throw config_error("cuda::fuse_sample: temperature must be finite and >= 0");
  const bool greedy = p.temperature == 0.0f;
  constexpr int threads = 512;
  detail::fuse_sample_kernel<threads><<<in.batch, threads, 0, s>>>(
      in, greedy ? 1.0f : 1.0f / p.temperature, greedy, p.seed, p.step, tokens, log_probs, tailored_log_probs);
  IPA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ipa::cuda
