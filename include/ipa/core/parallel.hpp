// SPDX-License-Identifier: MIT
// parallel_for over a fixed number of chunks: the work of a chunk never depends on the thread
// count, so every result is bit-identical with 1 or N threads.
#pragma once
#include <cstddef>
#include <exception>
#include <mutex>
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace ipa {

/// Threads ipa may use (OpenMP's setting; 1 without OpenMP).
inline int max_threads() noexcept {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Calls body(i) for i in [0, n), spread over the threads when `parallel` is true. Exceptions
/// thrown by body are rethrown (the first one) on the calling thread.
template <class Body>
void parallel_for(std::size_t n, Body&& body, bool parallel = true) {
#if defined(_OPENMP)
  if (parallel && n > 1 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
    std::exception_ptr first;
    std::mutex m;
    const auto count = static_cast<long long>(n);
#pragma omp parallel for schedule(dynamic, 1)
    for (long long i = 0; i < count; ++i) {
      try {
        body(static_cast<std::size_t>(i));
      } catch (...) {
        std::lock_guard lock(m);
        if (!first) first = std::current_exception();
      }
    }
    if (first) std::rethrow_exception(first);
    return;
  }
#endif
  (void)parallel;
  for (std::size_t i = 0; i < n; ++i) body(i);
}

}  // namespace ipa
