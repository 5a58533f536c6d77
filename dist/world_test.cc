#include "dist/world.h"

#include <cstdlib>
#include <map>
#include <string>

#include "dist/local_communicator.h"
#include "dist/thread_communicator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf::dist {
namespace {

using ::testing::HasSubstr;

TEST(WorldTest, BorrowSharesOneCommunicatorByDefault) {
  ThreadWorld threads(3);
  std::unique_ptr<World> world = World::Borrow(threads.rank(2));
  EXPECT_EQ(&world->control(), threads.rank(2));
  EXPECT_EQ(&world->data(), threads.rank(2));
  EXPECT_TRUE(world->shared());
  EXPECT_EQ(world->rank(), 2);
  EXPECT_EQ(world->size(), 3);
  EXPECT_EQ(world->rank_info().world_rank, 2);
  EXPECT_EQ(world->rank_info().world_size, 3);
}

TEST(WorldTest, OwnTwoCommunicators) {
  auto control = std::make_unique<LocalCommunicator>();
  auto data = std::make_unique<LocalCommunicator>();
  Communicator* c = control.get();
  Communicator* d = data.get();
  std::unique_ptr<World> world = World::Own(RankInfo{}, std::move(control), std::move(data));
  EXPECT_EQ(&world->control(), c);
  EXPECT_EQ(&world->data(), d);
  EXPECT_FALSE(world->shared());
  // Each counts what it moved.
  float x = 1.0f;
  ASSERT_TRUE(world->data()
                  .AllReduce(&x, 1, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
                  ->Wait(std::chrono::seconds(1))
                  .ok());
  EXPECT_EQ(world->data().stats().calls[static_cast<int>(Purpose::kPurposeAdapterGrad)], 1);
  EXPECT_EQ(world->control().stats().calls[static_cast<int>(Purpose::kPurposeAdapterGrad)], 0);
}

TEST(WorldTest, MismatchedWorldsAreAProgrammerError) {
  ThreadWorld threads(2);
  LocalCommunicator local;
  EXPECT_DEATH(World::Borrow(threads.rank(1), &local), "not the same world");
}

// Every variable DiscoverRank reads, cleared so the test is a world of one.
constexpr const char* kLauncherVars[] = {
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
    "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NODEID", "PMIX_RANK",
};

class WorldEnvTest : public ::testing::Test {
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

 private:
  std::map<std::string, std::string> saved_;
};

TEST_F(WorldEnvTest, NoLauncherIsALocalWorldOfOne) {
  absl::StatusOr<std::unique_ptr<World>> world = World::FromEnvironment();
  ASSERT_TRUE(world.ok()) << world.status();
  EXPECT_EQ((*world)->size(), 1);
  EXPECT_EQ((*world)->rank(), 0);
  EXPECT_TRUE((*world)->shared());
  EXPECT_EQ((*world)->control().backend_name(), "local");
  EXPECT_EQ((*world)->data().device(), Device::kDeviceCpu);
  EXPECT_EQ((*world)->rank_info().launcher, "none");
}

TEST_F(WorldEnvTest, BadLauncherVariablesAreInvalidArgument) {
  setenv("OMPI_COMM_WORLD_RANK", "3", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  absl::StatusOr<std::unique_ptr<World>> world = World::FromEnvironment();
  EXPECT_EQ(world.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(world.status().message(), HasSubstr("OMPI_COMM_WORLD_RANK"));
}

TEST_F(WorldEnvTest, ACudaDataCommunicatorComesFromDistCuda) {
  WorldOptions options;
  options.data_device = Device::kDeviceCuda;
  absl::StatusOr<std::unique_ptr<World>> world = World::FromEnvironment(options);
  EXPECT_EQ(world.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(world.status().message(), HasSubstr("NcclCommunicator"));
}

}  // namespace
}  // namespace sheaf::dist
