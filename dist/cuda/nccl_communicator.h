// NCCL backend of dist::Communicator: collectives over CUDA device buffers
// (Device::kDeviceCuda), one process per GPU.
//
// Lifecycle: every rank of the world calls Create() (it is itself a
// collective: rank 0 makes the ncclUniqueId and the bootstrap broadcasts it),
// then issues collectives in the same order on every rank, and finally
// destroys the communicator (which first lets queued collectives finish, for
// at most options.destroy_timeout, and aborts them past that).
//
// Streams: each collective is queued on this communicator's own stream,
// behind everything already queued on the compute stream (the legacy default
// stream unless set_compute_stream() says otherwise), so inputs that kernels
// are still writing there are complete before NCCL reads them. Wait()
// returning OK means the outputs are written; the host may read them, and any
// stream may use them.
//
// Failure: Work::Wait(timeout) polls a CUDA event recorded behind the
// collective. When `timeout` passes first, or NCCL reports an asynchronous
// error (a peer died, a network failure), the communicator is aborted
// (ncclCommAbort, which also stops its kernels) and Wait returns
// DeadlineExceeded (resp. the error). From then on the communicator is
// broken: every collective, and every Wait on an unfinished one, returns
// Unavailable at once. The NCCL communicator is non-blocking
// (ncclConfig_t::blocking = 0), so initialisation and enqueueing are polled
// with deadlines as well (options.init_timeout, options.enqueue_timeout):
// no call of this class can hang on a dead peer.
//
// Thread-safety: collectives are issued from one thread (communicator.h);
// Wait, Done, Abort and broken() may be called from any thread. A Wait that
// has to abort while that thread is queueing a collective waits for the
// queueing to settle first (at most options.enqueue_timeout). A Work may
// outlive its communicator: it then reports Unavailable unless it had
// already been seen complete.
#ifndef SHEAF_DIST_CUDA_NCCL_COMMUNICATOR_H_
#define SHEAF_DIST_CUDA_NCCL_COMMUNICATOR_H_

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dist/communicator.h"

namespace sheaf::dist {

// Copies `bytes` bytes at `data` from world rank 0 to every other rank,
// in place; every rank calls it once, from Create(). Returns the transport's
// error, if any.
using BootstrapBroadcast = std::function<absl::Status(void* data, int64_t bytes)>;

// MPI_Bcast from rank 0 of `comm` (which must span the NCCL world, ranks in
// the same order). FailedPrecondition when MPI is not initialised.
BootstrapBroadcast MpiBootstrap(MPI_Comm comm = MPI_COMM_WORLD);

// Broadcast (root 0, Purpose::kPurposeControl) over an existing host-memory
// communicator of the same world, e.g. MpiCommunicator (the way a worker
// does it: the id is then counted as control bytes and needs no MPI thread
// level); waits up to `timeout`. `control` must outlive the returned
// function's last call.
BootstrapBroadcast CommunicatorBootstrap(Communicator* control, std::chrono::milliseconds timeout);

struct NcclCommunicatorOptions {
  // CUDA device of this rank; -1 picks local_rank % (visible devices).
  int cuda_device = -1;
  // ncclCommInitRankConfig: all ranks must arrive within this time.
  std::chrono::milliseconds init_timeout{std::chrono::minutes(5)};
  // How long one collective call may wait for NCCL to accept it (the first
  // collective between two peers also connects them).
  std::chrono::milliseconds enqueue_timeout{std::chrono::minutes(5)};
  // How long the destructor lets queued collectives finish before aborting.
  std::chrono::milliseconds destroy_timeout{std::chrono::seconds(30)};
};

class NcclCommunicator final : public Communicator {
 public:
  // A collective over the world described by `rank_info` (world_rank,
  // world_size, local_rank); every rank must call it. `bootstrap` carries
  // the ncclUniqueId from rank 0 and may be empty for a world of one. Makes
  // the chosen CUDA device current on the calling thread (one process drives
  // one GPU); collectives switch to it, and back, by themselves.
  // Errors: InvalidArgument (rank_info out of range, empty bootstrap with
  // world_size > 1, cuda_device not visible), FailedPrecondition (no CUDA
  // device or driver), DeadlineExceeded (not every rank arrived within
  // init_timeout), Unavailable / Internal / ResourceExhausted (NCCL or CUDA
  // failed, with the call and NCCL's message), or the bootstrap's error. A
  // rank 0 that cannot make an id still broadcasts, so the others fail too
  // instead of waiting.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(
      const RankInfo& rank_info, const BootstrapBroadcast& bootstrap,
      const NcclCommunicatorOptions& options = {});

  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int world_rank() const override { return world_rank_; }
  int world_size() const override { return world_size_; }
  Device device() const override { return Device::kDeviceCuda; }
  std::string backend_name() const override { return "nccl"; }

  // The collectives of communicator.h, on device buffers (cudaMalloc'd or
  // managed). A call that fails before anything is queued returns a
  // completed Work with: InvalidArgument (negative count, null or host
  // buffer, root out of range), Unavailable (broken communicator),
  // DeadlineExceeded (NCCL did not accept it within enqueue_timeout; the
  // communicator is then aborted) or the CUDA/NCCL error. A count of zero
  // queues nothing and completes at once (as on every rank, so the order
  // stays the same). Barrier is a one-float all-reduce of a private scratch
  // buffer; like the other backends it counts a control call and 0 bytes.
  // Every dtype of communicator.h maps to NCCL's own (bf16 reductions as
  // NCCL does them); Work::WaitOnStream queues cudaStreamWaitEvent on the
  // collective's completion event, so a compute stream can consume the
  // result without the host waiting.
  std::unique_ptr<Work> Broadcast(void* data, int64_t bytes, int root, Purpose purpose) override;
  std::unique_ptr<Work> Barrier() override;

  // Aborts the NCCL communicator now (idempotent); the communicator is then
  // broken, and pending and later operations report Unavailable with
  // `reason`. For a rank that learns by other means (a heartbeat, MPI) that
  // the world is gone.
  void Abort(const std::string& reason);
  bool broken() const;

  int cuda_device() const { return cuda_device_; }
  // The stream collectives run on.
  cudaStream_t stream() const { return stream_; }
  // Collectives wait for work queued on `stream` before they start. Default:
  // the legacy default stream (0), which also orders all blocking streams.
  void set_compute_stream(cudaStream_t stream) { compute_stream_ = stream; }

 protected:
  std::unique_ptr<Work> DoAllGather(void* out, const void* in, int64_t count, DType dtype,
                                    Purpose purpose) override;
  std::unique_ptr<Work> DoReduceScatter(void* out, const void* in, int64_t count, DType dtype,
                                        ReduceOp op, Purpose purpose) override;
  std::unique_ptr<Work> DoAllReduce(void* data, int64_t count, DType dtype, ReduceOp op,
                                    Purpose purpose) override;

 private:
  struct Shared;  // NCCL handle and broken state, shared with Works
  class NcclWork;

  NcclCommunicator(int world_rank, int world_size, int cuda_device,
                   const NcclCommunicatorOptions& options, std::shared_ptr<Shared> shared,
                   cudaStream_t stream, cudaEvent_t ready, float* scratch);

  // Queues `enqueue(comm)` on stream_ behind compute_stream_, then records a
  // completion event; returns the Work for it. `what` names the collective
  // in error messages.
  absl::StatusOr<std::unique_ptr<Work>> Launch(
      const char* what, const std::function<ncclResult_t(ncclComm_t)>& enqueue);
  // Counts `bytes` for `purpose` when `work` was queued; a completed Work
  // with the error otherwise.
  std::unique_ptr<Work> Counted(absl::StatusOr<std::unique_ptr<Work>> work, Purpose purpose,
                                int64_t bytes);

  const int world_rank_;
  const int world_size_;
  const int cuda_device_;
  const NcclCommunicatorOptions options_;
  const std::shared_ptr<Shared> shared_;
  cudaStream_t stream_;
  cudaStream_t compute_stream_ = nullptr;
  cudaEvent_t ready_;  // recorded on compute_stream_, waited on by stream_
  float* scratch_;     // (1) device float for Barrier
};

// Bytes one rank sends per collective, with the algorithm factors that
// communicator.h states (ring all-reduce 2(N-1)/N·n; all-gather and
// reduce-scatter (N-1)·shard; broadcast (N-1)·n at the root, 0 elsewhere).
// Integer arithmetic, as in the other backends.
int64_t AllReduceBytesSent(int64_t bytes, int world_size);
int64_t AllGatherBytesSent(int64_t shard_bytes, int world_size);
int64_t ReduceScatterBytesSent(int64_t shard_bytes, int world_size);
int64_t BroadcastBytesSent(int64_t bytes, int world_size, bool is_root);

// OK for cudaSuccess; otherwise "<call>: <cudaErrorName>: <description>"
// with a code by cause: FailedPrecondition (no device, no or old driver),
// ResourceExhausted (out of memory), InvalidArgument (invalid value or
// device), Internal (anything else, e.g. a kernel fault).
absl::Status CudaStatus(cudaError_t error, const char* call);

// OK for ncclSuccess; otherwise "<call>: <ncclGetErrorString>[: <last
// error of comm>]" with Unavailable for remote and system errors (a peer or
// the network failed), InvalidArgument / FailedPrecondition for invalid
// arguments / usage, Internal for the rest. ncclInProgress is not an error
// for a non-blocking communicator; callers settle it first.
absl::Status NcclStatus(ncclResult_t result, const char* call, ncclComm_t comm = nullptr);

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_CUDA_NCCL_COMMUNICATOR_H_
