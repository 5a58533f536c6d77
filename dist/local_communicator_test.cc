#include "dist/local_communicator.h"

#include <chrono>
#include <vector>

#include "dist/dtype_collectives_check.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf::dist {
namespace {

constexpr std::chrono::milliseconds kNoWait{0};

TEST(LocalCommunicatorTest, WorldOfOne) {
  LocalCommunicator comm;
  EXPECT_EQ(comm.world_rank(), 0);
  EXPECT_EQ(comm.world_size(), 1);
  EXPECT_EQ(comm.device(), Device::kDeviceCpu);
  EXPECT_EQ(comm.backend_name(), "local");
}

TEST(LocalCommunicatorTest, CollectivesAreTheIdentity) {
  LocalCommunicator comm;
  std::vector<float> data = {1, 2, 3};
  for (ReduceOp op : {ReduceOp::kReduceSum, ReduceOp::kReduceAvg}) {
    ASSERT_TRUE(
        comm.AllReduce(data.data(), 3, op, Purpose::kPurposeAdapterGrad)->Wait(kNoWait).ok());
    EXPECT_EQ(data, (std::vector<float>{1, 2, 3}));
  }

  std::vector<float> gathered(3, 0);
  ASSERT_TRUE(comm.AllGather(gathered.data(), data.data(), 3, Purpose::kPurposeFrozenGather)
                  ->Wait(kNoWait)
                  .ok());
  EXPECT_EQ(gathered, data);

  std::vector<float> scattered(3, 0);
  ASSERT_TRUE(comm.ReduceScatter(scattered.data(), data.data(), 3, ReduceOp::kReduceAvg,
                                 Purpose::kPurposeAdapterGrad)
                  ->Wait(kNoWait)
                  .ok());
  EXPECT_EQ(scattered, data);

  char blob[4] = {'a', 'b', 'c', 'd'};
  ASSERT_TRUE(comm.Broadcast(blob, 4, 0, Purpose::kPurposeControl)->Wait(kNoWait).ok());
  EXPECT_EQ(std::string(blob, 4), "abcd");
  ASSERT_TRUE(comm.Barrier()->Wait(kNoWait).ok());
}

TEST(LocalCommunicatorTest, InPlaceAndEmptyWork) {
  LocalCommunicator comm;
  std::vector<float> data = {4, 5};
  // in == out: the interface's aliasing case (out + world_rank * count).
  ASSERT_TRUE(comm.AllGather(data.data(), data.data(), 2, Purpose::kPurposeFrozenGather)
                  ->Wait(kNoWait)
                  .ok());
  EXPECT_EQ(data, (std::vector<float>{4, 5}));
  ASSERT_TRUE(comm.ReduceScatter(data.data(), data.data(), 2, ReduceOp::kReduceSum,
                                 Purpose::kPurposeAdapterGrad)
                  ->Wait(kNoWait)
                  .ok());
  EXPECT_EQ(data, (std::vector<float>{4, 5}));
  // Zero counts with null buffers are fine.
  EXPECT_TRUE(comm.AllReduce(nullptr, 0, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
                  ->Wait(kNoWait)
                  .ok());
  EXPECT_TRUE(
      comm.AllGather(nullptr, nullptr, 0, Purpose::kPurposeFrozenGather)->Wait(kNoWait).ok());
  EXPECT_TRUE(comm.Broadcast(nullptr, 0, 0, Purpose::kPurposeControl)->Wait(kNoWait).ok());
}

TEST(LocalCommunicatorTest, BadArguments) {
  LocalCommunicator comm;
  float x = 0;
  EXPECT_EQ(comm.AllReduce(&x, -1, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
                ->Wait(kNoWait)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.AllGather(nullptr, &x, 1, Purpose::kPurposeFrozenGather)->Wait(kNoWait).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.Broadcast(&x, 4, 1, Purpose::kPurposeControl)->Wait(kNoWait).code(),
            absl::StatusCode::kInvalidArgument);
  // Rejected calls are not counted.
  for (int p = 0; p < kNumPurposes; ++p) EXPECT_EQ(comm.stats().calls[p].load(), 0);
}

TEST(LocalCommunicatorTest, CountsCallsButNoBytes) {
  LocalCommunicator comm;
  std::vector<float> data(1000, 1.0f);
  comm.AllReduce(data.data(), 1000, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad);
  comm.AllReduce(data.data(), 1000, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad);
  comm.AllGather(data.data(), data.data(), 1000, Purpose::kPurposeFrozenGather);
  comm.Barrier();
  EXPECT_EQ(comm.stats().calls[static_cast<int>(Purpose::kPurposeAdapterGrad)].load(), 2);
  EXPECT_EQ(comm.stats().calls[static_cast<int>(Purpose::kPurposeFrozenGather)].load(), 1);
  EXPECT_EQ(comm.stats().calls[static_cast<int>(Purpose::kPurposeControl)].load(), 1);
  for (Purpose p : {Purpose::kPurposeFrozenGather, Purpose::kPurposeAdapterGrad,
                    Purpose::kPurposeControl}) {
    EXPECT_EQ(comm.bytes_sent(p), 0) << PurposeName(p);
  }
  comm.ResetStats();
  for (int p = 0; p < kNumPurposes; ++p) EXPECT_EQ(comm.stats().calls[p].load(), 0);
  EXPECT_EQ(comm.stats().wait_ns.load(), 0);
}

// Every dtype is the identity on a world of one (the shared closed forms
// with N = 1), with no bytes on the wire.
TEST(LocalCommunicatorTest, TypedCollectives) {
  LocalCommunicator comm;
  const DTypeCheckResult result = CheckDTypeCollectives(comm, kNoWait);
  EXPECT_GT(result.checks, 100);
  EXPECT_THAT(result.failures, ::testing::IsEmpty());
}

}  // namespace
}  // namespace sheaf::dist
