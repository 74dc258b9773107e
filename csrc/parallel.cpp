// The thread pool behind parallel_for (parallel.h). Workers wait for a new generation number: spinning (with a
// yield, so another runnable thread on the core, such as torch's, still gets it) for a short while after each job,
// since a decode step's next kernel call follows within a few hundred microseconds, then asleep on a condition
// variable. One caller at a time holds the pool; a concurrent caller runs its job on its own thread.
#include <pthread.h>
#include <sched.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "parallel.h"

namespace echo {
namespace {

constexpr auto kSpin = std::chrono::microseconds(300);
constexpr int kMaxThreads = 256;

class Pool {
 public:
  bool try_run(int threads, void (*task)(void*), void* ctx) {
    std::unique_lock<std::mutex> caller(call_mu_, std::try_to_lock);
    if (!caller.owns_lock()) return false;
    while (static_cast<int>(workers_.size()) < threads - 1) {
      const int index = static_cast<int>(workers_.size());
      const uint64_t seen = generation_.load(std::memory_order_relaxed);  // before this job's: it must see that
      workers_.emplace_back([this, index, seen] { loop(index, seen); });
      workers_.back().detach();  // the pool lives as long as the process (see pool())
    }
    task_ = task;  // read only by this generation's workers, which this call waits for below
    ctx_ = ctx;
    pending_.store(threads - 1, std::memory_order_relaxed);
    ++sequence_;
    generation_.store(sequence_ << 8 | static_cast<uint64_t>(threads - 1), std::memory_order_release);
    { std::lock_guard<std::mutex> lock(mu_); }  // a worker between its check and its wait is now waiting
    cv_.notify_all();
    task(ctx);
    while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    return true;
  }

 private:
  void loop(int index, uint64_t seen) {
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      uint64_t g;
      while ((g = generation_.load(std::memory_order_acquire)) == seen) {
        if (std::chrono::steady_clock::now() - start < kSpin) {
          sched_yield();
          continue;
        }
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      seen = g;
      if (index < static_cast<int>(g & 0xff)) {  // the generation word carries its number of workers
        task_(ctx_);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  std::mutex call_mu_;  // held by the caller for a whole job
  std::mutex mu_;       // with cv_: sleeping workers
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};  // a new value starts a job
  std::atomic<int> pending_{0};
  uint64_t sequence_ = 0;  // generation_ = sequence_ << 8 | workers taking part (0..kMaxThreads-1)
  void (*task_)(void*) = nullptr;
  void* ctx_ = nullptr;
  std::vector<std::thread> workers_;
};

std::atomic<Pool*> g_pool{nullptr};

// Never destroyed: detached workers may still be waiting at exit. A forked child has none of the parent's threads,
// so it starts a pool of its own (the parent's object is left behind, untouched).
Pool& pool() {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
    return true;
  }();
  (void)registered;
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  Pool* fresh = new Pool();
  if (g_pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;  // another thread made one first
  return *p;
}

}  // namespace

void run_on_threads(int threads, void (*task)(void*), void* ctx) {
  threads = std::min(threads, kMaxThreads);
  if (threads <= 1 || !pool().try_run(threads, task, ctx)) task(ctx);
}

}  // namespace echo
