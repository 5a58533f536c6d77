#include "base/allocation.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kGiB = int64_t{1} << 30;

class AllocationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(std::getenv("TEST_TMPDIR")) /
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    sources_.getenv = [this](const char* name) -> const char* {
      auto it = env_.find(name);
      return it == env_.end() ? nullptr : it->second.c_str();
    };
    sources_.affinity_cpus = 64;
    sources_.physical_bytes = 256 * kGiB;
  }
  void Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    sources_.cgroup_cpu_dir = sources_.cgroup_memory_dir = dir_.string();
  }

  std::filesystem::path dir_;
  std::map<std::string, std::string> env_;
  AllocationSources sources_;
};

TEST_F(AllocationTest, WithNothingGrantedTheNodeIsTheAllocation) {
  EXPECT_EQ(AllocatedCpus(sources_), 64);
  EXPECT_EQ(AllocatedMemoryBytes(sources_, 4), 64 * kGiB);
}

TEST_F(AllocationTest, OmpNumThreadsWinsOverSlurmAndCgroups) {
  env_["OMP_NUM_THREADS"] = "3";
  env_["SLURM_CPUS_PER_TASK"] = "8";
  Write("cpu.max", "200000 100000\n");
  EXPECT_EQ(AllocatedCpus(sources_), 3);
}

TEST_F(AllocationTest, SlurmCpusPerTask) {
  env_["SLURM_CPUS_PER_TASK"] = "8";
  EXPECT_EQ(AllocatedCpus(sources_), 8);
  EXPECT_NE(DescribeAllocation(sources_, 1).find("8 CPUs (SLURM_CPUS_PER_TASK)"), std::string::npos);
}

TEST_F(AllocationTest, CgroupV2QuotaRoundsUp) {
  Write("cpu.max", "250000 100000\n");  // 2.5 CPUs
  EXPECT_EQ(AllocatedCpus(sources_), 3);
  Write("cpu.max", "max 100000\n");  // no quota: affinity
  EXPECT_EQ(AllocatedCpus(sources_), 64);
}

TEST_F(AllocationTest, CgroupV1Quota) {
  Write("cpu.cfs_quota_us", "400000\n");
  Write("cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(AllocatedCpus(sources_), 4);
  Write("cpu.cfs_quota_us", "-1\n");  // v1's "no quota"
  EXPECT_EQ(AllocatedCpus(sources_), 64);
}

TEST_F(AllocationTest, GarbageIsIgnoredNotTrusted) {
  env_["OMP_NUM_THREADS"] = "lots";
  env_["SLURM_CPUS_PER_TASK"] = "0";
  env_["SLURM_MEM_PER_CPU"] = "-5";
  EXPECT_EQ(AllocatedCpus(sources_), 64);
  EXPECT_EQ(AllocatedMemoryBytes(sources_, 1), 256 * kGiB);
}

TEST_F(AllocationTest, SlurmMemPerCpuTimesCpusPerTask) {
  // The case: --mem-per-cpu=2000 on a 256 GiB node.
  env_["SLURM_MEM_PER_CPU"] = "2000";
  EXPECT_EQ(AllocatedMemoryBytes(sources_, 2), 2000 * kMiB);
  env_["SLURM_CPUS_PER_TASK"] = "4";
  EXPECT_EQ(AllocatedMemoryBytes(sources_, 2), 8000 * kMiB);
}

TEST_F(AllocationTest, SlurmMemPerNodeIsSharedByTheNodesRanks) {
  env_["SLURM_MEM_PER_NODE"] = "64000";
  EXPECT_EQ(AllocatedMemoryBytes(sources_, 2), 32000 * kMiB);
}

TEST_F(AllocationTest, TheSmallestLimitApplies) {
  env_["SLURM_MEM_PER_NODE"] = "64000";
  Write("memory.max", std::to_string(16 * kGiB) + "\n");
  EXPECT_EQ(AllocatedMemoryBytes(sources_, 2), 8 * kGiB);
  EXPECT_NE(DescribeAllocation(sources_, 2).find("(cgroup memory limit)"), std::string::npos);
}

TEST_F(AllocationTest, CgroupNoLimitValues) {
  Write("memory.max", "max\n");
  EXPECT_EQ(AllocatedMemoryBytes(sources_, 1), 256 * kGiB);
  std::filesystem::remove(dir_ / "memory.max");
  Write("memory.limit_in_bytes", "9223372036854771712\n");  // v1's unlimited
  EXPECT_EQ(AllocatedMemoryBytes(sources_, 1), 256 * kGiB);
  Write("memory.limit_in_bytes", std::to_string(4 * kGiB) + "\n");
  EXPECT_EQ(AllocatedMemoryBytes(sources_, 1), 4 * kGiB);
}

TEST_F(AllocationTest, SlurmPerNodeCountsWithRepeats) {
  env_["SLURM_CPUS_PER_TASK"] = "6(x2)";
  EXPECT_EQ(AllocatedCpus(sources_), 6);
}

TEST(ProcessAllocationTest, TheRealProcessHasAtLeastOneCpuAndSomeMemory) {
  EXPECT_GE(AllocatedCpus(), 1);
  EXPECT_GT(AllocatedMemoryBytes(1), 0);
}

}  // namespace
}  // namespace sheaf
