// The parts of the NCCL backend that need no GPU: error mapping, byte
// accounting and argument checks before any device is touched. Built only
// with --config=cuda (it links CUDA and NCCL) but runs on a CPU-only machine.
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <functional>

#include "absl/status/status.h"
#include "dist/communicator.h"
#include "dist/cuda/nccl_communicator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf::dist {
namespace {

using ::testing::HasSubstr;

TEST(CudaStatusTest, MapsErrorsByCauseAndNamesTheCall) {
  EXPECT_TRUE(CudaStatus(cudaSuccess, "cudaMalloc").ok());
  const absl::Status oom = CudaStatus(cudaErrorMemoryAllocation, "cudaMalloc(grads)");
  EXPECT_EQ(oom.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(oom.message()), HasSubstr("cudaMalloc(grads)"));
  EXPECT_THAT(std::string(oom.message()), HasSubstr("cudaErrorMemoryAllocation"));
  EXPECT_EQ(CudaStatus(cudaErrorNoDevice, "x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CudaStatus(cudaErrorInsufficientDriver, "x").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CudaStatus(cudaErrorInvalidValue, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaStatus(cudaErrorLaunchFailure, "x").code(), absl::StatusCode::kInternal);
}

TEST(NcclStatusTest, MapsResultsByCauseAndNamesTheCall) {
  EXPECT_TRUE(NcclStatus(ncclSuccess, "ncclAllReduce").ok());
  const absl::Status remote = NcclStatus(ncclRemoteError, "ncclAllReduce");
  EXPECT_EQ(remote.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(remote.message()), HasSubstr("ncclAllReduce"));
  EXPECT_EQ(NcclStatus(ncclSystemError, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(NcclStatus(ncclInvalidArgument, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NcclStatus(ncclInvalidUsage, "x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(NcclStatus(ncclInternalError, "x").code(), absl::StatusCode::kInternal);
  EXPECT_EQ(NcclStatus(ncclUnhandledCudaError, "x").code(), absl::StatusCode::kInternal);
}

TEST(BytesSentTest, UsesTheFactorsOfCommunicatorH) {
  for (int n : {1, 2, 3, 4, 8}) {
    SCOPED_TRACE(n);
    EXPECT_EQ(AllReduceBytesSent(4000, n), 2 * (n - 1) * 4000 / n);
    EXPECT_EQ(AllGatherBytesSent(4000, n), (n - 1) * 4000);
    EXPECT_EQ(ReduceScatterBytesSent(4000, n), (n - 1) * 4000);
    EXPECT_EQ(BroadcastBytesSent(4000, n, /*is_root=*/true), (n - 1) * 4000);
    EXPECT_EQ(BroadcastBytesSent(4000, n, /*is_root=*/false), 0);
  }
  EXPECT_EQ(AllReduceBytesSent(4000, 1), 0);  // nothing crosses a wire alone
  EXPECT_EQ(AllReduceBytesSent(4000, 4), 6000);
}

TEST(NcclCommunicatorCreateTest, RejectsBadWorldsBeforeTouchingCuda) {
  RankInfo outside;
  outside.world_rank = 2;
  outside.world_size = 2;
  EXPECT_EQ(NcclCommunicator::Create(outside, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  RankInfo two;
  two.world_rank = 0;
  two.world_size = 2;
  const auto no_bootstrap = NcclCommunicator::Create(two, nullptr);
  EXPECT_EQ(no_bootstrap.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_bootstrap.status().message()), HasSubstr("bootstrap"));
}

TEST(NcclCommunicatorCreateTest, WithoutAGpuFailsClearly) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) {
    GTEST_SKIP() << "a GPU is visible; nccl_communicator_test covers Create";
  }
  const auto comm = NcclCommunicator::Create(RankInfo{}, nullptr);
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kFailedPrecondition) << comm.status();
}

TEST(MpiBootstrapTest, NeedsMpiInitialised) {
  // This binary never calls MPI_Init.
  char byte = 0;
  EXPECT_EQ(MpiBootstrap()(&byte, 1).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace sheaf::dist
