#include "base/monotonic_sleep.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

using Clock = std::chrono::steady_clock;

TEST(MonotonicSleepTest, SleepsTheWholeDurationWhenNothingHappens) {
  MonotonicSleep s;
  const auto start = Clock::now();
  EXPECT_FALSE(s.SleepUnlessStopped(absl::Milliseconds(120)));
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(120));
  EXPECT_FALSE(s.SleepUntilWoken(absl::Milliseconds(50), s.generation()));
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(170));
}

TEST(MonotonicSleepTest, StopCutsEverySleepShortAndSticks) {
  MonotonicSleep s;
  const auto start = Clock::now();
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    s.Stop();
  });
  EXPECT_TRUE(s.SleepUnlessStopped(absl::Seconds(30)));
  stopper.join();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
  EXPECT_TRUE(s.stopped());
  EXPECT_TRUE(s.SleepUnlessStopped(absl::Seconds(30)));  // at once
  EXPECT_TRUE(s.SleepUntilWoken(absl::Seconds(30), s.generation()));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
}

// An infinite duration must not overflow steady_clock::now() + d (which
// would make the wait return at once): it waits until Stop.
TEST(MonotonicSleepTest, AnInfiniteSleepWaitsForStop) {
  MonotonicSleep s;
  std::atomic<bool> returned{false};
  std::thread sleeper([&] {
    EXPECT_TRUE(s.SleepUnlessStopped(absl::InfiniteDuration()));
    returned = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(returned.load()) << "returned without a Stop";
  s.Stop();
  sleeper.join();
  EXPECT_TRUE(returned.load());
}

TEST(MonotonicSleepTest, WakeEndsOnlySleepsThatBeganBeforeIt) {
  MonotonicSleep s;
  const uint64_t before = s.generation();
  std::thread waker([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    s.Wake();
  });
  const auto start = Clock::now();
  EXPECT_TRUE(s.SleepUntilWoken(absl::Seconds(30), before));
  waker.join();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
  // A Wake is not a Stop: a sleep from the new generation runs its course,
  // and SleepUnlessStopped ignores wake-ups.
  EXPECT_FALSE(s.SleepUntilWoken(absl::Milliseconds(30), s.generation()));
  EXPECT_FALSE(s.stopped());
  // A sleep from the old generation returns at once.
  EXPECT_TRUE(s.SleepUntilWoken(absl::Seconds(30), before));
}

}  // namespace
}  // namespace sheaf
