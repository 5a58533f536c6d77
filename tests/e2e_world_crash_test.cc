// kill -9 of a whole worker world in the middle of a job: the lease
// expires (2 s TTL), the job goes back to PENDING, a new world leases it
// again (attempt 2), resumes from the newest checkpoint and finishes. The
// final adapter must equal, byte for byte, that of an uninterrupted run of
// the same job (same seed, same world size, 1 thread per rank): the trainer
// resumes bit for bit.
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e_lib.h"

namespace sheaf::e2e {
namespace {

namespace fs = std::filesystem;

bool Succeeded(const proto::Job& j) { return j.state() == proto::JOB_STATE_SUCCEEDED; }

TEST(E2eWorldCrashTest, AJobOfAKilledWorldResumesElsewhereAndEndsBitForBitAsAnUninterruptedRun) {
  const absl::Time start = absl::Now();
  auto cluster = E2eCluster::Create("e2e_world_crash");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  E2eCluster& c = **cluster;
  ASSERT_TRUE(c.StartCoordinator("2s").ok());

  JobOptions options;
  options.max_steps = 60;  // ~4 s on 2 ranks here: time to kill mid-job
  options.checkpoint_every = 5;
  const std::string yaml = LoraJobYaml(options);
  auto crashed = c.Submit(yaml, "crashed");
  ASSERT_TRUE(crashed.ok()) << crashed.status();
  auto first = c.StartWorld(2);
  ASSERT_TRUE(first.ok()) << first.status();

  // Kill the whole world (mpirun and both ranks) as soon as the first
  // checkpoint is on disk.
  const std::string checkpoint = c.OutputOf("crashed") + "/checkpoints/ckpt-000000005.sheafckpt";
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!fs::exists(checkpoint) && absl::Now() < deadline && !(*first)->Exited()) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_TRUE(fs::exists(checkpoint)) << ReadFile((*first)->log_path());
  (*first)->KillTree();
  auto at_kill = c.Get(*crashed);
  ASSERT_TRUE(at_kill.ok());
  ASSERT_EQ(at_kill->state(), proto::JOB_STATE_RUNNING) << "the job ended before the kill";
  EXPECT_FALSE(fs::exists(c.OutputOf("crashed") + "/adapter")) << "killed too late";

  // The same job again, uninterrupted, as the reference.
  auto reference = c.Submit(yaml, "reference");
  ASSERT_TRUE(reference.ok()) << reference.status();

  // A new world takes both (in whatever order), then exits when idle.
  auto second = c.StartWorld(2, /*once=*/false, {"--idle-exit-s", "3"});
  ASSERT_TRUE(second.ok()) << second.status();
  auto done = c.WaitFor(*crashed, Succeeded, absl::Seconds(70));
  ASSERT_TRUE(done.ok()) << done.status() << "\n" << ReadFile((*second)->log_path());
  auto ref_done = c.WaitFor(*reference, Succeeded, absl::Seconds(70));
  ASSERT_TRUE(ref_done.ok()) << ref_done.status() << "\n" << ReadFile((*second)->log_path());
  EXPECT_EQ(done->attempts(), 2);
  const std::string coordinator_log = ReadFile(c.coordinator()->log_path());
  EXPECT_NE(coordinator_log.find(absl::StrCat("job ", *crashed, " tenant=alice kind=lora RUNNING -> "
                                              "PENDING attempt=1")),
            std::string::npos)
      << coordinator_log;
  EXPECT_NE(coordinator_log.find("lease expired"), std::string::npos) << coordinator_log;
  EXPECT_EQ(ref_done->attempts(), 1);
  auto exit_code = (*second)->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << ReadFile((*second)->log_path());

  // The second attempt resumed from a checkpoint, not from step 0.
  const std::string log = ReadFile(c.OutputOf("crashed") + "/train.log");
  EXPECT_NE(log.find("attempt 2"), std::string::npos) << log;
  EXPECT_NE(log.find("resumed from"), std::string::npos) << log;

  for (const char* file : {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"}) {
    const std::string got = ReadFile(c.OutputOf("crashed") + "/" + file);
    const std::string want = ReadFile(c.OutputOf("reference") + "/" + file);
    ASSERT_FALSE(want.empty()) << file;
    EXPECT_TRUE(got == want) << file << " of the resumed run differs from the uninterrupted run's";
  }
  std::printf("e2e world crash: killed after the step-5 checkpoint; attempt 2 resumed and matched "
              "the reference byte for byte; %.1f s\n",
              absl::ToDoubleSeconds(absl::Now() - start));
}

}  // namespace
}  // namespace sheaf::e2e
