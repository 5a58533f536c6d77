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

namespace sheaf::dist {

enum class Purpose { kPurposeFrozenGather, kPurposeAdapterGrad, kPurposeControl };
inline constexpr int kNumPurposes = 3;
const char* PurposeName(Purpose p);  // "frozen_gather", "adapter_grad", "control"

enum class ReduceOp { kReduceSum, kReduceAvg };

enum class Device { kDeviceCpu, kDeviceCuda };

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

  // out[r * count + i] = in_r[i] for every rank r: each rank contributes
  // `count` floats; `out` holds world_size * count. in may alias
  // out + world_rank * count.
  virtual std::unique_ptr<Work> AllGather(float* out, const float* in, int64_t count,
                                          Purpose purpose) = 0;
  // out[i] = op over ranks of in_r[world_rank * count + i]; `in` holds
  // world_size * count floats, `out` count.
  virtual std::unique_ptr<Work> ReduceScatter(float* out, const float* in, int64_t count,
                                              ReduceOp op, Purpose purpose) = 0;
  // In place: data[i] = op over ranks of data_r[i].
  virtual std::unique_ptr<Work> AllReduce(float* data, int64_t count, ReduceOp op,
                                          Purpose purpose) = 0;
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
