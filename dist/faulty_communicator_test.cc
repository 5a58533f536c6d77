#include "dist/faulty_communicator.h"

#include <chrono>
#include <memory>
#include <vector>

#include "dist/local_communicator.h"
#include "gtest/gtest.h"

namespace sheaf::dist {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

std::unique_ptr<FaultyCommunicator> Wrap(std::vector<Fault> faults) {
  return std::make_unique<FaultyCommunicator>(std::make_unique<LocalCommunicator>(),
                                              std::move(faults));
}

TEST(FaultyCommunicatorTest, ForwardsWithoutFaults) {
  auto comm = Wrap({});
  EXPECT_EQ(comm->backend_name(), "faulty(local)");
  EXPECT_EQ(comm->world_size(), 1);
  std::vector<float> data = {1, 2};
  std::vector<float> out(2);
  EXPECT_TRUE(comm->AllGather(out.data(), data.data(), 2, Purpose::kPurposeFrozenGather)
                  ->Wait(milliseconds(0))
                  .ok());
  EXPECT_EQ(out, data);
  EXPECT_TRUE(comm->Barrier()->Wait(milliseconds(0)).ok());
  EXPECT_EQ(comm->issued(), 2);
  EXPECT_EQ(comm->fired(), 0);
  // Calls counted by the inner communicator are mirrored.
  EXPECT_EQ(comm->stats().calls[static_cast<int>(Purpose::kPurposeFrozenGather)].load(), 1);
  EXPECT_EQ(comm->stats().calls[static_cast<int>(Purpose::kPurposeControl)].load(), 1);
}

TEST(FaultyCommunicatorTest, FailsTheKthCollectiveOnly) {
  Fault fault;
  fault.index = 1;
  fault.kind = Fault::Kind::kFaultFail;
  fault.status = absl::InternalError("boom");
  auto comm = Wrap({fault});
  float x = 1;
  EXPECT_TRUE(comm->AllReduce(&x, 1, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
                  ->Wait(milliseconds(0))
                  .ok());
  absl::Status failed = comm->AllReduce(&x, 1, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
                            ->Wait(milliseconds(0));
  EXPECT_EQ(failed.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(failed.message(), "boom");
  EXPECT_TRUE(comm->Barrier()->Wait(milliseconds(0)).ok());
  EXPECT_EQ(comm->fired(), 1);
  // The failed collective never reached the inner communicator.
  EXPECT_EQ(comm->inner().stats().calls[static_cast<int>(Purpose::kPurposeAdapterGrad)].load(), 1);
  EXPECT_EQ(comm->stats().calls[static_cast<int>(Purpose::kPurposeAdapterGrad)].load(), 1);
}

TEST(FaultyCommunicatorTest, DelaysACollective) {
  Fault fault;
  fault.index = 0;
  fault.kind = Fault::Kind::kFaultDelay;
  fault.delay = milliseconds(150);
  auto comm = Wrap({fault});
  float x = 1;
  const Clock::time_point start = Clock::now();
  std::unique_ptr<Work> work =
      comm->AllReduce(&x, 1, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad);
  EXPECT_FALSE(work->Done());
  // Too short a wait: DeadlineExceeded, as for a slow peer.
  EXPECT_EQ(work->Wait(milliseconds(10)).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(work->Wait(milliseconds(5000)).ok());
  EXPECT_GE(Clock::now() - start, milliseconds(150));
  EXPECT_TRUE(work->Done());
}

TEST(FaultyCommunicatorTest, HangNeverCompletes) {
  Fault fault;
  fault.index = 0;
  fault.kind = Fault::Kind::kFaultHang;
  auto comm = Wrap({fault});
  std::unique_ptr<Work> work = comm->Barrier();
  EXPECT_FALSE(work->Done());
  const Clock::time_point start = Clock::now();
  absl::Status status = work->Wait(milliseconds(50));
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(Clock::now() - start, milliseconds(50));
  EXPECT_NE(status.message().find("collective #0"), absl::string_view::npos) << status;
  EXPECT_FALSE(work->Done());
}

}  // namespace
}  // namespace sheaf::dist
