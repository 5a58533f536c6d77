// NCCL all-reduce bandwidth through NcclCommunicator, nccl-tests style:
// sweep sizes, warm up, check the data in the same run, report algbw and
// busbw (= algbw · 2(N-1)/N). As a same-process reference, each size is also
// timed as a device-to-device cudaMemcpy of the same bytes on the same
// stream, so `..._vs_d2d_copy` (copy time / all-reduce time) compares
// machines and runs without trusting absolute numbers.
//
// Run directly it re-launches itself under `mpirun -np <GPUs>`. Rank 0
// prints `name value unit` lines; the exit code is 1 when a check failed.
#include <cuda_runtime.h>
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "dist/communicator.h"
#include "dist/cuda/mpi_launch.h"
#include "dist/cuda/nccl_communicator.h"
#include "dist/cuda/test_kernels.h"

namespace sheaf::dist {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::chrono::milliseconds kWait{120'000};

bool Check(cudaError_t e, const char* what, int world_rank) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "rank %d: %s: %s\n", world_rank, what, cudaGetErrorString(e));
  return false;
}

int Run(NcclCommunicator& comm) {
  const int n = comm.world_size();
  const int r = comm.world_rank();
  bool ok = true;
  for (int64_t bytes : {int64_t{4} << 10, int64_t{256} << 10, int64_t{4} << 20, int64_t{64} << 20,
                        int64_t{256} << 20}) {
    const int64_t count = bytes / 4;
    const int iters = bytes >= (int64_t{64} << 20) ? 10 : 50;
    float* data = nullptr;
    float* copy = nullptr;
    if (!Check(cudaMalloc(&data, bytes), "cudaMalloc", r) ||
        !Check(cudaMalloc(&copy, bytes), "cudaMalloc", r)) {
      return 1;
    }
    // Check: sum over ranks of (r + 1) is N(N+1)/2, exact in float.
    ok &= Check(cuda_test::LaunchFillAffine(data, count, r + 1.0f, 0.0f, 1, nullptr), "fill", r);
    absl::Status status =
        comm.AllReduce(data, count, ReduceOp::kReduceSum, Purpose::kPurposeAdapterGrad)
            ->Wait(kWait);
    std::vector<float> host(static_cast<size_t>(count));
    ok &= Check(cudaMemcpy(host.data(), data, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy", r);
    const float want = n * (n + 1) / 2.0f;
    for (float v : host) {
      if (v != want) {
        std::fprintf(stderr, "rank %d: %lld bytes: got %g, want %g\n", r,
                     static_cast<long long>(bytes), v, want);
        ok = false;
        break;
      }
    }
    if (!status.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", r, status.ToString().c_str());
      return 1;
    }

    // All-reduce: warm up, then `iters` back to back on one stream, wait
    // for the last (the stream runs them in order).
    for (int i = 0; i < 3; ++i) {
      comm.AllReduce(data, count, ReduceOp::kReduceAvg, Purpose::kPurposeAdapterGrad)
          ->Wait(kWait)
          .IgnoreError();
    }
    MPI_Barrier(MPI_COMM_WORLD);
    Clock::time_point start = Clock::now();
    std::unique_ptr<Work> last;
    for (int i = 0; i < iters; ++i) {
      last = comm.AllReduce(data, count, ReduceOp::kReduceAvg, Purpose::kPurposeAdapterGrad);
    }
    status = last->Wait(kWait);
    const double allreduce_s = std::chrono::duration<double>(Clock::now() - start).count() / iters;
    if (!status.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", r, status.ToString().c_str());
      return 1;
    }

    // Reference: a device-to-device copy of the same bytes.
    cudaMemcpyAsync(copy, data, bytes, cudaMemcpyDeviceToDevice, comm.stream());
    ok &= Check(cudaStreamSynchronize(comm.stream()), "warm-up copy", r);
    start = Clock::now();
    for (int i = 0; i < iters; ++i) {
      cudaMemcpyAsync(copy, data, bytes, cudaMemcpyDeviceToDevice, comm.stream());
    }
    ok &= Check(cudaStreamSynchronize(comm.stream()), "copy", r);
    const double copy_s = std::chrono::duration<double>(Clock::now() - start).count() / iters;
    cudaFree(data);
    cudaFree(copy);

    if (r == 0) {
      const std::string name = "nccl_allreduce_" + std::to_string(bytes) + "B";
      const double algbw = bytes / allreduce_s / 1e9;
      std::printf("%s_time %.2f us\n", name.c_str(), allreduce_s * 1e6);
      std::printf("%s_algbw %.3f GB/s\n", name.c_str(), algbw);
      std::printf("%s_busbw %.3f GB/s\n", name.c_str(), algbw * 2.0 * (n - 1) / n);
      std::printf("%s_vs_d2d_copy %.3f ratio\n", name.c_str(), copy_s / allreduce_s);
    }
  }
  if (r == 0) std::printf("nccl_allreduce_world_size %d ranks\n", n);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace sheaf::dist

int main(int argc, char** argv) {
  using namespace sheaf::dist;  // NOLINT: main only
  if (!UnderMpirun()) return RelaunchUnderMpirun(argc, argv);
  MPI_Init(&argc, &argv);
  int world_rank = 0;
  int world_size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  RankInfo info;
  info.world_rank = world_rank;
  info.world_size = world_size;
  MPI_Comm_rank(node, &info.local_rank);
  MPI_Comm_free(&node);

  int failed = 1;
  {
    auto comm = NcclCommunicator::Create(info, MpiBootstrap(MPI_COMM_WORLD));
    if (!comm.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", world_rank, comm.status().ToString().c_str());
    } else {
      failed = Run(**comm);
    }
  }
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (world_rank == 0) std::printf("nccl_allreduce_bench_ok %d bool\n", failed ? 0 : 1);
  MPI_Finalize();
  return failed;
}
