// A world of N ranks as N threads of one process, for tests of code above the
// communicator (sharded weights, gradient reducer, trainer) without mpirun.
// Every collective is a synchronous rendezvous: it returns an already
// completed Work once all N ranks have issued it. Byte counters use the same
// algorithm factors as the MPI backend, so traffic tests carry over.
// Reductions add f32 in rank order (reduce-scatter in double, as before
// dtypes), bf16 in f32 rounded once, i32 in int64 wrapped to 32 bits.
#ifndef SHEAF_DIST_THREAD_COMMUNICATOR_H_
#define SHEAF_DIST_THREAD_COMMUNICATOR_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dist/communicator.h"

namespace sheaf::dist {

class ThreadWorld {
 public:
  explicit ThreadWorld(int world_size);
  // The communicator of rank r (owned by the world).
  Communicator* rank(int r) { return comms_[static_cast<size_t>(r)].get(); }
  int world_size() const { return n_; }

 private:
  friend class ThreadCommunicator;
  // Blocks until all ranks arrived at this generation. Aborts the process
  // (a test failure, not a hang) when the ranks wait longer than 60 s.
  void Arrive();
  // First rendezvous of a collective: every rank must be issuing the same
  // operation with the same count (c10d's contract); a mismatch is a bug in
  // the caller and aborts with both descriptions.
  void ArriveChecked(int rank, const std::string& what);
  int n_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t generation_ = 0;
  std::vector<const void*> inputs_;  // per rank, valid between two Arrive()s
  std::vector<std::string> ops_;     // per rank, the collective being issued
  std::vector<std::unique_ptr<Communicator>> comms_;
};

}  // namespace sheaf::dist

#endif  // SHEAF_DIST_THREAD_COMMUNICATOR_H_
