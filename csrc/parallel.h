// A minimal parallel-for over [0, n), so the CPU kernels need no OpenMP runtime (which could clash with the one
// torch ships). Threads take chunks of `grain` items from a shared counter, so a thread slowed by other work on its
// core does not hold up the rest. The threads are a persistent pool (parallel.cpp): a decode step calls a kernel
// ~85 times, and creating and joining a thread per call cost more than the second core gave back.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace echo {

// Runs task(ctx) once on each of `threads` threads, the calling one included, and returns when all are done. A
// call that finds the pool in use by another caller (or threads <= 1) runs task(ctx) once on the calling thread,
// so `task` must finish the whole job whoever runs it (parallel_for's shared counter does).
void run_on_threads(int threads, void (*task)(void*), void* ctx);

template <typename Fn>
void parallel_for(int64_t n, int64_t grain, int num_threads, Fn&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (n + grain - 1) / grain;
  const int threads = static_cast<int>(std::min<int64_t>(std::max(num_threads, 1), chunks));
  if (threads <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  struct Job {
    std::atomic<int64_t> next{0};
    int64_t n, grain, chunks;
    Fn* fn;
  } job;
  job.n = n;
  job.grain = grain;
  job.chunks = chunks;
  job.fn = &fn;
  run_on_threads(threads, [](void* p) {
    auto& j = *static_cast<Job*>(p);
    for (int64_t c = j.next.fetch_add(1); c < j.chunks; c = j.next.fetch_add(1))
      (*j.fn)(c * j.grain, std::min(j.n, (c + 1) * j.grain));
  }, &job);
}

}  // namespace echo
