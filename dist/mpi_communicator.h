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
// Liveness. OpenMPI's tcp BTL reports nothing when a peer process dies
// (mpi_dead_rank_test.sh), and a rank that hangs (a stopped process, a
// wedged node) looks the same, so without help a survivor blocked in a
// collective waits for the watchdog (30 minutes) while the rest of its
// process (the worker's lease keeper) looks healthy. So the progress thread
// also pings, on this communicator with a point-to-point tag of its own
// (collectives never match point-to-point messages): every rank sends a
// 4-byte ping to rank 0, and rank 0 to every rank, each ping_interval, and
// keeps a receive posted from each peer it pings. A peer not heard from for
// peer_timeout breaks the communicator: in-flight and later collectives
// fail with Unavailable "rank R has not answered liveness pings for 20s: it
// died or hangs". Pings are answered by the peer's progress thread, not its
// compute threads, so a rank that is busy (a long step, a checkpoint
// write) is not taken for dead; a process that is stopped or gone is. Rank
// 0 finds any dead peer within peer_timeout; other ranks find a dead rank 0
// within peer_timeout, and a dead other rank through rank 0 leaving (its
// pings stop). Cost: 2(N-1) tiny messages per interval on the whole world.
//
// Set-up. After MPI_Init_thread, every rank sends its host name to rank 0
// and waits for rank 0's answer (the "hello exchange"), then the ranks
// duplicate MPI_COMM_WORLD. On a cluster whose nodes have several networks,
// this is where a world whose transport picked an unroutable interface
// hangs; the set-up log then says which ranks rank 0 waits for, and hints
// at SHEAF_NET_IF / OMPI_MCA_btl_tcp_if_include. Each step is bounded by
// Options::init_timeout (DeadlineExceeded). MPI_Init_thread itself cannot
// be interrupted: if it has not returned by init_timeout, Create returns
// DeadlineExceeded and leaks the communicator, whose thread is still inside
// MPI; the process must then exit (std::_Exit), not carry on.
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
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dist/communicator.h"

namespace sheaf::dist {

class MpiCommunicator final : public Communicator {
 public:
  struct Options {
    // The watchdog: a collective still incomplete this long after it was
    // issued fails with DeadlineExceeded and breaks the communicator. Also
    // bounds the shutdown barrier. 30 minutes, as c10d's default: a peer may
    // legitimately be busy (a checkpoint write) before it reaches the
    // collective. A peer that died or hangs is found sooner, by liveness
    // (peer_timeout).
    std::chrono::milliseconds timeout = std::chrono::minutes(30);
    // Bounds Create's set-up on this rank: MPI_Init_thread, the hello
    // exchange (every rank reaches rank 0 over MPI_COMM_WORLD) and the
    // duplication of MPI_COMM_WORLD. While it waits, Create writes one line
    // to stderr every init_log_interval naming what it waits for (the ranks
    // rank 0 has not heard from). See "Set-up" above.
    std::chrono::milliseconds init_timeout = std::chrono::minutes(2);
    std::chrono::milliseconds init_log_interval = std::chrono::seconds(10);
    // Liveness (see "Liveness" above): a peer this rank has not heard from
    // for peer_timeout breaks the communicator with Unavailable naming it.
    // Zero turns liveness off (then only the watchdog finds a dead peer).
    std::chrono::milliseconds peer_timeout = std::chrono::seconds(20);
    // How often pings go out; zero: peer_timeout / 8, clamped to
    // [10 ms, 1 s].
    std::chrono::milliseconds ping_interval = std::chrono::milliseconds(0);
    // Call MPI_Finalize at destruction (if this communicator initialised MPI
    // and is healthy). Off when the host program finalises MPI itself.
    bool finalize = true;
  };

  // Initialises MPI as needed and builds the communicator.
  // FailedPrecondition: MPI was already finalised in this process, or was
  //   initialised by someone else below MPI_THREAD_MULTIPLE.
  // DeadlineExceeded: set-up (MPI_Init_thread, the hello exchange, the
  //   duplication of MPI_COMM_WORLD) did not finish within init_timeout;
  //   the message names the step and, on rank 0, the ranks not heard from.
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
  // Progress thread: the hello exchange of set-up.
  absl::Status Hello();
  // Progress thread, inside the loop under mpi_mu: receive and send pings,
  // and the failure when a peer has been silent for peer_timeout.
  absl::Status Liveness();
  // Progress thread, at shutdown: no more pings; pending sends completed,
  // receives cancelled.
  void StopLiveness();
  void SetInitStage(std::string stage);
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

  // Liveness state (progress thread only).
  struct Peer {
    int rank = 0;
    MPI_Request recv = MPI_REQUEST_NULL;
    MPI_Request send = MPI_REQUEST_NULL;
    int32_t in = 0;
    int32_t out = 0;
    std::chrono::steady_clock::time_point last_heard;
  };
  std::vector<Peer> peers_;
  std::chrono::milliseconds ping_interval_{0};
  std::chrono::steady_clock::time_point next_ping_;
  std::chrono::steady_clock::time_point next_liveness_;
  int32_t pings_sent_ = 0;
};

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_MPI_COMMUNICATOR_H_
