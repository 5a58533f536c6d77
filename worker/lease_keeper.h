// Keeps one lease alive while a world trains its job (rank 0 only): a thread
// sends Heartbeat every heartbeat interval with the latest progress and
// metrics, and turns the coordinator's answers into a verdict.
//
//   KEEP_GOING  the lease is renewed: expiry = time the heartbeat was sent
//               + ttl (conservative: the coordinator renewed it later).
//   CANCEL      the tenant cancelled: verdict kCancel. Heartbeats go on, so
//               that the lease outlives the last step and its checkpoint
//               and the world can still complete the job as cancelled.
//   LEASE_LOST  verdict kLeaseLost; heartbeats stop (there is nothing to
//               renew, and the job must not be completed).
//   RPC error   retried with backoff (250 ms doubling, capped by the
//               interval) until the lease would have expired by the local
//               estimate; then verdict kExpired and heartbeats stop: the
//               coordinator will re-lease the job, the world must stop it.
//               With Options::outage_grace, a coordinator that cannot be
//               reached (UNAVAILABLE, DEADLINE_EXCEEDED) does not stop the
//               job at the expiry: heartbeats go on for up to that long
//               past it, because the coordinator gives the lease back at
//               the next heartbeat unless another world has had the job
//               since (coordinator/scheduler.h) -- and `still_ours` is
//               asked before each retry past the expiry: false (another
//               world claimed the output directory) is kLeaseLost at once.
//
// `on_verdict` is called once, on the keeper's thread, with the first
// verdict other than kKeepGoing (it should ask the trainer to stop).
//
// Lifecycle: Start() sends the first heartbeat at once (it moves the job
// LEASED -> RUNNING); Stop() (or the destructor) ends the thread.
// Thread-safety: every public method is thread-safe.
#ifndef SHEAF_WORKER_LEASE_KEEPER_H_
#define SHEAF_WORKER_LEASE_KEEPER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/monotonic_sleep.h"
#include "proto/coordinator.pb.h"
#include "worker/client.h"

namespace sheaf::worker {

enum class LeaseVerdict { kKeepGoing, kCancel, kLeaseLost, kExpired };
const char* LeaseVerdictName(LeaseVerdict verdict);  // "keep_going", ...

class LeaseKeeper {
 public:
  struct Options {
    // From the lease; heartbeat_interval 0 means ttl / 3.
    absl::Duration ttl = absl::Seconds(30);
    absl::Duration heartbeat_interval = absl::ZeroDuration();
    absl::Duration min_backoff = absl::Milliseconds(250);
    std::function<void(LeaseVerdict)> on_verdict;
    std::function<void(absl::string_view)> log;
    // Zero: stop at the expiry (kExpired), as without an outage rule.
    absl::Duration outage_grace = absl::ZeroDuration();
    std::function<bool()> still_ours;
  };

  // `client` must outlive the keeper. `granted` is when the lease was
  // received (the first expiry estimate is granted + ttl).
  static std::unique_ptr<LeaseKeeper> Start(CoordinatorClient* client,
                                            std::string lease_id,
                                            absl::Time granted, Options options);
  ~LeaseKeeper();
  LeaseKeeper(const LeaseKeeper&) = delete;
  LeaseKeeper& operator=(const LeaseKeeper&) = delete;

  // The progress and metrics the next heartbeat carries.
  void SetProgress(const proto::Progress& progress,
                   const std::map<std::string, double>& metrics);
  proto::Progress progress() const;
  std::map<std::string, double> metrics() const;
  // When a CompleteJob may still be accepted: the expiry, plus the outage
  // grace (the coordinator revives an expired lease nobody took).
  absl::Time report_deadline() const;

  LeaseVerdict verdict() const;
  // When the lease expires unless renewed (local estimate).
  absl::Time expiry() const;
  int64_t heartbeats_sent() const;
  int64_t heartbeats_failed() const;

  // Ends the heartbeat thread (waits for a heartbeat in flight). Idempotent.
  void Stop();

 private:
  LeaseKeeper(CoordinatorClient* client, std::string lease_id, absl::Time granted,
              Options options);
  void Loop();
  void SetVerdict(LeaseVerdict verdict);

  CoordinatorClient* const client_;
  const std::string lease_id_;
  const Options options_;
  const absl::Duration interval_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  LeaseVerdict verdict_ ABSL_GUARDED_BY(mu_) = LeaseVerdict::kKeepGoing;
  absl::Time expiry_ ABSL_GUARDED_BY(mu_);  // MonotonicNow() time
  MonotonicSleep stop_;  // stopped with stopping_; the loop sleeps on it
  proto::Progress progress_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, double> metrics_ ABSL_GUARDED_BY(mu_);
  int64_t sent_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t failed_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time next_outage_log_ = absl::InfinitePast();  // keeper thread only; monotonic
  std::thread thread_;
};

}  // namespace sheaf::worker

#endif  // SHEAF_WORKER_LEASE_KEEPER_H_
