// NcclCommunicator on real GPUs, one MPI rank per GPU, against closed-form
// expectations (c10d style: the sum over ranks r of r is N(N-1)/2).
//
// Run directly (bazel test, tools/gpu_check.sh) the binary re-launches
// itself as `mpirun -np N`, N = $SHEAF_GPU_RANKS or the number of visible
// GPUs; a world of one still runs every NCCL call. Under mpirun each rank
// runs every test; only rank 0 prints and writes the XML; the exit code is
// non-zero when any rank failed a test.
//
// Inputs are written by a kernel on the legacy default stream and read by
// NCCL on the communicator's own stream, so every test also checks that a
// collective waits for the compute stream.
#include "dist/cuda/nccl_communicator.h"

#include <cuda_runtime.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/safetensors.h"
#include "dist/communicator.h"
#include "dist/cuda/mpi_launch.h"
#include "dist/cuda/test_kernels.h"
#include "gtest/gtest.h"

namespace sheaf::dist {
namespace {

constexpr std::chrono::milliseconds kWait{120'000};

int g_world_rank = 0;
int g_world_size = 1;
int g_local_rank = 0;
NcclCommunicator* g_comm = nullptr;  // shared by the tests; owned by main

#define ASSERT_CUDA(expr)                                                                      \
  do {                                                                                         \
    const cudaError_t sheaf_error_ = (expr);                                                   \
    ASSERT_EQ(sheaf_error_, cudaSuccess) << #expr << ": " << cudaGetErrorString(sheaf_error_); \
  } while (0)

// A cudaMalloc'd float buffer.
class DeviceFloats {
 public:
  explicit DeviceFloats(int64_t n) : n_(n) {
    if (cudaMalloc(&data_, static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float)) !=
        cudaSuccess) {
      data_ = nullptr;
    }
  }
  ~DeviceFloats() { cudaFree(data_); }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;

  float* get() const { return data_; }
  int64_t size() const { return n_; }
  std::vector<float> ToHost() const {
    std::vector<float> host(static_cast<size_t>(n_));
    // Synchronous on the legacy stream: after a successful Wait, which is
    // all a caller is promised.
    if (cudaMemcpy(host.data(), data_, host.size() * sizeof(float), cudaMemcpyDeviceToHost) !=
        cudaSuccess) {
      ADD_FAILURE() << "cudaMemcpy to host failed";
    }
    return host;
  }

 private:
  float* data_ = nullptr;
  int64_t n_;
};

// x[i] = a + b * (i % period), written on the legacy default stream.
void FillAffine(float* x, int64_t n, float a, float b, int64_t period) {
  ASSERT_CUDA(cuda_test::LaunchFillAffine(x, n, a, b, period, /*stream=*/nullptr));
}

// First mismatch only, so one broken collective prints one line.
template <typename Expected>
void ExpectFloats(const std::vector<float>& got, Expected expected, float tolerance,
                  const std::string& what) {
  for (size_t i = 0; i < got.size(); ++i) {
    const float want = expected(static_cast<int64_t>(i));
    const float error = std::abs(got[i] - want);
    if (error > tolerance * std::max(1.0f, std::abs(want))) {
      ADD_FAILURE() << what << " on rank " << g_world_rank << ": [" << i << "] = " << got[i]
                    << ", want " << want;
      return;
    }
  }
}

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(g_comm, nullptr);
    ASSERT_FALSE(g_comm->broken());
  }
  NcclCommunicator& comm() { return *g_comm; }
  const int n_ = g_world_size;
  const int r_ = g_world_rank;
};

TEST_F(NcclCommunicatorTest, DescribesItself) {
  EXPECT_EQ(comm().world_rank(), r_);
  EXPECT_EQ(comm().world_size(), n_);
  EXPECT_EQ(comm().device(), Device::kDeviceCuda);
  EXPECT_EQ(comm().backend_name(), "nccl");
}

TEST_F(NcclCommunicatorTest, AllReduceSum) {
  // Odd sizes so no rank's share is a whole number of NCCL chunks.
  for (int64_t count : {int64_t{1}, int64_t{1023}, int64_t{(1 << 20) + 3}}) {
    DeviceFloats data(count);
    FillAffine(data.get(), count, static_cast<float>(r_), 1.0f, 7);
    ASSERT_TRUE(
        comm()
            .AllReduce(data.get(), count, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
            ->Wait(kWait)
            .ok());
    ExpectFloats(
        data.ToHost(),
        [&](int64_t i) { return n_ * (n_ - 1) / 2.0f + n_ * static_cast<float>(i % 7); }, 0,
        "AllReduce sum, count " + std::to_string(count));
  }
}

TEST_F(NcclCommunicatorTest, AllReduceAvg) {
  const int64_t count = 100'003;
  DeviceFloats data(count);
  FillAffine(data.get(), count, 2.0f * r_, 1.0f, 5);
  absl::Status status =
      comm()
          .AllReduce(data.get(), count, ReduceOp::kReduceAvg, Purpose::kPurposeAdapterGrad)
          ->Wait(kWait);
  ASSERT_TRUE(status.ok()) << status;
  // mean of 2r is N-1; ncclAvg may divide or multiply by 1/N: allow rounding.
  ExpectFloats(
      data.ToHost(), [&](int64_t i) { return (n_ - 1) + static_cast<float>(i % 5); }, 1e-6f,
      "AllReduce avg");
}

// bf16 through ncclBfloat16: r + (i%5)/4 summed over N ranks. Every partial
// sum is a multiple of 1/4 below 16 for N <= 8, exact in bf16 (8 significant
// bits), so NCCL's bf16 reduction must be exact whatever its order. The
// average (N-1)/2 + (i%5)/4: NCCL may scale each term by 1/N in bf16 before
// adding (a premultiplied sum), one rounding per term and per addition, so
// allow 4 bf16 steps (2^-7 relative each): 1/32 relative (exact anyway when
// N is a power of two).
TEST_F(NcclCommunicatorTest, AllReduceBf16) {
  const int64_t count = 4099;
  for (ReduceOp op : {ReduceOp::kReduceSum, ReduceOp::kReduceAvg}) {
    const bool avg = op == ReduceOp::kReduceAvg;
    std::vector<uint16_t> host(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      host[i] = F32ToBf16(static_cast<float>(r_) + 0.25f * static_cast<float>(i % 5));
    }
    DeviceFloats buffer((count + 1) / 2);  // 2 bytes an element
    ASSERT_CUDA(cudaMemcpy(buffer.get(), host.data(), host.size() * 2, cudaMemcpyHostToDevice));
    comm().ResetStats();
    const absl::Status status = comm()
                                    .AllReduce(buffer.get(), count, DType::kDTypeBF16, op,
                                               Purpose::kPurposeAdapterGrad)
                                    ->Wait(kWait);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(comm().bytes_sent(Purpose::kPurposeAdapterGrad),
              AllReduceBytesSent(count * 2, n_));
    ASSERT_CUDA(cudaMemcpy(host.data(), buffer.get(), host.size() * 2, cudaMemcpyDeviceToHost));
    std::vector<float> got(host.size());
    for (size_t i = 0; i < host.size(); ++i) got[i] = Bf16ToF32(host[i]);
    ExpectFloats(
        got,
        [&](int64_t i) {
          const float sum = n_ * (n_ - 1) / 2.0f + 0.25f * n_ * static_cast<float>(i % 5);
          return avg ? sum / n_ : sum;
        },
        avg ? 1.0f / 32 : 0.0f, avg ? "AllReduce bf16 avg" : "AllReduce bf16 sum");
  }
}

// WaitOnStream orders a consumer stream behind the collective without the
// host waiting: the collective queues behind a 200 ms spin on the compute
// (legacy) stream, and a copy on a non-blocking stream, which would
// otherwise start at once, reads the reduced values.
TEST_F(NcclCommunicatorTest, WaitOnStreamOrdersAConsumerStream) {
  const int64_t count = 1024;
  DeviceFloats data(count);
  FillAffine(data.get(), count, static_cast<float>(r_), 1.0f, 3);
  ASSERT_CUDA(cuda_test::LaunchSpin(200'000'000, /*stream=*/nullptr));
  std::unique_ptr<Work> work =
      comm().AllReduce(data.get(), count, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad);
  cudaStream_t consumer = nullptr;
  ASSERT_CUDA(cudaStreamCreateWithFlags(&consumer, cudaStreamNonBlocking));
  float* pinned = nullptr;
  ASSERT_CUDA(cudaMallocHost(&pinned, count * sizeof(float)));
  const absl::Status queued = work->WaitOnStream(consumer);
  EXPECT_TRUE(queued.ok()) << queued;
  ASSERT_CUDA(cudaMemcpyAsync(pinned, data.get(), count * sizeof(float), cudaMemcpyDeviceToHost,
                              consumer));
  ASSERT_CUDA(cudaStreamSynchronize(consumer));
  std::vector<float> got(pinned, pinned + count);
  ExpectFloats(
      got, [&](int64_t i) { return n_ * (n_ - 1) / 2.0f + n_ * static_cast<float>(i % 3); }, 0,
      "read on a stream after WaitOnStream");
  EXPECT_TRUE(work->Wait(kWait).ok());
  cudaFreeHost(pinned);
  cudaStreamDestroy(consumer);
}

TEST_F(NcclCommunicatorTest, AllGather) {
  const int64_t count = 4099;
  DeviceFloats in(count);
  DeviceFloats out(count * n_);
  FillAffine(in.get(), count, 1000.0f * r_, 1.0f, 97);
  absl::Status status =
      comm().AllGather(out.get(), in.get(), count, Purpose::kPurposeFrozenGather)->Wait(kWait);
  ASSERT_TRUE(status.ok()) << status;
  ExpectFloats(
      out.ToHost(),
      [&](int64_t j) { return 1000.0f * (j / count) + static_cast<float>((j % count) % 97); }, 0,
      "AllGather");
}

TEST_F(NcclCommunicatorTest, AllGatherInPlace) {
  const int64_t count = 513;
  DeviceFloats out(count * n_);
  FillAffine(out.get(), count * n_, -1.0f, 0.0f, 1);  // other ranks' slots: garbage
  float* mine = out.get() + r_ * count;
  FillAffine(mine, count, 10.0f * r_, 1.0f, 3);
  absl::Status status =
      comm().AllGather(out.get(), mine, count, Purpose::kPurposeFrozenGather)->Wait(kWait);
  ASSERT_TRUE(status.ok()) << status;
  ExpectFloats(
      out.ToHost(),
      [&](int64_t j) { return 10.0f * (j / count) + static_cast<float>((j % count) % 3); }, 0,
      "AllGather in place");
}

TEST_F(NcclCommunicatorTest, ReduceScatter) {
  const int64_t count = 4099;
  DeviceFloats in(count * n_);
  DeviceFloats out(count);
  FillAffine(in.get(), count * n_, static_cast<float>(r_), 1.0f, 13);
  for (ReduceOp op : {ReduceOp::kReduceSum, ReduceOp::kReduceAvg}) {
    absl::Status status =
        comm()
            .ReduceScatter(out.get(), in.get(), count, op, Purpose::kPurposeAdapterGrad)
            ->Wait(kWait);
    ASSERT_TRUE(status.ok()) << status;
    // Element i here is element r*count + i of every rank's input.
    const bool avg = op == ReduceOp::kReduceAvg;
    ExpectFloats(
        out.ToHost(),
        [&](int64_t i) {
          const float pattern = static_cast<float>((r_ * count + i) % 13);
          return avg ? (n_ - 1) / 2.0f + pattern : n_ * (n_ - 1) / 2.0f + n_ * pattern;
        },
        avg ? 1e-6f : 0.0f, avg ? "ReduceScatter avg" : "ReduceScatter sum");
  }
}

TEST_F(NcclCommunicatorTest, BroadcastBytesFromLastRank) {
  const int64_t bytes = 12'345;  // not a multiple of 4: bytes, not floats
  const int root = n_ - 1;
  std::vector<uint8_t> pattern(bytes);
  for (int64_t i = 0; i < bytes; ++i) pattern[i] = static_cast<uint8_t>((i * 7 + 3) & 0xff);
  void* data = nullptr;
  ASSERT_CUDA(cudaMalloc(&data, bytes));
  if (r_ == root) {
    ASSERT_CUDA(cudaMemcpy(data, pattern.data(), bytes, cudaMemcpyHostToDevice));
  } else {
    ASSERT_CUDA(cudaMemset(data, 0, bytes));
  }
  absl::Status status = comm().Broadcast(data, bytes, root, Purpose::kPurposeControl)->Wait(kWait);
  std::vector<uint8_t> got(bytes);
  ASSERT_CUDA(cudaMemcpy(got.data(), data, bytes, cudaMemcpyDeviceToHost));
  cudaFree(data);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(got, pattern);
}

TEST_F(NcclCommunicatorTest, Barrier) {
  for (int i = 0; i < 3; ++i) {
    absl::Status status = comm().Barrier()->Wait(kWait);
    ASSERT_TRUE(status.ok()) << status;
  }
}

TEST_F(NcclCommunicatorTest, SeveralInFlight) {
  // Issued back to back, waited in reverse: one stream keeps them in order.
  const int64_t count = 65'537;
  std::vector<std::unique_ptr<DeviceFloats>> buffers;
  std::vector<std::unique_ptr<Work>> works;
  for (int k = 0; k < 4; ++k) {
    buffers.push_back(std::make_unique<DeviceFloats>(count));
    FillAffine(buffers.back()->get(), count, static_cast<float>(k * r_), 0.0f, 1);
    works.push_back(comm().AllReduce(buffers.back()->get(), count, ReduceOp::kReduceSum,
                                     Purpose::kPurposeAdapterGrad));
  }
  for (int k = 3; k >= 0; --k) {
    absl::Status status = works[k]->Wait(kWait);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_TRUE(works[k]->Done());
    ExpectFloats(
        buffers[k]->ToHost(), [&](int64_t) { return k * n_ * (n_ - 1) / 2.0f; }, 0,
        "in-flight all-reduce " + std::to_string(k));
  }
}

TEST_F(NcclCommunicatorTest, CountsBytesByPurpose) {
  const int64_t count = 1000;
  DeviceFloats grad(count);
  DeviceFloats shard(count);
  DeviceFloats gathered(count * n_);
  FillAffine(grad.get(), count, 1.0f, 0.0f, 1);
  FillAffine(shard.get(), count, 1.0f, 0.0f, 1);
  comm().ResetStats();

  ASSERT_TRUE(comm()
                  .AllReduce(grad.get(), count, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
                  ->Wait(kWait)
                  .ok());
  ASSERT_TRUE(comm()
                  .AllGather(gathered.get(), shard.get(), count, Purpose::kPurposeFrozenGather)
                  ->Wait(kWait)
                  .ok());
  ASSERT_TRUE(comm()
                  .Broadcast(grad.get(), count * 4, /*root=*/0, Purpose::kPurposeControl)
                  ->Wait(kWait)
                  .ok());
  ASSERT_TRUE(comm().Barrier()->Wait(kWait).ok());

  const int64_t bytes = count * 4;
  EXPECT_EQ(comm().bytes_sent(Purpose::kPurposeAdapterGrad), 2 * (n_ - 1) * bytes / n_);
  EXPECT_EQ(comm().bytes_sent(Purpose::kPurposeFrozenGather), (n_ - 1) * bytes);
  EXPECT_EQ(comm().bytes_sent(Purpose::kPurposeControl), r_ == 0 ? (n_ - 1) * bytes : 0);
  const auto& calls = comm().stats().calls;
  EXPECT_EQ(calls[static_cast<int>(Purpose::kPurposeAdapterGrad)].load(), 1);
  EXPECT_EQ(calls[static_cast<int>(Purpose::kPurposeFrozenGather)].load(), 1);
  EXPECT_EQ(calls[static_cast<int>(Purpose::kPurposeControl)].load(), 2);  // + barrier
  EXPECT_GT(comm().stats().wait_ns.load(), 0);
}

TEST_F(NcclCommunicatorTest, RejectsBadArgumentsWithoutBreaking) {
  std::vector<float> host(16, 1.0f);
  DeviceFloats device(16);
  auto code = [](std::unique_ptr<Work> work) { return work->Wait(kWait).code(); };
  EXPECT_EQ(
      code(comm().AllReduce(host.data(), 16, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(comm().AllReduce(nullptr, 16, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      code(comm().AllReduce(device.get(), -1, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(comm().AllGather(device.get(), host.data(), 1, Purpose::kPurposeFrozenGather)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(comm().Broadcast(device.get(), 4, n_, Purpose::kPurposeControl)),
            absl::StatusCode::kInvalidArgument);
  // Zero counts queue nothing and succeed, buffers unchecked.
  EXPECT_EQ(code(comm().AllReduce(nullptr, 0, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)),
            absl::StatusCode::kOk);
  // Nothing above reached NCCL, so the world is still in step.
  EXPECT_FALSE(comm().broken());
  FillAffine(device.get(), 16, 1.0f, 0.0f, 1);
  ASSERT_TRUE(comm()
                  .AllReduce(device.get(), 16, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
                  ->Wait(kWait)
                  .ok());
  ExpectFloats(
      device.ToHost(), [&](int64_t) { return static_cast<float>(n_); }, 0,
      "all-reduce after rejected calls");
}

// A fresh communicator per failure test: they break it on purpose.
std::unique_ptr<NcclCommunicator> NewCommunicator(const NcclCommunicatorOptions& options) {
  RankInfo info;
  info.world_rank = g_world_rank;
  info.world_size = g_world_size;
  info.local_rank = g_local_rank;
  auto comm = NcclCommunicator::Create(info, MpiBootstrap(MPI_COMM_WORLD), options);
  EXPECT_TRUE(comm.ok()) << comm.status();
  return comm.ok() ? std::move(comm).value() : nullptr;
}

TEST(NcclCommunicatorFailureTest, TimeoutAbortsAndBreaks) {
  // Every rank alike: the collective sits behind a 1 s kernel on the
  // communicator's stream, so a 100 ms Wait must time out and abort.
  std::unique_ptr<NcclCommunicator> comm = NewCommunicator({});
  ASSERT_NE(comm, nullptr);
  DeviceFloats data(256);
  FillAffine(data.get(), 256, 1.0f, 0.0f, 1);
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_CUDA(cuda_test::LaunchSpin(1'000'000'000, comm->stream()));
  std::unique_ptr<Work> work =
      comm->AllReduce(data.get(), 256, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad);
  EXPECT_FALSE(work->Done());
  const absl::Status status = work->Wait(std::chrono::milliseconds(100));
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_TRUE(comm->broken());
  EXPECT_TRUE(work->Done());
  // Broken: the same Work and every later call fail at once, never hang.
  EXPECT_EQ(work->Wait(kWait).code(), absl::StatusCode::kUnavailable);
  const absl::Status later =
      comm->AllReduce(data.get(), 256, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
          ->Wait(kWait);
  EXPECT_EQ(later.code(), absl::StatusCode::kUnavailable) << later;
  EXPECT_EQ(comm->Barrier()->Wait(kWait).code(), absl::StatusCode::kUnavailable);
  work.reset();
  comm.reset();
  ASSERT_CUDA(cudaDeviceSynchronize());  // the device is fine afterwards
}

TEST(NcclCommunicatorFailureTest, MissingPeerTimesOut) {
  if (g_world_size < 2) GTEST_SKIP() << "needs two ranks (two GPUs)";
  NcclCommunicatorOptions options;
  options.enqueue_timeout = std::chrono::seconds(5);
  std::unique_ptr<NcclCommunicator> comm = NewCommunicator(options);
  ASSERT_NE(comm, nullptr);
  DeviceFloats data(1024);
  FillAffine(data.get(), 1024, 1.0f, 0.0f, 1);
  // Once together, so peers are connected and the failure is in the wait.
  ASSERT_TRUE(comm->AllReduce(data.get(), 1024, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
                  ->Wait(kWait)
                  .ok());
  if (g_world_rank == 0) {
    // Nobody else joins this one.
    const absl::Status status =
        comm->AllReduce(data.get(), 1024, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
            ->Wait(std::chrono::milliseconds(500));
    EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
    EXPECT_TRUE(comm->broken());
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_world_rank != 0) comm->Abort("rank 0 gave up on the world");
  EXPECT_TRUE(comm->broken());
  comm.reset();
  MPI_Barrier(MPI_COMM_WORLD);
}

}  // namespace
}  // namespace sheaf::dist

int main(int argc, char** argv) {
  using namespace sheaf::dist;  // NOLINT: main only
  if (!UnderMpirun()) return RelaunchUnderMpirun(argc, argv);

  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world_size);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &g_local_rank);
  MPI_Comm_free(&node);

  if (g_world_rank != 0) {
    // One XML file and one log: Bazel gave every rank the same paths.
    unsetenv("XML_OUTPUT_FILE");
    unsetenv("GTEST_OUTPUT");
    unsetenv("TEST_PREMATURE_EXIT_FILE");
  }
  ::testing::InitGoogleTest(&argc, argv);
  if (g_world_rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }

  int failed = 0;
  {
    RankInfo info;
    info.world_rank = g_world_rank;
    info.world_size = g_world_size;
    info.local_rank = g_local_rank;
    auto comm = NcclCommunicator::Create(info, MpiBootstrap(MPI_COMM_WORLD));
    if (!comm.ok()) {
      std::fprintf(stderr, "rank %d: NcclCommunicator::Create: %s\n", g_world_rank,
                   comm.status().ToString().c_str());
      failed = 1;
    } else {
      if (g_world_rank == 0) {
        std::fprintf(stderr, "world of %d, rank 0 on CUDA device %d\n", g_world_size,
                     (*comm)->cuda_device());
      }
      g_comm = comm->get();
      failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
      g_comm = nullptr;
    }
  }
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return failed;
}
