// The Coordinator service's logic (proto/coordinator.proto), in absl and
// proto types only: no gRPC here. grpc_service.h maps RPCs onto it and
// server.h runs the transport.
//
// Every method takes the authenticated Caller (auth.h). Tenant methods
// refuse worker callers (kPermissionDenied) and answer kNotFound for jobs of
// other tenants exactly as for jobs that do not exist; worker methods refuse
// tenants (kPermissionDenied). Requests are checked before anything else
// happens (limits.h, base/path_policy.h, core/spec ValidateJobSpec): a bad
// request is kInvalidArgument naming the field and the reason.
//
// Lifecycle: Create() opens the scheduler on the given store (recovering
// leases that expired while the coordinator was down); Shutdown() ends
// long polls and watch streams so that the transport can drain; the
// destructor stops the sweeper and closes the store.
//
// Thread-safety: thread-safe; methods block (the store commits, long polls
// wait) and are meant to be called from RPC threads.
#ifndef SHEAF_COORDINATOR_SERVICE_H_
#define SHEAF_COORDINATOR_SERVICE_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/path_policy.h"
#include "coordinator/auth.h"
#include "coordinator/clock.h"
#include "coordinator/events.h"
#include "coordinator/limits.h"
#include "coordinator/metrics.h"
#include "coordinator/page_token.h"
#include "coordinator/scheduler.h"
#include "coordinator/store.h"
#include "proto/coordinator.pb.h"

namespace sheaf::coordinator {

// Caps on FetchArtifacts streams (issue 9, item 7). A stalled reader holds a
// serving thread and up to one chunk of memory; these bound how many there
// can be and for how long.
struct FetchLimits {
  // Concurrent streams in all, and of one tenant; more are refused with
  // kResourceExhausted naming the cap. 0: no cap.
  int max_streams = 64;
  int max_streams_per_tenant = 8;
  // A reader that takes no chunk for this long is cut off (its pending
  // write is aborted; the stream ends with kDeadlineExceeded on our side,
  // CANCELLED on the client's). Zero: never.
  absl::Duration idle_timeout = absl::Seconds(60);
};

struct ServiceOptions {
  PathRoots roots;
  RequestLimits limits;
  SchedulerOptions scheduler;
  // Receives one line per job state change; null: no log.
  std::function<void(absl::string_view line)> log;
  // The longest AcquireJob wait a world may ask for.
  absl::Duration max_acquire_wait = absl::Seconds(60);
  // How often streams look whether their client is still there.
  absl::Duration stream_poll = absl::Milliseconds(200);
  FetchLimits fetch;
};

// Called with each message of a server stream; returns false when the
// client is gone (the stream then ends).
template <typename T>
using StreamWriter = std::function<bool(const T&)>;
// Polled by long-running calls; true once the client has given up.
using IsCancelled = std::function<bool()>;

class CoordinatorService {
 public:
  // `clock` must outlive the service. kInvalidArgument for bad roots or
  // scheduler options; storage errors from recovery.
  static absl::StatusOr<std::unique_ptr<CoordinatorService>> Create(
      ServiceOptions options, std::unique_ptr<JobStore> store,
      const Clock* clock);

  ~CoordinatorService();
  CoordinatorService(const CoordinatorService&) = delete;
  CoordinatorService& operator=(const CoordinatorService&) = delete;

  // ---- Tenant side ----

  // kInvalidArgument (spec, paths, priority, resources), kPermissionDenied.
  absl::StatusOr<proto::SubmitJobResponse> SubmitJob(
      const Caller& caller, const proto::SubmitJobRequest& request);
  // kNotFound, kInvalidArgument (empty id), kPermissionDenied.
  absl::StatusOr<proto::Job> GetJob(const Caller& caller,
                                    const proto::GetJobRequest& request);
  // kInvalidArgument (bad page token, page size or filter).
  absl::StatusOr<proto::ListJobsResponse> ListJobs(
      const Caller& caller, const proto::ListJobsRequest& request);
  // kNotFound, kFailedPrecondition (SUCCEEDED or FAILED job).
  absl::StatusOr<proto::Job> CancelJob(const Caller& caller,
                                       const proto::CancelJobRequest& request);
  // Streams events until the job ends (OK), the client goes (kCancelled)
  // or the service shuts down (kUnavailable). kNotFound as GetJob.
  absl::Status WatchJob(const Caller& caller,
                        const proto::WatchJobRequest& request,
                        const StreamWriter<proto::JobEvent>& write,
                        const IsCancelled& cancelled);
  // Streams the artifacts. kNotFound (job, no artifacts yet, or an unknown
  // resume path), kOutOfRange (offset past the end of the file),
  // kInvalidArgument, kResourceExhausted (options.fetch caps, naming the
  // cap), kDeadlineExceeded (the reader took no chunk for
  // options.fetch.idle_timeout). `write` is called with one chunk at a time
  // and should return only once the chunk is on its way (it is never
  // called again before it returns). `abort`, when given, is called from
  // another thread to cut off an idle reader: it must make a pending
  // `write` return false.
  absl::Status FetchArtifacts(const Caller& caller,
                              const proto::FetchArtifactsRequest& request,
                              const StreamWriter<proto::ArtifactChunk>& write,
                              const IsCancelled& cancelled,
                              const std::function<void()>& abort = nullptr);
  // FetchArtifacts streams running now.
  int active_fetch_streams() const;

  // ---- Worker side ----

  absl::StatusOr<proto::RegisterWorldResponse> RegisterWorld(
      const Caller& caller, const proto::RegisterWorldRequest& request);
  // Waits at most until `deadline` (the RPC's, real time) and
  // request.wait_ms. kNotFound for an unknown world.
  absl::StatusOr<proto::AcquireJobResponse> AcquireJob(
      const Caller& caller, const proto::AcquireJobRequest& request,
      absl::Time deadline, const IsCancelled& cancelled);
  absl::StatusOr<proto::HeartbeatResponse> Heartbeat(
      const Caller& caller, const proto::HeartbeatRequest& request);
  // kFailedPrecondition when the lease is no longer held; kInvalidArgument
  // for an artifact_dir outside the tenant's output directory.
  absl::StatusOr<proto::CompleteJobResponse> CompleteJob(
      const Caller& caller, const proto::CompleteJobRequest& request);

  // ---- Operations ----

  // The Prometheus exposition (metrics.h); "# error: ..." when the store
  // cannot be read.
  std::string RenderMetrics();
  // Ends waiting AcquireJob calls and watch streams, now and from now on.
  void Shutdown();

  Scheduler& scheduler() { return *scheduler_; }
  const PathPolicy& path_policy() const { return *paths_; }

 private:
  // Heartbeat and CompleteJob metrics: at most limits.max_metrics, names of
  // [A-Za-z0-9_.:/-]; kInvalidArgument naming the bad one.
  absl::Status CheckMetrics(const google::protobuf::Map<std::string, double>& metrics) const;
  class Observer;
  class FetchStreams;
  class WorldDirectory;

  // Worlds seen within WorldWindow() count for the waiting note:
  // 2 x max_acquire_wait + 2 x the lease TTL (an idle world long-polls
  // AcquireJob, a busy one heartbeats).
  absl::Duration WorldWindow() const;
  // Sets job->waiting_reason for a PENDING job no recent world can run.
  void NoteWaiting(proto::Job* job);
  // Marks the world seen (reading its description from the store when it
  // registered before a restart).
  void SeeWorld(const std::string& world_id);

  CoordinatorService(ServiceOptions options, std::unique_ptr<JobStore> store,
                     std::unique_ptr<PathPolicy> paths, const Clock* clock);

  // The job, if `caller` may see it; kNotFound otherwise.
  absl::StatusOr<proto::Job> FindOwnJob(const Caller& caller,
                                        absl::string_view field,
                                        absl::string_view job_id);
  absl::Status CheckId(absl::string_view field, absl::string_view id) const;

  const ServiceOptions options_;
  const Clock* const clock_;
  // Declared in dependency order: the scheduler (destroyed first) uses the
  // store, the hub, the metrics and the observer.
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<PathPolicy> paths_;
  JobEventHub events_;
  CoordinatorMetrics metrics_;
  std::unique_ptr<Observer> observer_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<FetchStreams> fetch_streams_;
  const PageTokenCodec page_tokens_;
  std::unique_ptr<WorldDirectory> worlds_;
};

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_SERVICE_H_
