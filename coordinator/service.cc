#include "coordinator/service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>
#include <cmath>
#include <optional>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "base/status.h"
#include "base/monotonic_sleep.h"
#include "base/open_beneath.h"
#include "base/sha256.h"
#include "core/model_config.h"
#include "core/weights_check.h"
#include "core/spec/memory_estimate.h"
#include "core/spec/validate.h"
#include "google/protobuf/descriptor.h"

namespace sheaf::coordinator {
namespace {

namespace fs = std::filesystem;

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
// A page stops growing near this size, well under gRPC's default 4 MiB
// client receive limit.
constexpr size_t kMaxPageBytes = 2 << 20;
constexpr int32_t kMinPriority = -1000;
constexpr int32_t kMaxPriority = 1000;
constexpr int32_t kMaxWorldSize = 1 << 16;
constexpr int32_t kDefaultChunkBytes = 64 << 10;
constexpr int32_t kMaxChunkBytes = 1 << 20;
constexpr size_t kMaxErrorBytes = 4096;

// config.json of the model at `model_dir` (absolute, inside `model_root`),
// read beneath the root (base/open_beneath.h) with a size cap, and checked
// against the weights' headers when the coordinator can see them
// (CheckWeightsMatchConfig, as the worker does before allocating): a config
// that lies about the model's size is refused at submit instead of waiting
// for a world large enough for the lie (issue 9, item 8). The weights open
// beneath the model root where the process registered its roots
// (SetOpenRoots: sheaf-coordinator's main). Errors name paths relative to
// the root. kNotFound when there is no config.json (the coordinator may not
// see the model; workers check again); without weights files the config
// alone is returned.
absl::StatusOr<ModelConfig> ReadModelShape(const fs::path& model_root,
                                           const std::string& model_dir) {
  constexpr size_t kMaxConfigBytes = 1 << 20;
  const fs::path rel = fs::path(model_dir).lexically_normal().lexically_relative(model_root);
  if (rel.empty() || *rel.begin() == "..") {
    return absl::InvalidArgumentError("base_model: outside the model root");
  }
  const int root_fd = ::open(model_root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) return absl::UnavailableError("cannot open the model root");
  absl::StatusOr<int> fd = OpenBeneath(root_fd, model_root.string(), "model root",
                                       (rel / "config.json").lexically_normal().string(), O_RDONLY);
  ::close(root_fd);
  if (!fd.ok()) return fd.status();
  std::string text;
  char buffer[1 << 14];
  while (text.size() <= kMaxConfigBytes) {
    const ssize_t n = ::read(*fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(*fd);
  if (text.size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError("config.json: larger than 1 MiB");
  }
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(text, (rel / "config.json").string()));
  const fs::path dir = model_root / rel;
  std::error_code error;
  if (!fs::exists(dir / "model.safetensors", error) &&
      !fs::exists(dir / "model.safetensors.index.json", error)) {
    return config;  // no weights to compare with here
  }
  absl::Status weights = CheckWeightsMatchConfig(config, dir.string());
  if (!weights.ok()) {
    // The weights are there: a tensor or shard they lack (kNotFound from the
    // check) is a broken model, not one the coordinator cannot see.
    return absl::Status(
        absl::IsNotFound(weights) ? absl::StatusCode::kInvalidArgument : weights.code(),
        absl::StrReplaceAll(weights.message(), {{model_root.string() + "/", ""}}));
  }
  return config;
}

// The spec field a user changes to make the estimate's largest part smaller.
std::string DominantField(const MemoryEstimate& e, int world_size,
                          const proto::JobSpec& spec) {
  const double n = std::max(1, world_size);
  const double frozen = e.frozen_bytes / n + e.gathered_bytes;
  const double trainable = e.trainable_bytes;
  const double activations = e.activation_bytes_per_sequence *
                             std::ceil(std::max(1, e.batch_size) / n);
  if (activations >= frozen && activations >= trainable) {
    return "train.batch_size";
  }
  if (trainable >= frozen) {
    return spec.has_lora() ? "lora.adapter.rank" : "pretrain.model";
  }
  return "base_model";
}

bool IsTerminal(proto::JobState state) {
  return state == proto::JOB_STATE_SUCCEEDED ||
         state == proto::JOB_STATE_FAILED ||
         state == proto::JOB_STATE_CANCELLED;
}

std::string ShortState(proto::JobState state) {
  absl::string_view name = proto::JobState_Name(state);
  absl::ConsumePrefix(&name, "JOB_STATE_");
  return std::string(name);
}

// The name of the JobSpec's `kind` oneof member ("lora", "pretrain", ...),
// found by reflection so that new kinds need no change here.
std::string KindOf(const proto::JobSpec& spec) {
  const auto* oneof = spec.GetDescriptor()->FindOneofByName("kind");
  const auto* field =
      oneof ? spec.GetReflection()->GetOneofFieldDescriptor(spec, oneof)
            : nullptr;
  return field ? field->name() : "";
}

bool IsMetricNameChar(char c) {
  return absl::ascii_isalnum(c) || c == '_' || c == '.' || c == ':' ||
         c == '/' || c == '-';
}

// Cuts `text` to at most `max` bytes without splitting a UTF-8 sequence.
std::string TruncateUtf8(const std::string& text, size_t max) {
  if (text.size() <= max) return text;
  size_t end = max;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) {
    --end;
  }
  return text.substr(0, end) + "...";
}

std::string FormatLogTime(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

// Regular files under `dir` (symlinks are not followed, neither to files
// nor to directories), as '/'-separated relative paths, sorted. Names that
// are not valid UTF-8 cannot travel in a proto string and are skipped.
absl::StatusOr<std::vector<std::string>> ListArtifactFiles(const fs::path& dir) {
  std::vector<std::string> files;
  std::error_code error;
  fs::recursive_directory_iterator it(
      dir, fs::directory_options::skip_permission_denied, error);
  if (error) {
    return absl::NotFoundError(
        absl::StrCat(dir.string(), ": ", error.message()));
  }
  for (; it != fs::recursive_directory_iterator(); it.increment(error)) {
    if (error) break;
    const fs::file_status status = it->symlink_status(error);
    if (error || !fs::is_regular_file(status)) continue;
    std::string relative = it->path().lexically_relative(dir).generic_string();
    if (!IsValidUtf8(relative)) continue;
    files.push_back(std::move(relative));
  }
  if (error) {
    return absl::InternalError(
        absl::StrCat("listing ", dir.string(), ": ", error.message()));
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

// ------------------------------------------------------------- Observer

// Turns scheduler changes into watch events, metrics and log lines.
class CoordinatorService::Observer : public SchedulerObserver {
 public:
  explicit Observer(CoordinatorService* service) : service_(service) {}

  void OnStateChange(const proto::Job& job, proto::JobState from,
                     absl::Duration time_in_from,
                     absl::string_view reason) override {
    CoordinatorMetrics& metrics = service_->metrics_;
    metrics.CountTransition(job.state());
    if (from == proto::JOB_STATE_UNSPECIFIED) metrics.CountSubmission();
    if (from == proto::JOB_STATE_PENDING &&
        job.state() == proto::JOB_STATE_LEASED) {
      metrics.ObserveQueueWait(time_in_from);
    }
    if (job.state() != proto::JOB_STATE_RUNNING) metrics.ForgetJob(job.id());

    proto::JobEvent event;
    event.set_job_id(job.id());
    event.set_time_unix_ms(job.updated_unix_ms());
    proto::StateChange* change = event.mutable_state_change();
    change->set_from(from);
    change->set_to(job.state());
    change->set_attempt(job.attempts());
    change->set_world_id(job.world_id());
    change->set_reason(std::string(reason));
    service_->events_.Publish(event);

    if (service_->options_.log) {
      std::string line = absl::StrCat(
          FormatLogTime(absl::FromUnixMillis(job.updated_unix_ms())), " job ",
          job.id(), " tenant=", job.tenant(), " kind=", job.kind(), " ",
          from == proto::JOB_STATE_UNSPECIFIED ? "NEW" : ShortState(from),
          " -> ", ShortState(job.state()), " attempt=", job.attempts());
      if (!job.world_id().empty()) absl::StrAppend(&line, " world=", job.world_id());
      if (!reason.empty()) absl::StrAppend(&line, ": ", reason);
      service_->options_.log(line);
    }
  }

  void OnProgress(const proto::Job& job) override {
    service_->metrics_.CountHeartbeat();
    service_->metrics_.SetJobTokensPerSecond(job.id(), job.tenant(),
                                             job.progress().tokens_per_s());
    proto::JobEvent event;
    event.set_job_id(job.id());
    event.set_time_unix_ms(job.updated_unix_ms());
    *event.mutable_progress() = job.progress();
    service_->events_.Publish(event);
  }

 private:
  CoordinatorService* const service_;
};

// Admission and idle cut-off of FetchArtifacts streams (issue 9, item 7).
// A reaper thread looks at every stream now and then and aborts the pending
// write of one whose reader has not taken a chunk for the idle timeout.
class CoordinatorService::FetchStreams {
 public:
  explicit FetchStreams(const FetchLimits& limits) : limits_(limits) {
    if (limits_.idle_timeout > absl::ZeroDuration()) {
      reaper_ = std::thread([this] { Reap(); });
    }
  }
  ~FetchStreams() {
    stop_.Stop();
    if (reaper_.joinable()) reaper_.join();
  }

  struct Stream {
    std::string tenant;
    std::function<void()> abort;
    // Monotonic time the pending write began; InfiniteFuture between writes.
    absl::Time write_began = absl::InfiniteFuture();
    bool cut_off = false;
  };

  // A slot for `tenant`, or kResourceExhausted naming the cap.
  absl::StatusOr<Stream*> Admit(const std::string& tenant,
                                std::function<void()> abort) {
    absl::MutexLock lock(&mu_);
    if (limits_.max_streams > 0 &&
        static_cast<int>(streams_.size()) >= limits_.max_streams) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "FetchArtifacts: the coordinator already serves ", streams_.size(),
          " fetch streams, its cap (--max-fetch-streams ", limits_.max_streams,
          "); try again when one has ended"));
    }
    int& of_tenant = per_tenant_[tenant];
    if (limits_.max_streams_per_tenant > 0 &&
        of_tenant >= limits_.max_streams_per_tenant) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "FetchArtifacts: tenant ", tenant, " already has ", of_tenant,
          " fetch streams open, its cap (--max-fetch-streams-per-tenant ",
          limits_.max_streams_per_tenant, "); try again when one has ended"));
    }
    ++of_tenant;
    auto stream = std::make_unique<Stream>();
    stream->tenant = tenant;
    stream->abort = std::move(abort);
    Stream* raw = stream.get();
    streams_.emplace(raw, std::move(stream));
    return raw;
  }

  void Release(Stream* stream) {
    absl::MutexLock lock(&mu_);
    auto it = per_tenant_.find(stream->tenant);
    if (it != per_tenant_.end() && --it->second <= 0) per_tenant_.erase(it);
    streams_.erase(stream);
  }

  void BeginWrite(Stream* stream) {
    absl::MutexLock lock(&mu_);
    stream->write_began = MonotonicNow();
  }
  // True when the write was aborted because the reader was idle.
  bool EndWrite(Stream* stream) {
    absl::MutexLock lock(&mu_);
    stream->write_began = absl::InfiniteFuture();
    return stream->cut_off;
  }

  int active() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(streams_.size());
  }

  absl::Duration idle_timeout() const { return limits_.idle_timeout; }

 private:
  void Reap() {
    const absl::Duration period = std::clamp(limits_.idle_timeout / 4,
                                             absl::Milliseconds(10), absl::Seconds(1));
    // Monotonic sleeps (base/monotonic_sleep.h): a wall-clock step must not
    // hold the reaper back.
    while (!stop_.SleepUnlessStopped(period)) {
      absl::MutexLock lock(&mu_);
      const absl::Time now = MonotonicNow();
      for (auto& [raw, stream] : streams_) {
        if (!stream->cut_off && now - stream->write_began >= limits_.idle_timeout) {
          stream->cut_off = true;
          // TryCancel (grpc_service.cc) only flags the call; it does not
          // call back into us, so it is safe under the lock.
          if (stream->abort) stream->abort();
        }
      }
    }
  }

  const FetchLimits limits_;
  mutable absl::Mutex mu_;
  MonotonicSleep stop_;
  std::map<Stream*, std::unique_ptr<Stream>> streams_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> per_tenant_ ABSL_GUARDED_BY(mu_);
  std::thread reaper_;
};

// Worlds seen lately (issue 9, item 10): registered, long-polling
// AcquireJob, or heartbeating a lease. Only used for the note on jobs that
// no world can run (Job.waiting_reason); leasing goes by the scheduler.
class CoordinatorService::WorldDirectory {
 public:
  void Saw(const std::string& world_id, const proto::RegisterWorldRequest& info) {
    absl::MutexLock lock(&mu_);
    Entry& entry = worlds_[world_id];
    entry.info = info;
    entry.last_seen = std::chrono::steady_clock::now();
  }
  // False when the world is not known here (after a restart).
  bool Touch(const std::string& world_id) {
    absl::MutexLock lock(&mu_);
    auto it = worlds_.find(world_id);
    if (it == worlds_.end()) return false;
    it->second.last_seen = std::chrono::steady_clock::now();
    return true;
  }
  void MapLease(const std::string& lease_id, const std::string& world_id) {
    absl::MutexLock lock(&mu_);
    leases_[lease_id] = world_id;
  }
  // The world holding `lease_id`, if known.
  std::optional<std::string> WorldOfLease(const std::string& lease_id) {
    absl::MutexLock lock(&mu_);
    auto it = leases_.find(lease_id);
    if (it == leases_.end()) return std::nullopt;
    return it->second;
  }
  void ForgetLease(const std::string& lease_id) {
    absl::MutexLock lock(&mu_);
    leases_.erase(lease_id);
  }
  // Worlds seen within `window`; older ones are dropped.
  std::vector<proto::RegisterWorldRequest> Live(absl::Duration window) {
    const auto cutoff = std::chrono::steady_clock::now() - absl::ToChronoNanoseconds(window);
    std::vector<proto::RegisterWorldRequest> live;
    absl::MutexLock lock(&mu_);
    for (auto it = worlds_.begin(); it != worlds_.end();) {
      if (it->second.last_seen < cutoff) {
        worlds_.erase(it++);
        continue;
      }
      live.push_back(it->second.info);
      ++it;
    }
    return live;
  }

 private:
  struct Entry {
    proto::RegisterWorldRequest info;
    std::chrono::steady_clock::time_point last_seen;
  };
  absl::Mutex mu_;
  std::map<std::string, Entry> worlds_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> leases_ ABSL_GUARDED_BY(mu_);
};

namespace {

proto::DeviceKind EffectiveKind(proto::DeviceKind kind) {
  return kind == proto::DEVICE_KIND_UNSPECIFIED ? proto::DEVICE_KIND_CPU : kind;
}

// The scheduler's match (store.cc NextPendingJob, then JobFitsWorld).
bool WorldCanRun(const proto::Job& job, const proto::RegisterWorldRequest& world) {
  const proto::ResourceRequest& r = job.resources();
  if (world.world_size() < std::max(1, r.min_world_size())) return false;
  if (r.max_world_size() != 0 && r.max_world_size() < world.world_size()) return false;
  if (r.memory_bytes() > world.memory_bytes()) return false;
  if (EffectiveKind(r.device_kind()) != EffectiveKind(world.device_kind())) return false;
  return JobFitsWorld(job, world);
}

// Why none of `worlds` can run `job`; empty when one can.
std::string WhyNoWorld(const proto::Job& job,
                       const std::vector<proto::RegisterWorldRequest>& worlds,
                       absl::Duration window) {
  if (worlds.empty()) {
    return absl::StrCat("no world has been seen in the last ", absl::FormatDuration(window),
                        " (none registered, or all gone); the job waits for one");
  }
  for (const auto& world : worlds) {
    if (WorldCanRun(job, world)) return "";
  }
  const proto::ResourceRequest& r = job.resources();
  const int min_size = std::max(1, r.min_world_size());
  bool size_ok = false, memory_ok = false, kind_ok = false, estimate_ok = false;
  int smallest = worlds[0].world_size(), largest = worlds[0].world_size();
  int64_t most_memory = 0;
  std::vector<std::string> kinds;
  for (const auto& world : worlds) {
    smallest = std::min(smallest, world.world_size());
    largest = std::max(largest, world.world_size());
    most_memory = std::max(most_memory, world.memory_bytes());
    size_ok |= world.world_size() >= min_size &&
               (r.max_world_size() == 0 || world.world_size() <= r.max_world_size());
    memory_ok |= r.memory_bytes() <= world.memory_bytes();
    kind_ok |= EffectiveKind(r.device_kind()) == EffectiveKind(world.device_kind());
    estimate_ok |= JobFitsWorld(job, world);
  }
  std::vector<std::string> why;
  if (!size_ok) {
    why.push_back(absl::StrCat(
        "resources.min_world_size/max_world_size: it needs ", min_size, "..",
        r.max_world_size() == 0 ? std::string("any") : absl::StrCat(r.max_world_size()),
        " ranks, the worlds have ", smallest == largest ? "" : absl::StrCat(smallest, ".."),
        largest));
  }
  if (!memory_ok) {
    why.push_back(absl::StrCat("resources.memory_bytes: it asks for ",
                               FormatBytes(r.memory_bytes()),
                               " per rank, the most a world has is ",
                               FormatBytes(most_memory)));
  }
  if (!kind_ok) {
    why.push_back(absl::StrCat("resources.device_kind: no world is ",
                               proto::DeviceKind_Name(EffectiveKind(r.device_kind()))));
  }
  if (!estimate_ok) {
    why.push_back("its memory estimate per rank exceeds every world's memory per rank");
  }
  if (why.empty()) {
    why.push_back("no single world meets all of its resources (ranks, memory, device kind)");
  }
  return absl::StrCat("no world seen in the last ", absl::FormatDuration(window),
                      " can run this job (", worlds.size(), worlds.size() == 1 ? " world" : " worlds",
                      "; it waits until one that can registers): ", absl::StrJoin(why, "; "));
}

}  // namespace

absl::Duration CoordinatorService::WorldWindow() const {
  return 2 * options_.max_acquire_wait + 2 * options_.scheduler.lease_ttl;
}

void CoordinatorService::NoteWaiting(proto::Job* job) {
  if (job->state() != proto::JOB_STATE_PENDING) return;
  job->set_waiting_reason(WhyNoWorld(*job, worlds_->Live(WorldWindow()), WorldWindow()));
}

// ------------------------------------------------------------- Lifecycle

CoordinatorService::CoordinatorService(ServiceOptions options,
                                       std::unique_ptr<JobStore> store,
                                       std::unique_ptr<PathPolicy> paths,
                                       const Clock* clock)
    : options_(std::move(options)),
      clock_(clock),
      store_(std::move(store)),
      paths_(std::move(paths)),
      observer_(std::make_unique<Observer>(this)),
      fetch_streams_(std::make_unique<FetchStreams>(options_.fetch)),
      worlds_(std::make_unique<WorldDirectory>()) {}

absl::StatusOr<std::unique_ptr<CoordinatorService>> CoordinatorService::Create(
    ServiceOptions options, std::unique_ptr<JobStore> store,
    const Clock* clock) {
  if (store == nullptr || clock == nullptr) {
    return absl::InvalidArgumentError("service: store and clock are required");
  }
  if (options.fetch.max_streams < 0 || options.fetch.max_streams_per_tenant < 0 ||
      options.fetch.idle_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "service: fetch stream caps and the idle timeout must be >= 0");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<PathPolicy> paths,
                   PathPolicy::Create(options.roots));
  std::unique_ptr<CoordinatorService> service(new CoordinatorService(
      std::move(options), std::move(store), std::move(paths), clock));
  ASSIGN_OR_RETURN(service->scheduler_,
                   Scheduler::Create(service->store_.get(), clock,
                                     service->options_.scheduler,
                                     service->observer_.get()));
  return service;
}

CoordinatorService::~CoordinatorService() {
  Shutdown();
  scheduler_.reset();  // Before the observer and the store go.
}

void CoordinatorService::Shutdown() {
  if (scheduler_) scheduler_->Shutdown();
  events_.Shutdown();
}

// ------------------------------------------------------------- Helpers

absl::Status CoordinatorService::CheckId(absl::string_view field,
                                         absl::string_view id) const {
  if (id.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be set"));
  }
  return CheckString(field, id, options_.limits.max_id_bytes);
}

absl::StatusOr<proto::Job> CoordinatorService::FindOwnJob(
    const Caller& caller, absl::string_view field, absl::string_view job_id) {
  RETURN_IF_ERROR(CheckId(field, job_id));
  proto::Job job;
  absl::Status status = store_->Read([&](StoreTxn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(job, txn.GetJob(job_id));
    return absl::OkStatus();
  });
  // Another tenant's job reads exactly like a missing one.
  if (absl::IsNotFound(status) || (status.ok() && job.tenant() != caller.tenant)) {
    return absl::NotFoundError(absl::StrCat("no job ", job_id));
  }
  RETURN_IF_ERROR(status);
  return job;
}

// ------------------------------------------------------------- Tenant side

absl::StatusOr<proto::SubmitJobResponse> CoordinatorService::SubmitJob(
    const Caller& caller, const proto::SubmitJobRequest& request) {
  RETURN_IF_ERROR(RequireTenant(caller, "SubmitJob"));
  if (!request.has_spec()) {
    return absl::InvalidArgumentError("spec: must be set");
  }
  // Limits first: nothing below should see an oversized or malformed spec.
  RETURN_IF_ERROR(CheckMessageLimits(request.spec(), "", options_.limits));

  std::vector<std::string> problems;
  if (request.priority() < kMinPriority || request.priority() > kMaxPriority) {
    problems.push_back(absl::StrCat("priority: must be in [", kMinPriority,
                                    ", ", kMaxPriority, "], got ",
                                    request.priority()));
  }
  proto::ResourceRequest resources = request.resources();
  if (resources.min_world_size() < 0 ||
      resources.min_world_size() > kMaxWorldSize) {
    problems.push_back(absl::StrCat("resources.min_world_size: must be in [0, ",
                                    kMaxWorldSize, "], got ",
                                    resources.min_world_size()));
  }
  if (resources.max_world_size() < 0 ||
      resources.max_world_size() > kMaxWorldSize) {
    problems.push_back(absl::StrCat("resources.max_world_size: must be in [0, ",
                                    kMaxWorldSize, "], got ",
                                    resources.max_world_size()));
  }
  if (resources.min_world_size() == 0) resources.set_min_world_size(1);
  if (resources.max_world_size() != 0 &&
      resources.max_world_size() < resources.min_world_size()) {
    problems.push_back(absl::StrCat(
        "resources.max_world_size: ", resources.max_world_size(),
        " is below min_world_size ", resources.min_world_size()));
  }
  if (resources.memory_bytes() < 0) {
    problems.push_back(absl::StrCat("resources.memory_bytes: must be >= 0, got ",
                                    resources.memory_bytes()));
  }
  if (!proto::DeviceKind_IsValid(resources.device_kind())) {
    problems.push_back(absl::StrCat("resources.device_kind: unknown value ",
                                    resources.device_kind()));
  }

  proto::JobSpec spec = request.spec();
  ApplyDefaults(&spec);
  const std::string job_id = NewRandomId("job-", 8);
  // An empty output_dir gets the job's own directory (resolved below).
  if (spec.output_dir().empty()) spec.set_output_dir(job_id);
  absl::Status valid = ValidateJobSpec(spec);
  if (!valid.ok()) problems.emplace_back(valid.message());
  // Paths are checked (and made absolute) before anything opens them.
  absl::Status paths = paths_->ResolveSpecPaths(&spec, caller.tenant, job_id);
  if (!paths.ok()) problems.emplace_back(paths.message());
  // The job's memory per rank (core/spec/memory_estimate.h): refused when
  // no rank could hold it at the largest world the request allows, or
  // when it needs more than the request says; stored so that the
  // scheduler never leases it to a world it does not fit (issue 9, item 1).
  std::optional<MemoryEstimate> estimate;
  if (problems.empty()) {
    absl::StatusOr<ModelConfig> shape =
        spec.has_pretrain() && spec.base_model().empty()
            ? absl::StatusOr<ModelConfig>(ModelConfigFromShape(spec.pretrain().model()))
            : ReadModelShape(paths_->model_root(), spec.base_model());
    // The coordinator may not see the model (workers check again); a model
    // it sees whose config or weights are broken is refused now.
    if (shape.ok()) {
      estimate = EstimateJobMemory(spec, *shape);
    } else if (!absl::IsNotFound(shape.status()) && !absl::IsUnavailable(shape.status())) {
      problems.push_back(absl::StrCat("base_model: ", shape.status().message()));
    }
  }
  if (estimate.has_value()) {
    const int best_world =
        resources.max_world_size() > 0 ? resources.max_world_size() : kMaxWorldSize;
    const int64_t need = estimate->PerRank(best_world);
    if (need > kMaxRankMemoryBytes) {
      problems.push_back(absl::StrCat(
          DominantField(*estimate, best_world, spec), ": the job needs ",
          estimate->Describe(best_world), ", more than any rank has (",
          FormatBytes(kMaxRankMemoryBytes), ")"));
    } else if (resources.memory_bytes() > 0 && need > resources.memory_bytes()) {
      problems.push_back(absl::StrCat(
          "resources.memory_bytes: the job needs ", estimate->Describe(best_world),
          ", more than the ", FormatBytes(resources.memory_bytes()),
          " per rank requested (raise --memory, allow more ranks with --max-world, or lower ",
          DominantField(*estimate, best_world, spec), ")"));
    }
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrJoin(problems, "; "));
  }

  proto::Job job;
  if (estimate.has_value()) *job.mutable_memory_estimate() = ToProto(*estimate);
  job.set_id(job_id);
  job.set_tenant(caller.tenant);
  job.set_kind(KindOf(spec));
  job.set_priority(request.priority());
  *job.mutable_resources() = resources;
  job.set_output_dir(spec.output_dir());
  *job.mutable_spec() = std::move(spec);
  ASSIGN_OR_RETURN(proto::Job stored, scheduler_->Submit(std::move(job)));
  proto::SubmitJobResponse response;
  response.set_job_id(stored.id());
  NoteWaiting(&stored);
  if (!stored.waiting_reason().empty()) response.add_warnings(stored.waiting_reason());
  *response.mutable_job() = std::move(stored);
  return response;
}

absl::StatusOr<proto::Job> CoordinatorService::GetJob(
    const Caller& caller, const proto::GetJobRequest& request) {
  RETURN_IF_ERROR(RequireTenant(caller, "GetJob"));
  ASSIGN_OR_RETURN(proto::Job job, FindOwnJob(caller, "job_id", request.job_id()));
  NoteWaiting(&job);
  return job;
}

absl::StatusOr<proto::ListJobsResponse> CoordinatorService::ListJobs(
    const Caller& caller, const proto::ListJobsRequest& request) {
  RETURN_IF_ERROR(RequireTenant(caller, "ListJobs"));
  JobQuery query;
  if (!proto::JobState_IsValid(request.state())) {
    return absl::InvalidArgumentError(
        absl::StrCat("state: unknown value ", request.state()));
  }
  query.state = request.state();
  RETURN_IF_ERROR(CheckString("kind", request.kind(), options_.limits.max_id_bytes));
  query.kind = request.kind();
  RETURN_IF_ERROR(
      CheckString("tenant", request.tenant(), options_.limits.max_id_bytes));
  proto::ListJobsResponse response;
  // A tenant sees only its own jobs: naming another finds nothing.
  if (!request.tenant().empty() && request.tenant() != caller.tenant) {
    return response;
  }
  query.tenant = caller.tenant;
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: must be >= 0, got ", request.page_size()));
  }
  query.limit = request.page_size() == 0
                    ? kDefaultPageSize
                    : std::min(request.page_size(), kMaxPageSize);
  if (!request.page_token().empty()) {
    // Opaque and bound to the tenant (page_token.h): a forged token or
    // another tenant's is refused.
    ASSIGN_OR_RETURN(query.after_seq,
                     page_tokens_.Decode(caller.tenant, request.page_token()));
  }
  JobPage page;
  RETURN_IF_ERROR(store_->Read([&](StoreTxn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(page, txn.ListJobs(query));
    return absl::OkStatus();
  }));
  size_t bytes = 0;
  const std::vector<proto::RegisterWorldRequest> live = worlds_->Live(WorldWindow());
  for (size_t i = 0; i < page.jobs.size(); ++i) {
    if (page.jobs[i].state() == proto::JOB_STATE_PENDING) {
      page.jobs[i].set_waiting_reason(WhyNoWorld(page.jobs[i], live, WorldWindow()));
    }
    bytes += page.jobs[i].ByteSizeLong();
    if (i > 0 && bytes > kMaxPageBytes) {
      // Full: the rest comes on the next page.
      response.set_next_page_token(
          page_tokens_.Encode(caller.tenant, page.seqs[i - 1]));
      return response;
    }
    *response.add_jobs() = std::move(page.jobs[i]);
  }
  if (page.more) {
    response.set_next_page_token(
        page_tokens_.Encode(caller.tenant, page.seqs.back()));
  }
  return response;
}

absl::StatusOr<proto::Job> CoordinatorService::CancelJob(
    const Caller& caller, const proto::CancelJobRequest& request) {
  RETURN_IF_ERROR(RequireTenant(caller, "CancelJob"));
  RETURN_IF_ERROR(FindOwnJob(caller, "job_id", request.job_id()).status());
  return scheduler_->Cancel(request.job_id());
}

absl::Status CoordinatorService::WatchJob(
    const Caller& caller, const proto::WatchJobRequest& request,
    const StreamWriter<proto::JobEvent>& write, const IsCancelled& cancelled) {
  RETURN_IF_ERROR(RequireTenant(caller, "WatchJob"));
  RETURN_IF_ERROR(CheckId("job_id", request.job_id()));
  // Subscribe before reading the job, so that no change falls in between.
  std::unique_ptr<JobEventHub::Subscription> subscription =
      events_.Subscribe(request.job_id());
  ASSIGN_OR_RETURN(proto::Job job,
                   FindOwnJob(caller, "job_id", request.job_id()));
  proto::JobEvent first;
  first.set_job_id(job.id());
  first.set_time_unix_ms(job.updated_unix_ms());
  proto::StateChange* change = first.mutable_state_change();
  change->set_from(proto::JOB_STATE_UNSPECIFIED);
  change->set_to(job.state());
  change->set_attempt(job.attempts());
  change->set_world_id(job.world_id());
  change->set_reason(job.last_error());
  NoteWaiting(&job);
  change->set_waiting_reason(job.waiting_reason());
  if (!write(first)) return absl::CancelledError("the client went away");
  if (job.has_progress()) {
    proto::JobEvent progress;
    progress.set_job_id(job.id());
    progress.set_time_unix_ms(job.updated_unix_ms());
    *progress.mutable_progress() = job.progress();
    if (!write(progress)) return absl::CancelledError("the client went away");
  }
  if (IsTerminal(job.state())) return absl::OkStatus();
  while (true) {
    std::optional<proto::JobEvent> event =
        subscription->Next(options_.stream_poll);
    if (subscription->closed()) {
      return absl::UnavailableError("the coordinator is shutting down");
    }
    if (cancelled && cancelled()) {
      return absl::CancelledError("the client went away");
    }
    if (!event.has_value()) continue;
    if (!write(*event)) return absl::CancelledError("the client went away");
    if (event->has_state_change() && IsTerminal(event->state_change().to())) {
      return absl::OkStatus();
    }
  }
}

absl::Status CoordinatorService::FetchArtifacts(
    const Caller& caller, const proto::FetchArtifactsRequest& request,
    const StreamWriter<proto::ArtifactChunk>& write,
    const IsCancelled& cancelled, const std::function<void()>& abort) {
  RETURN_IF_ERROR(RequireTenant(caller, "FetchArtifacts"));
  // Admitted before any work: a refused stream costs nothing.
  ASSIGN_OR_RETURN(FetchStreams::Stream* const slot,
                   fetch_streams_->Admit(caller.tenant, abort));
  struct ReleaseSlot {
    FetchStreams* streams;
    FetchStreams::Stream* slot;
    ~ReleaseSlot() { streams->Release(slot); }
  } release{fetch_streams_.get(), slot};
  ASSIGN_OR_RETURN(proto::Job job,
                   FindOwnJob(caller, "job_id", request.job_id()));
  RETURN_IF_ERROR(CheckString("path", request.path(),
                              options_.limits.max_string_bytes));
  if (request.offset() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("offset: must be >= 0, got ", request.offset()));
  }
  if (request.chunk_bytes() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk_bytes: must be >= 0, got ", request.chunk_bytes()));
  }
  if (request.path().empty() && request.offset() != 0) {
    return absl::InvalidArgumentError("offset: given without a path");
  }
  const int32_t chunk_bytes =
      request.chunk_bytes() == 0
          ? kDefaultChunkBytes
          : std::min(request.chunk_bytes(), kMaxChunkBytes);
  // Judge the directory again now: what the record names must still be
  // inside the tenant's output directory, symlinks resolved as of now.
  const std::string& recorded =
      job.artifact_dir().empty() ? job.output_dir() : job.artifact_dir();
  ASSIGN_OR_RETURN(fs::path dir,
                   paths_->ResolveOutput(caller.tenant, "artifact_dir", recorded));
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    return absl::NotFoundError(absl::StrCat(
        "job ", job.id(), " has no artifacts yet (", dir.string(),
        " does not exist)"));
  }
  ASSIGN_OR_RETURN(std::vector<std::string> files, ListArtifactFiles(dir));
  size_t first = 0;
  if (!request.path().empty()) {
    auto it = std::lower_bound(files.begin(), files.end(), request.path());
    if (it == files.end() || *it != request.path()) {
      return absl::NotFoundError(absl::StrCat(
          "path: no file '", request.path(), "' in the artifacts of job ",
          job.id()));
    }
    first = static_cast<size_t>(it - files.begin());
  }
  std::string buffer(static_cast<size_t>(chunk_bytes), '\0');
  for (size_t i = first; i < files.size(); ++i) {
    if (cancelled && cancelled()) {
      return absl::CancelledError("the client went away");
    }
    const fs::path full = dir / files[i];
    // O_NOFOLLOW: a file swapped for a symlink since the listing is refused.
    const int fd = open(full.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;  // Deleted since the listing (old checkpoints).
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      close(fd);
      continue;
    }
    const int64_t size = st.st_size;
    int64_t offset = i == first ? request.offset() : 0;
    if (offset > size) {
      close(fd);
      return absl::OutOfRangeError(absl::StrCat(
          "offset: ", offset, " is past the end of '", files[i], "' (",
          size, " bytes)"));
    }
    // The content digest the client verifies, and the resume check: a
    // .part whose first bytes are not this file's is refused.
    absl::StatusOr<std::string> digest = Sha256OfFd(fd, size);
    if (!digest.ok()) {
      close(fd);
      return absl::InternalError(
          absl::StrCat("reading ", files[i], ": ", digest.status().message()));
    }
    if (i == first && offset > 0 && !request.prefix_sha256().empty()) {
      absl::StatusOr<std::string> prefix = Sha256OfFd(fd, offset);
      if (!prefix.ok() || *prefix != request.prefix_sha256()) {
        close(fd);
        return absl::FailedPreconditionError(absl::StrCat(
            "prefix_sha256: the first ", offset, " bytes of the partial file are not those of '",
            files[i], "' (a stale .part); fetch it from offset 0"));
      }
    }
    bool first_chunk = true;
    bool sent_eof = false;
    while (!sent_eof) {
      const size_t want =
          static_cast<size_t>(std::min<int64_t>(chunk_bytes, size - offset));
      ssize_t n = 0;
      if (want > 0) {
        n = pread(fd, buffer.data(), want, offset);
        if (n < 0) {
          close(fd);
          return absl::InternalError(absl::StrCat(
              "reading ", files[i], ": ", std::strerror(errno)));
        }
      }
      proto::ArtifactChunk chunk;
      chunk.set_path(files[i]);
      chunk.set_offset(offset);
      chunk.set_data(buffer.data(), static_cast<size_t>(n));
      chunk.set_file_size(size);
      if (first_chunk) {
        chunk.set_job_id(job.id());
        chunk.set_sha256(*digest);
        first_chunk = false;
      }
      offset += n;
      // A file that shrank while being read ends where it ends.
      sent_eof = offset >= size || n == 0;
      chunk.set_eof(sent_eof);
      fetch_streams_->BeginWrite(slot);
      const bool written = write(chunk);
      const bool cut_off = fetch_streams_->EndWrite(slot);
      if (cut_off) {
        close(fd);
        return absl::DeadlineExceededError(absl::StrCat(
            "FetchArtifacts: the reader took no chunk for ",
            absl::FormatDuration(fetch_streams_->idle_timeout()),
            " (--fetch-idle-timeout); cut off"));
      }
      if (!written) {
        close(fd);
        return absl::CancelledError("the client went away");
      }
    }
    close(fd);
  }
  return absl::OkStatus();
}

int CoordinatorService::active_fetch_streams() const {
  return fetch_streams_->active();
}

// ------------------------------------------------------------- Worker side

absl::StatusOr<proto::RegisterWorldResponse> CoordinatorService::RegisterWorld(
    const Caller& caller, const proto::RegisterWorldRequest& request) {
  RETURN_IF_ERROR(RequireWorker(caller, "RegisterWorld"));
  if (request.world_size() < 1 || request.world_size() > kMaxWorldSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world_size: must be in [1, ", kMaxWorldSize, "], got ",
        request.world_size()));
  }
  if (request.memory_bytes() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "memory_bytes: must be >= 0, got ", request.memory_bytes()));
  }
  if (!proto::DeviceKind_IsValid(request.device_kind())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device_kind: unknown value ", request.device_kind()));
  }
  RETURN_IF_ERROR(CheckString("hostname", request.hostname(), 256));
  if (request.devices_size() > options_.limits.max_repeated) {
    return absl::InvalidArgumentError(
        absl::StrCat("devices: ", request.devices_size(), " entries, at most ",
                     options_.limits.max_repeated));
  }
  for (int i = 0; i < request.devices_size(); ++i) {
    RETURN_IF_ERROR(
        CheckString(absl::StrCat("devices[", i, "]"), request.devices(i), 256));
  }
  ASSIGN_OR_RETURN(std::string world_id, scheduler_->RegisterWorld(request));
  worlds_->Saw(world_id, request);
  proto::RegisterWorldResponse response;
  response.set_world_id(world_id);
  response.set_lease_ttl_ms(
      absl::ToInt64Milliseconds(scheduler_->options().lease_ttl));
  response.set_heartbeat_interval_ms(
      absl::ToInt64Milliseconds(scheduler_->options().heartbeat_interval));
  return response;
}

absl::StatusOr<proto::AcquireJobResponse> CoordinatorService::AcquireJob(
    const Caller& caller, const proto::AcquireJobRequest& request,
    absl::Time deadline, const IsCancelled& cancelled) {
  RETURN_IF_ERROR(RequireWorker(caller, "AcquireJob"));
  RETURN_IF_ERROR(CheckId("world_id", request.world_id()));
  if (request.wait_ms() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("wait_ms: must be >= 0, got ", request.wait_ms()));
  }
  const absl::Duration wait = std::min(absl::Milliseconds(request.wait_ms()),
                                       options_.max_acquire_wait);
  SeeWorld(request.world_id());
  ASSIGN_OR_RETURN(
      std::optional<proto::Lease> lease,
      scheduler_->Acquire(request.world_id(),
                          std::min(deadline, absl::Now() + wait), cancelled));
  proto::AcquireJobResponse response;
  if (lease.has_value()) {
    worlds_->MapLease(lease->lease_id(), request.world_id());
    *response.mutable_lease() = *std::move(lease);
  }
  return response;
}

void CoordinatorService::SeeWorld(const std::string& world_id) {
  if (worlds_->Touch(world_id)) return;
  // Registered before a restart: the store has its description.
  WorldRecord world;
  absl::Status found = store_->Read([&](StoreTxn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(world, txn.GetWorld(world_id));
    return absl::OkStatus();
  });
  if (found.ok()) worlds_->Saw(world_id, world.info);
}

absl::Status CoordinatorService::CheckMetrics(
    const google::protobuf::Map<std::string, double>& metrics) const {
  if (static_cast<int>(metrics.size()) > options_.limits.max_metrics) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics: ", metrics.size(),
                     " entries, at most ", options_.limits.max_metrics));
  }
  for (const auto& [name, value] : metrics) {
    if (name.empty() || name.size() > options_.limits.max_metric_name_bytes ||
        !std::all_of(name.begin(), name.end(), IsMetricNameChar)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metrics: bad name '", absl::CHexEscape(name),
          "' (1-", options_.limits.max_metric_name_bytes,
          " of [A-Za-z0-9_.:/-])"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<proto::HeartbeatResponse> CoordinatorService::Heartbeat(
    const Caller& caller, const proto::HeartbeatRequest& request) {
  RETURN_IF_ERROR(RequireWorker(caller, "Heartbeat"));
  RETURN_IF_ERROR(CheckId("lease_id", request.lease_id()));
  RETURN_IF_ERROR(CheckMetrics(request.metrics()));
  ASSIGN_OR_RETURN(Scheduler::HeartbeatResult result,
                   scheduler_->Heartbeat(request.lease_id(), request.progress(),
                                         request.metrics()));
  // A world busy with a job is still a world (the waiting note).
  if (result.action == proto::HEARTBEAT_ACTION_LEASE_LOST) {
    worlds_->ForgetLease(request.lease_id());
  } else {
    std::optional<std::string> world = worlds_->WorldOfLease(request.lease_id());
    if (!world.has_value()) {
      // Granted before a restart: the store knows whose it is.
      (void)store_->Read([&](StoreTxn& txn) -> absl::Status {
        ASSIGN_OR_RETURN(LeaseRecord lease, txn.GetLease(request.lease_id()));
        world = lease.world_id;
        return absl::OkStatus();
      });
      if (world.has_value()) worlds_->MapLease(request.lease_id(), *world);
    }
    if (world.has_value()) SeeWorld(*world);
  }
  proto::HeartbeatResponse response;
  response.set_action(result.action);
  response.set_ttl_ms(absl::ToInt64Milliseconds(result.ttl));
  return response;
}

absl::StatusOr<proto::CompleteJobResponse> CoordinatorService::CompleteJob(
    const Caller& caller, const proto::CompleteJobRequest& request) {
  RETURN_IF_ERROR(RequireWorker(caller, "CompleteJob"));
  RETURN_IF_ERROR(CheckId("lease_id", request.lease_id()));
  RETURN_IF_ERROR(CheckMetrics(request.metrics()));
  proto::CompleteJobRequest checked = request;
  checked.set_error(TruncateUtf8(request.error(), kMaxErrorBytes));
  if (!request.artifact_dir().empty()) {
    RETURN_IF_ERROR(CheckString("artifact_dir", request.artifact_dir(),
                                options_.limits.max_string_bytes));
    // The directory must be the job's tenant's: find the tenant by lease.
    std::string tenant;
    absl::Status found = store_->Read([&](StoreTxn& txn) -> absl::Status {
      ASSIGN_OR_RETURN(LeaseRecord lease, txn.GetLease(request.lease_id()));
      ASSIGN_OR_RETURN(proto::Job job, txn.GetJob(lease.job_id));
      tenant = job.tenant();
      return absl::OkStatus();
    });
    if (found.ok()) {
      ASSIGN_OR_RETURN(fs::path dir, paths_->ResolveOutput(
                                         tenant, "artifact_dir",
                                         request.artifact_dir()));
      checked.set_artifact_dir(dir.string());
    } else if (!absl::IsNotFound(found)) {
      return found;
    }
    // A missing lease: the scheduler answers kFailedPrecondition.
  }
  ASSIGN_OR_RETURN(proto::JobState state, scheduler_->Complete(checked));
  worlds_->ForgetLease(request.lease_id());
  proto::CompleteJobResponse response;
  response.set_state(state);
  return response;
}

// ------------------------------------------------------------- Operations

std::string CoordinatorService::RenderMetrics() {
  std::map<proto::JobState, int64_t> by_state;
  int64_t leases = 0;
  absl::Status status = store_->Read([&](StoreTxn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(by_state, txn.CountJobsByState());
    ASSIGN_OR_RETURN(leases, txn.CountLeases());
    return absl::OkStatus();
  });
  if (!status.ok()) {
    return absl::StrCat("# error: ", status.ToString(), "\n");
  }
  return metrics_.Render(by_state, leases);
}

}  // namespace sheaf::coordinator
