#include "worker/worker.h"

#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/allocation.h"
#include "base/file.h"
#include "base/open_beneath.h"
#include "base/sha256.h"
#include "core/spec/memory_estimate.h"
#include "base/status.h"
#include "core/spec/yaml.h"
#include "worker/log_tee.h"

namespace sheaf::worker {
namespace {

namespace fs = std::filesystem;

// One rank's record, sent to rank 0 at start (fixed size: a broadcast
// moves the same number of bytes on every rank).
struct RankRecord {
  int64_t memory_bytes = 0;
  int32_t cores = 0;
  char host[116] = {};
};
static_assert(sizeof(RankRecord) == 128);

constexpr char kStoppedError[] = "worker stopped (SIGTERM)";

int LocalRanks() {
  if (absl::StatusOr<dist::RankInfo> info = dist::DiscoverRank(); info.ok()) {
    return std::max(1, info->local_size);
  }
  return 1;
}

proto::Progress ToProto(const TrainProgress& p) {
  proto::Progress out;
  out.set_step(p.step);
  out.set_total_steps(p.total_steps);
  out.set_loss(p.loss);
  if (p.val_loss >= 0) out.set_val_loss(p.val_loss);
  out.set_tokens_per_s(p.tokens_per_s);
  out.set_eta_s(p.eta_s);
  out.set_phase("train");
  return out;
}

// Errors the coordinator answers for a request that will never succeed.
bool IsFinalRpcError(const absl::Status& s) {
  return absl::IsUnauthenticated(s) || absl::IsPermissionDenied(s) ||
         absl::IsInvalidArgument(s) || absl::IsFailedPrecondition(s) ||
         absl::IsNotFound(s);
}

// The file in an output_dir that names the job whose run it holds.
constexpr char kJobMarker[] = ".sheaf-job";
// Which lease holds output_dir now: the SHA-256 of its id (lease ids are
// capabilities; the directory is the tenant's).
constexpr char kLeaseMarker[] = ".sheaf-lease";

std::string LeaseDigest(const std::string& lease_id) {
  Sha256 h;
  h.Update(lease_id);
  return HexDigest(h.Finish());
}

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

absl::StatusOr<OutputClaim> ClaimOutputDir(const std::string& dir, const std::string& job_id) {
  const fs::path marker = fs::path(dir) / kJobMarker;
  for (int tries = 0; tries < 3; ++tries) {
    std::error_code error;
    if (fs::exists(marker, error)) {
      absl::StatusOr<std::string> text = ReadFileToString(marker.string());
      if (!text.ok()) return absl::UnavailableError(text.status().message());
      const std::string owner = Trimmed(*text);
      if (owner.empty()) {
        // A claim being written right now (or torn): look again.
        absl::SleepFor(absl::Milliseconds(50));
        continue;
      }
      if (owner == job_id) return OutputClaim::kResume;
      return absl::FailedPreconditionError(
          absl::StrCat("output_dir ", dir, " holds job ", owner,
                       "'s run; submit with another output_dir"));
    }
    // No claim: the directory must not hold a run of something else (a
    // `sheaf train` run, or one from before claims existed).
    const fs::path checkpoints = fs::path(dir) / "checkpoints";
    if (fs::exists(checkpoints, error) && !fs::is_empty(checkpoints, error)) {
      return absl::FailedPreconditionError(
          absl::StrCat("output_dir ", dir,
                       " holds checkpoints of another run (it has no ", kJobMarker,
                       " naming this job); submit with another output_dir"));
    }
    // Claim it atomically: write a temporary file, then link it into place
    // (link fails when another claim got there first).
    const std::string tmp = absl::StrCat(marker.string(), ".tmp.", getpid(), ".",
                                         absl::ToUnixNanos(absl::Now()));
    {
      std::ofstream f(tmp, std::ios::trunc);
      f << job_id << "\n";
      f.flush();
      if (!f) {
        std::remove(tmp.c_str());
        return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
      }
    }
    const int linked = link(tmp.c_str(), marker.c_str());
    const int link_errno = errno;
    std::remove(tmp.c_str());
    if (linked == 0) return OutputClaim::kFresh;
    if (link_errno != EEXIST) {
      return absl::UnavailableError(absl::StrCat("cannot create ", marker.string(), ": ",
                                                 std::strerror(link_errno)));
    }
    // Someone claimed it meanwhile: read whose it is.
  }
  return absl::UnavailableError(absl::StrCat("cannot read the claim in ", marker.string()));
}

bool IsPermanentFailure(const absl::Status& status) {
  // DataLoss: a truncated or corrupt input file; FailedPrecondition: a run
  // that diverged (NaN loss), another job's output_dir. Each fails the
  // same way on every attempt (issue 9, item 10).
  return absl::IsInvalidArgument(status) || absl::IsNotFound(status) ||
         absl::IsUnimplemented(status) || absl::IsDataLoss(status) ||
         absl::IsFailedPrecondition(status) || absl::IsPermissionDenied(status);
}

namespace {

// Runs `f`, turning an exception (std::bad_alloc from a job too large for
// this rank, anything else a library throws) into an error of the job, so
// that no spec takes the world down (issue 9, item 1).
template <typename F>
auto GuardJobCall(absl::string_view what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": out of memory on this rank (lower train.batch_size, data.seq_len "
                           "or the adapter's rank, or ask for more memory)"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

}  // namespace

absl::Status CheckJobFitsRank(const proto::JobSpec& spec, int world_size, int64_t memory_bytes) {
  if (memory_bytes <= 0) return absl::OkStatus();
  absl::StatusOr<ModelConfig> shape = JobModelShape(spec);
  // Unreadable config.json: the recipe's setup reports it.
  if (!shape.ok()) return absl::OkStatus();
  const std::optional<MemoryEstimate> estimate = EstimateJobMemory(spec, *shape);
  if (!estimate.has_value() || estimate->PerRank(world_size) <= memory_bytes) {
    return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "the job needs ", estimate->Describe(world_size), "; this rank has ",
      FormatBytes(memory_bytes), " (core/spec/memory_estimate.h)"));
}

Worker::Worker(WorkerOptions options, dist::Communicator* comm)
    : options_(std::move(options)),
      comm_(comm),
      world_rank_(comm ? comm->world_rank() : 0),
      world_size_(comm ? comm->world_size() : 1),
      sync_(comm, absl::ToChronoMilliseconds(options_.control_timeout)) {}

Worker::~Worker() = default;

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(WorkerOptions options,
                                                       dist::Communicator* comm) {
  std::unique_ptr<Worker> w(new Worker(std::move(options), comm));
  ASSIGN_OR_RETURN(w->paths_, PathPolicy::Create(w->options_.roots));
  // Every open of a job's files resolves beneath these (base/open_beneath.h):
  // a symlink that leads out of a root is refused at open time.
  RETURN_IF_ERROR(SetOpenRoots({{"model root", w->paths_->model_root().string()},
                                {"data root", w->paths_->data_root().string()},
                                {"output root", w->paths_->output_root().string()}}));
  if (w->is_root()) {
    ASSIGN_OR_RETURN(w->client_, CoordinatorClient::Create(w->options_.client));
  }
  w->backoff_ = absl::Milliseconds(250);
  return w;
}

void Worker::Log(absl::string_view line) const {
  if (options_.log && is_root()) {
    options_.log(line);
    return;
  }
  const std::string stamp = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  const std::string who =
      is_root() ? "sheaf-worker" : absl::StrCat("sheaf-worker[rank ", world_rank_, "]");
  std::fprintf(stderr, "%s %s: %.*s\n", stamp.c_str(), who.c_str(),
               static_cast<int>(line.size()), line.data());
  std::fflush(stderr);
}

void Worker::RequestStop() {
  {
    absl::MutexLock lock(&mu_);
    stop_requested_ = true;
    if (recipe_ != nullptr) recipe_->RequestStop();
  }
  stop_sleep_.Stop();
  if (client_) client_->CancelAcquire();
}

void Worker::StopCurrentJob() {
  absl::MutexLock lock(&mu_);
  job_stop_ = true;
  if (recipe_ != nullptr) recipe_->RequestStop();
}

bool Worker::stop_requested() const {
  absl::MutexLock lock(&mu_);
  return stop_requested_;
}

void Worker::SleepUnlessStopped(absl::Duration d) {
  // On CLOCK_MONOTONIC (base/monotonic_sleep.h): Abseil's timed waits
  // follow the wall clock, and a host clock stepped back would stretch the
  // backoff by the step.
  stop_sleep_.SleepUnlessStopped(d);
}

WorkerStats Worker::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

std::string Worker::world_id() const {
  absl::MutexLock lock(&mu_);
  return world_id_copy_;
}

// ---- Collectives ----

absl::Status Worker::BroadcastFromRoot(std::string* bytes) {
  if (world_size_ == 1) return absl::OkStatus();
  const auto timeout = absl::ToChronoMilliseconds(options_.control_timeout);
  int64_t size = static_cast<int64_t>(bytes->size());
  RETURN_IF_ERROR(comm_->Broadcast(&size, sizeof(size), 0, dist::Purpose::kPurposeControl)
                      ->Wait(timeout));
  bytes->resize(static_cast<size_t>(size));
  if (size == 0) return absl::OkStatus();
  return comm_->Broadcast(bytes->data(), size, 0, dist::Purpose::kPurposeControl)->Wait(timeout);
}

absl::Status Worker::Introduce() {
  RankRecord mine;
  mine.memory_bytes =
      options_.memory_bytes > 0 ? options_.memory_bytes : AllocatedMemoryBytes(LocalRanks());
  mine.cores = static_cast<int32_t>(AllocatedCpus());
  gethostname(mine.host, sizeof(mine.host) - 1);
  std::vector<RankRecord> records(static_cast<size_t>(world_size_));
  records[static_cast<size_t>(world_rank_)] = mine;
  const auto timeout = absl::ToChronoMilliseconds(options_.control_timeout);
  for (int r = 0; r < world_size_ && world_size_ > 1; ++r) {
    RETURN_IF_ERROR(comm_->Broadcast(&records[static_cast<size_t>(r)], sizeof(RankRecord), r,
                                     dist::Purpose::kPurposeControl)
                        ->Wait(timeout));
  }
  if (!is_root()) return absl::OkStatus();
  world_info_.set_world_size(world_size_);
  int64_t memory = 0;
  for (int r = 0; r < world_size_; ++r) {
    RankRecord& rec = records[static_cast<size_t>(r)];
    rec.host[sizeof(rec.host) - 1] = '\0';
    world_info_.add_devices(absl::StrCat("cpu:", r, " ", rec.host, " ", rec.cores, " cores"));
    if (r == 0 || rec.memory_bytes < memory) memory = rec.memory_bytes;
  }
  world_info_.set_memory_bytes(memory);
  world_info_.set_hostname(records[0].host);
  // Every rank computes on the CPU backend today.
  world_info_.set_device_kind(proto::DEVICE_KIND_CPU);
  return absl::OkStatus();
}

// ---- The loop ----

absl::Status Worker::Run() {
  RETURN_IF_ERROR(Introduce());
  idle_since_ = absl::Now();
  while (true) {
    Decision d;
    if (is_root()) d = Poll();
    // SIGTERM may reach any rank first; every rank's vote counts.
    jobs::Vote stop_vote(stop_requested());
    RETURN_IF_ERROR(sync_.Tally({&stop_vote}));
    if (is_root() && stop_vote.any() && d.command != Command::kCommandExit) {
      if (d.command == Command::kCommandJob) {
        // Leased just as the world was told to stop: give it back at once.
        proto::CompleteJobRequest give_back;
        give_back.set_lease_id(d.lease.lease_id());
        give_back.set_error(kStoppedError);
        give_back.set_released(true);
        Log(absl::StrCat("stopping: giving job ", d.lease.job_id(), " back"));
        Complete(give_back, d.lease_received + absl::Milliseconds(d.lease.ttl_ms()));
        absl::MutexLock lock(&mu_);
        ++stats_.given_back;
      }
      d = Decision();
      d.command = Command::kCommandExit;
    }
    // The control message: one byte of Command, then the serialized Lease
    // (a job) or a status code and message (exit).
    std::string message;
    if (is_root()) {
      message.assign(1, static_cast<char>(d.command));
      if (d.command == Command::kCommandJob) {
        message += d.lease.SerializeAsString();
      } else if (d.command == Command::kCommandExit) {
        const int32_t code = static_cast<int32_t>(d.exit_status.code());
        message.append(reinterpret_cast<const char*>(&code), sizeof(code));
        message += std::string(d.exit_status.message());
      }
    }
    RETURN_IF_ERROR(BroadcastFromRoot(&message));
    if (message.empty()) return absl::InternalError("empty control message from rank 0");
    const Command command = static_cast<Command>(message[0]);
    if (command == Command::kCommandNone) continue;
    if (command == Command::kCommandExit) {
      if (message.size() < 1 + sizeof(int32_t)) return absl::InternalError("bad exit message");
      int32_t code;
      std::memcpy(&code, message.data() + 1, sizeof(code));
      return absl::Status(static_cast<absl::StatusCode>(code), message.substr(1 + sizeof(code)));
    }
    proto::Lease lease;
    if (command != Command::kCommandJob || !lease.ParseFromString(message.substr(1))) {
      return absl::InternalError("undecodable control message from rank 0");
    }
    RETURN_IF_ERROR(RunJob(lease, d.lease_received));
    idle_since_ = absl::Now();
    if (options_.once) return absl::OkStatus();
  }
}

Worker::Decision Worker::Poll() {
  Decision d;
  if (stop_requested()) {
    Log("stop requested: the world exits");
    d.command = Command::kCommandExit;
    return d;
  }
  const absl::Time now = absl::Now();
  if (options_.idle_exit > absl::ZeroDuration() && now - idle_since_ >= options_.idle_exit) {
    Log(absl::StrCat("no job for ", absl::FormatDuration(options_.idle_exit), ": the world exits"));
    d.command = Command::kCommandExit;
    return d;
  }
  auto back_off = [&](absl::string_view what, const absl::Status& s) {
    Log(absl::StrCat(what, " at ", client_->target(), ": ", s.ToString(), " (retrying in ",
                     absl::FormatDuration(backoff_), ")"));
    SleepUnlessStopped(backoff_);
    backoff_ = std::min(backoff_ * 2, options_.max_backoff);
  };
  if (world_id_.empty()) {
    absl::StatusOr<proto::RegisterWorldResponse> r =
        client_->RegisterWorld(world_info_, absl::Seconds(10));
    if (!r.ok()) {
      if (absl::IsUnauthenticated(r.status()) || absl::IsPermissionDenied(r.status()) ||
          absl::IsInvalidArgument(r.status())) {
        d.command = Command::kCommandExit;
        d.exit_status = absl::Status(r.status().code(),
                                     absl::StrCat("the coordinator refuses the world: ",
                                                  r.status().message()));
        Log(d.exit_status.message());
        return d;
      }
      back_off("RegisterWorld", r.status());
      return d;
    }
    world_id_ = r->world_id();
    {
      absl::MutexLock lock(&mu_);
      world_id_copy_ = world_id_;
    }
    backoff_ = absl::Milliseconds(250);
    Log(absl::StrCat("registered world ", world_id_, " (", world_size_, " ranks, ",
                     world_info_.memory_bytes() >> 20, " MiB per rank) at ", client_->target(),
                     "; lease ttl ", r->lease_ttl_ms(), " ms, heartbeat every ",
                     r->heartbeat_interval_ms(), " ms; this rank has ",
                     DescribeAllocation(ProcessAllocationSources(), LocalRanks())));
  }
  absl::Duration wait = options_.acquire_wait;
  if (options_.idle_exit > absl::ZeroDuration()) {
    wait = std::clamp(idle_since_ + options_.idle_exit - absl::Now(), absl::ZeroDuration(), wait);
  }
  proto::AcquireJobRequest request;
  request.set_world_id(world_id_);
  request.set_wait_ms(absl::ToInt64Milliseconds(wait));
  absl::StatusOr<proto::AcquireJobResponse> r =
      client_->AcquireJob(request, wait + absl::Seconds(10));
  if (r.ok()) {
    backoff_ = absl::Milliseconds(250);
    if (r->has_lease()) {
      d.command = Command::kCommandJob;
      d.lease = r->lease();
      d.lease_received = absl::Now();
    }
    return d;
  }
  if (absl::IsCancelled(r.status()) && stop_requested()) return d;
  if (absl::IsNotFound(r.status())) {
    Log(absl::StrCat("the coordinator does not know world ", world_id_, ": registering again"));
    world_id_.clear();
    return d;
  }
  if (absl::IsUnauthenticated(r.status()) || absl::IsPermissionDenied(r.status())) {
    d.command = Command::kCommandExit;
    d.exit_status = absl::Status(r.status().code(), absl::StrCat("the coordinator refuses the world: ",
                                                                 r.status().message()));
    Log(d.exit_status.message());
    return d;
  }
  back_off("AcquireJob", r.status());
  return d;
}

bool Worker::Complete(const proto::CompleteJobRequest& request, absl::Time give_up) {
  absl::Duration backoff = absl::Milliseconds(250);
  while (true) {
    const absl::Duration timeout =
        std::clamp(give_up - absl::Now(), absl::Seconds(1), absl::Seconds(10));
    absl::StatusOr<proto::CompleteJobResponse> r = client_->CompleteJob(request, timeout);
    if (r.ok()) {
      Log(absl::StrCat("completed the lease: the job is now ", proto::JobState_Name(r->state())));
      return true;
    }
    if (IsFinalRpcError(r.status())) {
      Log(absl::StrCat("CompleteJob refused: ", r.status().ToString()));
      return false;
    }
    const absl::Time now = absl::Now();
    if (now >= give_up) {
      Log(absl::StrCat("CompleteJob: ", r.status().ToString(),
                       "; giving up, the lease has expired (the coordinator will re-lease "
                       "the job and it resumes from its last checkpoint)"));
      return false;
    }
    Log(absl::StrCat("CompleteJob: ", r.status().ToString(), " (retrying)"));
    absl::SleepFor(std::min(backoff, give_up - now));
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

absl::StatusOr<proto::JobSpec> Worker::CheckSpec(const proto::Lease& lease) const {
  if (lease.tenant().empty()) {
    return absl::InvalidArgumentError("the lease names no tenant");
  }
  proto::JobSpec spec = lease.spec();
  const std::string output = lease.output_dir().empty() ? spec.output_dir() : lease.output_dir();
  if (output.empty()) return absl::InvalidArgumentError("the lease names no output_dir");
  // The coordinator resolved every path inside ITS roots; this world opens
  // only what also lies inside its own.
  absl::Status s = paths_->ResolveSpecPaths(&spec, lease.tenant(), output);
  absl::StatusOr<fs::path> resolved = paths_->ResolveOutput(lease.tenant(), "output_dir", output);
  if (s.ok() && !resolved.ok()) s = resolved.status();
  if (!s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("this world's roots refuse the job: ", s.message()));
  }
  spec.set_output_dir(resolved->string());
  return spec;
}

absl::Status Worker::RunJob(const proto::Lease& lease, absl::Time received) {
  {
    absl::MutexLock lock(&mu_);
    job_stop_ = false;
    ++stats_.jobs;
  }
  const absl::Duration ttl = absl::Milliseconds(lease.ttl_ms() > 0 ? lease.ttl_ms() : 30000);
  absl::StatusOr<proto::JobSpec> spec = CheckSpec(lease);
  // A refusal of paths that lie inside this world's roots as written is
  // about the files (a symlink swapped in after submit leads out): the
  // job fails, the world goes on. Paths outside the roots as written mean
  // the world's roots differ from the coordinator's (issue 9, item 3).
  const std::string lease_output =
      lease.output_dir().empty() ? lease.spec().output_dir() : lease.output_dir();
  const bool files_refused =
      !spec.ok() && paths_->SpecPathsLexicallyInside(lease.spec(), lease.tenant()) &&
      PathPolicy::LexicallyInside(paths_->TenantOutputRoot(lease.tenant()), lease_output);
  const bool paths_refused = !spec.ok() && !files_refused;
  std::unique_ptr<StderrTee> tee;
  // Rank 0: whose run output_dir holds (this job's, or nobody's yet).
  absl::Status claim = absl::OkStatus();
  if (is_root() && spec.ok()) {
    std::error_code error;
    fs::create_directories(spec->output_dir(), error);
    if (error) {
      claim = absl::UnavailableError(absl::StrCat("output_dir: cannot create ",
                                                  spec->output_dir(), ": ", error.message()));
    } else if (absl::StatusOr<OutputClaim> c = ClaimOutputDir(spec->output_dir(), lease.job_id());
               !c.ok()) {
      claim = c.status();
    } else if (absl::Status w = WriteFileAtomically(spec->output_dir() + "/" + kLeaseMarker,
                                                    LeaseDigest(lease.lease_id()) + "\n");
               !w.ok()) {
      claim = absl::UnavailableError(w.message());
    } else if (options_.log_to_output) {
      absl::StatusOr<std::unique_ptr<StderrTee>> t =
          StderrTee::Start(spec->output_dir() + "/train.log");
      if (t.ok()) {
        tee = std::move(*t);
      } else {
        Log(absl::StrCat("warning: no train.log: ", t.status().ToString()));
      }
    }
  }
  if (is_root()) {
    Log(absl::StrCat("job ", lease.job_id(), " (tenant ", lease.tenant(), ", attempt ",
                     lease.attempt(), ") on world ", world_id_, " with ", world_size_,
                     " ranks; output ", spec.ok() ? spec->output_dir() : lease.output_dir()));
  } else if (!spec.ok()) {
    Log(std::string(spec.status().message()));
  }
  auto complete = [&](proto::CompleteJobRequest request, absl::Time give_up) {
    request.set_lease_id(lease.lease_id());
    if (tee) {
      if (absl::Status s = tee->Stop(); !s.ok()) Log(absl::StrCat("train.log: ", s.ToString()));
    }
    Complete(request, give_up);
  };

  // Every rank learns both outcomes.
  jobs::Vote refused_paths(paths_refused);
  jobs::Vote refused_files(files_refused);
  jobs::Vote claimed_by_another_job(absl::IsFailedPrecondition(claim));  // rank 0
  jobs::Vote claim_failed(!claim.ok() && !absl::IsFailedPrecondition(claim));  // rank 0
  RETURN_IF_ERROR(
      sync_.Tally({&refused_paths, &refused_files, &claimed_by_another_job, &claim_failed}));
  if (refused_paths.any()) {
    // This world's roots differ from the coordinator's: it is misconfigured,
    // not the job. Hand the job back (no attempt counted; another world may
    // run it) and stop taking jobs: every lease would end the same way.
    const std::string why = spec.ok() ? "another rank refused the job's paths (see its log)"
                                      : std::string(spec.status().message());
    if (is_root()) {
      proto::CompleteJobRequest request;
      request.set_error(why);
      request.set_released(true);
      Log(absl::StrCat("cannot run job ", lease.job_id(), ": ", why,
                       "; released it, and the world exits: fix the worker's roots "
                       "(--model-root, --data-root, --output-root)"));
      complete(request, received + ttl);
      absl::MutexLock lock(&mu_);
      ++stats_.given_back;
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "this world's roots refuse job ", lease.job_id(), "'s paths (", why,
        "); the job was released; fix the worker's roots"));
  }
  if (refused_files.any()) {
    if (is_root()) {
      proto::CompleteJobRequest request;
      request.set_error(spec.ok() ? "another rank refused the job's files (see its log)"
                                  : std::string(spec.status().message()));
      request.set_permanent(true);
      Log(absl::StrCat("cannot run job ", lease.job_id(), ": ", request.error(), " (permanent)"));
      complete(request, received + ttl);
      absl::MutexLock lock(&mu_);
      ++stats_.failed;
    }
    return absl::OkStatus();
  }
    if (claimed_by_another_job.any() || claim_failed.any()) {
    if (is_root()) {
      proto::CompleteJobRequest request;
      request.set_error(std::string(claim.message()));
      // Another job's run: no attempt can fix that. An I/O error may pass.
      request.set_permanent(claimed_by_another_job.any());
      Log(absl::StrCat("cannot run job ", lease.job_id(), ": ", claim.message(),
                       request.permanent() ? " (permanent)" : ""));
      complete(request, received + ttl);
      absl::MutexLock lock(&mu_);
      ++stats_.failed;
    }
    return absl::OkStatus();
  }

  std::unique_ptr<LeaseKeeper> keeper;
  if (is_root()) {
    LeaseKeeper::Options ko;
    ko.ttl = ttl;
    ko.heartbeat_interval = absl::Milliseconds(lease.heartbeat_interval_ms());
    ko.on_verdict = [this](LeaseVerdict v) {
      Log(absl::StrCat("lease verdict: ", LeaseVerdictName(v), ": stopping the job after this step"));
      StopCurrentJob();
    };
    ko.log = [this](absl::string_view line) { Log(line); };
    ko.outage_grace = options_.outage_grace;
    ko.still_ours = [marker = spec->output_dir() + "/" + kLeaseMarker,
                     digest = LeaseDigest(lease.lease_id())]() {
      absl::StatusOr<std::string> text = ReadFileToString(marker);
      // Unreadable (the shared file system is out too): assume ours.
      return !text.ok() || Trimmed(*text) == digest;
    };
    keeper = LeaseKeeper::Start(client_.get(), lease.lease_id(), received, std::move(ko));
    proto::Progress setup;
    setup.set_phase("setup");
    keeper->SetProgress(setup, {});
  }
  // On a broken world: give the job back (retryable) when the lease is
  // still ours, and fail.
  auto broken = [&](const absl::Status& status) {
    if (is_root()) {
      keeper->Stop();
      if (keeper->verdict() == LeaseVerdict::kKeepGoing || keeper->verdict() == LeaseVerdict::kCancel) {
        proto::CompleteJobRequest request;
        request.set_error(absl::StrCat("the worker world broke: ", status.message()));
        *request.mutable_progress() = keeper->progress();
        complete(request, keeper->report_deadline());
      }
    }
    Log(absl::StrCat("the world is broken: ", status.ToString()));
    return status;
  };

  TrainerOptions topts;
  topts.resume = true;
  topts.comm = comm_;
  LeaseKeeper* k = keeper.get();
  if (is_root()) {
    topts.on_progress = [k](const TrainProgress& p) {
      std::map<std::string, double> metrics = {{"lr", p.lr}, {"grad_norm", p.grad_norm}};
      metrics.insert(p.metrics.begin(), p.metrics.end());  // the recipe's own (langadapt: val_loss/<lang>)
      k->SetProgress(ToProto(p), metrics);
    };
  }
  // The recipe owns output_dir/spec.yaml; the header names the job.
  topts.spec_origin = absl::StrCat("of job ", lease.job_id());
  const int64_t rank_memory =
      options_.memory_bytes > 0 ? options_.memory_bytes : AllocatedMemoryBytes(LocalRanks());
  absl::StatusOr<std::unique_ptr<jobs::Recipe>> recipe =
      GuardJobCall("setting up the job", [&]() -> absl::StatusOr<std::unique_ptr<jobs::Recipe>> {
        RETURN_IF_ERROR(CheckJobFitsRank(*spec, world_size_, rank_memory));
        return jobs::CreateRecipe(*spec, topts);
      });
  bool stop_before_run = false;
  if (recipe.ok()) {
    absl::MutexLock lock(&mu_);
    recipe_ = recipe->get();
    stop_before_run = job_stop_ || stop_requested_;
  } else {
    Log(absl::StrCat("setting up the job failed: ", recipe.status().ToString()));
  }
  if (recipe.ok() && is_root()) {
    proto::Progress p;
    p.set_total_steps((*recipe)->total_steps());
    p.set_phase("train");
    k->SetProgress(p, {});
  }
  jobs::Vote setup_failed(!recipe.ok()), stopped_before_run(stop_before_run);
  if (absl::Status s = sync_.Tally({&setup_failed, &stopped_before_run}); !s.ok()) {
    absl::MutexLock lock(&mu_);
    recipe_ = nullptr;
    return broken(s);
  }
  absl::StatusOr<TrainResult> result = absl::UnknownError("not run");
  bool ran = false;
  if (!setup_failed.any() && !stopped_before_run.any()) {
    result = GuardJobCall("training", [&]() { return (*recipe)->Run(); });
    ran = true;
    if (!result.ok()) Log(absl::StrCat("training failed: ", result.status().ToString()));
  }
  {
    absl::MutexLock lock(&mu_);
    recipe_ = nullptr;
  }
  const bool finished = ran && result.ok() && result->steps >= (*recipe)->total_steps();
  jobs::Vote run_failed(ran && !result.ok()), stop_asked(stop_requested()), run_finished(finished);
  if (absl::Status s = sync_.Tally({&run_failed, &stop_asked, &run_finished}); !s.ok()) {
    return broken(s);
  }
  if (stop_asked.any()) {
    // A rank was told to stop (SIGTERM may reach only some ranks, or reach
    // them one by one): the whole world stops after this job, rank 0
    // without leasing another first.
    absl::MutexLock lock(&mu_);
    stop_requested_ = true;
    stop_sleep_.Stop();
  }
  if (!is_root()) return absl::OkStatus();

  keeper->Stop();
  const LeaseVerdict verdict = keeper->verdict();
  if (verdict == LeaseVerdict::kLeaseLost || verdict == LeaseVerdict::kExpired) {
    Log(absl::StrCat("job ", lease.job_id(), ": the lease is lost (", LeaseVerdictName(verdict),
                     "); not completing it (the coordinator re-leases it)"));
    if (tee) tee->Stop().IgnoreError();
    absl::MutexLock lock(&mu_);
    ++stats_.lost;
    return absl::OkStatus();
  }
  proto::CompleteJobRequest request;
  *request.mutable_progress() = keeper->progress();
  for (const auto& [name, value] : keeper->metrics()) (*request.mutable_metrics())[name] = value;
  enum { kSucceeded, kFailed, kCancelled, kGivenBack } kind = kFailed;
  if (setup_failed.any()) {
    const absl::Status s = recipe.ok() ? absl::InternalError("another rank could not set up the job "
                                                             "(see its log)")
                                       : recipe.status();
    request.set_error(std::string(s.message()));
    request.set_permanent(IsPermanentFailure(s));
  } else if (run_failed.any()) {
    const absl::Status s = result.ok() ? absl::InternalError("another rank failed (see its log)")
                                       : result.status();
    request.set_error(std::string(s.message()));
    request.set_permanent(IsPermanentFailure(s));
  } else if (run_finished.all(world_size_)) {
    kind = kSucceeded;
    request.set_success(true);
    request.set_artifact_dir(spec->output_dir());
  } else if (verdict == LeaseVerdict::kCancel) {
    kind = kCancelled;
    request.set_error("cancelled");
  } else if (stop_asked.any() || stopped_before_run.any()) {
    kind = kGivenBack;
    request.set_error(kStoppedError);
    request.set_released(true);  // not the job's fault: no attempt counted
  } else {
    request.set_error("training stopped before its last step");
  }
  Log(absl::StrCat("job ", lease.job_id(), ": ",
                   request.success()     ? "succeeded"
                   : kind == kGivenBack ? "checkpointed and given back (the world was told to stop)"
                                        : absl::StrCat("failed: ", request.error(),
                                                       request.permanent() ? " (permanent)" : ""),
                   " at step ", request.progress().step(), "/", request.progress().total_steps()));
  complete(request, keeper->report_deadline());
  absl::MutexLock lock(&mu_);
  switch (kind) {
    case kSucceeded:
      ++stats_.succeeded;
      break;
    case kCancelled:
      ++stats_.cancelled;
      ++stats_.failed;
      break;
    case kGivenBack:
      ++stats_.given_back;
      break;
    case kFailed:
      ++stats_.failed;
      break;
  }
  return absl::OkStatus();
}

}  // namespace sheaf::worker
