// Stuck worlds (issue 15): one rank of a 2-rank world hangs mid-job
// (SIGSTOP: a wedged node or process, which no launcher notices, unlike a
// rank that exits). The survivor is blocked in an all-reduce whose watchdog
// is 30 minutes, while rank 0's lease keeper would go on heartbeating.
//
//   1. Liveness (sheaf-worker --peer-timeout-s 3): rank 0 stops hearing the
//      stopped rank's pings, its communicator breaks, and it completes the
//      job as a retryable failure: the job leaves RUNNING within a few
//      seconds, long before the 30 s lease TTL, the 5 min stall floor or the
//      watchdog.
//   2. With liveness off (--peer-timeout-s 0), the coordinator's stall rule
//      (--stall-floor 4s): heartbeats keep coming, progress does not move,
//      the lease is expired at a heartbeat.
//
// Either way a second world resumes the job from its checkpoint and ends
// with the adapter of an uninterrupted run, byte for byte.
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e_lib.h"

namespace sheaf::e2e {
namespace {

namespace fs = std::filesystem;

bool Succeeded(const proto::Job& j) { return j.state() == proto::JOB_STATE_SUCCEEDED; }

// The sheaf-worker process of `world` whose MPI rank is `rank` (from its
// environment), or -1.
pid_t RankPid(Process& world, int rank) {
  for (pid_t pid : Descendants(world.pid(), "sheaf-worker")) {
    const std::string env = ReadFile(absl::StrCat("/proc/", pid, "/environ"));
    if (absl::StrContains(env, absl::StrCat(std::string(1, '\0'), "OMPI_COMM_WORLD_RANK=", rank,
                                            std::string(1, '\0')))) {
      return pid;
    }
  }
  return -1;
}

struct Scenario {
  std::string name;
  std::vector<std::string> coordinator_flags;
  std::vector<std::string> world_flags;
  std::string lease_ttl;
  double bound_s;             // the job must leave RUNNING within this
  std::string error_pattern;  // in the job's last_error
};

void RunScenario(const Scenario& sc) {
  const absl::Time start = absl::Now();
  auto cluster = E2eCluster::Create(sc.name);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  E2eCluster& c = **cluster;
  ASSERT_TRUE(c.StartCoordinator(sc.lease_ttl, sc.coordinator_flags).ok());

  JobOptions options;
  options.max_steps = 60;
  options.checkpoint_every = 5;
  const std::string yaml = LoraJobYaml(options);
  auto stuck = c.Submit(yaml, "stuck");
  ASSERT_TRUE(stuck.ok()) << stuck.status();
  auto first = c.StartWorld(2, /*once=*/true, sc.world_flags);
  ASSERT_TRUE(first.ok()) << first.status();

  const std::string checkpoint = c.OutputOf("stuck") + "/checkpoints/ckpt-000000005.sheafckpt";
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!fs::exists(checkpoint) && absl::Now() < deadline && !(*first)->Exited()) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_TRUE(fs::exists(checkpoint)) << ReadFile((*first)->log_path());
  const pid_t rank1 = RankPid(**first, 1);
  ASSERT_GT(rank1, 0) << "rank 1 of the first world not found";
  ASSERT_EQ(kill(rank1, SIGSTOP), 0);
  const absl::Time stopped = absl::Now();
  auto at_stop = c.Get(*stuck);
  ASSERT_TRUE(at_stop.ok());
  ASSERT_EQ(at_stop->state(), proto::JOB_STATE_RUNNING) << "the job ended before the stop";

  // Detection: the job leaves RUNNING.
  auto left = c.WaitFor(
      *stuck, [](const proto::Job& j) { return j.state() != proto::JOB_STATE_RUNNING; },
      absl::Seconds(sc.bound_s));
  const double detect_s = absl::ToDoubleSeconds(absl::Now() - stopped);
  ASSERT_TRUE(left.ok()) << left.status() << "\nworld:\n"
                         << ReadFile((*first)->log_path()) << "\ncoordinator:\n"
                         << ReadFile(c.coordinator()->log_path());
  EXPECT_EQ(left->state(), proto::JOB_STATE_PENDING);
  EXPECT_NE(left->last_error().find(sc.error_pattern), std::string::npos) << left->last_error();
  std::printf("e2e stuck world (%s): rank 1 stopped at step >= 5; the job left RUNNING after "
              "%.2f s: %s\n",
              sc.name.c_str(), detect_s, left->last_error().c_str());
  // The stopped rank goes (as its launcher or an operator would end it).
  kill(rank1, SIGKILL);
  (*first)->KillTree();

  auto reference = c.Submit(yaml, "reference");
  ASSERT_TRUE(reference.ok()) << reference.status();
  auto second = c.StartWorld(2, /*once=*/false, {"--idle-exit-s", "3"});
  ASSERT_TRUE(second.ok()) << second.status();
  auto done = c.WaitFor(*stuck, Succeeded, absl::Seconds(90));
  ASSERT_TRUE(done.ok()) << done.status() << "\n" << ReadFile((*second)->log_path());
  auto ref_done = c.WaitFor(*reference, Succeeded, absl::Seconds(90));
  ASSERT_TRUE(ref_done.ok()) << ref_done.status() << "\n" << ReadFile((*second)->log_path());
  EXPECT_EQ(done->attempts(), 2);
  const std::string log = ReadFile(c.OutputOf("stuck") + "/train.log");
  EXPECT_NE(log.find("resumed from"), std::string::npos) << log;
  for (const char* file : {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"}) {
    const std::string got = ReadFile(c.OutputOf("stuck") + "/" + file);
    const std::string want = ReadFile(c.OutputOf("reference") + "/" + file);
    ASSERT_FALSE(want.empty()) << file;
    EXPECT_TRUE(got == want) << file << " of the resumed run differs from the uninterrupted run's";
  }
  std::printf("e2e stuck world (%s): resumed elsewhere and matched the reference byte for byte; "
              "%.1f s in all\n",
              sc.name.c_str(), absl::ToDoubleSeconds(absl::Now() - start));
  (void)second;
}

TEST(E2eStuckWorldTest, AStoppedRankIsFoundByLivenessAndTheJobEndsElsewhereAsUninterrupted) {
  // TTL 30 s and the default 5 min stall floor: neither can be what ends it.
  // Bound: peer timeout 3 s + the step in flight + CompleteJob, on a
  // loaded 2-core machine.
  RunScenario({"stuck_liveness", {}, {"--peer-timeout-s", "3"}, "30s", 20,
               "rank 1 has not answered liveness pings"});
}

TEST(E2eStuckWorldTest, WithLivenessOffTheCoordinatorExpiresTheLeaseOfAWorldThatMakesNoProgress) {
  // Heartbeats every 1 s keep the 3 s TTL alive; only the stall rule
  // (max(4 s, 5 x the longest gap between progress, ~1 s here)) ends it.
  RunScenario({"stuck_stall", {"--stall-floor", "4s"}, {"--peer-timeout-s", "0"}, "3s", 40,
               "kept heartbeating but made no progress"});
}

}  // namespace
}  // namespace sheaf::e2e
