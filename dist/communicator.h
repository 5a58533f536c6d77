// Collective communication inside a worker world.
//
// Contract (as in c10d): every rank issues the SAME collectives in the SAME
// order with the same sizes; a collective returns a Work handle at once and
// completes asynchronously; buffers must stay valid and untouched until
// Wait() returns OK. Wait(timeout) returns DeadlineExceeded when the
// collective did not complete in time (e.g. a peer died), and Unavailable
// once the communicator is broken; a broken communicator fails every later
// call instead of hanging.
//
// Every collective is tagged with a Purpose and counts the bytes it moves per
// rank (see BytesSent) so tests and benchmarks can prove what crossed the
// wire: frozen_gather (sharded base weights), adapter_grad (the only
// gradients ever reduced), control (specs, metrics, barriers, broadcasts).
//
// Element types (core/dtype.h). Counts are in elements of the collective's
// DType and bytes are counted by its storage size (DTypeBytes):
//   AllGather      any dtype; NF4 only in whole blocks (count a multiple of
//                  kNf4BlockSize), since a rank's shard is a run of blocks.
//   ReduceScatter, AllReduce
//                  f32 and bf16 (sum, avg), i32 (sum). bf16 is added in f32
//                  and rounded to bf16 (nearest even) where a backend writes
//                  a result: once for the thread backend, once per combine
//                  step for MPI (a user-defined op on 16-bit elements, so the
//                  wire carries 2 bytes per element) and as NCCL does. Sums
//                  of values whose partial sums are all representable in
//                  bf16 are therefore exact on every backend; others may
//                  differ between backends in the last bit. i32 sums wrap
//                  modulo 2^32. f16 and NF4 reductions: InvalidArgument.
// The float* overloads are the f32 case, kept for existing callers.
//
// Thread-safety: collectives are issued from one thread per rank; Wait may
// be called from any thread; counters are atomic.
#ifndef SHEAF_DIST_COMMUNICATOR_H_
#define SHEAF_DIST_COMMUNICATOR_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace sheaf::dist {

// core's element types and devices (dist used to have its own Device).
using ::sheaf::Device;
using ::sheaf::DType;

enum class Purpose { kPurposeFrozenGather, kPurposeAdapterGrad, kPurposeControl };
inline constexpr int kNumPurposes = 3;
const char* PurposeName(Purpose p);  // "frozen_gather", "adapter_grad", "control"

enum class ReduceOp { kReduceSum, kReduceAvg };

const char* ReduceOpName(ReduceOp op);  // "sum", "avg"

// OK when `dtype` and `count` suit the collective `what` (see the file
// comment); `reduce` says whether it reduces (then `op` is checked too).
// InvalidArgument naming the collective, the dtype and the op otherwise.
// The typed collectives below call it before a backend sees the call.
absl::Status CheckCollectiveDType(const char* what, DType dtype, int64_t count, bool reduce,
                                  ReduceOp op = ReduceOp::kReduceSum);

// A pending collective.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until done, failed, or `timeout` passed (DeadlineExceeded).
  // A timeout is final: a backend may then treat the communicator as
  // broken, since an abandoned collective leaves the ranks out of step (the
  // MPI backend does). To poll without that risk, use Done().
  virtual absl::Status Wait(std::chrono::milliseconds timeout) = 0;
  // Non-blocking: true once Wait would return immediately.
  virtual bool Done() = 0;
  // Device-side wait: makes work queued later on `stream` (a cudaStream_t,
  // passed as void* so that this header needs no CUDA) wait for the
  // collective, without blocking the host. OK means only that the wait was
  // queued: a collective that then fails or times out is reported by Wait
  // or Done, so a caller still checks one of them before trusting the
  // result on the host. Backends over host memory (local, threads, MPI)
  // have no streams and return Unimplemented: call Wait. The NCCL backend
  // implements it.
  virtual absl::Status WaitOnStream(void* stream);
};

// A Work that is already complete (with the given status).
std::unique_ptr<Work> CompletedWork(absl::Status status = absl::OkStatus());

struct CommStats {
  // Bytes this rank sent, by purpose, with the algorithm's factor applied
  // (ring all-reduce of n bytes sends 2(N-1)/N·n; all-gather of a shard s
  // sends (N-1)·s; reduce-scatter of n bytes in sends (N-1)/N·n; broadcast
  // from root sends (N-1)·n at the root, 0 elsewhere, as a ring/tree of the
  // backend would; barriers count a control call and 0 bytes).
  std::array<std::atomic<int64_t>, kNumPurposes> bytes_sent{};
  std::array<std::atomic<int64_t>, kNumPurposes> calls{};
  std::atomic<int64_t> wait_ns{0};  // time spent blocked in Wait
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int world_rank() const = 0;
  virtual int world_size() const = 0;
  virtual Device device() const = 0;
  virtual std::string backend_name() const = 0;

  // Collectives with an element type. Each validates the dtype first
  // (CheckCollectiveDType; a completed Work with InvalidArgument otherwise)
  // and then calls the backend.
  //
  // out[r * count + i] = in_r[i] for every rank r: each rank contributes
  // `count` elements; `out` holds world_size * count. in may alias
  // out + world_rank * count (for NF4: byte offset DTypeBytes(nf4, world_rank
  // * count)).
  std::unique_ptr<Work> AllGather(void* out, const void* in, int64_t count, DType dtype,
                                  Purpose purpose);
  // out[i] = op over ranks of in_r[world_rank * count + i]; `in` holds
  // world_size * count elements, `out` count.
  std::unique_ptr<Work> ReduceScatter(void* out, const void* in, int64_t count, DType dtype,
                                      ReduceOp op, Purpose purpose);
  // In place: data[i] = op over ranks of data_r[i].
  std::unique_ptr<Work> AllReduce(void* data, int64_t count, DType dtype, ReduceOp op,
                                  Purpose purpose);

  // The same on f32 buffers (what every caller before dtypes used).
  std::unique_ptr<Work> AllGather(float* out, const float* in, int64_t count, Purpose purpose) {
    return AllGather(out, in, count, DType::kDTypeF32, purpose);
  }
  std::unique_ptr<Work> ReduceScatter(float* out, const float* in, int64_t count, ReduceOp op,
                                      Purpose purpose) {
    return ReduceScatter(out, in, count, DType::kDTypeF32, op, purpose);
  }
  std::unique_ptr<Work> AllReduce(float* data, int64_t count, ReduceOp op, Purpose purpose) {
    return AllReduce(data, count, DType::kDTypeF32, op, purpose);
  }

  // Bytes from `root` to every rank, in place.
  virtual std::unique_ptr<Work> Broadcast(void* data, int64_t bytes, int root,
                                          Purpose purpose) = 0;
  virtual std::unique_ptr<Work> Barrier() = 0;

  CommStats& stats() { return stats_; }
  int64_t bytes_sent(Purpose p) const {
    return stats_.bytes_sent[static_cast<int>(p)].load();
  }
  void ResetStats();

 protected:
  void Count(Purpose p, int64_t bytes) {
    stats_.bytes_sent[static_cast<int>(p)] += bytes;
    stats_.calls[static_cast<int>(p)] += 1;
  }
  // The backends' collectives, called with a dtype and count that passed
  // CheckCollectiveDType (and, for reductions, an op valid for the dtype).
  virtual std::unique_ptr<Work> DoAllGather(void* out, const void* in, int64_t count,
                                            DType dtype, Purpose purpose) = 0;
  virtual std::unique_ptr<Work> DoReduceScatter(void* out, const void* in, int64_t count,
                                                DType dtype, ReduceOp op, Purpose purpose) = 0;
  virtual std::unique_ptr<Work> DoAllReduce(void* data, int64_t count, DType dtype, ReduceOp op,
                                            Purpose purpose) = 0;

  CommStats stats_;
};

// Where this process sits, read from the launcher's environment:
// OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE} (mpirun),
// PMIX_RANK (+ SLURM_NTASKS for the size) and SLURM_{PROCID,NTASKS,LOCALID}
// (srun --mpi=pmix), or none of them (a world of one).
struct RankInfo {
  int world_rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string launcher = "none";  // "openmpi", "slurm", "pmix", "none"
};
absl::StatusOr<RankInfo> DiscoverRank();  // InvalidArgument on inconsistent env

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_COMMUNICATOR_H_
