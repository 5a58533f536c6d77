// sheaf-worker: one process per rank of a worker world (worker/worker.h).
// Start N of them with mpirun, `srun --mpi=pmix` or a Kubernetes MPI
// launcher; a world of one needs no launcher.
//
// Exit codes: 0 the world stopped as asked (--once done, --idle-exit-s
// reached, SIGTERM/SIGINT/SIGUSR1: the running job was checkpointed and
// given back); 1 the coordinator refused the world (bad token) or the world
// broke (a rank died, a collective failed); 2 bad usage; with
// --handback-exit-code N, rank 0 exits N instead of 0 when it gave a job back
// to the queue (so a batch script knows to requeue itself).
#include <signal.h>
#include <time.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/bearer_token.h"
#include "base/file.h"
#include "base/flags.h"
#include "dist/communicator.h"
#include "dist/mpi_communicator.h"
#include "worker/worker.h"

namespace sheaf::worker {
namespace {

constexpr const char* kUsage = R"(usage: sheaf-worker [flags]      (one process per rank: mpirun / srun --mpi=pmix)

  --coordinator HOST:PORT  the coordinator (default: $SHEAF_ADDR)
  --token-file FILE        file holding the worker token (default:
                           $SHEAF_TOKEN_FILE, else the token in $SHEAF_TOKEN)
  --ca FILE                PEM root certificates: talk TLS, checked against them
  --tls-server-name NAME   name the coordinator's certificate carries (default:
                           the host of --coordinator)
  --model-root DIR         the leased spec's paths must resolve inside these
  --data-root DIR          roots (default: $SHEAF_MODEL_ROOT, $SHEAF_DATA_ROOT,
  --output-root DIR        $SHEAF_OUTPUT_ROOT); nothing outside is opened
  --memory-bytes N         memory per rank reported to the coordinator (K/KiB,
                           M/MiB, G/GiB, T/TiB are powers of 1024, as in
                           `sheaf submit --memory`; default: physical
                           memory / ranks on this host)
  --once                   exit after one job
  --idle-exit-s N          exit after N seconds without a job (default: never)
  --acquire-wait-s N       length of one AcquireJob long poll (default 20)
  --handback-exit-code N   exit N (1-125) instead of 0 when the world gave a
                           job back (stopped by a signal mid-job); default 0.
                           deploy/slurm's script uses 75 to requeue itself
  --peer-timeout-s N       a rank not heard from for N seconds (dead, or
                           stopped) breaks the world: the job is completed as
                           a retryable failure at once and the world exits 1
                           (default 20; 0: only the 30-minute collective
                           watchdog)
  --outage-grace-s N       a coordinator that cannot be reached does not stop
                           a running job for N seconds past its lease: the
                           world trains on and the coordinator gives the
                           lease back unless another world has had the job
                           (default 1800; 0: stop at the lease's expiry)
  --mpi-init-timeout-s N   MPI set-up (MPI_Init, every rank reaching rank 0,
                           the communicator) must finish within N seconds,
                           else exit 1 naming what it waited for; a line
                           every 10 s while it waits (default 120)

Rank 0 registers the world, long-polls for jobs, heartbeats and completes
them; every rank trains. SIGTERM, SIGINT or SIGUSR1 (which mpirun forwards
at once): finish the current step, checkpoint, give the job back (it goes
back to PENDING), exit 0 (or --handback-exit-code).
Exit codes: 0 stopped as asked, 1 refused by the coordinator or the world
broke, 2 bad usage, N (--handback-exit-code) a job was given back.
Threads (a spec's train.threads: 0) and the memory reported follow the
launcher's grant: OMP_NUM_THREADS, SLURM_CPUS_PER_TASK, SLURM_MEM_PER_CPU,
SLURM_MEM_PER_NODE, the cgroup's cpu.max / memory.max.
)";

int Usage(const std::string& why) {
  std::fprintf(stderr, "sheaf-worker: %s\n\n%s", why.c_str(), kUsage);
  return 2;
}

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

// Blocks SIGTERM, SIGINT and SIGUSR1 in every thread (call before any thread starts)
// and takes them on one thread of its own, which asks the worker to stop.
class SignalThread {
 public:
  SignalThread() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  }
  void Start(Worker* worker) {
    thread_ = std::thread([this, worker] {
      const timespec poll = {0, 200 * 1000 * 1000};
      while (!done_.load()) {
        const int sig = sigtimedwait(&set_, nullptr, &poll);
        if (sig == SIGTERM || sig == SIGINT || sig == SIGUSR1) {
          std::fprintf(stderr, "sheaf-worker[rank %d]: %s: stopping after the current step\n",
                       worker->world_rank(),
                       sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "SIGUSR1");
          worker->RequestStop();
        }
      }
    });
  }
  // Joins the thread (before the worker it points to goes away).
  void Stop() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
  }
  ~SignalThread() { Stop(); }

 private:
  sigset_t set_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

int Main(int argc, char** argv) {
  std::map<std::string, std::string> flags = {
      {"coordinator", EnvOr("SHEAF_ADDR", "")},
      {"token-file", EnvOr("SHEAF_TOKEN_FILE", "")},
      {"ca", ""},
      {"tls-server-name", ""},
      {"model-root", EnvOr("SHEAF_MODEL_ROOT", "")},
      {"data-root", EnvOr("SHEAF_DATA_ROOT", "")},
      {"output-root", EnvOr("SHEAF_OUTPUT_ROOT", "")},
      {"memory-bytes", "0"},
      {"idle-exit-s", "0"},
      {"acquire-wait-s", "20"},
      {"handback-exit-code", "0"},
      {"peer-timeout-s", "20"},
      {"mpi-init-timeout-s", "120"},
      {"outage-grace-s", "1800"},
  };
  ParsedFlags parsed;
  if (absl::Status st = ParseLongFlags(argc, argv, &flags, {"once"}, &parsed); !st.ok()) {
    return Usage(std::string(st.message()));
  }
  if (parsed.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const bool once = parsed.switches_set.count("once") > 0;

  WorkerOptions options;
  options.once = once;
  options.client.target = flags["coordinator"];
  if (options.client.target.empty()) return Usage("--coordinator (or SHEAF_ADDR) is required");
  if (!flags["token-file"].empty()) {
    // The reader `sheaf --token-file` uses: comment lines and a tenant after
    // the token are fine.
    absl::StatusOr<std::string> token = ReadTokenFile(flags["token-file"]);
    if (!token.ok()) return Usage(absl::StrCat("--token-file: ", token.status().message()));
    options.client.token = *std::move(token);
  } else {
    options.client.token = EnvOr("SHEAF_TOKEN", "");
  }
  if (options.client.token.empty()) {
    return Usage("a worker token is required (--token-file, SHEAF_TOKEN_FILE or SHEAF_TOKEN)");
  }
  if (!flags["ca"].empty()) {
    absl::StatusOr<std::string> pem = ReadFileToString(flags["ca"]);
    if (!pem.ok()) return Usage(absl::StrCat("--ca: ", pem.status().message()));
    if (pem->empty()) return Usage("--ca: " + flags["ca"] + " is empty");
    options.client.ca_pem = *std::move(pem);
  }
  options.client.tls_server_name = flags["tls-server-name"];
  options.roots = {flags["model-root"], flags["data-root"], flags["output-root"]};
  for (const char* root : {"model-root", "data-root", "output-root"}) {
    if (flags[root].empty()) return Usage(absl::StrCat("--", root, " is required"));
  }
  absl::StatusOr<int64_t> memory_bytes = ParseByteSize("memory-bytes", flags["memory-bytes"]);
  if (!memory_bytes.ok()) return Usage(std::string(memory_bytes.status().message()));
  options.memory_bytes = *memory_bytes;
  int64_t idle_s = 0, wait_s = 0;
  if (!absl::SimpleAtoi(flags["idle-exit-s"], &idle_s) || idle_s < 0) {
    return Usage("--idle-exit-s: must be an integer >= 0");
  }
  if (!absl::SimpleAtoi(flags["acquire-wait-s"], &wait_s) || wait_s < 1 || wait_s > 60) {
    return Usage("--acquire-wait-s: must be in [1, 60]");
  }
  int handback_exit_code = 0;
  if (!absl::SimpleAtoi(flags["handback-exit-code"], &handback_exit_code) ||
      handback_exit_code < 0 || handback_exit_code > 125) {
    return Usage("--handback-exit-code: must be an integer in [0, 125]");
  }
  int64_t peer_timeout_s = 0, init_timeout_s = 0;
  if (!absl::SimpleAtoi(flags["peer-timeout-s"], &peer_timeout_s) || peer_timeout_s < 0 ||
      peer_timeout_s > 3600) {
    return Usage("--peer-timeout-s: must be an integer in [0, 3600]");
  }
  if (!absl::SimpleAtoi(flags["mpi-init-timeout-s"], &init_timeout_s) || init_timeout_s < 1 ||
      init_timeout_s > 3600) {
    return Usage("--mpi-init-timeout-s: must be an integer in [1, 3600]");
  }
  int64_t outage_grace_s = 0;
  if (!absl::SimpleAtoi(flags["outage-grace-s"], &outage_grace_s) || outage_grace_s < 0 ||
      outage_grace_s > 7 * 24 * 3600) {
    return Usage("--outage-grace-s: must be an integer in [0, 604800]");
  }
  options.outage_grace = absl::Seconds(outage_grace_s);
  options.idle_exit = absl::Seconds(idle_s);
  options.acquire_wait = absl::Seconds(wait_s);

  SignalThread signals;  // before MPI starts its threads
  absl::StatusOr<dist::RankInfo> rank = dist::DiscoverRank();
  if (!rank.ok()) {
    std::fprintf(stderr, "sheaf-worker: %s\n", rank.status().ToString().c_str());
    return 2;
  }
  std::unique_ptr<dist::MpiCommunicator> comm;
  if (rank->world_size > 1) {
    dist::MpiCommunicator::Options mpi;
    mpi.peer_timeout = std::chrono::seconds(peer_timeout_s);
    mpi.init_timeout = std::chrono::seconds(init_timeout_s);
    absl::StatusOr<std::unique_ptr<dist::MpiCommunicator>> c = dist::MpiCommunicator::Create(mpi);
    if (!c.ok()) {
      std::fprintf(stderr, "sheaf-worker[rank %d]: MPI: %s\n", rank->world_rank,
                   c.status().ToString().c_str());
      std::fflush(stderr);
      // MPI may still be inside MPI_Init on another thread: no destructors.
      std::_Exit(1);
    }
    comm = std::move(*c);
  }
  absl::StatusOr<std::unique_ptr<Worker>> worker = Worker::Create(std::move(options), comm.get());
  if (!worker.ok()) {
    std::fprintf(stderr, "sheaf-worker: %s\n", worker.status().ToString().c_str());
    return absl::IsInvalidArgument(worker.status()) ? 2 : 1;
  }
  signals.Start(worker->get());
  absl::Status status = (*worker)->Run();
  signals.Stop();
  if (!status.ok()) {
    std::fprintf(stderr, "sheaf-worker[rank %d]: %s\n", rank->world_rank, status.ToString().c_str());
    return 1;
  }
  if (handback_exit_code > 0 && (*worker)->stats().given_back > 0) {
    std::fprintf(stderr, "sheaf-worker[rank %d]: gave %d job(s) back: exit %d\n", rank->world_rank,
                 (*worker)->stats().given_back, handback_exit_code);
    return handback_exit_code;
  }
  return 0;
}

}  // namespace
}  // namespace sheaf::worker

int main(int argc, char** argv) { return sheaf::worker::Main(argc, argv); }
