#include "coordinator/service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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
#include "absl/strings/strip.h"
#include "base/status.h"
#include "base/open_beneath.h"
#include "base/sha256.h"
#include "core/model_config.h"
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
constexpr absl::string_view kPageTokenPrefix = "after:";

// config.json of the model at `model_dir` (absolute, inside `model_root`),
// read beneath the root (base/open_beneath.h) with a size cap.
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
  return ParseModelConfig(text, (rel / "config.json").string());
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

// ------------------------------------------------------------- Lifecycle

CoordinatorService::CoordinatorService(ServiceOptions options,
                                       std::unique_ptr<JobStore> store,
                                       std::unique_ptr<PathPolicy> paths,
                                       const Clock* clock)
    : options_(std::move(options)),
      clock_(clock),
      store_(std::move(store)),
      paths_(std::move(paths)),
      observer_(std::make_unique<Observer>(this)) {}

absl::StatusOr<std::unique_ptr<CoordinatorService>> CoordinatorService::Create(
    ServiceOptions options, std::unique_ptr<JobStore> store,
    const Clock* clock) {
  if (store == nullptr || clock == nullptr) {
    return absl::InvalidArgumentError("service: store and clock are required");
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
    // The coordinator may not see the model (workers check again).
    if (shape.ok()) estimate = EstimateJobMemory(spec, *shape);
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
  *response.mutable_job() = std::move(stored);
  return response;
}

absl::StatusOr<proto::Job> CoordinatorService::GetJob(
    const Caller& caller, const proto::GetJobRequest& request) {
  RETURN_IF_ERROR(RequireTenant(caller, "GetJob"));
  return FindOwnJob(caller, "job_id", request.job_id());
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
    absl::string_view token = request.page_token();
    if (!absl::ConsumePrefix(&token, kPageTokenPrefix) ||
        !absl::SimpleAtoi(token, &query.after_seq) || query.after_seq < 0) {
      return absl::InvalidArgumentError(
          "page_token: malformed (pass next_page_token back unchanged)");
    }
  }
  JobPage page;
  RETURN_IF_ERROR(store_->Read([&](StoreTxn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(page, txn.ListJobs(query));
    return absl::OkStatus();
  }));
  size_t bytes = 0;
  for (size_t i = 0; i < page.jobs.size(); ++i) {
    bytes += page.jobs[i].ByteSizeLong();
    if (i > 0 && bytes > kMaxPageBytes) {
      // Full: the rest comes on the next page.
      response.set_next_page_token(
          absl::StrCat(kPageTokenPrefix, page.seqs[i - 1]));
      return response;
    }
    *response.add_jobs() = std::move(page.jobs[i]);
  }
  if (page.more) {
    response.set_next_page_token(
        absl::StrCat(kPageTokenPrefix, page.seqs.back()));
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
    const IsCancelled& cancelled) {
  RETURN_IF_ERROR(RequireTenant(caller, "FetchArtifacts"));
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
      if (!write(chunk)) {
        close(fd);
        return absl::CancelledError("the client went away");
      }
    }
    close(fd);
  }
  return absl::OkStatus();
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
  ASSIGN_OR_RETURN(
      std::optional<proto::Lease> lease,
      scheduler_->Acquire(request.world_id(),
                          std::min(deadline, absl::Now() + wait), cancelled));
  proto::AcquireJobResponse response;
  if (lease.has_value()) *response.mutable_lease() = *std::move(lease);
  return response;
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
