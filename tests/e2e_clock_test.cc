// Issue 9, item 4, end to end: wall-clock steps on the coordinator's and the
// world's hosts do not fail a healthy job nor keep a dead world's lease.
//
// Both run under libfaketime (CLOCK_REALTIME shifted by an offset read from
// a file, CLOCK_MONOTONIC left alone, as a real clock step leaves it).
// Abseil's timed waits (Debian's 20220623) sleep until an absolute
// CLOCK_REALTIME deadline computed from the process's own clock, so a
// process whose clock runs 30 s ahead of the kernel's oversleeps every wait
// by 30 s: the same as a real step of the wall clock 30 s back during each
// wait. The coordinator's lease sweeper slept so: before the fix this test
// measured a killed world's lease released 21.2 s after the kill at TTL 2 s
// (bound here: 10 s). The sweeper, the long-poll wait, the fetch reaper, the
// world's heartbeat loop and its backoff now sleep on CLOCK_MONOTONIC
// (base/monotonic_sleep.h). The first half guards the other direction: a
// 30 s forward step (15 TTLs) must not expire a healthy lease, which lease
// arithmetic on the wall clock would.
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e_lib.h"

namespace sheaf::e2e {
namespace {

std::string Faketime() {
  for (const char* p : {"/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                        "/usr/lib/faketime/libfaketime.so.1"}) {
    if (std::filesystem::exists(p)) return p;
  }
  return "";
}

TEST(E2eClockTest, ClockStepsNeitherFailAHealthyJobNorKeepADeadLease) {
  const std::string faketime = Faketime();
  if (faketime.empty()) GTEST_SKIP() << "libfaketime is not installed (tools/setup.sh installs it)";
  auto cluster = E2eCluster::Create("e2e_clock");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  E2eCluster& c = **cluster;
  const std::string offset_file = c.dir() + "/faketime";
  auto set_offset = [&](int seconds) {
    std::ofstream(offset_file) << (seconds >= 0 ? "+" : "") << seconds << "\n";
  };
  set_offset(0);
  setenv("LD_PRELOAD", faketime.c_str(), 1);
  setenv("FAKETIME_TIMESTAMP_FILE", offset_file.c_str(), 1);
  setenv("FAKETIME_NO_CACHE", "1", 1);
  setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
  ASSERT_TRUE(c.StartCoordinator("2s").ok());
  JobOptions options;
  options.max_steps = 100000;  // runs until the world is killed
  options.checkpoint_every = 1000;
  auto job = c.Submit(LoraJobYaml(options), "clock");
  ASSERT_TRUE(job.ok()) << job.status();
  auto world = c.StartWorld(2, /*once=*/false);
  unsetenv("LD_PRELOAD");
  ASSERT_TRUE(world.ok()) << world.status();

  auto running = c.WaitFor(*job, [](const proto::Job& j) { return j.progress().step() >= 20; },
                           absl::Seconds(90));
  ASSERT_TRUE(running.ok()) << running.status() << "\n" << ReadFile((*world)->log_path());

  // Both clocks jump 30 s ahead (15 TTLs) and stay there.
  set_offset(30);
  const absl::Time stepped = absl::Now();
  absl::SleepFor(absl::Seconds(10));
  auto after = c.Get(*job);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->state(), proto::JOB_STATE_RUNNING) << after->last_error();
  EXPECT_EQ(after->attempts(), 1) << after->last_error();
  EXPECT_GT(after->progress().step(), running->progress().step() + 5) << "training stalled";
  const std::string log = ReadFile(c.coordinator()->log_path());
  EXPECT_FALSE(absl::StrContains(log, "lease expired")) << log;
  // The clock did move: a job submitted now is stamped ~30 s ahead.
  auto probe = c.Submit(LoraJobYaml(options), "probe");
  ASSERT_TRUE(probe.ok()) << probe.status();
  auto probe_job = c.Get(*probe);
  ASSERT_TRUE(probe_job.ok());
  EXPECT_GT(probe_job->created_unix_ms(), absl::ToUnixMillis(absl::Now()) + 20000);
  ASSERT_TRUE(c.Cancel(*probe).ok());

  // A world that dies now loses its lease one TTL (2 s) after its last
  // heartbeat, plus the sweeper's second; before, ~30 s.
  (*world)->KillTree();
  const absl::Time killed = absl::Now();
  auto released = c.WaitFor(
      *job, [](const proto::Job& j) { return j.state() != proto::JOB_STATE_RUNNING; },
      absl::Seconds(90));
  ASSERT_TRUE(released.ok()) << released.status();
  const absl::Duration took = absl::Now() - killed;
  EXPECT_LT(took, absl::Seconds(10)) << "the lease outlived its world by " << took;
  EXPECT_TRUE(absl::StrContains(released->last_error(), "lease expired")) << released->last_error();
  std::printf("e2e clock: +30 s step at step %lld: 10 s later still RUNNING on attempt %d at step "
              "%lld; the killed world's lease released after %.1f s (TTL 2 s); %.0f s since the "
              "step\n",
              static_cast<long long>(running->progress().step()), after->attempts(),
              static_cast<long long>(after->progress().step()), absl::ToDoubleSeconds(took),
              absl::ToDoubleSeconds(absl::Now() - stepped));
  ASSERT_TRUE(c.Cancel(*job).ok());
}

}  // namespace
}  // namespace sheaf::e2e
