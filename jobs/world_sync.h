// World sync: the small control-plane agreements every rank of a world must
// reach together (typed votes, sums of counts and losses, status agreement,
// barriers). One encoding for all of them, so the trainer and the worker no
// longer each carry a `SumAcrossRanks` over positional `double[n]` arrays.
//
// Encoding: every value travels as a (high, low) pair of floats summed by one
// AllReduce (Purpose kPurposeControl): high = float(v), low = float(v - high).
// A vote is 0 or 1 and a count a small integer, both exact; a sum of losses
// or token counts keeps ~48 bits. With a null communicator (a world of one)
// nothing is sent and every value is returned as is.
//
// Lifecycle: construct over a communicator (not owned) that outlives it.
// Every rank must make the same calls in the same order (they are
// collectives). Not thread-safe.
#ifndef SHEAF_JOBS_WORLD_SYNC_H_
#define SHEAF_JOBS_WORLD_SYNC_H_

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "dist/communicator.h"

namespace sheaf::jobs {

// One yes/no question every rank answers; after WorldSync::Tally, count()
// ranks answered yes.
class Vote {
 public:
  explicit Vote(bool mine) : mine_(mine), count_(mine ? 1 : 0) {}
  bool mine() const { return mine_; }
  int count() const { return count_; }
  bool any() const { return count_ > 0; }
  bool all(int world_size) const { return count_ >= world_size; }

 private:
  friend class WorldSync;
  bool mine_;
  int count_;
};

class WorldSync {
 public:
  // comm == nullptr: a world of one.
  explicit WorldSync(dist::Communicator* comm,
                     std::chrono::milliseconds timeout = std::chrono::minutes(5));

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  bool is_root() const { return world_rank_ == 0; }
  dist::Communicator* comm() const { return comm_; }

  // Sums every value over the ranks, in place.
  absl::Status Sum(absl::Span<double> values);
  // Counts, for every vote, the ranks that answered yes (one collective).
  absl::Status Tally(std::initializer_list<Vote*> votes);
  // Every rank learns whether any rank failed: returns `local` where it
  // failed, Aborted naming the other ranks' count elsewhere, so a failure on
  // one rank never leaves the others waiting in a collective.
  absl::Status AgreeOnStatus(const absl::Status& local, std::string_view what);
  // Whether every rank holds the same value (e.g. the restored step).
  absl::StatusOr<bool> AllEqual(int64_t value);
  absl::Status Barrier();

 private:
  dist::Communicator* comm_;
  std::chrono::milliseconds timeout_;
  int world_rank_ = 0, world_size_ = 1;
};

}  // namespace sheaf::jobs

#endif  // SHEAF_JOBS_WORLD_SYNC_H_
