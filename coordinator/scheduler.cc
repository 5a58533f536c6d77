#include "coordinator/scheduler.h"

#include <sys/random.h>

#include <cerrno>
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sheaf::coordinator {
namespace {

int64_t ToMs(absl::Time t) { return absl::ToUnixMillis(t); }

bool IsLeased(proto::JobState state) {
  return state == proto::JOB_STATE_LEASED || state == proto::JOB_STATE_RUNNING;
}

absl::Duration Since(const proto::Job& job, absl::Time now) {
  return now - absl::FromUnixMillis(job.updated_unix_ms());
}

}  // namespace

std::string NewRandomId(absl::string_view prefix, int bytes) {
  std::string raw(static_cast<size_t>(bytes), '\0');
  size_t filled = 0;
  while (filled < raw.size()) {
    const ssize_t n = getrandom(raw.data() + filled, raw.size() - filled, 0);
    if (n > 0) filled += static_cast<size_t>(n);
    // EINTR: try again. Nothing else can fail for a few bytes with flags 0.
  }
  return absl::StrCat(prefix, absl::BytesToHexString(raw));
}

Scheduler::Scheduler(JobStore* store, const Clock* clock,
                     SchedulerOptions options, SchedulerObserver* observer)
    : store_(store), clock_(clock), options_(options), observer_(observer) {}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(
    JobStore* store, const Clock* clock, SchedulerOptions options,
    SchedulerObserver* observer) {
  if (options.lease_ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("lease_ttl must be > 0");
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_attempts must be >= 1, got ", options.max_attempts));
  }
  if (options.sweep_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("sweep_interval must be > 0");
  }
  if (options.stall_floor < absl::ZeroDuration() || options.setup_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("stall_floor and setup_timeout must be >= 0 (0: off)");
  }
  if (!(options.stall_factor >= 1 && options.stall_factor <= 1000)) {
    return absl::InvalidArgumentError(
        absl::StrCat("stall_factor must be in [1, 1000], got ", options.stall_factor));
  }
  // A stall limit below a few heartbeats would judge a world by one
  // heartbeat: keep it above two of them.
  if (options.stall_floor > absl::ZeroDuration() &&
      options.stall_floor < 2 * (options.heartbeat_interval > absl::ZeroDuration()
                                     ? options.heartbeat_interval
                                     : options.lease_ttl / 3)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stall_floor (", absl::FormatDuration(options.stall_floor),
        ") must be at least two heartbeat intervals, or 0 (off)"));
  }
  if (options.heartbeat_interval <= absl::ZeroDuration()) {
    options.heartbeat_interval = options.lease_ttl / 3;
  }
  std::unique_ptr<Scheduler> scheduler(
      new Scheduler(store, clock, options, observer));
  RETURN_IF_ERROR(scheduler->RecoverOrphans());
  // Not ExpireLeases(): a coordinator that was down longer than the TTL
  // would otherwise cost every running job an attempt.
  RETURN_IF_ERROR(scheduler->ExtendLeasesAfterRestart());
  if (options.run_sweeper) {
    scheduler->sweeper_ = std::thread([s = scheduler.get()] { s->SweepLoop(); });
  }
  return scheduler;
}

Scheduler::~Scheduler() {
  Shutdown();
  if (sweeper_.joinable()) sweeper_.join();
}

void Scheduler::Shutdown() { wake_.Stop(); }

void Scheduler::Wake() { wake_.Wake(); }

void Scheduler::Notify(const std::vector<Transition>& transitions) {
  if (observer_ == nullptr) return;
  for (const Transition& t : transitions) {
    observer_->OnStateChange(t.job, t.from, t.time_in_from, t.reason);
  }
}

void Scheduler::SweepLoop() {
  while (true) {
    if (wake_.SleepUnlessStopped(options_.sweep_interval)) return;
    // A storage error here is retried at the next sweep; the calls that
    // need the store report it to their callers.
    ExpireLeases().IgnoreError();
  }
}

absl::Status Scheduler::RecoverOrphans() {
  std::vector<Transition> transitions;
  const absl::Time now = clock_->Now();
  RETURN_IF_ERROR(store_->Write([&](StoreTxn& txn) -> absl::Status {
    transitions.clear();
    ASSIGN_OR_RETURN(std::vector<proto::Job> orphans,
                     txn.LeasedJobsWithoutLease());
    for (proto::Job& job : orphans) {
      const proto::JobState from = job.state();
      const absl::Duration in_from = Since(job, now);
      job.set_state(proto::JOB_STATE_PENDING);
      job.set_updated_unix_ms(ToMs(now));
      RETURN_IF_ERROR(txn.UpdateJob(job, from));
      transitions.push_back(
          {job, from, in_from, "recovered: the job had no lease record"});
    }
    return absl::OkStatus();
  }));
  Notify(transitions);
  return absl::OkStatus();
}

absl::Status Scheduler::ExtendLeasesAfterRestart() {
  const absl::Time now = clock_->Now();
  const absl::Time extended = now + options_.lease_ttl;
  RETURN_IF_ERROR(store_->Write([&](StoreTxn& txn) -> absl::Status {
    // Every lease: those expiring before `extended` are the ones to move.
    ASSIGN_OR_RETURN(std::vector<LeaseRecord> leases,
                     txn.LeasesExpiredBefore(extended));
    for (const LeaseRecord& lease : leases) {
      RETURN_IF_ERROR(txn.RenewLease(lease.lease_id, extended));
    }
    return absl::OkStatus();
  }));
  // The deadlines that decide: one TTL from now on the monotonic clock for
  // every lease (the stored wall times are only shown), whatever the wall
  // clock did while the coordinator was down.
  std::vector<LeaseRecord> all;
  RETURN_IF_ERROR(store_->Read([&](StoreTxn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(all, txn.LeasesExpiredBefore(absl::InfiniteFuture()));
    return absl::OkStatus();
  }));
  const absl::Duration deadline = clock_->Monotonic() + options_.lease_ttl;
  absl::MutexLock lock(&deadlines_mu_);
  for (const LeaseRecord& lease : all) deadlines_[lease.lease_id] = deadline;
  return absl::OkStatus();
}

bool Scheduler::Expired(const LeaseRecord& lease) {
  const absl::Duration now = clock_->Monotonic();
  absl::MutexLock lock(&deadlines_mu_);
  auto [it, inserted] = deadlines_.try_emplace(lease.lease_id, now + options_.lease_ttl);
  // A lease this scheduler never saw (written by another process): the
  // restart rule, one TTL from now.
  return !inserted && now >= it->second;
}

void Scheduler::SetDeadline(const std::string& lease_id) {
  const absl::Duration deadline = clock_->Monotonic() + options_.lease_ttl;
  absl::MutexLock lock(&deadlines_mu_);
  deadlines_[lease_id] = deadline;
}

void Scheduler::ForgetDeadline(const std::string& lease_id) {
  absl::MutexLock lock(&deadlines_mu_);
  deadlines_.erase(lease_id);
  stalls_.erase(lease_id);
}

std::string Scheduler::CheckStall(const LeaseRecord& lease, const proto::Progress& progress) {
  const absl::Duration now = clock_->Monotonic();
  std::string serialized;
  progress.SerializeToString(&serialized);
  absl::MutexLock lock(&deadlines_mu_);
  auto [it, inserted] = stalls_.try_emplace(lease.lease_id);
  StallState& st = it->second;
  if (inserted) {
    st.last = std::move(serialized);
    st.since = now;
    return "";
  }
  if (serialized != st.last && progress.phase() == "setup") {
    // Still setting up (a worker's first heartbeats): set-up has not ended.
    st.last = std::move(serialized);
    return "";
  }
  if (serialized != st.last) {
    if (st.moved) st.longest_gap = std::max(st.longest_gap, now - st.since);
    st.moved = true;
    st.last = std::move(serialized);
    st.since = now;
    return "";
  }
  const absl::Duration still = now - st.since;
  if (!st.moved) {
    if (options_.setup_timeout <= absl::ZeroDuration() || still <= options_.setup_timeout) {
      return "";
    }
    return absl::StrCat("lease expired: world ", lease.world_id, " kept heartbeating but made no "
                        "progress for ", absl::FormatDuration(absl::Trunc(still, absl::Milliseconds(1))),
                        " after it was leased the job (set-up limit ",
                        absl::FormatDuration(options_.setup_timeout),
                        ", --setup-timeout); a rank may be stuck in set-up");
  }
  if (options_.stall_floor <= absl::ZeroDuration()) return "";
  const absl::Duration limit =
      std::max(options_.stall_floor, options_.stall_factor * st.longest_gap);
  if (still <= limit) return "";
  return absl::StrCat(
      "lease expired: world ", lease.world_id, " kept heartbeating but made no progress for ",
      absl::FormatDuration(absl::Trunc(still, absl::Milliseconds(1))), " at step ",
      progress.step(), "/", progress.total_steps(),
      progress.phase().empty() || progress.phase() == "train"
          ? ""
          : absl::StrCat(" in phase ", progress.phase()),
      " (stall limit ",
      absl::FormatDuration(absl::Trunc(limit, absl::Milliseconds(1))), " = max(--stall-floor ",
      absl::FormatDuration(options_.stall_floor), ", ", options_.stall_factor,
      " x the longest gap between progress so far, ",
      st.longest_gap == absl::ZeroDuration()
          ? std::string("none seen yet")
          : absl::FormatDuration(absl::Trunc(st.longest_gap, absl::Milliseconds(1))),
      ")); a rank may be stuck");
}

absl::StatusOr<proto::Job> Scheduler::Submit(proto::Job job) {
  const absl::Time now = clock_->Now();
  job.set_state(proto::JOB_STATE_PENDING);
  job.set_created_unix_ms(ToMs(now));
  job.set_updated_unix_ms(ToMs(now));
  job.set_attempts(0);
  job.clear_last_error();
  job.clear_progress();
  job.clear_metrics();
  job.clear_world_id();
  job.clear_artifact_dir();
  job.set_cancel_requested(false);
  RETURN_IF_ERROR(store_->Write(
      [&](StoreTxn& txn) { return txn.InsertJob(job).status(); }));
  Notify({{job, proto::JOB_STATE_UNSPECIFIED, absl::ZeroDuration(),
           "submitted"}});
  Wake();
  return job;
}

absl::StatusOr<proto::Job> Scheduler::Cancel(absl::string_view job_id) {
  const absl::Time now = clock_->Now();
  proto::Job result;
  std::vector<Transition> transitions;
  RETURN_IF_ERROR(store_->Write([&](StoreTxn& txn) -> absl::Status {
    transitions.clear();
    ASSIGN_OR_RETURN(proto::Job job, txn.GetJob(job_id));
    const proto::JobState from = job.state();
    switch (from) {
      case proto::JOB_STATE_PENDING: {
        const absl::Duration in_from = Since(job, now);
        job.set_state(proto::JOB_STATE_CANCELLED);
        job.set_updated_unix_ms(ToMs(now));
        RETURN_IF_ERROR(txn.UpdateJob(job, from));
        transitions.push_back({job, from, in_from, "cancelled by tenant"});
        break;
      }
      case proto::JOB_STATE_LEASED:
      case proto::JOB_STATE_RUNNING:
        if (!job.cancel_requested()) {
          job.set_cancel_requested(true);
          job.set_updated_unix_ms(ToMs(now));
          RETURN_IF_ERROR(txn.UpdateJob(job, from));
        }
        break;
      case proto::JOB_STATE_CANCELLED:
        break;
      default:
        return absl::FailedPreconditionError(
            absl::StrCat("job ", job_id, " is already ",
                         proto::JobState_Name(from), "; nothing to cancel"));
    }
    result = std::move(job);
    return absl::OkStatus();
  }));
  Notify(transitions);
  return result;
}

MemoryEstimate FromProto(const proto::MemoryEstimate& p) {
  MemoryEstimate e;
  e.frozen_bytes = p.frozen_bytes();
  e.gathered_bytes = p.gathered_bytes();
  e.trainable_bytes = p.trainable_bytes();
  e.activation_bytes_per_sequence = p.activation_bytes_per_sequence();
  e.batch_size = p.batch_size();
  return e;
}

proto::MemoryEstimate ToProto(const MemoryEstimate& e) {
  proto::MemoryEstimate p;
  p.set_frozen_bytes(e.frozen_bytes);
  p.set_gathered_bytes(e.gathered_bytes);
  p.set_trainable_bytes(e.trainable_bytes);
  p.set_activation_bytes_per_sequence(e.activation_bytes_per_sequence);
  p.set_batch_size(e.batch_size);
  return p;
}

bool JobFitsWorld(const proto::Job& job,
                  const proto::RegisterWorldRequest& world) {
  // A world that does not know its memory (0) and a job without an
  // estimate are matched by the request alone; the world checks again.
  if (!job.has_memory_estimate() || world.memory_bytes() <= 0) return true;
  return FromProto(job.memory_estimate()).PerRank(world.world_size()) <=
         world.memory_bytes();
}

absl::StatusOr<std::string> Scheduler::RegisterWorld(
    const proto::RegisterWorldRequest& info) {
  WorldRecord world;
  world.world_id = NewRandomId("world-", 8);
  world.info = info;
  world.registered_at = clock_->Now();
  RETURN_IF_ERROR(
      store_->Write([&](StoreTxn& txn) { return txn.InsertWorld(world); }));
  absl::MutexLock lock(&worlds_mu_);
  worlds_[world.world_id] = world;
  return world.world_id;
}

absl::StatusOr<WorldRecord> Scheduler::FindWorld(absl::string_view world_id) {
  {
    absl::MutexLock lock(&worlds_mu_);
    auto it = worlds_.find(world_id);
    if (it != worlds_.end()) return it->second;
  }
  // Registered before a restart: the store has it.
  WorldRecord world;
  absl::Status status = store_->Read([&](StoreTxn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(world, txn.GetWorld(world_id));
    return absl::OkStatus();
  });
  if (absl::IsNotFound(status)) {
    return absl::NotFoundError(absl::StrCat(
        "world ", world_id, " is not registered (call RegisterWorld again)"));
  }
  RETURN_IF_ERROR(status);
  absl::MutexLock lock(&worlds_mu_);
  worlds_[world.world_id] = world;
  return world;
}

absl::StatusOr<std::optional<proto::Lease>> Scheduler::TryLease(
    const WorldRecord& world, const std::function<bool()>& cancelled) {
  const absl::Time now = clock_->Now();
  std::optional<proto::Lease> lease;
  std::vector<Transition> transitions;
  const std::string lease_id = NewRandomId("lease-", 16);
  RETURN_IF_ERROR(store_->Write([&](StoreTxn& txn) -> absl::Status {
    lease.reset();
    transitions.clear();
    ASSIGN_OR_RETURN(std::optional<proto::Job> next,
                     txn.NextPendingJob(world.info.world_size(),
                                        world.info.memory_bytes(),
                                        world.info.device_kind(),
                                        [&world](const proto::Job& job) {
                                          return JobFitsWorld(job, world.info);
                                        }));
    if (!next.has_value()) return absl::OkStatus();
    proto::Job job = std::move(*next);
    const absl::Duration in_from = Since(job, now);
    const std::string next_world_id = job.world_id();
    const int64_t pending_since_ms = job.updated_unix_ms();
    job.set_state(proto::JOB_STATE_LEASED);
    job.set_attempts(job.attempts() + 1);
    job.set_world_id(world.world_id);
    job.set_updated_unix_ms(ToMs(now));
    RETURN_IF_ERROR(txn.UpdateJob(job, proto::JOB_STATE_PENDING));
    LeaseRecord record;
    record.lease_id = lease_id;
    record.job_id = job.id();
    record.world_id = world.world_id;
    record.attempt = job.attempts();
    record.granted_at = now;
    record.expires_at = now + options_.lease_ttl;
    RETURN_IF_ERROR(txn.InsertLease(record));
    SetDeadline(lease_id);
    // The call was cancelled while the lease was being granted: undo it in
    // the same transaction (the job stays PENDING, no attempt counted).
    if (cancelled && cancelled()) {
      RETURN_IF_ERROR(txn.DeleteLease(lease_id));
      ForgetDeadline(lease_id);
      job.set_state(proto::JOB_STATE_PENDING);
      job.set_attempts(job.attempts() - 1);
      job.set_world_id(next_world_id);
      job.set_updated_unix_ms(pending_since_ms);
      return txn.UpdateJob(job, proto::JOB_STATE_LEASED);
    }

    proto::Lease out;
    out.set_job_id(job.id());
    *out.mutable_spec() = job.spec();
    out.set_lease_id(lease_id);
    out.set_ttl_ms(absl::ToInt64Milliseconds(options_.lease_ttl));
    out.set_attempt(job.attempts());
    out.set_tenant(job.tenant());
    out.set_output_dir(job.output_dir());
    out.set_heartbeat_interval_ms(
        absl::ToInt64Milliseconds(options_.heartbeat_interval));
    lease = std::move(out);
    transitions.push_back(
        {std::move(job), proto::JOB_STATE_PENDING, in_from,
         absl::StrCat("leased to ", world.world_id, " (",
                      world.info.world_size(), " ranks on ",
                      world.info.hostname(), ")")});
    return absl::OkStatus();
  }));
  Notify(transitions);
  return lease;
}

absl::StatusOr<std::optional<proto::Lease>> Scheduler::Acquire(
    absl::string_view world_id, absl::Time deadline,
    const std::function<bool()>& cancelled) {
  ASSIGN_OR_RETURN(WorldRecord world, FindWorld(world_id));
  // The caller's deadline as monotonic time: a wall-clock step during the
  // poll neither ends it early nor stretches it.
  const absl::Time mono_deadline = MonotonicNow() + (deadline - absl::Now());
  while (true) {
    if (wake_.stopped()) return std::optional<proto::Lease>();
    const uint64_t generation = wake_.generation();
    // The caller may be gone (a world killed during its long poll): never
    // hand it a lease it would not receive.
    if (cancelled && cancelled()) return std::optional<proto::Lease>();
    RETURN_IF_ERROR(ExpireLeases().status());
    ASSIGN_OR_RETURN(std::optional<proto::Lease> lease,
                     TryLease(world, cancelled));
    if (lease.has_value()) return lease;
    const absl::Duration left = mono_deadline - MonotonicNow();
    if (left <= absl::ZeroDuration() || (cancelled && cancelled())) return lease;
    // Sleep until a job may have come (Wake), or for one sweep interval:
    // leases expire by the clock, which nobody signals.
    wake_.SleepUntilWoken(std::min(left, options_.sweep_interval), generation);
  }
}

absl::Status Scheduler::ExpireLeaseInTxn(StoreTxn& txn,
                                         const LeaseRecord& lease,
                                         absl::Time now,
                                         std::vector<Transition>* transitions,
                                         absl::string_view why) {
  RETURN_IF_ERROR(txn.DeleteLease(lease.lease_id));
  ForgetDeadline(lease.lease_id);
  ASSIGN_OR_RETURN(proto::Job job, txn.GetJob(lease.job_id));
  const proto::JobState from = job.state();
  if (!IsLeased(from)) return absl::OkStatus();  // Stale row; now gone.
  if (why.empty() && options_.revive_window > absl::ZeroDuration()) {
    // Expired by the TTL: its world may come back (MaybeReviveInTxn).
    const absl::Duration mono = clock_->Monotonic();
    absl::MutexLock lock(&deadlines_mu_);
    for (auto it = expired_.begin(); it != expired_.end();) {
      if (mono - it->second.expired > options_.revive_window) {
        expired_.erase(it++);
      } else {
        ++it;
      }
    }
    expired_[lease.lease_id] = {lease, mono};
  }
  const absl::Duration in_from = Since(job, now);
  std::string reason;
  if (job.cancel_requested()) {
    job.set_state(proto::JOB_STATE_CANCELLED);
    reason = "cancelled by tenant (the world was lost before it stopped)";
  } else {
    job.set_last_error(
        why.empty() ? absl::StrCat("attempt ", lease.attempt, ": lease expired (world ",
                                   lease.world_id, " stopped heartbeating)")
                    : absl::StrCat("attempt ", lease.attempt, ": ", why));
    if (job.attempts() >= options_.max_attempts) {
      job.set_state(proto::JOB_STATE_FAILED);
      reason = absl::StrCat(job.last_error(), "; no attempts left (",
                            options_.max_attempts, ")");
    } else {
      job.set_state(proto::JOB_STATE_PENDING);
      reason = job.last_error();
    }
  }
  job.set_updated_unix_ms(ToMs(now));
  RETURN_IF_ERROR(txn.UpdateJob(job, from));
  transitions->push_back({std::move(job), from, in_from, std::move(reason)});
  return absl::OkStatus();
}

absl::Status Scheduler::MaybeReviveInTxn(StoreTxn& txn, absl::string_view lease_id,
                                         absl::Time now, bool* revived,
                                         std::vector<Transition>* transitions) {
  *revived = false;
  ExpiredLease expired;
  {
    absl::MutexLock lock(&deadlines_mu_);
    auto it = expired_.find(lease_id);
    if (it == expired_.end()) return absl::OkStatus();
    if (clock_->Monotonic() - it->second.expired > options_.revive_window) {
      expired_.erase(it);
      return absl::OkStatus();
    }
    expired = it->second;
  }
  absl::StatusOr<proto::Job> found = txn.GetJob(expired.lease.job_id);
  if (absl::IsNotFound(found.status())) return absl::OkStatus();
  RETURN_IF_ERROR(found.status());
  proto::Job job = *std::move(found);
  // Nobody has had the job since: still PENDING on the same attempt.
  if (job.state() != proto::JOB_STATE_PENDING || job.attempts() != expired.lease.attempt ||
      job.cancel_requested()) {
    return absl::OkStatus();
  }
  const proto::JobState from = job.state();
  const absl::Duration in_from = Since(job, now);
  LeaseRecord lease = expired.lease;
  lease.expires_at = now + options_.lease_ttl;
  RETURN_IF_ERROR(txn.InsertLease(lease));
  job.set_state(proto::JOB_STATE_RUNNING);
  job.set_world_id(lease.world_id);
  job.set_last_error(absl::StrCat(
      "attempt ", lease.attempt, ": world ", lease.world_id,
      " reconnected after its lease had expired (",
      absl::FormatDuration(absl::Trunc(in_from, absl::Milliseconds(1))),
      " after the expiry); nobody had the job since, so it goes on"));
  job.set_updated_unix_ms(ToMs(now));
  RETURN_IF_ERROR(txn.UpdateJob(job, from));
  transitions->push_back({job, from, in_from, job.last_error()});
  *revived = true;
  return absl::OkStatus();
}

absl::StatusOr<int> Scheduler::ExpireLeases() {
  const absl::Time now = clock_->Now();
  // Most calls find nothing: look first without a write transaction.
  // Expiry is judged on the monotonic clock (Expired), over every lease:
  // there are as many as running jobs.
  std::vector<LeaseRecord> expired;
  RETURN_IF_ERROR(store_->Read([&](StoreTxn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(expired, txn.LeasesExpiredBefore(absl::InfiniteFuture()));
    return absl::OkStatus();
  }));
  expired.erase(std::remove_if(expired.begin(), expired.end(),
                               [this](const LeaseRecord& l) { return !Expired(l); }),
                expired.end());
  if (expired.empty()) return 0;
  std::vector<Transition> transitions;
  RETURN_IF_ERROR(store_->Write([&](StoreTxn& txn) -> absl::Status {
    transitions.clear();
    // Again inside the transaction: a heartbeat may have renewed some.
    ASSIGN_OR_RETURN(std::vector<LeaseRecord> leases,
                     txn.LeasesExpiredBefore(absl::InfiniteFuture()));
    for (const LeaseRecord& lease : leases) {
      if (!Expired(lease)) continue;
      RETURN_IF_ERROR(ExpireLeaseInTxn(txn, lease, now, &transitions));
    }
    return absl::OkStatus();
  }));
  Notify(transitions);
  Wake();
  return static_cast<int>(transitions.size());
}

absl::StatusOr<Scheduler::HeartbeatResult> Scheduler::Heartbeat(
    absl::string_view lease_id, const proto::Progress& progress,
    const google::protobuf::Map<std::string, double>& metrics) {
  const absl::Time now = clock_->Now();
  HeartbeatResult result;
  std::vector<Transition> transitions;
  proto::Job renewed;
  RETURN_IF_ERROR(store_->Write([&](StoreTxn& txn) -> absl::Status {
    transitions.clear();
    result = HeartbeatResult{proto::HEARTBEAT_ACTION_LEASE_LOST,
                             absl::ZeroDuration()};
    renewed.Clear();
    absl::StatusOr<LeaseRecord> lease = txn.GetLease(lease_id);
    if (absl::IsNotFound(lease.status())) {
      // Expired by the TTL while the world could not reach us: revived if
      // nobody had the job since (class comment).
      bool revived = false;
      RETURN_IF_ERROR(MaybeReviveInTxn(txn, lease_id, now, &revived, &transitions));
      if (!revived) return absl::OkStatus();
      lease = txn.GetLease(lease_id);
    }
    RETURN_IF_ERROR(lease.status());
    if (Expired(*lease)) {
      // Expired but not swept yet: it is lost all the same. Its world is
      // asking, so it is revived at once if it may be.
      RETURN_IF_ERROR(ExpireLeaseInTxn(txn, *lease, now, &transitions));
      bool revived = false;
      RETURN_IF_ERROR(MaybeReviveInTxn(txn, lease_id, now, &revived, &transitions));
      if (!revived) return absl::OkStatus();
      lease = txn.GetLease(lease_id);
      RETURN_IF_ERROR(lease.status());
    }
    if (std::string stalled = CheckStall(*lease, progress); !stalled.empty()) {
      // Alive but stuck: the job goes elsewhere (issue 15).
      return ExpireLeaseInTxn(txn, *lease, now, &transitions, stalled);
    }
    ASSIGN_OR_RETURN(proto::Job job, txn.GetJob(lease->job_id));
    const proto::JobState from = job.state();
    if (!IsLeased(from)) return absl::OkStatus();
    RETURN_IF_ERROR(txn.RenewLease(lease_id, now + options_.lease_ttl));
    SetDeadline(std::string(lease_id));
    const absl::Duration in_from = Since(job, now);
    *job.mutable_progress() = progress;
    for (const auto& [name, value] : metrics) (*job.mutable_metrics())[name] = value;
    job.set_updated_unix_ms(ToMs(now));
    if (from == proto::JOB_STATE_LEASED) {
      job.set_state(proto::JOB_STATE_RUNNING);
    }
    RETURN_IF_ERROR(txn.UpdateJob(job, from));
    if (from == proto::JOB_STATE_LEASED) {
      transitions.push_back({job, from, in_from, "first heartbeat"});
    }
    result.action = job.cancel_requested() ? proto::HEARTBEAT_ACTION_CANCEL
                                           : proto::HEARTBEAT_ACTION_KEEP_GOING;
    result.ttl = options_.lease_ttl;
    renewed = std::move(job);
    return absl::OkStatus();
  }));
  Notify(transitions);
  if (result.action == proto::HEARTBEAT_ACTION_LEASE_LOST) {
    if (!transitions.empty()) Wake();
  } else if (observer_ != nullptr) {
    observer_->OnProgress(renewed);
  }
  return result;
}

absl::StatusOr<proto::JobState> Scheduler::Complete(
    const proto::CompleteJobRequest& request) {
  const absl::Time now = clock_->Now();
  proto::JobState final_state = proto::JOB_STATE_UNSPECIFIED;
  absl::Status not_held;
  std::vector<Transition> transitions;
  RETURN_IF_ERROR(store_->Write([&](StoreTxn& txn) -> absl::Status {
    transitions.clear();
    not_held = absl::OkStatus();
    absl::StatusOr<LeaseRecord> lease = txn.GetLease(request.lease_id());
    bool revived = false;
    if (absl::IsNotFound(lease.status())) {
      // A world that finished while it could not reach us: its result
      // counts if nobody had the job since (class comment).
      RETURN_IF_ERROR(MaybeReviveInTxn(txn, request.lease_id(), now, &revived, &transitions));
      if (!revived) {
        not_held = absl::FailedPreconditionError(absl::StrCat(
            "lease ", request.lease_id(),
            " is not held (it expired and the job went to another world or was cancelled, or "
            "the job was completed already); the result is not recorded"));
        return absl::OkStatus();
      }
      lease = txn.GetLease(request.lease_id());
    }
    RETURN_IF_ERROR(lease.status());
    if (!revived && Expired(*lease)) {
      RETURN_IF_ERROR(ExpireLeaseInTxn(txn, *lease, now, &transitions));
      RETURN_IF_ERROR(MaybeReviveInTxn(txn, request.lease_id(), now, &revived, &transitions));
      if (!revived) {
        // Commit the expiry, but tell the world its result came too late.
        not_held = absl::FailedPreconditionError(absl::StrCat(
            "lease ", request.lease_id(), " expired at ",
            absl::FormatTime(lease->expires_at), "; the result is not recorded"));
        return absl::OkStatus();
      }
      lease = txn.GetLease(request.lease_id());
      RETURN_IF_ERROR(lease.status());
    }
    RETURN_IF_ERROR(txn.DeleteLease(request.lease_id()));
    ForgetDeadline(request.lease_id());
    ASSIGN_OR_RETURN(proto::Job job, txn.GetJob(lease->job_id));
    const proto::JobState from = job.state();
    if (!IsLeased(from)) {
      return absl::InternalError(absl::StrCat(
          "job ", job.id(), " is ", proto::JobState_Name(from),
          " but lease ", request.lease_id(), " was held"));
    }
    const absl::Duration in_from = Since(job, now);
    std::string reason;
    if (request.has_progress()) *job.mutable_progress() = request.progress();
    for (const auto& [name, value] : request.metrics()) (*job.mutable_metrics())[name] = value;
    if (!request.artifact_dir().empty()) {
      job.set_artifact_dir(request.artifact_dir());
    }
    if (request.success()) {
      job.set_state(proto::JOB_STATE_SUCCEEDED);
      job.clear_last_error();
      reason = "completed";
    } else if (job.cancel_requested()) {
      job.set_state(proto::JOB_STATE_CANCELLED);
      reason = "cancelled by tenant";
    } else if (request.released()) {
      // Handed back (the world stopped, or cannot run the job here): not
      // the job's fault, so the attempt does not count.
      job.set_last_error(absl::StrCat(
          "attempt ", lease->attempt, " released by world ", lease->world_id,
          ": ",
          request.error().empty() ? "no reason given" : request.error()));
      job.set_attempts(std::max(0, job.attempts() - 1));
      job.set_state(proto::JOB_STATE_PENDING);
      reason = absl::StrCat(job.last_error(), "; back in the queue");
    } else {
      job.set_last_error(absl::StrCat(
          "attempt ", lease->attempt, ": ",
          request.error().empty() ? "failed without an error message"
                                  : request.error()));
      if (request.permanent()) {
        job.set_state(proto::JOB_STATE_FAILED);
        reason = absl::StrCat(job.last_error(), " (permanent)");
      } else if (job.attempts() >= options_.max_attempts) {
        job.set_state(proto::JOB_STATE_FAILED);
        reason = absl::StrCat(job.last_error(), "; no attempts left (",
                              options_.max_attempts, ")");
      } else {
        job.set_state(proto::JOB_STATE_PENDING);
        reason = absl::StrCat(job.last_error(), "; will retry");
      }
    }
    job.set_cancel_requested(job.cancel_requested() &&
                             job.state() != proto::JOB_STATE_PENDING);
    job.set_updated_unix_ms(ToMs(now));
    RETURN_IF_ERROR(txn.UpdateJob(job, from));
    final_state = job.state();
    transitions.push_back({std::move(job), from, in_from, std::move(reason)});
    return absl::OkStatus();
  }));
  Notify(transitions);
  if (!transitions.empty() &&
      transitions.back().job.state() == proto::JOB_STATE_PENDING) {
    Wake();
  }
  RETURN_IF_ERROR(not_held);
  return final_state;
}

}  // namespace sheaf::coordinator
