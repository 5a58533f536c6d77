// CancelJob on a job a 2-rank world is training: the world hears CANCEL at
// its next heartbeat (1 s here), stops after its step with a checkpoint,
// completes the lease, the job is CANCELLED, and the world (--once) exits
// cleanly.
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e_lib.h"

namespace sheaf::e2e {
namespace {

namespace fs = std::filesystem;

TEST(E2eCancelTest, ACancelledJobStopsAtTheNextHeartbeatAndTheWorldExitsCleanly) {
  const absl::Time start = absl::Now();
  auto cluster = E2eCluster::Create("e2e_cancel");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  E2eCluster& c = **cluster;
  ASSERT_TRUE(c.StartCoordinator("3s").ok());  // heartbeats every 1 s

  JobOptions options;
  options.max_steps = 100000;  // hours: only the cancel ends it
  options.checkpoint_every = 0;
  auto id = c.Submit(LoraJobYaml(options), "cancelled");
  ASSERT_TRUE(id.ok()) << id.status();
  auto world = c.StartWorld(2);
  ASSERT_TRUE(world.ok()) << world.status();
  auto running = c.WaitFor(
      *id, [](const proto::Job& j) { return j.progress().step() >= 3; }, absl::Seconds(60));
  ASSERT_TRUE(running.ok()) << running.status() << "\n" << ReadFile((*world)->log_path());

  const absl::Time cancel_time = absl::Now();
  auto flagged = c.Cancel(*id);
  ASSERT_TRUE(flagged.ok()) << flagged.status();
  EXPECT_EQ(flagged->state(), proto::JOB_STATE_RUNNING);
  EXPECT_TRUE(flagged->cancel_requested());
  auto cancelled = c.WaitFor(
      *id, [](const proto::Job& j) { return j.state() == proto::JOB_STATE_CANCELLED; },
      absl::Seconds(120));
  ASSERT_TRUE(cancelled.ok()) << cancelled.status() << "\n" << ReadFile((*world)->log_path());
  const absl::Duration took = absl::Now() - cancel_time;
  // One heartbeat interval, one step, one checkpoint, the completion:
  // seconds. The job has hours of steps left, so only the cancel ends it
  // within 60 s, a bound a loaded 2-core machine does not reach.
  EXPECT_LT(took, absl::Seconds(60));
  EXPECT_EQ(cancelled->attempts(), 1);

  auto exit_code = (*world)->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << ReadFile((*world)->log_path());
  const std::string world_log = ReadFile((*world)->log_path());
  EXPECT_NE(world_log.find("lease verdict: cancel"), std::string::npos) << world_log;
  EXPECT_NE(world_log.find("failed: cancelled"), std::string::npos) << world_log;
  // It stopped with a checkpoint (a cancelled job can still be inspected).
  const std::string out = c.OutputOf("cancelled");
  EXPECT_FALSE(fs::is_empty(out + "/checkpoints"));
  EXPECT_FALSE(fs::exists(out + "/adapter"));
  EXPECT_NE(ReadFile(out + "/train.log").find("stopped at step"), std::string::npos);
  std::printf("e2e cancel: CANCELLED %.2f s after CancelJob at step %lld; world exit 0; %.1f s\n",
              absl::ToDoubleSeconds(took), static_cast<long long>(cancelled->progress().step()),
              absl::ToDoubleSeconds(absl::Now() - start));
}

}  // namespace
}  // namespace sheaf::e2e
