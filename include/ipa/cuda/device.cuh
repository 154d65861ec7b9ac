// SPDX-License-Identifier: MIT
// Device memory, streams and device discovery, as RAII types.
#pragma once
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ipa/cuda/check.cuh"

namespace ipa::cuda {

/// Number of usable CUDA devices; 0 without a driver or a GPU. (cudaGetDeviceCount returns
/// cudaErrorNoDevice or cudaErrorInsufficientDriver then, and leaves its argument unwritten.)
inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error for later calls
    return 0;
  }
  return n;
}

/// "NVIDIA H200 (sm_90, driver 13.0, 139.8 GiB)" for device `d`.
inline std::string device_description(int d = 0) {
  cudaDeviceProp p{};
  IPA_CUDA_CHECK(cudaGetDeviceProperties(&p, d));
  int driver = 0;
  IPA_CUDA_CHECK(cudaDriverGetVersion(&driver));
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", driver " +
         std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) + ", " +
         std::to_string(double(p.totalGlobalMem) / double(1ull << 30)).substr(0, 5) + " GiB)";
}

/// An owned array of T in device memory.
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(std::size_t n) : n_(n) {
    if (n) IPA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
  }
  explicit device_buffer(std::span<const T> host) : device_buffer(host.size()) { upload(host); }
  device_buffer(device_buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { release(); }

  T* data() noexcept { return p_; }
  const T* data() const noexcept { return p_; }
  std::size_t size() const noexcept { return n_; }

  void upload(std::span<const T> host) {
    if (host.size() != n_)
      throw shape_error("device_buffer::upload: " + std::to_string(host.size()) + " values into " + std::to_string(n_));
    if (n_) IPA_CUDA_CHECK(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    if (n_) IPA_CUDA_CHECK(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  void release() noexcept {
    if (p_) (void)cudaFree(p_);
    p_ = nullptr;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

/// An owned CUDA stream.
class stream {
 public:
  stream() { IPA_CUDA_CHECK(cudaStreamCreate(&s_)); }
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;
  ~stream() {
    if (s_) (void)cudaStreamDestroy(s_);
  }
  cudaStream_t get() const noexcept { return s_; }
  void synchronize() const { IPA_CUDA_CHECK(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

}  // namespace ipa::cuda
