// kill -9 of the coordinator while a 2-rank world trains a job, and a
// restart on the same address and database: nothing accepted is lost (a
// queued job is still there), the world's failed heartbeats are retried
// until the coordinator answers again, the lease survives (no second
// attempt), progress keeps arriving, and the job ends SUCCEEDED.
#include <signal.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e_lib.h"

namespace sheaf::e2e {
namespace {

TEST(E2eCoordinatorCrashTest, AWorldRidesOutACoordinatorRestartAndItsJobSucceeds) {
  const absl::Time start = absl::Now();
  auto cluster = E2eCluster::Create("e2e_coordinator_crash");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  E2eCluster& c = **cluster;
  // Heartbeats every 4 s; the outage below (4.5 s) is longer than that, so
  // at least one heartbeat fails, and short enough that the lease (12 s
  // after the last renewal) outlives it with the reconnect.
  const std::string ttl = "12s";
  ASSERT_TRUE(c.StartCoordinator(ttl).ok());

  JobOptions options;
  options.max_steps = 200;  // ~15 s here: it must outlast the outage
  options.checkpoint_every = 50;
  auto running = c.Submit(LoraJobYaml(options), "survivor");
  ASSERT_TRUE(running.ok()) << running.status();
  auto world = c.StartWorld(2);
  ASSERT_TRUE(world.ok()) << world.status();
  auto started = c.WaitFor(
      *running, [](const proto::Job& j) { return j.state() == proto::JOB_STATE_RUNNING; },
      absl::Seconds(60));
  ASSERT_TRUE(started.ok()) << started.status();
  // Accepted while the first job runs; must survive the crash.
  auto queued = c.Submit(LoraJobYaml(options), "queued");
  ASSERT_TRUE(queued.ok()) << queued.status();

  c.KillCoordinator();
  absl::SleepFor(absl::Milliseconds(4500));
  ASSERT_FALSE((*world)->Exited()) << ReadFile((*world)->log_path());
  ASSERT_TRUE(c.StartCoordinator(ttl).ok());
  const absl::Time restarted = absl::Now();

  auto after = c.Get(*running);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->state(), proto::JOB_STATE_RUNNING);
  EXPECT_EQ(after->attempts(), 1);
  auto still_queued = c.Get(*queued);
  ASSERT_TRUE(still_queued.ok()) << "an accepted job was lost: " << still_queued.status();
  EXPECT_EQ(still_queued->state(), proto::JOB_STATE_PENDING);

  // Heartbeats reach the restarted coordinator: progress moves on.
  const int64_t step_at_restart = after->progress().step();
  auto moving = c.WaitFor(
      *running,
      [&](const proto::Job& j) {
        return j.progress().step() > step_at_restart || j.state() == proto::JOB_STATE_SUCCEEDED;
      },
      absl::Seconds(30));
  ASSERT_TRUE(moving.ok()) << moving.status();
  const absl::Duration recovered = absl::Now() - restarted;
  EXPECT_EQ(moving->state(), proto::JOB_STATE_RUNNING) << "progress after the restart came only "
                                                          "with the completion";
  auto done = c.WaitFor(
      *running, [](const proto::Job& j) { return j.state() == proto::JOB_STATE_SUCCEEDED; },
      absl::Seconds(60));
  ASSERT_TRUE(done.ok()) << done.status() << "\n" << ReadFile((*world)->log_path());
  EXPECT_EQ(done->attempts(), 1) << "the lease should have survived the restart";
  EXPECT_EQ(done->progress().step(), 200);
  auto exit_code = (*world)->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
  const std::string world_log = ReadFile((*world)->log_path());
  EXPECT_NE(world_log.find("heartbeat failed"), std::string::npos)
      << "the outage did not hit a heartbeat:\n" << world_log;
  EXPECT_EQ(world_log.find("lease verdict"), std::string::npos) << world_log;
  auto queued_end = c.Get(*queued);
  ASSERT_TRUE(queued_end.ok());
  EXPECT_EQ(queued_end->state(), proto::JOB_STATE_PENDING);
  std::printf("e2e coordinator crash: outage 4.5 s; progress arrived again %.1f s after the "
              "restart; job SUCCEEDED on attempt 1; %.1f s\n",
              absl::ToDoubleSeconds(recovered), absl::ToDoubleSeconds(absl::Now() - start));
}

}  // namespace
}  // namespace sheaf::e2e
