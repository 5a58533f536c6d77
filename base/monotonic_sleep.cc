#include "base/monotonic_sleep.h"

#include <algorithm>
#include <chrono>

namespace sheaf {
namespace {

// steady_clock::now() + d must not overflow (an infinite or huge duration
// would wrap to the past and the wait would return at once, in a loop).
std::chrono::nanoseconds Capped(absl::Duration d) {
  return absl::ToChronoNanoseconds(std::min(d, absl::Hours(24 * 365)));
}

}  // namespace

absl::Time MonotonicNow() {
  return absl::UnixEpoch() + absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

bool MonotonicSleep::SleepUnlessStopped(absl::Duration d) {
  std::unique_lock<std::mutex> lock(mu_);
  if (d <= absl::ZeroDuration()) return stopped_;
  // wait_for: steady_clock, i.e. pthread_cond_clockwait(CLOCK_MONOTONIC).
  return cv_.wait_for(lock, Capped(d), [this] { return stopped_; });
}

bool MonotonicSleep::SleepUntilWoken(absl::Duration d, uint64_t since) {
  std::unique_lock<std::mutex> lock(mu_);
  auto woken = [this, since] { return stopped_ || generation_ != since; };
  if (d <= absl::ZeroDuration()) return woken();
  return cv_.wait_for(lock, Capped(d), woken);
}

void MonotonicSleep::Wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
  }
  cv_.notify_all();
}

uint64_t MonotonicSleep::generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generation_;
}

void MonotonicSleep::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
}

bool MonotonicSleep::stopped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopped_;
}

}  // namespace sheaf
