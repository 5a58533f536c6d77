#include "tests/e2e_lib.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/spec/yaml.h"

extern char** environ;

namespace sheaf::e2e {
namespace {

namespace fs = std::filesystem;

constexpr char kAliceToken[] = "alice-e2e-token-0123456789";
constexpr char kWorkerToken[] = "worker-e2e-token-0123456789";


// Parent pid and state of /proc/PID/stat; false when it cannot be read.
bool ReadStat(pid_t pid, pid_t* ppid, char* state) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(f, line)) return false;
  const size_t paren = line.rfind(')');  // the command may hold spaces
  if (paren == std::string::npos) return false;
  std::istringstream rest(line.substr(paren + 1));
  long parent = 0;
  rest >> *state >> parent;
  *ppid = static_cast<pid_t>(parent);
  return static_cast<bool>(rest);
}

bool Alive(pid_t pid) {
  pid_t ppid;
  char state = 0;
  return ReadStat(pid, &ppid, &state) && state != 'Z' && state != 'X';
}

struct Call {
  explicit Call(absl::Duration timeout = absl::Seconds(10)) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kAliceToken));
    context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  }
  grpc::ClientContext context;
};

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

const char* AliceToken() { return kAliceToken; }
const char* WorkerToken() { return kWorkerToken; }

std::string Runfile(const std::string& rel) {
  for (const char* var : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    if (const char* base = std::getenv(var)) {
      const std::string p = absl::StrCat(base, "/sheaf/", rel);
      if (fs::exists(p)) return p;
    }
  }
  return rel;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::vector<pid_t> Descendants(pid_t root, const std::string& command) {
  std::multimap<pid_t, pid_t> children;
  if (DIR* d = opendir("/proc")) {
    while (dirent* e = readdir(d)) {
      int pid = 0;
      if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
      pid_t ppid;
      char state;
      if (ReadStat(pid, &ppid, &state)) children.emplace(ppid, pid);
    }
    closedir(d);
  }
  std::vector<pid_t> out;
  std::vector<pid_t> todo = {root};
  while (!todo.empty()) {
    const pid_t p = todo.back();
    todo.pop_back();
    auto [lo, hi] = children.equal_range(p);
    for (auto it = lo; it != hi; ++it) {
      out.push_back(it->second);
      todo.push_back(it->second);
    }
  }
  if (!command.empty()) {
    std::erase_if(out, [&](pid_t p) {
      std::string comm = ReadFile(absl::StrCat("/proc/", p, "/comm"));
      if (!comm.empty() && comm.back() == '\n') comm.pop_back();
      return comm != command;
    });
  }
  return out;
}

// ---- Process ----

absl::StatusOr<std::unique_ptr<Process>> Process::Start(const std::vector<std::string>& argv,
                                                        const std::string& log_path) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  const int error = posix_spawnp(&pid, args[0], &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (error != 0) {
    return absl::InternalError(absl::StrCat("spawn ", argv[0], ": ", std::strerror(error)));
  }
  std::unique_ptr<Process> p(new Process());
  p->pid_ = pid;
  p->log_path_ = log_path;
  return p;
}

Process::~Process() { KillTree(); }

bool Process::Exited() {
  if (reaped_) return true;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  return reaped_;
}

absl::StatusOr<int> Process::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!Exited()) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("pid ", pid_, " still running after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return exit_code_;
}

void Process::Signal(int sig) {
  if (!Exited()) kill(pid_, sig);
}

void Process::KillTree() {
  if (Exited()) return;
  const std::vector<pid_t> tree = Descendants(pid_);
  kill(pid_, SIGKILL);
  for (pid_t p : tree) kill(p, SIGKILL);
  Wait(absl::Seconds(30)).IgnoreError();
  // Orphaned descendants are reaped by whoever adopted them; wait until
  // they are gone so that nothing of the killed world is still running.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  for (pid_t p : tree) {
    while (Alive(p) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  }
}

// ---- Jobs ----

std::string LoraJobYaml(const JobOptions& o) {
  return absl::StrCat("base_model: tiny-en\nseed: ", o.seed,
                      "\ndata: {train: [corpus], seq_len: ", o.seq_len,
                      ", val_fraction: 0.2}\n"
                      "optimizer: {lr: 0.002}\n"
                      "schedule: {warmup_steps: 2}\n"
                      "train: {batch_size: ",
                      o.batch_size, ", max_steps: ", o.max_steps,
                      ", eval_every: 10, eval_batches: 2, checkpoint_every: ", o.checkpoint_every,
                      ", keep_checkpoints: 0, threads: 1, log_every: 5}\n"
                      "lora: {adapter: {rank: 4, alpha: 8, targets: [q_proj, v_proj, down_proj]}}\n");
}

// ---- Cluster ----

absl::StatusOr<std::unique_ptr<E2eCluster>> E2eCluster::Create(const std::string& name) {
  std::unique_ptr<E2eCluster> c(new E2eCluster());
  const char* tmp = std::getenv("TEST_TMPDIR");
  c->dir_ = absl::StrCat(tmp ? tmp : "/tmp", "/", name);
  std::error_code ec;
  fs::remove_all(c->dir_, ec);
  fs::create_directories(c->dir_ + "/models/tiny-en");
  fs::create_directories(c->dir_ + "/data/corpus");
  fs::create_directories(c->dir_ + "/out");
  for (const char* f : {"config.json", "model.safetensors"}) {
    const std::string from = Runfile(absl::StrCat("models/tiny-en/", f));
    fs::copy_file(from, c->dir_ + "/models/tiny-en/" + f, ec);
    if (ec) return absl::NotFoundError(absl::StrCat(from, ": ", ec.message()));
  }
  for (int i = 1; i <= 40; ++i) {
    std::ofstream f(absl::StrCat(c->dir_, "/data/corpus/d", i, ".txt"));
    for (int j = 1; j <= 40; ++j) {
      f << "Line " << i * j << ": the dog runs over the street and the cat watches. ";
    }
  }
  std::ofstream(c->dir_ + "/tokens") << "# e2e tokens\n"
                                     << kAliceToken << " alice\n"
                                     << kWorkerToken << " @worker\n";
  std::ofstream(c->dir_ + "/worker.token") << kWorkerToken << "\n";
  c->port_ = FreePort();
  if (c->port_ == 0) return absl::InternalError("no free loopback port");

  // OpenMPI on one machine, inside Bazel's sandbox, as root (as
  // dist/mpi_test_lib.sh sets it up): TCP over loopback only, no ssh.
  setenv("OMPI_MCA_btl", "self,tcp", 1);
  setenv("OMPI_MCA_btl_tcp_if_include", "lo", 1);
  setenv("OMPI_MCA_oob_tcp_if_include", "lo", 1);
  setenv("OMPI_MCA_plm_rsh_agent", "false", 1);
  setenv("OMPI_MCA_orte_tmpdir_base", tmp ? tmp : "/tmp", 1);
  setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  return c;
}

E2eCluster::~E2eCluster() {
  if (coordinator_) coordinator_->Signal(SIGTERM);
  if (coordinator_ && !coordinator_->Wait(absl::Seconds(10)).ok()) coordinator_->KillTree();
  // Keep the processes' logs and the jobs' train.log files (bazel puts
  // them in test.outputs/outputs.zip).
  if (const char* keep = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR")) {
    const fs::path to = fs::path(keep) / fs::path(dir_).filename();
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(dir_, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (it->is_regular_file() && it->path().extension() == ".log") {
        const fs::path dest = to / fs::relative(it->path(), dir_);
        fs::create_directories(dest.parent_path(), ec);
        fs::copy_file(it->path(), dest, fs::copy_options::overwrite_existing, ec);
      }
    }
  }
}

std::string E2eCluster::target() const { return absl::StrCat("127.0.0.1:", port_); }

std::unique_ptr<proto::Coordinator::Stub> E2eCluster::Stub() {
  // A fresh channel per call: no reconnect backoff carried over a
  // coordinator restart.
  return proto::Coordinator::NewStub(
      grpc::CreateChannel(target(), grpc::InsecureChannelCredentials()));
}

absl::Status E2eCluster::StartCoordinator(const std::string& lease_ttl,
                                          const std::vector<std::string>& extra) {
  ++coordinators_started_;
  std::vector<std::string> argv = {
      Runfile("coordinator/sheaf-coordinator"), "--listen", target(), "--db", dir_ + "/jobs.db",
      "--tokens", dir_ + "/tokens", "--model-root", dir_ + "/models", "--data-root",
      dir_ + "/data", "--output-root", dir_ + "/out", "--lease-ttl", lease_ttl,
      "--metrics-port", "0"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  absl::StatusOr<std::unique_ptr<Process>> p =
      Process::Start(argv, absl::StrCat(dir_, "/coordinator.", coordinators_started_, ".log"));
  if (!p.ok()) return p.status();
  coordinator_ = std::move(*p);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::Status last;
  while (absl::Now() < deadline) {
    if (coordinator_->Exited()) {
      return absl::InternalError(absl::StrCat("sheaf-coordinator exited:\n",
                                              ReadFile(coordinator_->log_path())));
    }
    Call call(absl::Seconds(2));
    proto::ListJobsRequest request;
    proto::ListJobsResponse response;
    last = FromGrpc(Stub()->ListJobs(&call.context, request, &response));
    if (last.ok()) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat("the coordinator does not answer: ",
                                                  last.ToString()));
}

void E2eCluster::KillCoordinator() {
  if (coordinator_) coordinator_->KillTree();
}

absl::StatusOr<std::unique_ptr<Process>> E2eCluster::StartWorld(
    int ranks, bool once, const std::vector<std::string>& extra) {
  ++worlds_started_;
  std::vector<std::string> argv = {"mpirun", "--oversubscribe", "--allow-run-as-root",
                                   "-np", absl::StrCat(ranks), Runfile("worker/sheaf-worker"),
                                   "--coordinator", target(),
                                   "--token-file", dir_ + "/worker.token",
                                   "--model-root", dir_ + "/models",
                                   "--data-root", dir_ + "/data",
                                   "--output-root", dir_ + "/out",
                                   "--acquire-wait-s", "2"};
  if (once) argv.push_back("--once");
  argv.insert(argv.end(), extra.begin(), extra.end());
  return Process::Start(argv, absl::StrCat(dir_, "/world.", worlds_started_, ".log"));
}

absl::StatusOr<std::string> E2eCluster::Submit(const std::string& yaml,
                                               const std::string& output_dir) {
  // What `sheaf submit` does: parse the YAML client-side, send the proto.
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(yaml);
  if (!spec.ok()) return spec.status();
  spec->set_output_dir(output_dir);
  Call call;
  proto::SubmitJobRequest request;
  *request.mutable_spec() = *spec;
  proto::SubmitJobResponse response;
  absl::Status s = FromGrpc(Stub()->SubmitJob(&call.context, request, &response));
  if (!s.ok()) return s;
  return response.job_id();
}

absl::StatusOr<proto::Job> E2eCluster::Get(const std::string& job_id) {
  Call call;
  proto::GetJobRequest request;
  request.set_job_id(job_id);
  proto::Job job;
  absl::Status s = FromGrpc(Stub()->GetJob(&call.context, request, &job));
  if (!s.ok()) return s;
  return job;
}

absl::StatusOr<proto::Job> E2eCluster::Cancel(const std::string& job_id) {
  Call call;
  proto::CancelJobRequest request;
  request.set_job_id(job_id);
  proto::Job job;
  absl::Status s = FromGrpc(Stub()->CancelJob(&call.context, request, &job));
  if (!s.ok()) return s;
  return job;
}

absl::StatusOr<proto::Job> E2eCluster::WaitFor(
    const std::string& job_id, const std::function<bool(const proto::Job&)>& pred,
    absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  proto::Job last;
  absl::Status error;
  while (absl::Now() < deadline) {
    absl::StatusOr<proto::Job> job = Get(job_id);
    if (job.ok()) {
      if (pred(*job)) return job;
      last = *job;
      if (job->state() >= proto::JOB_STATE_SUCCEEDED) {
        return absl::FailedPreconditionError(absl::StrCat(
            "job ", job_id, " ended ", proto::JobState_Name(job->state()), ": ",
            job->last_error()));
      }
    } else {
      error = job.status();  // the coordinator may be restarting
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "job ", job_id, " after ", absl::FormatDuration(timeout), ": ",
      proto::JobState_Name(last.state()), " at step ", last.progress().step(), "/",
      last.progress().total_steps(), ", last error '", last.last_error(), "'",
      error.ok() ? "" : absl::StrCat("; last call: ", error.ToString())));
}

absl::StatusOr<std::map<std::string, std::string>> E2eCluster::Fetch(const std::string& job_id) {
  Call call(absl::Seconds(60));
  proto::FetchArtifactsRequest request;
  request.set_job_id(job_id);
  auto stub = Stub();
  std::unique_ptr<grpc::ClientReader<proto::ArtifactChunk>> reader =
      stub->FetchArtifacts(&call.context, request);
  std::map<std::string, std::string> files;
  std::set<std::string> complete;
  proto::ArtifactChunk chunk;
  while (reader->Read(&chunk)) {
    std::string& data = files[chunk.path()];
    if (static_cast<int64_t>(data.size()) != chunk.offset()) {
      return absl::DataLossError(absl::StrCat(chunk.path(), ": chunk at ", chunk.offset(),
                                              " after ", data.size(), " bytes"));
    }
    data += chunk.data();
    if (chunk.eof()) complete.insert(chunk.path());
  }
  absl::Status s = FromGrpc(reader->Finish());
  if (!s.ok()) return s;
  for (const auto& [path, data] : files) {
    if (!complete.count(path)) return absl::DataLossError(absl::StrCat(path, ": no eof chunk"));
  }
  return files;
}

std::map<std::string, std::string> E2eCluster::ReadTree(const std::string& dir) {
  std::map<std::string, std::string> files;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (ec) break;
    if (it->is_regular_file() && !it->is_symlink()) {
      files[fs::relative(it->path(), dir).string()] = ReadFile(it->path().string());
    }
  }
  return files;
}

}  // namespace sheaf::e2e
