// End to end: a reclora job (both phases) submitted to sheaf-coordinator and
// run by a 2-rank worker world on tiny-en, over a toy RecBole atomic dataset
// under the data root; it must succeed and its report must be fetched.
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/e2e_lib.h"

namespace sheaf::e2e {
namespace {

void WriteToyRatings(const std::string& dir) {
  std::filesystem::create_directories(dir);
  std::ofstream u(dir + "/toy.user"), i(dir + "/toy.item"), x(dir + "/toy.inter");
  u << "user_id:token\tage:token\tgender:token\n";
  for (int k = 0; k < 10; ++k) u << "u" << k << "\t" << 20 + k << "\t" << (k % 2 ? "F" : "M") << "\n";
  i << "item_id:token\tmovie_title:token_seq\n";
  for (int k = 0; k < 12; ++k) i << "i" << k << "\tFilm " << k << "\n";
  x << "user_id:token\titem_id:token\trating:float\ttimestamp:float\n";
  int ts = 100;
  for (int j = 0; j < 12; ++j) {
    for (int k = 0; k < 10; ++k) {
      const int it = (j * 7 + k * 3) % 12;
      x << "u" << k << "\ti" << it << "\t" << (it % 2 ? 2 : 5) << "\t" << ts++ << "\n";
    }
  }
}

TEST(E2eRecloraTest, ATwoRankWorldRunsARecloraJobAndItsReportIsFetched) {
  auto cluster = E2eCluster::Create("e2e_reclora");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  E2eCluster& c = **cluster;
  WriteToyRatings(c.dir() + "/data/toy");
  ASSERT_TRUE(c.StartCoordinator("10s").ok());
  auto world = c.StartWorld(2);
  ASSERT_TRUE(world.ok()) << world.status();
  const std::string yaml =
      "base_model: tiny-en\nseed: 3\noptimizer: {lr: 0.002}\n"
      "train: {batch_size: 4, max_steps: 3, checkpoint_every: 2, threads: 1, log_every: 1}\n"
      "reclora:\n  data_dir: toy\n  dataset: toy\n  min_core: 2\n  k: 4\n  ctr_k: 8\n"
      "  num_experts: 2\n  eval_samples: 8\n  adapter: {rank: 2, alpha: 4}\n"
      "  crm: {epochs: 1, batch_size: 16, emb_dim: 4}\n";
  auto id = c.Submit(yaml, "reclora-e2e");
  ASSERT_TRUE(id.ok()) << id.status();
  auto job = c.WaitFor(*id, [](const proto::Job& j) { return j.state() == proto::JOB_STATE_SUCCEEDED; },
                       absl::Seconds(120));
  ASSERT_TRUE(job.ok()) << job.status() << "\nworld log:\n" << ReadFile((*world)->log_path());
  EXPECT_EQ(job->progress().step(), 3);
  auto fetched = c.Fetch(*id);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  for (const char* must : {"eval_report.json", "crm.sheafckpt", "reclora/bank.safetensors",
                           "reclora/gates.safetensors", "reclora/reclora.json", "metrics.jsonl",
                           "spec.yaml"}) {
    EXPECT_TRUE(fetched->count(must)) << must << " was not fetched";
  }
  ASSERT_TRUE(fetched->count("eval_report.json"));
  EXPECT_NE(fetched->at("eval_report.json").find("\"test\": {\"llm\": {\"auc\""), std::string::npos);
  auto exit_code = (*world)->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << ReadFile((*world)->log_path());
}

}  // namespace
}  // namespace sheaf::e2e
