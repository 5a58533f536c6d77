// Issue 9, item 5: coordinator outages longer than the lease TTL do not
// fail or restart a healthy job. A 2-rank world trains while the
// coordinator is down three times for 5 s each (TTL 2 s):
//   1. kill -9 and a restart on the same database after 5 s (the restart
//      rule extends the stored lease; the world, past its own lease
//      estimate, trains on through --outage-grace-s and reconnects);
//   2. SIGSTOP for 5 s, then SIGCONT (the coordinator's clock ran on: it
//      expires the lease, then revives it at the world's next heartbeat,
//      as nobody else had the job -- coordinator/scheduler.h);
//   3. kill -9 and restart again.
// The job ends SUCCEEDED on attempt 1 with its final progress, and its
// adapter equals that of an uninterrupted run byte for byte.
#include <signal.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e_lib.h"

namespace sheaf::e2e {
namespace {

bool Succeeded(const proto::Job& j) { return j.state() == proto::JOB_STATE_SUCCEEDED; }

TEST(E2eOutageTest, ThreeOutagesLongerThanTheTtlCostNoAttempt) {
  const absl::Time start = absl::Now();
  auto cluster = E2eCluster::Create("e2e_outage");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  E2eCluster& c = **cluster;
  const std::string ttl = "2s";
  ASSERT_TRUE(c.StartCoordinator(ttl).ok());

  JobOptions options;
  options.max_steps = 600;  // long enough to outlast three outages
  options.checkpoint_every = 100;
  const std::string yaml = LoraJobYaml(options);
  auto job = c.Submit(yaml, "outage");
  ASSERT_TRUE(job.ok()) << job.status();
  auto world = c.StartWorld(2, /*once=*/false, {"--idle-exit-s", "4", "--outage-grace-s", "120"});
  ASSERT_TRUE(world.ok()) << world.status();

  auto wait_step = [&](int64_t step) {
    return c.WaitFor(
        *job, [&](const proto::Job& j) { return j.progress().step() >= step; }, absl::Seconds(90));
  };
  std::vector<int64_t> outage_steps;
  for (int outage = 0; outage < 3; ++outage) {
    auto before = wait_step(60 + 150 * outage);
    ASSERT_TRUE(before.ok()) << before.status() << "\n" << ReadFile((*world)->log_path());
    ASSERT_EQ(before->state(), proto::JOB_STATE_RUNNING) << before->last_error();
    outage_steps.push_back(before->progress().step());
    if (outage == 1) {
      c.coordinator()->Signal(SIGSTOP);
      absl::SleepFor(absl::Seconds(5));
      c.coordinator()->Signal(SIGCONT);
    } else {
      c.KillCoordinator();
      absl::SleepFor(absl::Seconds(5));
      ASSERT_FALSE((*world)->Exited()) << ReadFile((*world)->log_path());
      ASSERT_TRUE(c.StartCoordinator(ttl).ok());
    }
  }
  auto done = c.WaitFor(*job, Succeeded, absl::Seconds(120));
  ASSERT_TRUE(done.ok()) << done.status() << "\n" << ReadFile((*world)->log_path());
  EXPECT_EQ(done->attempts(), 1) << done->last_error();
  EXPECT_EQ(done->progress().step(), options.max_steps) << "the completion lost its progress";
  EXPECT_GT(done->progress().loss(), 0.0);
  const std::string world_log = ReadFile((*world)->log_path());
  EXPECT_NE(world_log.find("heartbeat failed"), std::string::npos)
      << "no outage hit a heartbeat:\n" << world_log;

  // The same job without outages, on the same world.
  auto reference = c.Submit(yaml, "reference");
  ASSERT_TRUE(reference.ok()) << reference.status();
  auto ref_done = c.WaitFor(*reference, Succeeded, absl::Seconds(120));
  ASSERT_TRUE(ref_done.ok()) << ref_done.status() << "\n" << ReadFile((*world)->log_path());
  for (const char* file : {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"}) {
    const std::string got = ReadFile(c.OutputOf("outage") + "/" + file);
    const std::string want = ReadFile(c.OutputOf("reference") + "/" + file);
    ASSERT_FALSE(want.empty()) << file;
    EXPECT_TRUE(got == want) << file << " differs from the uninterrupted run's";
  }
  auto exit_code = (*world)->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
  std::printf("e2e outage: 3 outages of 5 s (TTL 2 s) at steps %lld, %lld, %lld; SUCCEEDED on "
              "attempt %d at step %lld; adapter equal to the uninterrupted run's; %.1f s\n",
              static_cast<long long>(outage_steps[0]), static_cast<long long>(outage_steps[1]),
              static_cast<long long>(outage_steps[2]), done->attempts(),
              static_cast<long long>(done->progress().step()),
              absl::ToDoubleSeconds(absl::Now() - start));
}

}  // namespace
}  // namespace sheaf::e2e
