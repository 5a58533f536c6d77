// A worker world: N ranks (one process each, started by mpirun, srun or a
// Kubernetes MPI launcher) that take jobs from a coordinator and train them
// together (DESIGN.md "The life of a job", steps 3-7).
//
// Rank 0 talks to the coordinator; every rank runs the trainer. The ranks
// stay in step through control collectives on the world's communicator
// (Purpose::kPurposeControl), issued in the same order on every rank:
//
//   start:     each rank's record (memory, cores, host) goes to rank 0,
//              which registers the world (RegisterWorld).
//   each poll: rank 0 makes ONE bounded attempt to get work (register,
//              or an AcquireJob long poll of `acquire_wait`, or a backoff
//              after an error); then all ranks sum their stop votes
//              (SIGTERM may reach any rank), and rank 0 broadcasts what
//              to do: nothing (poll again), a job (the serialized Lease),
//              or exit. So no rank ever waits in a collective for longer
//              than one poll, however long the world stays idle.
//   a job:     every rank re-checks the spec's paths against its own roots
//              while rank 0 claims the output_dir for the job
//              (ClaimOutputDir: OUTPUT/.sheaf-job names the job whose run
//              it holds), (vote: a rank refusing paths that lie outside
//              its roots as written -> the job is released and the world
//              exits with an error, since its roots are misconfigured; a
//              rank refusing paths inside its roots (a symlink leading out,
//              swapped in after submit) -> the job fails permanently and
//              the world goes on; another job's output_dir -> the job
//              fails permanently), checks that the job's memory estimate
//              fits each rank (core/spec/memory_estimate.h; else a
//              retryable kResourceExhausted failure), builds the job
//              kind's recipe (jobs/recipe.h) with the lease's
//              output_dir and resume = true (the directory is this job's:
//              a re-leased job continues from its newest valid checkpoint,
//              a first attempt starts at step 0), (vote), runs it, and
//              votes on the outcome; rank 0 completes the lease.
//
// Rank 0, while a job runs: a LeaseKeeper heartbeats with the trainer's
// progress. CANCEL -> the trainer stops after its step (checkpoint), then
// CompleteJob(success = false, "cancelled"). LEASE_LOST, or heartbeats
// failing until the lease would have expired -> the trainer stops and the
// job is NOT completed (the coordinator re-leases it). Success ->
// CompleteJob(success = true, artifact_dir = output_dir). A failure ->
// CompleteJob(success = false, error, permanent for spec and data errors:
// kInvalidArgument, kNotFound, kUnimplemented, kDataLoss,
// kFailedPrecondition, kPermissionDenied). Setup and the run are guarded:
// an exception (std::bad_alloc) becomes the job's error, not a dead world. RequestStop (SIGTERM) ->
// the trainer stops after its step with a checkpoint, CompleteJob(success
// = false, "worker stopped (SIGTERM)", released = true) so that the job
// goes back to PENDING without counting the attempt, and Run() returns OK.
//
// Rank 0 also copies its stderr into OUTPUT/train.log while a job runs
// (log_tee.h), closing it before CompleteJob so that fetched artifacts are
// final.
//
// Assumptions: every rank sees the same files at the same paths (a shared
// file system for models, data and outputs: ranks read checkpoints that
// rank 0 wrote), and the coordinator's roots and the worker's roots name
// the same directories (the coordinator resolves spec paths to absolute
// paths inside its roots; the worker refuses paths outside its own).
//
// Failure of the world itself: a collective that fails (a rank died, a
// timeout) breaks the communicator; Run() then returns the error, rank 0
// first completing the job as a retryable failure when it can. The process
// should exit (non-zero).
//
// Thread-safety: Run() on one thread per rank; RequestStop() from any
// thread (a signal-handling thread).
#ifndef SHEAF_WORKER_WORKER_H_
#define SHEAF_WORKER_WORKER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/monotonic_sleep.h"
#include "base/path_policy.h"
#include "dist/communicator.h"
#include "jobs/recipe.h"
#include "jobs/world_sync.h"
#include "proto/coordinator.pb.h"
#include "worker/client.h"
#include "worker/lease_keeper.h"

namespace sheaf::worker {

struct WorkerOptions {
  // Rank 0 only (other ranks ignore it).
  ClientOptions client;
  // Spec paths must resolve inside these (base/path_policy.h rules).
  PathRoots roots;
  // Memory of this rank, reported to the coordinator (the world reports its
  // smallest rank's); 0: physical memory / ranks on this host.
  int64_t memory_bytes = 0;
  // Exit after one job (whatever its outcome).
  bool once = false;
  // Exit after this long without a job; zero: never.
  absl::Duration idle_exit = absl::ZeroDuration();
  // Length of one AcquireJob long poll.
  absl::Duration acquire_wait = absl::Seconds(20);
  // Longest wait between tries when the coordinator cannot be reached.
  absl::Duration max_backoff = absl::Seconds(5);
  // How long a rank waits in a control collective for the others (longer
  // than a poll; a breach means the world is broken).
  absl::Duration control_timeout = absl::Minutes(10);
  // Rank 0 copies its stderr into OUTPUT/train.log during a job.
  bool log_to_output = true;
  // A coordinator that cannot be reached does not stop a running job for
  // this long past the lease's expiry (LeaseKeeper::Options::outage_grace):
  // the world trains on, and the coordinator gives the lease back when it
  // is reachable again unless another world has had the job since (it
  // would then hold OUTPUT/.sheaf-lease, and this world stops at once).
  // The final CompleteJob is retried as long. Zero: stop at the expiry.
  absl::Duration outage_grace = absl::Minutes(30);
  // Rank 0's log lines; null: stderr.
  std::function<void(absl::string_view)> log;
};

struct WorkerStats {
  int jobs = 0;        // leases this world ran (or tried to)
  int succeeded = 0;   // completed with success
  int failed = 0;      // completed with success = false (incl. cancelled)
  int cancelled = 0;
  int lost = 0;        // leases lost or expired (not completed)
  int given_back = 0;  // completed as "worker stopped"
};

class Worker {
 public:
  // `comm` is the world (not owned; it must outlive the worker); null means
  // a world of one. kInvalidArgument for bad roots or (rank 0) client
  // options.
  static absl::StatusOr<std::unique_ptr<Worker>> Create(WorkerOptions options,
                                                        dist::Communicator* comm);
  ~Worker();

  // Serves jobs until --once is done, the idle time is up, or RequestStop.
  // OK when it stopped as asked. Errors: kUnauthenticated /
  // kPermissionDenied / kInvalidArgument when the coordinator refuses the
  // world (bad token); the communicator's error when the world broke.
  absl::Status Run();

  // Stop gracefully: a running job stops after its current step with a
  // checkpoint and is given back; then Run() returns.
  void RequestStop();

  WorkerStats stats() const;
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  // The id rank 0 registered under (empty elsewhere).
  std::string world_id() const;

 private:
  enum class Command : char { kCommandNone = 0, kCommandJob = 1, kCommandExit = 2 };
  struct Decision {
    Command command = Command::kCommandNone;
    proto::Lease lease;
    absl::Time lease_received;
    absl::Status exit_status;  // kCommandExit: why (OK = as asked)
  };

  Worker(WorkerOptions options, dist::Communicator* comm);
  bool is_root() const { return world_rank_ == 0; }
  void Log(absl::string_view line) const;

  // Collectives (no-ops for a world of one). Votes go through sync_.
  absl::Status BroadcastFromRoot(std::string* bytes);
  absl::Status Introduce();

  // Rank 0: one bounded attempt to get work.
  Decision Poll();
  absl::Status RunJob(const proto::Lease& lease, absl::Time received);
  // Rank 0: CompleteJob, retried until `give_up` on errors that a retry
  // may fix. false when it was not recorded.
  bool Complete(const proto::CompleteJobRequest& request, absl::Time give_up);
  absl::StatusOr<proto::JobSpec> CheckSpec(const proto::Lease& lease) const;
  void StopCurrentJob();
  bool stop_requested() const;
  // Sleeps, unless a stop request comes first (then returns at once).
  void SleepUnlessStopped(absl::Duration d);

  const WorkerOptions options_;
  dist::Communicator* const comm_;
  const int world_rank_;
  const int world_size_;
  jobs::WorldSync sync_;
  std::unique_ptr<PathPolicy> paths_;
  std::unique_ptr<CoordinatorClient> client_;  // rank 0

  // Rank 0's registration and records of every rank (from Introduce).
  proto::RegisterWorldRequest world_info_;
  std::string world_id_;
  absl::Time idle_since_;
  absl::Duration backoff_;

  mutable absl::Mutex mu_;
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
  // Stopped together with stop_requested_; what SleepUnlessStopped waits on.
  MonotonicSleep stop_sleep_;
  bool job_stop_ ABSL_GUARDED_BY(mu_) = false;  // stop the current job
  jobs::Recipe* recipe_ ABSL_GUARDED_BY(mu_) = nullptr;
  WorkerStats stats_ ABSL_GUARDED_BY(mu_);
  // world_id_ for other threads (world_id() may be called during Run()).
  std::string world_id_copy_ ABSL_GUARDED_BY(mu_);
};

// Whether another attempt cannot fix a job that failed with `status`.
bool IsPermanentFailure(const absl::Status& status);

// kResourceExhausted naming the estimate's parts when `spec` would need
// more than `memory_bytes` on each of `world_size` ranks
// (core/spec/memory_estimate.h); OK when it fits or is not known.
absl::Status CheckJobFitsRank(const proto::JobSpec& spec, int world_size, int64_t memory_bytes);

enum class OutputClaim { kFresh, kResume };

// Claims `dir` (an existing output_dir) for `job_id` through the file
// DIR/.sheaf-job, which names the job whose run the directory holds:
// absent -> written atomically (link of a complete temporary file), kFresh;
// present with `job_id` -> kResume (a re-leased job continues from its
// checkpoints); present with another id, or absent while DIR/checkpoints
// holds a run -> kFailedPrecondition "output_dir DIR holds job OTHER's run;
// submit with another output_dir" (permanent). kUnavailable on I/O errors.
absl::StatusOr<OutputClaim> ClaimOutputDir(const std::string& dir, const std::string& job_id);

}  // namespace sheaf::worker

#endif  // SHEAF_WORKER_WORKER_H_
