// Copies everything the process writes to stderr into a file as well, so
// that rank 0's job log (the trainer's progress lines, "resumed from ...",
// warnings, the worker's own lines) lands in OUTPUT/train.log, where `sheaf
// logs` fetches it, while still reaching the console (Slurm's or
// Kubernetes' log).
//
// How: fd 2 is pointed at a pipe; a thread copies the pipe to the original
// stderr and appends it to the file. Stop() points fd 2 back, drains the
// pipe and closes the file, so every byte written to stderr before Stop()
// is in the file once it returns (a fetch after the job completes sees the
// whole log). Output written with stdio is flushed at Start and Stop.
//
// One tee at a time per process (Start fails with kFailedPrecondition
// otherwise). Not meant for a process that forks: a child would keep the
// pipe open.
//
// Thread-safety: Start/Stop from one thread; any thread may write to stderr
// meanwhile.
#ifndef SHEAF_WORKER_LOG_TEE_H_
#define SHEAF_WORKER_LOG_TEE_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sheaf::worker {

class StderrTee {
 public:
  // Opens `path` for appending (created 0644 when missing) and starts
  // copying. kFailedPrecondition when a tee is already active; the errno's
  // code when the file or the pipe cannot be made.
  static absl::StatusOr<std::unique_ptr<StderrTee>> Start(const std::string& path);
  ~StderrTee();  // Stop()
  StderrTee(const StderrTee&) = delete;
  StderrTee& operator=(const StderrTee&) = delete;

  // Restores stderr, drains the pipe, syncs and closes the file. The first
  // write error to the file, if any. Idempotent.
  absl::Status Stop();

 private:
  StderrTee() = default;
  void Copy();

  int pipe_read_ = -1;
  int saved_stderr_ = -1;
  int file_ = -1;
  int file_errno_ = 0;  // first write error, set by the copy thread
  bool stopped_ = false;
  std::thread thread_;
  std::string path_;
};

}  // namespace sheaf::worker

#endif  // SHEAF_WORKER_LOG_TEE_H_
