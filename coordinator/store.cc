#include "coordinator/store.h"

#include <sqlite3.h>

#include <cstdio>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/status.h"

namespace sheaf::coordinator {

struct JobStore::PendingWrite {
  absl::FunctionRef<absl::Status(StoreTxn&)> fn;
  absl::Status status;
  bool done = false;
};

namespace {

constexpr const char* kSchema[] = {
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    R"(CREATE TABLE jobs (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         id TEXT NOT NULL UNIQUE,
         tenant TEXT NOT NULL,
         state INTEGER NOT NULL,
         kind TEXT NOT NULL,
         priority INTEGER NOT NULL,
         min_world_size INTEGER NOT NULL,
         max_world_size INTEGER NOT NULL,
         memory_bytes INTEGER NOT NULL,
         spec BLOB NOT NULL,
         created_ms INTEGER NOT NULL,
         updated_ms INTEGER NOT NULL,
         attempts INTEGER NOT NULL,
         last_error TEXT NOT NULL,
         progress BLOB NOT NULL,
         metrics TEXT NOT NULL,
         world_id TEXT NOT NULL,
         output_dir TEXT NOT NULL,
         artifact_dir TEXT NOT NULL,
         cancel_requested INTEGER NOT NULL,
         device_kind INTEGER NOT NULL DEFAULT 0,
         memory_estimate BLOB NOT NULL DEFAULT x''))",
    // The scheduler's scan: PENDING jobs by priority, then age.
    "CREATE INDEX jobs_by_state ON jobs (state, priority DESC, seq)",
    "CREATE INDEX jobs_by_tenant ON jobs (tenant, seq)",
    R"(CREATE TABLE leases (
         lease_id TEXT PRIMARY KEY,
         job_id TEXT NOT NULL UNIQUE REFERENCES jobs (id),
         world_id TEXT NOT NULL,
         attempt INTEGER NOT NULL,
         granted_ms INTEGER NOT NULL,
         expires_ms INTEGER NOT NULL))",
    "CREATE INDEX leases_by_expiry ON leases (expires_ms)",
    R"(CREATE TABLE worlds (
         world_id TEXT PRIMARY KEY,
         hostname TEXT NOT NULL,
         world_size INTEGER NOT NULL,
         memory_bytes INTEGER NOT NULL,
         info BLOB NOT NULL,
         registered_ms INTEGER NOT NULL))",
};

constexpr absl::string_view kJobColumns =
    "seq, id, tenant, state, kind, priority, min_world_size, max_world_size, "
    "memory_bytes, spec, created_ms, updated_ms, attempts, last_error, "
    "progress, metrics, world_id, output_dir, artifact_dir, cancel_requested, "
    "device_kind, memory_estimate";

constexpr absl::string_view kLeaseColumns =
    "lease_id, job_id, world_id, attempt, granted_ms, expires_ms";

absl::StatusCode CodeForSqlite(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::StatusCode::kFailedPrecondition;
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    case SQLITE_CONSTRAINT:
      return absl::StatusCode::kAlreadyExists;
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
      return absl::StatusCode::kPermissionDenied;
    default:
      return absl::StatusCode::kInternal;
  }
}

absl::Status SqliteError(sqlite3* db, int rc, absl::string_view what) {
  std::string detail = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if ((rc & 0xff) == SQLITE_BUSY) {
    detail += " (another coordinator is using this database?)";
  }
  return absl::Status(CodeForSqlite(rc),
                      absl::StrCat("sqlite: ", what, ": ", detail));
}

int64_t ToMs(absl::Time t) { return absl::ToUnixMillis(t); }
absl::Time FromMs(int64_t ms) { return absl::FromUnixMillis(ms); }

// A prepared statement borrowed from the store's cache for one use; reset
// (and its bindings cleared) when it goes out of scope. Text and blobs are
// bound without copying, so the bound strings must outlive the Stmt.
class Stmt {
 public:
  Stmt(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  ~Stmt() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& Int(int index, int64_t value) {
    Check(sqlite3_bind_int64(stmt_, index, value));
    return *this;
  }
  Stmt& Text(int index, absl::string_view value) {
    Check(sqlite3_bind_text(stmt_, index, value.data(),
                            static_cast<int>(value.size()), SQLITE_STATIC));
    return *this;
  }
  Stmt& Blob(int index, absl::string_view value) {
    Check(sqlite3_bind_blob(stmt_, index, value.data(),
                            static_cast<int>(value.size()), SQLITE_STATIC));
    return *this;
  }

  // true: a row is ready; false: done.
  absl::StatusOr<bool> Step() {
    if (bind_rc_ != SQLITE_OK) return SqliteError(db_, bind_rc_, "bind");
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteError(db_, rc, sqlite3_sql(stmt_));
  }

  // Runs a statement that returns no rows; returns the rows changed.
  absl::StatusOr<int> Run() {
    ASSIGN_OR_RETURN(bool row, Step());
    (void)row;
    return sqlite3_changes(db_);
  }

  int64_t ColumnInt(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string ColumnText(int col) const {
    const auto* p =
        reinterpret_cast<const char*>(sqlite3_column_blob(stmt_, col));
    return p ? std::string(p, sqlite3_column_bytes(stmt_, col)) : std::string();
  }

 private:
  void Check(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  int bind_rc_ = SQLITE_OK;
};

// Metrics as "name value" lines (names never hold spaces or newlines: the
// service checks them).
std::string EncodeMetrics(const google::protobuf::Map<std::string, double>& m) {
  std::map<std::string, double> sorted(m.begin(), m.end());
  std::string out;
  for (const auto& [name, value] : sorted) {
    absl::StrAppend(&out, name, " ", absl::StrFormat("%.17g", value), "\n");
  }
  return out;
}

void DecodeMetrics(absl::string_view text,
                   google::protobuf::Map<std::string, double>* m) {
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    double value = 0;
    if (!absl::SimpleAtod(line.substr(space + 1), &value)) continue;
    (*m)[std::string(line.substr(0, space))] = value;
  }
}

absl::StatusOr<proto::Job> ReadJob(const Stmt& row) {
  proto::Job job;
  job.set_id(row.ColumnText(1));
  job.set_tenant(row.ColumnText(2));
  job.set_state(static_cast<proto::JobState>(row.ColumnInt(3)));
  job.set_kind(row.ColumnText(4));
  job.set_priority(static_cast<int32_t>(row.ColumnInt(5)));
  job.mutable_resources()->set_min_world_size(
      static_cast<int32_t>(row.ColumnInt(6)));
  job.mutable_resources()->set_max_world_size(
      static_cast<int32_t>(row.ColumnInt(7)));
  job.mutable_resources()->set_memory_bytes(row.ColumnInt(8));
  if (!job.mutable_spec()->ParseFromString(row.ColumnText(9))) {
    return absl::DataLossError(
        absl::StrCat("job ", job.id(), ": stored spec does not parse"));
  }
  job.set_created_unix_ms(row.ColumnInt(10));
  job.set_updated_unix_ms(row.ColumnInt(11));
  job.set_attempts(static_cast<int32_t>(row.ColumnInt(12)));
  job.set_last_error(row.ColumnText(13));
  // Nothing stored (no report yet) leaves the field unset.
  const std::string progress = row.ColumnText(14);
  if (!progress.empty() && !job.mutable_progress()->ParseFromString(progress)) {
    return absl::DataLossError(
        absl::StrCat("job ", job.id(), ": stored progress does not parse"));
  }
  DecodeMetrics(row.ColumnText(15), job.mutable_metrics());
  job.set_world_id(row.ColumnText(16));
  job.set_output_dir(row.ColumnText(17));
  job.set_artifact_dir(row.ColumnText(18));
  job.set_cancel_requested(row.ColumnInt(19) != 0);
  job.mutable_resources()->set_device_kind(
      static_cast<proto::DeviceKind>(row.ColumnInt(20)));
  const std::string estimate = row.ColumnText(21);
  if (!estimate.empty() &&
      !job.mutable_memory_estimate()->ParseFromString(estimate)) {
    return absl::DataLossError(absl::StrCat(
        "job ", job.id(), ": stored memory estimate does not parse"));
  }
  return job;
}

LeaseRecord ReadLease(const Stmt& row) {
  LeaseRecord lease;
  lease.lease_id = row.ColumnText(0);
  lease.job_id = row.ColumnText(1);
  lease.world_id = row.ColumnText(2);
  lease.attempt = static_cast<int32_t>(row.ColumnInt(3));
  lease.granted_at = FromMs(row.ColumnInt(4));
  lease.expires_at = FromMs(row.ColumnInt(5));
  return lease;
}

}  // namespace

// ---------------------------------------------------------------- StoreTxn

absl::Status StoreTxn::CheckWritable() const {
  if (writable_) return absl::OkStatus();
  return absl::FailedPreconditionError(
      "store: a write inside JobStore::Read (use Write)");
}

// Every StoreTxn method runs with store_->db_mu_ held by the thread that
// runs the callback (JobStore::Read, or the leader of a write batch).
#define SHEAF_STMT(var, sql)                                  \
  store_->db_mu_.AssertHeld();                                \
  ASSIGN_OR_RETURN(sqlite3_stmt * var##_raw,                  \
                   store_->PrepareLocked(sql));               \
  Stmt var(store_->db_, var##_raw)

absl::StatusOr<int64_t> StoreTxn::InsertJob(const proto::Job& job) {
  RETURN_IF_ERROR(CheckWritable());
  SHEAF_STMT(stmt,
             "INSERT INTO jobs (id, tenant, state, kind, priority, "
             "min_world_size, max_world_size, memory_bytes, spec, created_ms, "
             "updated_ms, attempts, last_error, progress, metrics, world_id, "
             "output_dir, artifact_dir, cancel_requested, device_kind, "
             "memory_estimate) VALUES "
             "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, "
             "?15, ?16, ?17, ?18, ?19, ?20, ?21)");
  const std::string estimate = job.has_memory_estimate()
                                   ? job.memory_estimate().SerializeAsString()
                                   : std::string();
  const std::string spec = job.spec().SerializeAsString();
  const std::string progress = job.progress().SerializeAsString();
  const std::string metrics = EncodeMetrics(job.metrics());
  stmt.Text(1, job.id())
      .Text(2, job.tenant())
      .Int(3, job.state())
      .Text(4, job.kind())
      .Int(5, job.priority())
      .Int(6, job.resources().min_world_size())
      .Int(7, job.resources().max_world_size())
      .Int(8, job.resources().memory_bytes())
      .Blob(9, spec)
      .Int(10, job.created_unix_ms())
      .Int(11, job.updated_unix_ms())
      .Int(12, job.attempts())
      .Text(13, job.last_error())
      .Blob(14, progress)
      .Text(15, metrics)
      .Text(16, job.world_id())
      .Text(17, job.output_dir())
      .Text(18, job.artifact_dir())
      .Int(19, job.cancel_requested() ? 1 : 0)
      .Int(20, job.resources().device_kind())
      .Blob(21, estimate);
  absl::StatusOr<int> changed = stmt.Run();
  if (!changed.ok()) {
    if (absl::IsAlreadyExists(changed.status())) {
      return absl::AlreadyExistsError(
          absl::StrCat("job id ", job.id(), " is taken"));
    }
    return changed.status();
  }
  return sqlite3_last_insert_rowid(store_->db_);
}

absl::StatusOr<proto::Job> StoreTxn::GetJob(absl::string_view job_id) {
  SHEAF_STMT(stmt, absl::StrCat("SELECT ", kJobColumns,
                                " FROM jobs WHERE id = ?1"));
  stmt.Text(1, job_id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  return ReadJob(stmt);
}

absl::Status StoreTxn::UpdateJob(const proto::Job& job,
                                 proto::JobState expected_state) {
  RETURN_IF_ERROR(CheckWritable());
  int changed = 0;
  {
    SHEAF_STMT(stmt,
               "UPDATE jobs SET state = ?3, updated_ms = ?4, attempts = ?5, "
               "last_error = ?6, progress = ?7, metrics = ?8, world_id = ?9, "
               "artifact_dir = ?10, cancel_requested = ?11 "
               "WHERE id = ?1 AND state = ?2");
    const std::string progress = job.progress().SerializeAsString();
    const std::string metrics = EncodeMetrics(job.metrics());
    stmt.Text(1, job.id())
        .Int(2, expected_state)
        .Int(3, job.state())
        .Int(4, job.updated_unix_ms())
        .Int(5, job.attempts())
        .Text(6, job.last_error())
        .Blob(7, progress)
        .Text(8, metrics)
        .Text(9, job.world_id())
        .Text(10, job.artifact_dir())
        .Int(11, job.cancel_requested() ? 1 : 0);
    ASSIGN_OR_RETURN(changed, stmt.Run());
  }
  if (changed == 1) return absl::OkStatus();
  ASSIGN_OR_RETURN(proto::Job current, GetJob(job.id()));
  return absl::AbortedError(absl::StrCat(
      "job ", job.id(), " is ", proto::JobState_Name(current.state()),
      ", not ", proto::JobState_Name(expected_state)));
}

absl::StatusOr<JobPage> StoreTxn::ListJobs(const JobQuery& query) {
  std::string sql = absl::StrCat("SELECT ", kJobColumns,
                                 " FROM jobs WHERE seq > ?1");
  if (!query.tenant.empty()) absl::StrAppend(&sql, " AND tenant = ?2");
  if (query.state != proto::JOB_STATE_UNSPECIFIED) {
    absl::StrAppend(&sql, " AND state = ?3");
  }
  if (!query.kind.empty()) absl::StrAppend(&sql, " AND kind = ?4");
  absl::StrAppend(&sql, " ORDER BY seq LIMIT ?5");
  SHEAF_STMT(stmt, sql);
  stmt.Int(1, query.after_seq).Int(5, query.limit + 1);
  if (!query.tenant.empty()) stmt.Text(2, query.tenant);
  if (query.state != proto::JOB_STATE_UNSPECIFIED) stmt.Int(3, query.state);
  if (!query.kind.empty()) stmt.Text(4, query.kind);
  JobPage page;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    if (static_cast<int>(page.jobs.size()) == query.limit) {
      page.more = true;
      break;
    }
    ASSIGN_OR_RETURN(proto::Job job, ReadJob(stmt));
    page.jobs.push_back(std::move(job));
    page.seqs.push_back(stmt.ColumnInt(0));
  }
  return page;
}

absl::StatusOr<std::optional<proto::Job>> StoreTxn::NextPendingJob(
    int32_t world_size, int64_t memory_bytes, proto::DeviceKind device_kind,
    const std::function<bool(const proto::Job&)>& fits) {
  // Unset (0) is cpu on both sides.
  SHEAF_STMT(stmt,
             absl::StrCat("SELECT ", kJobColumns,
                          " FROM jobs WHERE state = ?1 AND min_world_size <= "
                          "?2 AND (max_world_size = 0 OR max_world_size >= ?2) "
                          "AND memory_bytes <= ?3 "
                          "AND (CASE device_kind WHEN 0 THEN ?5 ELSE "
                          "device_kind END) = ?4 "
                          "ORDER BY priority DESC, seq"));
  const proto::DeviceKind world_kind =
      device_kind == proto::DEVICE_KIND_UNSPECIFIED ? proto::DEVICE_KIND_CPU
                                                    : device_kind;
  stmt.Int(1, proto::JOB_STATE_PENDING)
      .Int(2, world_size)
      .Int(3, memory_bytes)
      .Int(4, world_kind)
      .Int(5, proto::DEVICE_KIND_CPU);
  // In order, the first that `fits` too (a job the SQL filter passes but
  // whose memory estimate exceeds this world is skipped, not blocking the
  // queue behind it).
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return std::optional<proto::Job>();
    ASSIGN_OR_RETURN(proto::Job job, ReadJob(stmt));
    if (!fits || fits(job)) return std::optional<proto::Job>(std::move(job));
  }
}

absl::StatusOr<std::map<proto::JobState, int64_t>>
StoreTxn::CountJobsByState() {
  SHEAF_STMT(stmt, "SELECT state, COUNT(*) FROM jobs GROUP BY state");
  std::map<proto::JobState, int64_t> counts;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    counts[static_cast<proto::JobState>(stmt.ColumnInt(0))] =
        stmt.ColumnInt(1);
  }
  return counts;
}

absl::StatusOr<std::vector<proto::Job>> StoreTxn::LeasedJobsWithoutLease() {
  SHEAF_STMT(stmt, absl::StrCat("SELECT ", kJobColumns,
                                " FROM jobs WHERE state IN (?1, ?2) AND id NOT "
                                "IN (SELECT job_id FROM leases)"));
  stmt.Int(1, proto::JOB_STATE_LEASED).Int(2, proto::JOB_STATE_RUNNING);
  std::vector<proto::Job> jobs;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(proto::Job job, ReadJob(stmt));
    jobs.push_back(std::move(job));
  }
  return jobs;
}

absl::Status StoreTxn::InsertLease(const LeaseRecord& lease) {
  RETURN_IF_ERROR(CheckWritable());
  SHEAF_STMT(stmt, absl::StrCat("INSERT INTO leases (", kLeaseColumns,
                                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
  stmt.Text(1, lease.lease_id)
      .Text(2, lease.job_id)
      .Text(3, lease.world_id)
      .Int(4, lease.attempt)
      .Int(5, ToMs(lease.granted_at))
      .Int(6, ToMs(lease.expires_at));
  absl::StatusOr<int> changed = stmt.Run();
  if (!changed.ok() && absl::IsAlreadyExists(changed.status())) {
    return absl::AlreadyExistsError(absl::StrCat(
        "lease ", lease.lease_id, " or a lease on job ", lease.job_id,
        " exists"));
  }
  return changed.status();
}

absl::StatusOr<LeaseRecord> StoreTxn::GetLease(absl::string_view lease_id) {
  SHEAF_STMT(stmt, absl::StrCat("SELECT ", kLeaseColumns,
                                " FROM leases WHERE lease_id = ?1"));
  stmt.Text(1, lease_id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no lease ", lease_id));
  return ReadLease(stmt);
}

absl::Status StoreTxn::RenewLease(absl::string_view lease_id,
                                  absl::Time expires_at) {
  RETURN_IF_ERROR(CheckWritable());
  SHEAF_STMT(stmt, "UPDATE leases SET expires_ms = ?2 WHERE lease_id = ?1");
  stmt.Text(1, lease_id).Int(2, ToMs(expires_at));
  ASSIGN_OR_RETURN(int changed, stmt.Run());
  if (changed == 0) {
    return absl::NotFoundError(absl::StrCat("no lease ", lease_id));
  }
  return absl::OkStatus();
}

absl::Status StoreTxn::DeleteLease(absl::string_view lease_id) {
  RETURN_IF_ERROR(CheckWritable());
  SHEAF_STMT(stmt, "DELETE FROM leases WHERE lease_id = ?1");
  stmt.Text(1, lease_id);
  ASSIGN_OR_RETURN(int changed, stmt.Run());
  if (changed == 0) {
    return absl::NotFoundError(absl::StrCat("no lease ", lease_id));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LeaseRecord>> StoreTxn::LeasesExpiredBefore(
    absl::Time now) {
  SHEAF_STMT(stmt, absl::StrCat("SELECT ", kLeaseColumns,
                                " FROM leases WHERE expires_ms < ?1 "
                                "ORDER BY expires_ms"));
  stmt.Int(1, ToMs(now));
  std::vector<LeaseRecord> leases;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    leases.push_back(ReadLease(stmt));
  }
  return leases;
}

absl::StatusOr<int64_t> StoreTxn::CountLeases() {
  SHEAF_STMT(stmt, "SELECT COUNT(*) FROM leases");
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  return row ? stmt.ColumnInt(0) : 0;
}

absl::Status StoreTxn::InsertWorld(const WorldRecord& world) {
  RETURN_IF_ERROR(CheckWritable());
  SHEAF_STMT(stmt,
             "INSERT INTO worlds (world_id, hostname, world_size, "
             "memory_bytes, info, registered_ms) VALUES "
             "(?1, ?2, ?3, ?4, ?5, ?6)");
  const std::string info = world.info.SerializeAsString();
  stmt.Text(1, world.world_id)
      .Text(2, world.info.hostname())
      .Int(3, world.info.world_size())
      .Int(4, world.info.memory_bytes())
      .Blob(5, info)
      .Int(6, ToMs(world.registered_at));
  absl::StatusOr<int> changed = stmt.Run();
  if (!changed.ok() && absl::IsAlreadyExists(changed.status())) {
    return absl::AlreadyExistsError(
        absl::StrCat("world id ", world.world_id, " is taken"));
  }
  return changed.status();
}

absl::StatusOr<WorldRecord> StoreTxn::GetWorld(absl::string_view world_id) {
  SHEAF_STMT(stmt,
             "SELECT world_id, info, registered_ms FROM worlds "
             "WHERE world_id = ?1");
  stmt.Text(1, world_id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no world ", world_id));
  WorldRecord world;
  world.world_id = stmt.ColumnText(0);
  if (!world.info.ParseFromString(stmt.ColumnText(1))) {
    return absl::DataLossError(
        absl::StrCat("world ", world_id, ": stored info does not parse"));
  }
  world.registered_at = FromMs(stmt.ColumnInt(2));
  return world;
}

#undef SHEAF_STMT

// ---------------------------------------------------------------- JobStore

JobStore::JobStore(const StoreOptions& options, sqlite3* db)
    : options_(options), db_(db) {}

JobStore::~JobStore() {
  absl::MutexLock lock(&db_mu_);
  for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
  statements_.clear();
  // A clean close checkpoints the WAL into the database file.
  sqlite3_close(db_);
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(
    const StoreOptions& options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("store: no database path given");
  }
  sqlite3* db = nullptr;
  // FULLMUTEX is not needed: db_mu_ serialises every use of the handle.
  const int rc = sqlite3_open_v2(
      options.path.c_str(), &db,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
      nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status =
        SqliteError(db, rc, absl::StrCat("open ", options.path));
    sqlite3_close(db);
    return status;
  }
  sqlite3_extended_result_codes(db, 1);
  std::unique_ptr<JobStore> store(new JobStore(options, db));
  absl::MutexLock lock(&store->db_mu_);
  absl::Status status = store->InitSchemaLocked();
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat(options.path, ": ",
                                                    status.message()));
  }
  return store;
}

absl::Status JobStore::ExecLocked(absl::string_view sql) {
  char* error = nullptr;
  const std::string text(sql);
  const int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &error);
  if (rc == SQLITE_OK) return absl::OkStatus();
  std::string message = error ? error : sqlite3_errstr(rc);
  sqlite3_free(error);
  if ((rc & 0xff) == SQLITE_BUSY) {
    message += " (another coordinator is using this database?)";
  }
  return absl::Status(CodeForSqlite(rc),
                      absl::StrCat("sqlite: ", text, ": ", message));
}

absl::Status JobStore::InitSchemaLocked() {
  // How long to wait for another process's lock before giving up.
  sqlite3_busy_timeout(db_, 2000);
  // Exclusive locking before the first WAL access: no shared-memory index,
  // and the lock taken by the first write below is kept until close.
  RETURN_IF_ERROR(ExecLocked("PRAGMA locking_mode = EXCLUSIVE"));
  {
    ASSIGN_OR_RETURN(sqlite3_stmt * raw,
                     PrepareLocked("PRAGMA journal_mode = WAL"));
    Stmt stmt(db_, raw);
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row || stmt.ColumnText(0) != "wal") {
      return absl::FailedPreconditionError(
          "sqlite: could not switch the database to WAL mode");
    }
  }
  RETURN_IF_ERROR(ExecLocked(options_.sync == SyncMode::kFull
                                 ? "PRAGMA synchronous = FULL"
                                 : "PRAGMA synchronous = NORMAL"));
  RETURN_IF_ERROR(ExecLocked("PRAGMA foreign_keys = ON"));

  RETURN_IF_ERROR(ExecLocked("BEGIN IMMEDIATE"));
  absl::Status status = [&]() -> absl::Status {
    bool has_version_table = false;
    {
      ASSIGN_OR_RETURN(
          sqlite3_stmt * raw,
          PrepareLocked("SELECT COUNT(*) FROM sqlite_master WHERE type = "
                        "'table' AND name = 'schema_version'"));
      Stmt stmt(db_, raw);
      ASSIGN_OR_RETURN(bool row, stmt.Step());
      has_version_table = row && stmt.ColumnInt(0) > 0;
    }
    if (!has_version_table) {
      for (const char* sql : kSchema) RETURN_IF_ERROR(ExecLocked(sql));
      RETURN_IF_ERROR(ExecLocked(absl::StrCat(
          "INSERT INTO schema_version (version) VALUES (",
          kStoreSchemaVersion, ")")));
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(sqlite3_stmt * raw,
                     PrepareLocked("SELECT MAX(version) FROM schema_version"));
    Stmt stmt(db_, raw);
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    const int64_t version = row ? stmt.ColumnInt(0) : 0;
    if (version > kStoreSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "database schema version ", version,
          " is newer than this coordinator's (", kStoreSchemaVersion, ")"));
    }
    if (version < 1) {
      return absl::DataLossError("schema_version table holds no version");
    }
    // Version 1 is the first; later versions migrate here, step by step.
    if (version < 2) {
      // 2: jobs.device_kind (ResourceRequest.device_kind); old jobs are
      // unset, which is cpu.
      RETURN_IF_ERROR(ExecLocked(
          "ALTER TABLE jobs ADD COLUMN device_kind INTEGER NOT NULL DEFAULT 0"));
      RETURN_IF_ERROR(
          ExecLocked("UPDATE schema_version SET version = 2"));
    }
    if (version < 3) {
      // 3: jobs.memory_estimate (Job.memory_estimate); old jobs have none
      // (unknown: the world checks before it allocates).
      RETURN_IF_ERROR(ExecLocked(
          "ALTER TABLE jobs ADD COLUMN memory_estimate BLOB NOT NULL "
          "DEFAULT x''"));
      RETURN_IF_ERROR(
          ExecLocked("UPDATE schema_version SET version = 3"));
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    ExecLocked("ROLLBACK").IgnoreError();
    return status;
  }
  return ExecLocked("COMMIT");
}

absl::StatusOr<sqlite3_stmt*> JobStore::PrepareLocked(absl::string_view sql) {
  auto it = statements_.find(sql);
  if (it != statements_.end()) return it->second;
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                                    SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    return SqliteError(db_, rc, absl::StrCat("prepare ", sql));
  }
  statements_.emplace(std::string(sql), stmt);
  return stmt;
}

absl::Status JobStore::RunCachedLocked(absl::string_view sql) {
  ASSIGN_OR_RETURN(sqlite3_stmt * raw, PrepareLocked(sql));
  Stmt stmt(db_, raw);
  return stmt.Run().status();
}

void JobStore::CommitBatch(const std::vector<PendingWrite*>& batch) {
  absl::MutexLock lock(&db_mu_);
  absl::Status begin = RunCachedLocked("BEGIN IMMEDIATE");
  if (!begin.ok()) {
    for (PendingWrite* w : batch) w->status = begin;
    return;
  }
  StoreTxn txn(this, /*writable=*/true);
  for (PendingWrite* w : batch) {
    absl::Status status = RunCachedLocked("SAVEPOINT one_write");
    if (status.ok()) {
      status = w->fn(txn);
      if (!status.ok()) {
        RunCachedLocked("ROLLBACK TO one_write").IgnoreError();
      }
      absl::Status release = RunCachedLocked("RELEASE one_write");
      if (status.ok()) status = release;
    }
    w->status = status;
  }
  absl::Status commit = RunCachedLocked("COMMIT");
  if (!commit.ok()) {
    RunCachedLocked("ROLLBACK").IgnoreError();
    for (PendingWrite* w : batch) {
      if (w->status.ok()) w->status = commit;
    }
  }
}

absl::Status JobStore::Write(absl::FunctionRef<absl::Status(StoreTxn&)> fn) {
  PendingWrite mine{fn, absl::OkStatus(), false};
  std::vector<PendingWrite*> batch;
  {
    absl::MutexLock lock(&queue_mu_);
    queue_.push_back(&mine);
    // Wait until a leader has committed this write, or until no commit is
    // in flight (then this thread leads the next batch).
    auto ready = [this, &mine]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
      return mine.done || !leader_active_;
    };
    queue_mu_.Await(absl::Condition(&ready));
    if (mine.done) return mine.status;
    leader_active_ = true;
    const size_t n = std::min<size_t>(queue_.size(), options_.max_batch);
    // Oldest first, and this write is among them: only a leader takes
    // writes from the queue, and every earlier leader has finished.
    batch.assign(queue_.begin(), queue_.begin() + n);
    queue_.erase(queue_.begin(), queue_.begin() + n);
  }
  // This write may be beyond max_batch in a long queue; keep leading until
  // it is committed.
  bool committed_mine = false;
  while (!committed_mine) {
    CommitBatch(batch);
    absl::MutexLock lock(&queue_mu_);
    for (PendingWrite* w : batch) {
      if (w == &mine) committed_mine = true;
      if (w->status.ok()) ++writes_committed_;
      w->done = true;
    }
    ++batches_committed_;
    if (committed_mine) {
      leader_active_ = false;
      break;
    }
    const size_t n = std::min<size_t>(queue_.size(), options_.max_batch);
    batch.assign(queue_.begin(), queue_.begin() + n);
    queue_.erase(queue_.begin(), queue_.begin() + n);
  }
  return mine.status;
}

absl::Status JobStore::Read(absl::FunctionRef<absl::Status(StoreTxn&)> fn) {
  // Only this process writes (exclusive locking) and every write holds
  // db_mu_, so the database does not change under a reader holding it.
  absl::MutexLock lock(&db_mu_);
  StoreTxn txn(this, /*writable=*/false);
  return fn(txn);
}

int64_t JobStore::writes_committed() const {
  absl::MutexLock lock(&queue_mu_);
  return writes_committed_;
}

int64_t JobStore::batches_committed() const {
  absl::MutexLock lock(&queue_mu_);
  return batches_committed_;
}

}  // namespace sheaf::coordinator
