// Sleeps that run on CLOCK_MONOTONIC and can be cut short (issue 9, item 4).
//
// Debian's Abseil (20220623) implements every timed wait -- Mutex::
// AwaitWithTimeout / AwaitWithDeadline, CondVar::WaitWithTimeout,
// Notification::WaitForNotificationWithTimeout -- as a futex sleep until an
// absolute CLOCK_REALTIME deadline (absl/synchronization/internal/futex.h:
// FUTEX_CLOCK_REALTIME). A step of the wall clock while a thread sleeps
// moves its wake-up with it: stepped back by an hour, a one-second wait
// lasts an hour. The coordinator's lease sweeper slept like that, so its
// leases, although kept on a monotonic clock, stopped expiring after a
// backward clock step (tools/attacks.sh clock: a killed world's lease was
// released 45 s after the kill at TTL 10 s, following a +60 s step).
//
// std::condition_variable waits on std::chrono::steady_clock, which
// libstdc++ (glibc >= 2.30) turns into pthread_cond_clockwait(
// CLOCK_MONOTONIC): wall-clock steps do not touch it. MonotonicSleep wraps
// one with a sticky stop flag and a wake-up counter.
//
// Thread-safe.
#ifndef SHEAF_BASE_MONOTONIC_SLEEP_H_
#define SHEAF_BASE_MONOTONIC_SLEEP_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "absl/time/time.h"

namespace sheaf {

// CLOCK_MONOTONIC as an absl::Time (only differences between two values
// mean anything).
absl::Time MonotonicNow();

class MonotonicSleep {
 public:
  // Sleeps for up to `d` of monotonic time (at most a year: an infinite `d`
  // waits for Stop); returns early, true, once Stop() has been called
  // (before or during the sleep). False after the full `d`.
  bool SleepUnlessStopped(absl::Duration d);

  // As SleepUnlessStopped, and also returns (true) when Wake() was called
  // after generation() returned `since`.
  bool SleepUntilWoken(absl::Duration d, uint64_t since);

  // Wakes every SleepUntilWoken sleeper; generation() moves on.
  void Wake();
  uint64_t generation() const;

  // Sticky: every sleep from now on returns at once.
  void Stop();
  bool stopped() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t generation_ = 0;
  bool stopped_ = false;
};

}  // namespace sheaf

#endif  // SHEAF_BASE_MONOTONIC_SLEEP_H_
