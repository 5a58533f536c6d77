// The coordinator's durable state: jobs, leases and worlds in one SQLite
// database file.
//
// Durability. The database runs in WAL mode. With SyncMode::kFull (the
// default) every commit fsyncs the WAL before Write() returns, so an accepted
// job survives a power loss as well as a kill -9. SyncMode::kNormal syncs the
// WAL only at checkpoints: a commit still survives the process dying (the
// data is in the kernel's page cache once write() returns) but the last
// commits can be lost when the machine itself goes down. Concurrent writers
// are group-committed (one transaction and one fsync for every write queued
// while the previous commit was in flight), which is what keeps kFull fast
// under many concurrent submissions.
//
// The file is opened in exclusive locking mode: a second coordinator on the
// same database fails at Open() instead of scheduling the same jobs twice.
//
// Schema. Table `schema_version` holds one row; Open() creates the schema in
// an empty file, accepts the current version, and refuses a newer one.
//   jobs(seq, id, tenant, state, kind, priority, min_world_size,
//        max_world_size, memory_bytes, spec, created_ms, updated_ms,
//        attempts, last_error, progress, metrics, world_id, output_dir,
//        artifact_dir, cancel_requested, device_kind)
//   leases(lease_id, job_id, world_id, attempt, granted_ms, expires_ms)
//   worlds(world_id, hostname, world_size, memory_bytes, info,
//          registered_ms)
// `seq` is the submission order; protos are stored serialized (spec,
// progress, info); times are Unix milliseconds.
//
// Thread-safety: JobStore is thread-safe. A StoreTxn is valid only inside
// the callback it was passed to, on that callback's thread.
#ifndef SHEAF_COORDINATOR_STORE_H_
#define SHEAF_COORDINATOR_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/coordinator.pb.h"

struct sqlite3;
struct sqlite3_stmt;

namespace sheaf::coordinator {

class JobStore;

inline constexpr int kStoreSchemaVersion = 3;

enum class SyncMode {
  kFull,    // PRAGMA synchronous=FULL: durable against power loss.
  kNormal,  // PRAGMA synchronous=NORMAL: durable against process crashes.
};

struct StoreOptions {
  // The database file; created when missing (its directory must exist).
  std::string path;
  SyncMode sync = SyncMode::kFull;
  // Writes committed together at most (bounds one batch's latency).
  int max_batch = 512;
};

// A lease: which world holds which job until when.
struct LeaseRecord {
  std::string lease_id;
  std::string job_id;
  std::string world_id;
  int32_t attempt = 0;
  absl::Time granted_at;
  absl::Time expires_at;
};

// A registered world.
struct WorldRecord {
  std::string world_id;
  proto::RegisterWorldRequest info;
  absl::Time registered_at;
};

// ListJobs filters; empty / unspecified values match everything.
struct JobQuery {
  proto::JobState state = proto::JOB_STATE_UNSPECIFIED;
  std::string kind;
  std::string tenant;
  // Only jobs submitted after this sequence number (0: from the start).
  int64_t after_seq = 0;
  int limit = 100;
};

struct JobPage {
  std::vector<proto::Job> jobs;
  // Sequence number of each job in `jobs` (for page tokens).
  std::vector<int64_t> seqs;
  // More jobs match after the last one.
  bool more = false;
};

// Typed statements inside one transaction (see JobStore::Write / Read).
// Methods other than reads return kFailedPrecondition in a read-only
// transaction.
class StoreTxn {
 public:
  StoreTxn(const StoreTxn&) = delete;
  StoreTxn& operator=(const StoreTxn&) = delete;

  // Inserts a job (id must be new) and returns its sequence number.
  // kAlreadyExists when the id is taken.
  absl::StatusOr<int64_t> InsertJob(const proto::Job& job);

  // kNotFound when there is no such job.
  absl::StatusOr<proto::Job> GetJob(absl::string_view job_id);

  // Writes every mutable field of `job` (state, updated time, attempts,
  // last_error, progress, metrics, world_id, artifact_dir,
  // cancel_requested), but only if the stored state is still
  // `expected_state` (compare-and-set). kAborted when the state moved on,
  // kNotFound when the job does not exist.
  absl::Status UpdateJob(const proto::Job& job, proto::JobState expected_state);

  absl::StatusOr<JobPage> ListJobs(const JobQuery& query);

  // The PENDING job to run next on a world of `world_size` ranks with
  // `memory_bytes` per rank computing on `device_kind`: highest priority,
  // then oldest, among those whose resource request fits (the same device
  // kind, unset meaning cpu on both sides) and, when given, `fits` accepts
  // (the memory estimate at this world's size). nullopt when none fits.
  absl::StatusOr<std::optional<proto::Job>> NextPendingJob(
      int32_t world_size, int64_t memory_bytes,
      proto::DeviceKind device_kind = proto::DEVICE_KIND_CPU,
      const std::function<bool(const proto::Job&)>& fits = nullptr);

  absl::StatusOr<std::map<proto::JobState, int64_t>> CountJobsByState();

  // LEASED or RUNNING jobs that have no lease row (never made by this
  // code; checked on recovery all the same).
  absl::StatusOr<std::vector<proto::Job>> LeasedJobsWithoutLease();

  // kAlreadyExists when the lease id or the job already has a lease.
  absl::Status InsertLease(const LeaseRecord& lease);
  // kNotFound when there is no such lease.
  absl::StatusOr<LeaseRecord> GetLease(absl::string_view lease_id);
  // kNotFound when there is no such lease.
  absl::Status RenewLease(absl::string_view lease_id, absl::Time expires_at);
  // kNotFound when there is no such lease.
  absl::Status DeleteLease(absl::string_view lease_id);
  // Leases whose expiry is before `now`, oldest expiry first.
  absl::StatusOr<std::vector<LeaseRecord>> LeasesExpiredBefore(absl::Time now);
  absl::StatusOr<int64_t> CountLeases();

  // kAlreadyExists when the id is taken.
  absl::Status InsertWorld(const WorldRecord& world);
  // kNotFound when there is no such world.
  absl::StatusOr<WorldRecord> GetWorld(absl::string_view world_id);

 private:
  friend class JobStore;
  StoreTxn(JobStore* store, bool writable)
      : store_(store), writable_(writable) {}
  absl::Status CheckWritable() const;

  JobStore* store_;
  bool writable_;
};

class JobStore {
 public:
  // Opens (creating when missing) the database at options.path, sets WAL
  // mode and the sync level, and creates or checks the schema.
  // kFailedPrecondition when the schema is newer than this code or another
  // process holds the database; kDataLoss when the file is not a database;
  // kInvalidArgument for an empty path; others from SQLite.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(
      const StoreOptions& options);

  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Runs `fn` in a write transaction and returns once the transaction is
  // durable (per the sync mode), or with the error that prevented it. `fn`
  // may run on another thread that is committing a batch of writes; each
  // write is isolated by a savepoint, so a write whose `fn` fails leaves no
  // trace and does not affect the others in its batch. `fn` must not call
  // Write or Read. Returns fn's error, or a storage error (then nothing of
  // `fn` was committed).
  absl::Status Write(absl::FunctionRef<absl::Status(StoreTxn&)> fn);

  // Runs `fn` with a consistent view of the database; `fn` may only read.
  absl::Status Read(absl::FunctionRef<absl::Status(StoreTxn&)> fn);

  const StoreOptions& options() const { return options_; }

  // Writes committed and batches (transactions) used, for tests and
  // benchmarks of group commit.
  int64_t writes_committed() const;
  int64_t batches_committed() const;

 private:
  friend class StoreTxn;
  struct PendingWrite;

  JobStore(const StoreOptions& options, sqlite3* db);

  // A cached prepared statement for `sql`.
  absl::StatusOr<sqlite3_stmt*> PrepareLocked(absl::string_view sql)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status ExecLocked(absl::string_view sql)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // One statement without results, prepared once and cached.
  absl::Status RunCachedLocked(absl::string_view sql)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status InitSchemaLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // Runs one batch of writes in one transaction.
  void CommitBatch(const std::vector<PendingWrite*>& batch);

  const StoreOptions options_;

  mutable absl::Mutex db_mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(db_mu_);
  std::map<std::string, sqlite3_stmt*, std::less<>> statements_
      ABSL_GUARDED_BY(db_mu_);

  // Group commit: writers queue here; one of them (the leader) commits
  // everything queued while the others wait.
  mutable absl::Mutex queue_mu_;
  std::vector<PendingWrite*> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool leader_active_ ABSL_GUARDED_BY(queue_mu_) = false;
  int64_t writes_committed_ ABSL_GUARDED_BY(queue_mu_) = 0;
  int64_t batches_committed_ ABSL_GUARDED_BY(queue_mu_) = 0;
};

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_STORE_H_
