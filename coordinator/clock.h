// Time for the coordinator's logic, behind an interface so that tests decide
// when leases expire instead of sleeping.
#ifndef SHEAF_COORDINATOR_CLOCK_H_
#define SHEAF_COORDINATOR_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace sheaf::coordinator {

// Wall-clock time, for display and persistence, and a monotonic clock for
// every duration that decides something (lease expiry): a wall clock
// stepped forward must not expire healthy leases, nor one stepped back keep
// dead ones (issue 9, item 4). Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Time since an arbitrary fixed point; never goes back, and wall-clock
  // steps do not move it.
  virtual absl::Duration Monotonic() const = 0;

  // absl::Now(); a process-wide instance that is never destroyed.
  static const Clock* Real();
};

// A clock that moves only when told to. Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000))
      : now_(start) {}

  absl::Time Now() const override;
  absl::Duration Monotonic() const override;
  // Time passes: both clocks move.
  void Advance(absl::Duration d);
  // The wall clock is stepped (by an operator, NTP): only Now() moves.
  void Set(absl::Time t);

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  absl::Duration monotonic_ ABSL_GUARDED_BY(mu_) = absl::Hours(1);
};

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_CLOCK_H_
