// Job placement and the lease life cycle over a JobStore.
//
// A world registers once, then long-polls Acquire. The scheduler gives it
// the PENDING job with the highest priority, oldest first, among those whose
// ResourceRequest fits the world (gang placement: the job gets the whole
// world), as a lease with a TTL. Heartbeats renew the lease (the first one
// moves LEASED -> RUNNING) and carry progress; Complete ends it.
//
// Failure handling:
//  - A lease not renewed within its TTL expires (found by a sweeper thread,
//    by the next Acquire, or by the late Heartbeat/Complete itself): the job
//    goes back to PENDING and will resume on the next world that fits, or
//    becomes FAILED with the last error when it has used max_attempts
//    attempts. A late heartbeat of an expired lease answers LEASE_LOST and
//    changes nothing: every transition is a store transaction that checks
//    the lease and the job's expected state (compare-and-set).
//  - A failed attempt (Complete with success = false) is retried the same
//    way, unless the world marks it permanent.
//  - Cancel: a PENDING job is CANCELLED at once; a leased one is flagged,
//    its world reads CANCEL in its next heartbeat answer, and the job is
//    CANCELLED when the world completes it (or its lease expires).
//  - A world that hands a job back (Complete with released = true: it was
//    stopped, or cannot run the job) returns it to PENDING without counting
//    the attempt; the reason goes to last_error.
//  - A world that comes back after its lease expired (the coordinator was
//    unreachable for longer than the TTL: a network partition, or a
//    restart followed by a late heartbeat) gets the lease back at its first
//    heartbeat if, and only if, nobody else has had the job since: the
//    job is still PENDING with the expired lease's attempt (not leased
//    again, not cancelled), the lease expired by the TTL (not by the stall
//    rule) and its world is the one asking (the lease id is its
//    capability). The job goes back to RUNNING on the same attempt and
//    world; last_error says it reconnected. Otherwise the heartbeat answers
//    LEASE_LOST and the world stops without completing. Worlds keep
//    training through an outage for that reason (worker/lease_keeper.h);
//    the expired leases this needs are kept in memory for
//    SchedulerOptions::revive_window, so a coordinator restart forgets
//    them (its own restart rule covers leases it finds in the store).
//  - Create() recovers after a crash: every lease is extended to one TTL
//    from the restart (worlds that are alive renew them with their next
//    heartbeat; dead ones expire one TTL later), so a coordinator outage
//    longer than the TTL costs no job an attempt.
//
// Every method that changes a job returns only after the change is durable.
// Time comes from a Clock (tests use FakeClock): lease deadlines on its
// monotonic clock, so that wall-clock steps neither expire healthy leases
// nor keep dead ones; wall time only for the stored and shown timestamps.
// Waiting in Acquire and the sweeper's period are real time.
//
// Thread-safety: thread-safe. Observer callbacks run on the calling thread
// after the change is committed, with no scheduler lock held.
#ifndef SHEAF_COORDINATOR_SCHEDULER_H_
#define SHEAF_COORDINATOR_SCHEDULER_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/monotonic_sleep.h"
#include "coordinator/clock.h"
#include "coordinator/store.h"
#include "core/spec/memory_estimate.h"
#include "proto/coordinator.pb.h"

namespace sheaf::coordinator {

struct SchedulerOptions {
  // A lease lives this long after it is granted or renewed.
  absl::Duration lease_ttl = absl::Seconds(30);
  // Heartbeat period suggested to worlds (default lease_ttl / 3).
  absl::Duration heartbeat_interval = absl::ZeroDuration();
  // Attempts (leases) a job may use before a failure is final; >= 1.
  int max_attempts = 3;
  // Real-time period of the expiry sweeper and of the re-checks a waiting
  // Acquire makes (so that a lease expiring on a FakeClock is noticed).
  absl::Duration sweep_interval = absl::Seconds(1);
  // Run the sweeper thread (tests that drive expiry by hand turn it off).
  bool run_sweeper = true;
  // Stuck worlds (issue 15): a world whose heartbeats keep coming while its
  // progress does not move (a rank hangs in a collective, the trainer is
  // wedged) loses its lease, found at its next heartbeat. Progress "moves"
  // when the heartbeat's Progress differs from the previous one in any
  // field (step, total_steps, loss, val_loss, ...), except into phase
  // "setup". Until it first moves (set-up: loading, pruning, calibration)
  // the limit is setup_timeout;
  // afterwards max(stall_floor, stall_factor x the longest gap between two
  // moves seen on this lease), so a job whose evaluations or checkpoints
  // take long has shown those gaps before they count. Zero turns the
  // respective rule off. The state is in memory: after a coordinator
  // restart every lease starts afresh (more time, never less).
  absl::Duration stall_floor = absl::Minutes(5);
  double stall_factor = 5;
  absl::Duration setup_timeout = absl::Minutes(30);
  // How long an expired lease may be revived by its world's heartbeat
  // (see the class comment); zero: never.
  absl::Duration revive_window = absl::Hours(1);
};

// Receives every committed change; for logs, metrics and watchers.
class SchedulerObserver {
 public:
  virtual ~SchedulerObserver() = default;
  // `job` as it is after the change; it had been in `from` for
  // `time_in_from`. `from` is JOB_STATE_UNSPECIFIED for a new job.
  virtual void OnStateChange(const proto::Job& job, proto::JobState from,
                             absl::Duration time_in_from,
                             absl::string_view reason) {}
  // A heartbeat renewed `job`'s lease and stored its progress.
  virtual void OnProgress(const proto::Job& job) {}
};

// Whether `job`'s memory estimate (when it has one) fits a rank of `world`
// at its size (core/spec/memory_estimate.h). A job that does not fit is
// never leased to the world (issue 9, item 1).
bool JobFitsWorld(const proto::Job& job,
                  const proto::RegisterWorldRequest& world);
MemoryEstimate FromProto(const proto::MemoryEstimate& estimate);
proto::MemoryEstimate ToProto(const MemoryEstimate& estimate);

// Fresh random identifiers: `prefix` and 2 * `bytes` hex digits from the
// kernel's random source (lease ids are capabilities, so unguessable).
std::string NewRandomId(absl::string_view prefix, int bytes);

class Scheduler {
 public:
  struct HeartbeatResult {
    proto::HeartbeatAction action = proto::HEARTBEAT_ACTION_UNSPECIFIED;
    absl::Duration ttl;
  };

  // `store`, `clock` and `observer` (may be null) must outlive the
  // scheduler. Recovers leases that expired while nobody watched them, then
  // starts the sweeper. kInvalidArgument for bad options; storage errors.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(
      JobStore* store, const Clock* clock, SchedulerOptions options,
      SchedulerObserver* observer);

  // Stops the sweeper and releases waiting Acquire calls.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Stores `job` as PENDING. The caller fills in id (NewRandomId("job-",
  // 8)), tenant, kind, spec, priority, resources and output_dir; the rest is
  // set here. kAlreadyExists when the id is taken; storage errors.
  absl::StatusOr<proto::Job> Submit(proto::Job job);

  // See the class comment. Returns the job after the call.
  // kNotFound, or kFailedPrecondition for a SUCCEEDED or FAILED job.
  absl::StatusOr<proto::Job> Cancel(absl::string_view job_id);

  // Stores the world and returns its new id.
  absl::StatusOr<std::string> RegisterWorld(
      const proto::RegisterWorldRequest& info);

  // Waits until `deadline` (real time) for a job that fits the world, or
  // until `cancelled` returns true, or the scheduler shuts down; nullopt
  // when none came. kNotFound for an unknown world.
  absl::StatusOr<std::optional<proto::Lease>> Acquire(
      absl::string_view world_id, absl::Time deadline,
      const std::function<bool()>& cancelled = nullptr);

  // Renews the lease and stores the progress and metrics (merged into the
  // job's). LEASE_LOST (not an error) when the lease is gone or expired;
  // CANCEL when the tenant cancelled the job.
  absl::StatusOr<HeartbeatResult> Heartbeat(
      absl::string_view lease_id, const proto::Progress& progress,
      const google::protobuf::Map<std::string, double>& metrics);

  // Ends the lease with the attempt's outcome and returns the job's new
  // state. request.artifact_dir must have been checked by the caller.
  // kFailedPrecondition when the lease is no longer held (nothing recorded).
  absl::StatusOr<proto::JobState> Complete(
      const proto::CompleteJobRequest& request);

  // Expires every lease whose time is up; returns how many.
  absl::StatusOr<int> ExpireLeases();

  // Makes waiting and future Acquire calls return nullopt at once.
  void Shutdown();

  const SchedulerOptions& options() const { return options_; }

 private:
  struct Transition {
    proto::Job job;
    proto::JobState from;
    absl::Duration time_in_from;
    std::string reason;
  };

  Scheduler(JobStore* store, const Clock* clock, SchedulerOptions options,
            SchedulerObserver* observer);

  absl::StatusOr<WorldRecord> FindWorld(absl::string_view world_id);
  // One attempt to lease a job to `world`; nullopt when none fits.
  // A lease granted while `cancelled` turned true is undone in the same
  // transaction (nullopt).
  absl::StatusOr<std::optional<proto::Lease>> TryLease(
      const WorldRecord& world, const std::function<bool()>& cancelled);
  // At startup: every lease expires no sooner than one TTL from now.
  absl::Status ExtendLeasesAfterRestart();
  // Inside a write transaction: ends `lease` (whose job is `job`) as lost.
  // `why`: the reason in last_error (default: it stopped heartbeating).
  absl::Status ExpireLeaseInTxn(StoreTxn& txn, const LeaseRecord& lease,
                                absl::Time now,
                                std::vector<Transition>* transitions,
                                absl::string_view why = "");
  // Inside a write transaction: the lease `lease_id` expired by the TTL
  // and may be revived (class comment); sets *revived.
  absl::Status MaybeReviveInTxn(StoreTxn& txn, absl::string_view lease_id, absl::Time now,
                                bool* revived, std::vector<Transition>* transitions);
  // Records `progress` for the stall rule (SchedulerOptions::stall_floor);
  // the reason when the lease has stalled, empty otherwise.
  std::string CheckStall(const LeaseRecord& lease, const proto::Progress& progress);
  absl::Status RecoverOrphans();
  // Lease expiry on the monotonic clock (issue 9, item 4): each lease's
  // deadline lives here, set when it is granted or renewed; the store's
  // wall-clock expires_at is for display and for the restart rule.
  bool Expired(const LeaseRecord& lease);
  void SetDeadline(const std::string& lease_id);
  void ForgetDeadline(const std::string& lease_id);
  void Notify(const std::vector<Transition>& transitions);
  // Wakes waiting Acquire calls (a job became PENDING).
  void Wake();
  void SweepLoop();

  JobStore* const store_;
  const Clock* const clock_;
  const SchedulerOptions options_;
  SchedulerObserver* const observer_;

  absl::Mutex worlds_mu_;
  absl::flat_hash_map<std::string, WorldRecord> worlds_
      ABSL_GUARDED_BY(worlds_mu_);

  // Woken whenever a job may have become available; stopped on shutdown.
  // Its sleeps run on CLOCK_MONOTONIC (base/monotonic_sleep.h: Abseil's
  // timed waits follow the wall clock, and a clock stepped back would stall
  // the sweeper and every long poll).
  MonotonicSleep wake_;

  absl::Mutex deadlines_mu_;
  absl::flat_hash_map<std::string, absl::Duration> deadlines_
      ABSL_GUARDED_BY(deadlines_mu_);
  struct StallState {
    std::string last;             // the last Progress, serialized
    absl::Duration since;         // monotonic: when it last moved (or was first seen)
    absl::Duration longest_gap;   // between two moves
    bool moved = false;           // set-up is over
  };
  absl::flat_hash_map<std::string, StallState> stalls_ ABSL_GUARDED_BY(deadlines_mu_);
  // Leases expired by the TTL, for revival: the record and when (monotonic).
  struct ExpiredLease {
    LeaseRecord lease;
    absl::Duration expired;
  };
  absl::flat_hash_map<std::string, ExpiredLease> expired_ ABSL_GUARDED_BY(deadlines_mu_);

  std::thread sweeper_;
};

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_SCHEDULER_H_
