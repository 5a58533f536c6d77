// The MPI backend: collectives on CPU buffers over OpenMPI.
//
// Element types (communicator.h): f32 travels as MPI_FLOAT, i32 as
// MPI_INT32_T, bf16 and f16 as MPI_UINT16_T (bf16 sums use a user-defined
// MPI_Op that adds in f32 and rounds to bf16 at each combine step), NF4
// blocks as MPI_BYTE (gathers only). The averages divide the sum by N after
// MPI is done, on the progress thread (for bf16: in f32, then rounded).
//
// Threading. Every MPI call this class makes runs on ONE dedicated progress
// thread, which also initialises MPI (so it is MPI's "main thread"). Issuing
// a collective only validates it, counts its bytes and enqueues it; the
// progress thread starts it with the nonblocking MPI call (MPI_Iallreduce,
// MPI_Iallgather, MPI_Ireduce_scatter_block, MPI_Ibcast, MPI_Ibarrier) in
// issue order and polls MPI_Test until it completes. So Wait(timeout) is a
// wait on a condition with a timeout, never a blocking MPI call that a dead
// peer could keep from returning. MPI is initialised requesting
// MPI_THREAD_MULTIPLE so that other components may use comm() from their own
// threads; FUNNELED is enough for this class (see thread_level()).
//
// Failure. A Wait that times out, a collective older than Options::timeout
// (the watchdog, as c10d's timeout: it fires even if nobody waits), or an
// MPI error breaks the communicator: the failing call returns
// DeadlineExceeded ("collective all_reduce #7 (adapter_grad) did not
// complete within 5s: a peer rank may have died") or Unavailable (the MPI
// error), every later call returns Unavailable at once (the communicator is
// marked broken before the failing Work completes, so a call issued after
// that Wait returned gets an already completed Work), and the progress
// thread makes no further MPI call. The last point is what makes an
// abandoned collective safe to give up on: OpenMPI 4.1 moves data only
// inside MPI calls (no asynchronous progress thread for tcp/vader), so once
// Wait has returned an error MPI no longer touches the caller's buffers.
// The communicator uses MPI_ERRORS_RETURN on its own duplicate of
// MPI_COMM_WORLD, so MPI reports errors instead of aborting the job.
//
// Lifecycle. Create() initialises MPI (unless the host program already did,
// with MPI_THREAD_MULTIPLE) and duplicates MPI_COMM_WORLD. The destructor
// lets queued collectives finish (bounded by the watchdog), then, when the
// communicator is healthy, runs a barrier bounded by Options::timeout, frees
// its communicator and calls MPI_Finalize if it initialised MPI. When the
// communicator is broken, or the barrier times out, it does neither:
// MPI_Finalize synchronises with every peer (an OpenMPI/PMIx fence) and
// would hang on a dead one, and MPI_Abort would kill the peers and replace
// the exit code. The process is expected to exit with its own error code;
// mpirun then reports that it "exited without calling finalize". MPI cannot
// be initialised twice, so after a communicator that initialised MPI is
// destroyed, Create fails with FailedPrecondition.
//
// Thread-safety: as Communicator (collectives from one thread per rank, Wait
// and Done from any thread, counters atomic).
#ifndef SHEAF_DIST_MPI_COMMUNICATOR_H_
#define SHEAF_DIST_MPI_COMMUNICATOR_H_

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dist/communicator.h"

namespace sheaf::dist {

class MpiCommunicator final : public Communicator {
 public:
  struct Options {
    // The watchdog: a collective still incomplete this long after it was
    // issued fails with DeadlineExceeded and breaks the communicator. Also
    // bounds Create's communicator duplication and the shutdown barrier.
    // 30 minutes, as c10d's default: a peer may legitimately be busy (a
    // checkpoint write) before it reaches the collective.
    std::chrono::milliseconds timeout = std::chrono::minutes(30);
    // Call MPI_Finalize at destruction (if this communicator initialised MPI
    // and is healthy). Off when the host program finalises MPI itself.
    bool finalize = true;
  };

  // Initialises MPI as needed and builds the communicator.
  // FailedPrecondition: MPI was already finalised in this process, or was
  //   initialised by someone else below MPI_THREAD_MULTIPLE.
  // DeadlineExceeded: duplicating MPI_COMM_WORLD did not finish in time.
  // Unavailable: an MPI call failed.
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create(const Options& options);
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create() { return Create(Options{}); }

  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int world_rank() const override { return world_rank_; }
  int world_size() const override { return world_size_; }
  Device device() const override { return Device::kDeviceCpu; }
  std::string backend_name() const override { return "mpi"; }

  // Each returns at once. The Work's Wait returns OK; DeadlineExceeded
  // (timeout, watchdog); Unavailable (broken communicator, MPI error);
  // InvalidArgument (negative count, count above INT_MAX elements (NF4:
  // bytes), null buffer with a positive count, root out of range, or
  // buffers that overlap other than AllGather's in == out + world_rank *
  // count). Zero counts complete at once without an MPI call (every rank
  // skips alike). ReduceScatter's out must not overlap in. WaitOnStream:
  // Unimplemented (host memory).
  std::unique_ptr<Work> Broadcast(void* data, int64_t bytes, int root,
                                  Purpose purpose) override;
  std::unique_ptr<Work> Barrier() override;

  // This communicator's duplicate of MPI_COMM_WORLD (same ranks), for
  // components that need MPI directly. Calling MPI on it from another thread
  // is legal only when thread_level() == MPI_THREAD_MULTIPLE, and must not
  // overlap this class's own collectives in a way that breaks the
  // same-order contract. To share a small blob (an NCCL unique id), prefer
  // Broadcast(&id, sizeof(id), 0, Purpose::kPurposeControl): it needs no
  // thread level and is counted.
  MPI_Comm comm() const { return comm_; }
  // The thread level MPI provided (MPI_THREAD_FUNNELED or above).
  int thread_level() const { return thread_level_; }
  // OK while healthy; otherwise the failure that broke it.
  absl::Status health() const;

 protected:
  std::unique_ptr<Work> DoAllGather(void* out, const void* in, int64_t count, DType dtype,
                                    Purpose purpose) override;
  std::unique_ptr<Work> DoReduceScatter(void* out, const void* in, int64_t count, DType dtype,
                                        ReduceOp op, Purpose purpose) override;
  std::unique_ptr<Work> DoAllReduce(void* data, int64_t count, DType dtype, ReduceOp op,
                                    Purpose purpose) override;

 private:
  struct Op;
  struct Shared;
  class MpiWork;
  enum class Kind { kAllGather, kReduceScatter, kAllReduce, kBroadcast, kBarrier };
  static const char* KindName(Kind kind);

  explicit MpiCommunicator(const Options& options);
  // Runs on the progress thread: MPI set-up, then the loop until shutdown.
  void ProgressMain();
  absl::Status InitMpi();  // progress thread
  void ProgressLoop();     // progress thread
  void Shutdown();         // progress thread
  // Validates, counts and enqueues.
  std::unique_ptr<Work> Issue(std::shared_ptr<Op> op, int64_t bytes_sent);

  const Options options_;
  std::shared_ptr<Shared> shared_;
  std::thread progress_;
  // Set by InitMpi before Create returns; immutable afterwards.
  MPI_Comm comm_ = MPI_COMM_NULL;
  int world_rank_ = 0;
  int world_size_ = 1;
  int thread_level_ = MPI_THREAD_SINGLE;
  bool owns_mpi_ = false;  // this communicator called MPI_Init_thread
  MPI_Op bf16_sum_ = MPI_OP_NULL;  // created by InitMpi, freed by Shutdown
  int64_t next_seq_ = 0;   // issuing thread only
};

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_MPI_COMMUNICATOR_H_
