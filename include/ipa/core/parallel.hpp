// SPDX-License-Identifier: MIT
// parallel_for over a fixed number of chunks: the work of a chunk never depends on the thread
// count, so every result is bit-identical with 1 or N threads.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
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

/// While alive, parallel regions that this thread starts use at most n threads (OpenMP's
/// nthreads setting, restored on destruction; nothing without OpenMP).
class thread_limit {
 public:
  explicit thread_limit(int n) noexcept : saved_(max_threads()) { set(std::max(n, 1)); }
  ~thread_limit() { set(saved_); }
  thread_limit(const thread_limit&) = delete;
  thread_limit& operator=(const thread_limit&) = delete;

 private:
  static void set([[maybe_unused]] int n) noexcept {
#if defined(_OPENMP)
    omp_set_num_threads(n);
#endif
  }
  int saved_;
};

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

namespace detail {

inline std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Long barrier waits (a thread was not running): the last time teams were found contended, and a
// count of stalls in a 100 ms window. Four stalls in one window mark contention: one alone is an
// interrupt or a page fault, not a host that keeps preempting (a heuristic; relaxed atomics).
struct team_stalls {
  std::atomic<std::int64_t> contended_at{std::numeric_limits<std::int64_t>::min() / 2};
  std::atomic<std::int64_t> window_start{0};
  std::atomic<int> in_window{0};

  void record(std::int64_t now) noexcept {
    if (now - window_start.load(std::memory_order_relaxed) > 100'000'000) {
      window_start.store(now, std::memory_order_relaxed);
      in_window.store(0, std::memory_order_relaxed);
    }
    if (in_window.fetch_add(1, std::memory_order_relaxed) + 1 >= 4) contended_at.store(now, std::memory_order_relaxed);
  }
};
inline team_stalls& stalls() noexcept {
  static team_stalls s;
  return s;
}

// The barrier of one team: an arrival count and a generation on separate cache lines. Waiters
// spin (two threads cross it in about 0.2 us where OpenMP's barrier takes 0.36; a stories260K
// token crosses 26; sleeping on a futex instead cost ~100 us per wake-up on this project's VM).
// A wait over 200 us means a thread was not running: it is recorded for teams_contended(), and
// after 1 ms the waiter yields, so that more threads than cores still progress.
class spin_barrier {
 public:
  explicit spin_barrier(unsigned size) noexcept : size_(size) {}
  void wait() noexcept {
    const unsigned generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == size_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      return;
    }
    std::int64_t start = 0;
    bool stalled = false;
    for (unsigned spins = 1; generation_.load(std::memory_order_acquire) == generation; ++spins) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      if (spins % 64 != 0) continue;
      const std::int64_t now = steady_ns();
      if (start == 0) start = now;
      if (!stalled && now - start > 200'000) {
        stalled = true;
        stalls().record(now);
      }
      if (now - start > 1'000'000) std::this_thread::yield();
    }
  }

 private:
  alignas(64) std::atomic<unsigned> arrived_{0};
  alignas(64) std::atomic<unsigned> generation_{0};
  unsigned size_;
};

}  // namespace detail

/// True for half a second after teams kept waiting on threads that were not running (fewer free
/// cores than threads: an overcommitted VM, other busy processes). Small passes then run on one
/// thread: a stories260K step crosses ~26 barriers, and each that waits for a preempted thread
/// costs a scheduler slice (measured on this project's VM while its host was busy: 9k tok/s on
/// one thread, 0.06k tok/s in a team that kept waiting).
inline bool teams_contended() noexcept {
  return detail::steady_ns() - detail::stalls().contended_at.load(std::memory_order_relaxed) < 500'000'000;
}

/// Threads for a team pass that reads `bytes` of weights: about one per 256 KiB, so a tiny pass
/// does not pay for barriers it cannot win back, and one for a pass under 8 MiB while teams are
/// contended (its barriers would wait for preempted threads).
inline int team_threads(std::size_t bytes) noexcept {
  if (bytes < (std::size_t{8} << 20) && teams_contended()) return 1;
  return int(std::clamp<std::size_t>(bytes >> 18, 1, std::size_t(max_threads())));
}

namespace detail {
// What the threads of one team share: the barrier, and the tickets for_each_chunk hands out.
struct team_shared {
  explicit team_shared(unsigned size) noexcept : barrier(size) {}
  spin_barrier barrier;
  alignas(64) std::atomic<std::size_t> tickets{0};
};
}  // namespace detail

/// The threads of one parallel region, kept together through a chain of dependent stages: one
/// fork per forward pass instead of one per product. A stage splits its work with share(), the
/// same way every call, so each thread keeps touching the same weights and they stay in its
/// core's cache; or with for_each_chunk(), which hands chunks to whichever thread is free. Stages
/// are separated by sync(), a barrier of the whole team.
class team {
 public:
  team(std::size_t rank, std::size_t size, detail::team_shared* shared) noexcept
      : rank_(rank), size_(size), shared_(shared) {}
  std::size_t rank() const noexcept { return rank_; }
  std::size_t size() const noexcept { return size_; }
  /// This thread's contiguous share [first, second) of n items.
  std::pair<std::size_t, std::size_t> share(std::size_t n) const noexcept {
    return {n * rank_ / size_, n * (rank_ + 1) / size_};
  }
  /// Calls body(first, last) for chunks [c * chunk, (c + 1) * chunk) of n items, each chunk on
  /// whichever thread asks first: a thread its host slows down takes fewer chunks instead of
  /// keeping the others waiting at the next barrier. The chunks never depend on the threads, so
  /// neither do the results. Every thread of the team calls it with the same n and chunk, and
  /// the team syncs before its next call.
  template <class Body>
  void for_each_chunk(std::size_t n, std::size_t chunk, Body&& body) const noexcept {
    chunk = std::max<std::size_t>(chunk, 1);
    const std::size_t chunks = (n + chunk - 1) / chunk;
    if (size_ == 1) {
      for (std::size_t c = 0; c < chunks; ++c) body(c * chunk, std::min(n, (c + 1) * chunk));
      return;
    }
    for (;;) {
      const std::size_t c = shared_->tickets.fetch_add(1, std::memory_order_relaxed) - tickets_seen_;
      if (c >= chunks) break;
      body(c * chunk, std::min(n, (c + 1) * chunk));
    }
    // every thread drew exactly one ticket past the last chunk, and all drew before the sync
    tickets_seen_ += chunks + size_;
  }
  void sync() const noexcept {
    if (size_ > 1) shared_->barrier.wait();
  }

 private:
  std::size_t rank_, size_;
  detail::team_shared* shared_;
  mutable std::size_t tickets_seen_ = 0;  // tickets drawn by the team's earlier for_each_chunk calls
};

/// Runs body(team) on `threads` threads at once (1, or already inside a parallel region: on the
/// calling thread alone, where sync() does nothing). body must not throw: a thread leaving early
/// would leave the others waiting at a barrier, so an exception ends the program instead.
template <class Body>
void run_team(int threads, Body&& body) noexcept {
#if defined(_OPENMP)
  if (threads > 1 && !omp_in_parallel()) {
    // OpenMP may give fewer threads than asked for: the barrier is sized once they are known
    std::atomic<detail::team_shared*> shared{nullptr};
    std::optional<detail::team_shared> storage;
#pragma omp parallel num_threads(threads)
    {
#pragma omp single
      shared.store(&storage.emplace(unsigned(omp_get_num_threads())));
      body(team(std::size_t(omp_get_thread_num()), std::size_t(omp_get_num_threads()), shared.load()));
    }
    return;
  }
#endif
  (void)threads;
  body(team(0, 1, nullptr));
}

}  // namespace ipa
