#include "dist/thread_communicator.h"

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "core/safetensors.h"
#include "dist/dtype_collectives_check.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf::dist {
namespace {

// Runs fn(comm, rank) on every rank of a world of n threads.
void RunRanks(int n, const std::function<void(Communicator&, int)>& fn) {
  ThreadWorld world(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { fn(*world.rank(r), r); });
  for (std::thread& t : threads) t.join();
}

class ThreadDTypeTest : public ::testing::TestWithParam<int> {};

TEST_P(ThreadDTypeTest, ClosedFormCollectives) {
  const int n = GetParam();
  std::vector<DTypeCheckResult> results(static_cast<size_t>(n));
  RunRanks(n, [&](Communicator& comm, int r) {
    results[static_cast<size_t>(r)] = CheckDTypeCollectives(comm, std::chrono::seconds(60));
  });
  for (int r = 0; r < n; ++r) {
    const DTypeCheckResult& result = results[static_cast<size_t>(r)];
    EXPECT_GT(result.checks, 100) << "rank " << r;
    EXPECT_THAT(result.failures, ::testing::IsEmpty()) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, ThreadDTypeTest, ::testing::Values(1, 2, 3, 4));

// The thread backend adds bf16 in f32 and rounds once. Rank 0 gives 1 and
// ranks 1..3 give 2^-8 (all exact in bf16). In f32 the sum is 1 + 3·2^-8,
// one and a half bf16 steps (2^-7 in [1, 2)) above 1: a tie, rounded to the
// even neighbour 1 + 2^-6. Rounding to bf16 after every addition instead
// would round each 1 + 2^-8 (half a step, a tie) back to 1 and end at 1.
TEST(ThreadCommunicatorTest, Bf16SumsAccumulateInF32AndRoundOnce) {
  const float small = 1.0f / 256;
  float sequential = 1.0f;  // bf16 after every addition, the alternative
  for (int r = 1; r < 4; ++r) sequential = Bf16ToF32(F32ToBf16(sequential + small));
  ASSERT_EQ(sequential, 1.0f);
  std::vector<uint16_t> got(4);
  RunRanks(4, [&](Communicator& comm, int r) {
    uint16_t v = F32ToBf16(r == 0 ? 1.0f : small);
    ASSERT_TRUE(comm.AllReduce(&v, 1, DType::kDTypeBF16, ReduceOp::kReduceSum,
                               Purpose::kPurposeAdapterGrad)
                    ->Wait(std::chrono::seconds(60))
                    .ok());
    got[static_cast<size_t>(r)] = v;
  });
  for (uint16_t v : got) EXPECT_EQ(Bf16ToF32(v), 1.0f + 1.0f / 64);
}

// i32 sums wrap modulo 2^32 (communicator.h), not undefined behaviour.
TEST(ThreadCommunicatorTest, I32SumsWrap) {
  std::vector<int32_t> got(2);
  RunRanks(2, [&](Communicator& comm, int r) {
    int32_t v = 2147483647;
    ASSERT_TRUE(comm.AllReduce(&v, 1, DType::kDTypeI32, ReduceOp::kReduceSum,
                               Purpose::kPurposeControl)
                    ->Wait(std::chrono::seconds(60))
                    .ok());
    got[static_cast<size_t>(r)] = v;
  });
  EXPECT_EQ(got[0], -2);
  EXPECT_EQ(got[1], -2);
}

// The float* overloads are the f32 case of the typed ones.
TEST(ThreadCommunicatorTest, FloatOverloadsAreF32) {
  std::vector<float> a(2), b(2);
  RunRanks(2, [&](Communicator& comm, int r) {
    float x = static_cast<float>(r + 1);
    float y = static_cast<float>(r + 1);
    ASSERT_TRUE(comm.AllReduce(&x, 1, ReduceOp::kReduceAvg, Purpose::kPurposeAdapterGrad)
                    ->Wait(std::chrono::seconds(60))
                    .ok());
    ASSERT_TRUE(comm.AllReduce(&y, 1, DType::kDTypeF32, ReduceOp::kReduceAvg,
                               Purpose::kPurposeAdapterGrad)
                    ->Wait(std::chrono::seconds(60))
                    .ok());
    a[static_cast<size_t>(r)] = x;
    b[static_cast<size_t>(r)] = y;
  });
  EXPECT_EQ(a, (std::vector<float>{1.5f, 1.5f}));
  EXPECT_EQ(b, a);
}

}  // namespace
}  // namespace sheaf::dist
