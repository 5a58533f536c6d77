// SIGTERM to every rank of a world, as Slurm (srun) and Kubernetes send it
// before they kill: the world finishes its step, writes a checkpoint, gives
// the job back (CompleteJob with released: PENDING again, the attempt not
// counted) and every rank exits 0. The next world resumes from that checkpoint.
//
// (SIGTERM to mpirun itself is different: OpenMPI 4 passes it on to the
// ranks only after odls_base_sigkill_timeout seconds, SIGKILLs them the same
// time later, and exits 1 whatever the ranks did; deploy/ says how to
// configure that.)
#include <signal.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e_lib.h"

namespace sheaf::e2e {
namespace {

TEST(E2eSigtermTest, ATerminatedWorldGivesItsJobBackWithACheckpointAndExitsZero) {
  const absl::Time start = absl::Now();
  auto cluster = E2eCluster::Create("e2e_sigterm");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  E2eCluster& c = **cluster;
  ASSERT_TRUE(c.StartCoordinator("3s").ok());

  JobOptions options;
  options.max_steps = 80;
  options.checkpoint_every = 1000;  // only the stop writes one
  auto id = c.Submit(LoraJobYaml(options), "terminated");
  ASSERT_TRUE(id.ok()) << id.status();
  auto first = c.StartWorld(2);
  ASSERT_TRUE(first.ok()) << first.status();
  auto running = c.WaitFor(
      *id, [](const proto::Job& j) { return j.progress().step() >= 3; }, absl::Seconds(60));
  ASSERT_TRUE(running.ok()) << running.status();

  const std::vector<pid_t> ranks = Descendants((*first)->pid(), "sheaf-worker");
  ASSERT_EQ(ranks.size(), 2u);
  for (pid_t rank : ranks) kill(rank, SIGTERM);
  auto exit_code = (*first)->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  const std::string world_log = ReadFile((*first)->log_path());
  EXPECT_EQ(*exit_code, 0) << world_log;
  auto given_back = c.Get(*id);
  ASSERT_TRUE(given_back.ok());
  EXPECT_EQ(given_back->state(), proto::JOB_STATE_PENDING) << given_back->last_error();
  EXPECT_NE(given_back->last_error().find("worker stopped (SIGTERM)"), std::string::npos)
      << given_back->last_error();
  EXPECT_EQ(given_back->attempts(), 0) << "a hand-back must not use up an attempt";
  const int64_t stopped_at = given_back->progress().step();
  EXPECT_GE(stopped_at, 3);
  EXPECT_LT(stopped_at, 80) << "finished before the signal arrived";
  EXPECT_NE(world_log.find("sheaf-worker[rank 0]: SIGTERM: stopping after the current step"),
            std::string::npos) << world_log;
  EXPECT_NE(world_log.find("sheaf-worker[rank 1]: SIGTERM: stopping after the current step"),
            std::string::npos) << world_log;

  auto second = c.StartWorld(2);
  ASSERT_TRUE(second.ok()) << second.status();
  auto done = c.WaitFor(
      *id, [](const proto::Job& j) { return j.state() == proto::JOB_STATE_SUCCEEDED; },
      absl::Seconds(60));
  ASSERT_TRUE(done.ok()) << done.status() << "\n" << ReadFile((*second)->log_path());
  EXPECT_EQ(done->attempts(), 1);
  const std::string log = ReadFile(c.OutputOf("terminated") + "/train.log");
  EXPECT_NE(log.find(absl::StrCat("resumed from ", c.OutputOf("terminated"),
                                  "/checkpoints/ckpt-", std::string(9 - std::to_string(stopped_at).size(), '0'),
                                  stopped_at, ".sheafckpt (step ", stopped_at, ")")),
            std::string::npos)
      << log;
  auto second_exit = (*second)->Wait(absl::Seconds(30));
  ASSERT_TRUE(second_exit.ok());
  EXPECT_EQ(*second_exit, 0);
  std::printf("e2e sigterm: stopped at step %lld, exit 0, job PENDING; resumed and SUCCEEDED; %.1f s\n",
              static_cast<long long>(stopped_at), absl::ToDoubleSeconds(absl::Now() - start));
}

}  // namespace
}  // namespace sheaf::e2e
