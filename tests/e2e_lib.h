// Shared by the multi-process end-to-end tests (tests/e2e_*_test.cc): real
// processes (the sheaf-coordinator binary, worker worlds under mpirun), a
// real SQLite file, gRPC on loopback, as a user and an operator would run
// them.
//
// An E2eCluster owns a directory under $TEST_TMPDIR with the coordinator's
// roots (tiny-en copied into the model root, a generated corpus in the data
// root), its tokens file and database, and a fixed loopback port, so that a
// coordinator killed with SIGKILL can be restarted on the same address and
// database. Every process it starts is killed (with its descendants) when
// the cluster goes.
#ifndef SHEAF_TESTS_E2E_LIB_H_
#define SHEAF_TESTS_E2E_LIB_H_

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/coordinator.grpc.pb.h"

namespace sheaf::e2e {

// The bearer tokens the cluster's tokens file gives tenant alice and the
// worker worlds.
const char* AliceToken();
const char* WorkerToken();

// A loopback TCP port that was free a moment ago (0 when none was found).
int FreePort();

// $TEST_SRCDIR/sheaf/<rel> (or next to the binary when run by hand).
std::string Runfile(const std::string& rel);

std::string ReadFile(const std::string& path);

// A child process in a process group of its own, its output appended to a
// log file.
class Process {
 public:
  static absl::StatusOr<std::unique_ptr<Process>> Start(const std::vector<std::string>& argv,
                                                        const std::string& log_path);
  ~Process();  // KillTree()

  pid_t pid() const { return pid_; }
  // The exit code (128 + signal when killed by one); kDeadlineExceeded when
  // it is still running after `timeout`.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  bool Exited();
  void Signal(int sig);
  // SIGKILL to the process and every descendant at once (what a node crash
  // or `kill -9` of a whole world does), then reaps it.
  void KillTree();
  const std::string& log_path() const { return log_path_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int exit_code_ = -1;
  std::string log_path_;
};

// Descendants of `pid` (children, their children, ...), from /proc; with
// a `command`, only those whose /proc/PID/comm is that.
std::vector<pid_t> Descendants(pid_t pid, const std::string& command = "");

struct JobOptions {
  int max_steps = 20;
  int checkpoint_every = 5;
  int seq_len = 64;
  int batch_size = 8;
  uint64_t seed = 7;
};

// A LoRA job on tiny-en, paths relative to the coordinator's roots.
std::string LoraJobYaml(const JobOptions& options);

class E2eCluster {
 public:
  // `name` names the directory under $TEST_TMPDIR (wiped first).
  static absl::StatusOr<std::unique_ptr<E2eCluster>> Create(const std::string& name);
  ~E2eCluster();

  // Starts sheaf-coordinator on the cluster's port and database and waits
  // until it answers. `lease_ttl` as for --lease-ttl ("2s"); `extra`
  // flags are appended ({"--stall-floor", "4s"}).
  absl::Status StartCoordinator(const std::string& lease_ttl,
                                const std::vector<std::string>& extra = {});
  Process* coordinator() { return coordinator_.get(); }
  // SIGKILL; the database stays.
  void KillCoordinator();

  // mpirun -np `ranks` sheaf-worker [--once] ... (plus `extra` flags),
  // its output in dir()/world.N.log.
  absl::StatusOr<std::unique_ptr<Process>> StartWorld(int ranks, bool once = true,
                                                      const std::vector<std::string>& extra = {});

  // Tenant calls (as alice). Submit returns the job id.
  absl::StatusOr<std::string> Submit(const std::string& yaml, const std::string& output_dir);
  absl::StatusOr<proto::Job> Get(const std::string& job_id);
  absl::StatusOr<proto::Job> Cancel(const std::string& job_id);
  // Polls GetJob every 100 ms until `pred` holds. kDeadlineExceeded (with
  // the job's last state) after `timeout`; kFailedPrecondition when the job
  // reached a terminal state that does not satisfy `pred`.
  absl::StatusOr<proto::Job> WaitFor(const std::string& job_id,
                                     const std::function<bool(const proto::Job&)>& pred,
                                     absl::Duration timeout);
  // Every artifact of the job (relative path -> bytes), via FetchArtifacts.
  absl::StatusOr<std::map<std::string, std::string>> Fetch(const std::string& job_id);

  // Regular files under `dir` (relative path -> bytes).
  static std::map<std::string, std::string> ReadTree(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::string output_root() const { return dir_ + "/out"; }
  // Where a job submitted with `output_dir` writes (OUTPUT_ROOT/alice/...).
  std::string OutputOf(const std::string& output_dir) const {
    return output_root() + "/alice/" + output_dir;
  }
  std::string target() const;

 private:
  E2eCluster() = default;
  std::unique_ptr<proto::Coordinator::Stub> Stub();

  std::string dir_;
  int port_ = 0;
  int worlds_started_ = 0;
  int coordinators_started_ = 0;
  std::unique_ptr<Process> coordinator_;
};

}  // namespace sheaf::e2e

#endif  // SHEAF_TESTS_E2E_LIB_H_
