#include "dist/communicator.h"

#include <cstdlib>
#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf::dist {
namespace {

using ::testing::HasSubstr;

// Every variable DiscoverRank reads; each test starts from none of them.
constexpr const char* kLauncherVars[] = {
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",  "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
    "SLURM_LOCALID",        "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
    "SLURM_NODEID",         "PMIX_RANK",
};

class DiscoverRankTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kLauncherVars) {
      if (const char* v = std::getenv(name)) saved_[name] = v;
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (const char* name : kLauncherVars) unsetenv(name);
    for (const auto& [name, value] : saved_) setenv(name.c_str(), value.c_str(), 1);
  }
  static void Set(const char* name, const char* value) { setenv(name, value, 1); }

 private:
  std::map<std::string, std::string> saved_;
};

TEST_F(DiscoverRankTest, NoLauncherIsAWorldOfOne) {
  absl::StatusOr<RankInfo> info = DiscoverRank();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->world_rank, 0);
  EXPECT_EQ(info->world_size, 1);
  EXPECT_EQ(info->local_rank, 0);
  EXPECT_EQ(info->local_size, 1);
  EXPECT_EQ(info->launcher, "none");
}

TEST_F(DiscoverRankTest, OpenMpi) {
  Set("OMPI_COMM_WORLD_RANK", "5");
  Set("OMPI_COMM_WORLD_SIZE", "8");
  Set("OMPI_COMM_WORLD_LOCAL_RANK", "1");
  Set("OMPI_COMM_WORLD_LOCAL_SIZE", "4");
  Set("PMIX_RANK", "5");  // OpenMPI 4 exports it too; mpirun wins
  absl::StatusOr<RankInfo> info = DiscoverRank();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->world_rank, 5);
  EXPECT_EQ(info->world_size, 8);
  EXPECT_EQ(info->local_rank, 1);
  EXPECT_EQ(info->local_size, 4);
  EXPECT_EQ(info->launcher, "openmpi");
}

TEST_F(DiscoverRankTest, OpenMpiWithoutLocalVarsAssumesOneNode) {
  Set("OMPI_COMM_WORLD_RANK", "2");
  Set("OMPI_COMM_WORLD_SIZE", "3");
  absl::StatusOr<RankInfo> info = DiscoverRank();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->local_rank, 2);
  EXPECT_EQ(info->local_size, 3);
}

TEST_F(DiscoverRankTest, OpenMpiErrorsNameTheVariable) {
  struct Case {
    const char* rank;
    const char* size;
    const char* local_rank;  // nullptr: unset
    const char* local_size;
    const char* expected;
  };
  const Case cases[] = {
      {"x", "4", nullptr, nullptr, "OMPI_COMM_WORLD_RANK='x'"},
      {"1", "", nullptr, nullptr, "OMPI_COMM_WORLD_SIZE=''"},
      {"1", "4k", nullptr, nullptr, "OMPI_COMM_WORLD_SIZE='4k'"},
      {"-1", "4", nullptr, nullptr, "OMPI_COMM_WORLD_RANK='-1'"},
      {"4", "4", nullptr, nullptr, "OMPI_COMM_WORLD_RANK=4 is not below OMPI_COMM_WORLD_SIZE=4"},
      {"0", "0", nullptr, nullptr, "OMPI_COMM_WORLD_SIZE=0"},
      {"1", nullptr, nullptr, nullptr, "OMPI_COMM_WORLD_SIZE is not set"},
      {"1", "4", "0", nullptr, "must be set together"},
      {"1", "4", "2", "2",
       "OMPI_COMM_WORLD_LOCAL_RANK=2 is not below OMPI_COMM_WORLD_LOCAL_SIZE=2"},
      {"1", "4", "0", "5",
       "OMPI_COMM_WORLD_LOCAL_SIZE=5 must be between 1 and OMPI_COMM_WORLD_SIZE=4"},
  };
  for (const Case& c : cases) {
    SetUp();
    Set("OMPI_COMM_WORLD_RANK", c.rank);
    if (c.size != nullptr) Set("OMPI_COMM_WORLD_SIZE", c.size);
    if (c.local_rank != nullptr) Set("OMPI_COMM_WORLD_LOCAL_RANK", c.local_rank);
    if (c.local_size != nullptr) Set("OMPI_COMM_WORLD_LOCAL_SIZE", c.local_size);
    absl::StatusOr<RankInfo> info = DiscoverRank();
    EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument) << c.expected;
    EXPECT_THAT(info.status().message(), HasSubstr(c.expected));
  }
}

TEST_F(DiscoverRankTest, SlurmWithTasksPerNode) {
  // 7 tasks: nodes of 3, 3, 1; we are the second task on node 1.
  Set("SLURM_PROCID", "4");
  Set("SLURM_NTASKS", "7");
  Set("SLURM_LOCALID", "1");
  Set("SLURM_NODEID", "1");
  Set("SLURM_TASKS_PER_NODE", "3(x2),1");
  Set("PMIX_RANK", "4");
  absl::StatusOr<RankInfo> info = DiscoverRank();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->world_rank, 4);
  EXPECT_EQ(info->world_size, 7);
  EXPECT_EQ(info->local_rank, 1);
  EXPECT_EQ(info->local_size, 3);
  EXPECT_EQ(info->launcher, "slurm");

  Set("SLURM_NODEID", "2");
  Set("SLURM_LOCALID", "0");
  info = DiscoverRank();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->local_size, 1);
}

TEST_F(DiscoverRankTest, SlurmNtasksPerNodeWins) {
  Set("SLURM_PROCID", "3");
  Set("SLURM_NTASKS", "4");
  Set("SLURM_LOCALID", "1");
  Set("SLURM_NTASKS_PER_NODE", "2");
  Set("SLURM_TASKS_PER_NODE", "garbage");  // not read when the above is set
  absl::StatusOr<RankInfo> info = DiscoverRank();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->local_size, 2);
}

TEST_F(DiscoverRankTest, SlurmErrorsNameTheVariable) {
  struct Case {
    std::map<std::string, std::string> env;
    const char* expected;
  };
  const Case cases[] = {
      {{{"SLURM_PROCID", "1"}, {"SLURM_LOCALID", "0"}}, "SLURM_NTASKS is not set"},
      {{{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}}, "SLURM_LOCALID is not set"},
      {{{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}},
       "SLURM_PROCID=2 is not below SLURM_NTASKS=2"},
      {{{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}, {"PMIX_RANK", "0"}},
       "PMIX_RANK=0 disagrees with SLURM_PROCID=1"},
      {{{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"},
        {"SLURM_TASKS_PER_NODE", "2(x"}},
       "SLURM_TASKS_PER_NODE='2(x': bad repeat"},
      {{{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"},
        {"SLURM_TASKS_PER_NODE", "2,,2"}},
       "SLURM_TASKS_PER_NODE='2,,2': bad task count ''"},
      {{{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"},
        {"SLURM_TASKS_PER_NODE", "2(x2)"}, {"SLURM_NODEID", "2"}},
       "SLURM_NODEID=2 has no entry in SLURM_TASKS_PER_NODE"},
      {{{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "2"},
        {"SLURM_NTASKS_PER_NODE", "2"}},
       "SLURM_LOCALID=2 is not below SLURM_NTASKS_PER_NODE=2"},
      {{{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"},
        {"SLURM_NTASKS_PER_NODE", "0"}},
       "SLURM_NTASKS_PER_NODE=0 must be between 1 and SLURM_NTASKS=4"},
  };
  for (const Case& c : cases) {
    SetUp();
    for (const auto& [name, value] : c.env) Set(name.c_str(), value.c_str());
    absl::StatusOr<RankInfo> info = DiscoverRank();
    EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument) << c.expected;
    EXPECT_THAT(info.status().message(), HasSubstr(c.expected));
  }
}

TEST_F(DiscoverRankTest, PmixNeedsAWorldSize) {
  Set("PMIX_RANK", "1");
  absl::StatusOr<RankInfo> info = DiscoverRank();
  EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(info.status().message(), HasSubstr("PMIX_RANK=1"));
  EXPECT_THAT(info.status().message(), HasSubstr("SLURM_NTASKS"));

  Set("SLURM_NTASKS", "3");
  info = DiscoverRank();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->world_rank, 1);
  EXPECT_EQ(info->world_size, 3);
  EXPECT_EQ(info->launcher, "pmix");

  Set("PMIX_RANK", "3");
  info = DiscoverRank();
  EXPECT_THAT(info.status().message(), HasSubstr("PMIX_RANK=3 is not below SLURM_NTASKS=3"));
}

TEST(CommunicatorTest, PurposeNames) {
  EXPECT_STREQ(PurposeName(Purpose::kPurposeFrozenGather), "frozen_gather");
  EXPECT_STREQ(PurposeName(Purpose::kPurposeAdapterGrad), "adapter_grad");
  EXPECT_STREQ(PurposeName(Purpose::kPurposeControl), "control");
}

TEST(CommunicatorTest, CompletedWork) {
  std::unique_ptr<Work> ok = CompletedWork();
  EXPECT_TRUE(ok->Done());
  EXPECT_TRUE(ok->Wait(std::chrono::milliseconds(0)).ok());
  std::unique_ptr<Work> failed = CompletedWork(absl::UnavailableError("down"));
  EXPECT_TRUE(failed->Done());
  EXPECT_EQ(failed->Wait(std::chrono::milliseconds(0)).code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace sheaf::dist
