// End to end, as a user and an operator run it: the sheaf-coordinator
// binary, a 2-rank worker world under mpirun (sheaf-worker --once), a LoRA
// job on models/tiny-en submitted over gRPC; the job must succeed and the
// artifacts fetched with FetchArtifacts must equal, byte for byte, what the
// world wrote.
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e_lib.h"

namespace sheaf::e2e {
namespace {

TEST(E2eTrainTest, ATwoRankWorldTrainsASubmittedJobAndTheFetchedArtifactsMatch) {
  const absl::Time start = absl::Now();
  auto cluster = E2eCluster::Create("e2e_train");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  E2eCluster& c = **cluster;
  ASSERT_TRUE(c.StartCoordinator("10s").ok());
  auto world = c.StartWorld(2);
  ASSERT_TRUE(world.ok()) << world.status();

  JobOptions options;  // 20 steps, seq 64, a checkpoint every 5
  auto id = c.Submit(LoraJobYaml(options), "lora-e2e");
  ASSERT_TRUE(id.ok()) << id.status();
  auto job = c.WaitFor(*id, [](const proto::Job& j) { return j.state() == proto::JOB_STATE_SUCCEEDED; },
                       absl::Seconds(80));
  ASSERT_TRUE(job.ok()) << job.status() << "\nworld log:\n" << ReadFile((*world)->log_path());
  const std::string out = c.OutputOf("lora-e2e");
  EXPECT_EQ(job->attempts(), 1);
  EXPECT_EQ(job->artifact_dir(), out);
  EXPECT_EQ(job->progress().step(), 20);
  EXPECT_EQ(job->progress().total_steps(), 20);
  EXPECT_TRUE(job->progress().has_val_loss());
  auto exit_code = (*world)->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << ReadFile((*world)->log_path());

  auto fetched = c.Fetch(*id);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  const auto on_disk = E2eCluster::ReadTree(out);
  for (const char* must : {"adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                           "train.log", "metrics.jsonl", "spec.yaml", "summary.json"}) {
    EXPECT_TRUE(fetched->count(must)) << must << " was not fetched";
  }
  ASSERT_EQ(fetched->size(), on_disk.size());
  for (const auto& [path, bytes] : on_disk) {
    auto it = fetched->find(path);
    ASSERT_NE(it, fetched->end()) << path << " is on disk but was not fetched";
    EXPECT_TRUE(it->second == bytes) << path << ": fetched " << it->second.size()
                                     << " bytes differ from the " << bytes.size() << " on disk";
  }
  // The world really was two ranks sharding the base model.
  const std::string& metrics = fetched->at("metrics.jsonl");
  EXPECT_NE(metrics.find("\"step\": 20,"), std::string::npos);
  EXPECT_NE(metrics.find("\"frozen_gather_bytes\""), std::string::npos);
  // Rank 0's log is in train.log, up to the line before CompleteJob.
  const std::string& log = fetched->at("train.log");
  EXPECT_NE(log.find(absl::StrCat("job ", *id, " (tenant alice, attempt 1)")), std::string::npos) << log;
  EXPECT_NE(log.find("with 2 ranks"), std::string::npos) << log;
  EXPECT_NE(log.find("step 20/20 "), std::string::npos) << log;
  EXPECT_NE(log.find(absl::StrCat("job ", *id, ": succeeded at step 20/20")), std::string::npos) << log;
  EXPECT_EQ(log.find("completed the lease"), std::string::npos) << "written after CompleteJob";
  std::printf("e2e train: job %s SUCCEEDED, %zu artifacts fetched byte-equal, %.1f s\n", id->c_str(),
              fetched->size(), absl::ToDoubleSeconds(absl::Now() - start));
}

}  // namespace
}  // namespace sheaf::e2e
