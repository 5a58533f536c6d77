// Issue 9's attacks, re-run on real processes at the scale: a
// sheaf-coordinator, worker worlds under mpirun and the sheaf CLI on
// loopback (tests/e2e_lib.h), attacked as a tenant, a data-root writer and a
// bad network would. Each attack prints what it counted; the run ends with a
// Markdown table (item, attack, counts, verdict) and exits 1 when an
// attack's promise did not hold.
//
//   tools/attacks.sh [ATTACK...]        (builds this; all attacks by default)
//
// Not a test in tools/test.sh: the whole run takes about 10 minutes on 2
// cores. Every item also has a test of its own that does (docs/hardening.md).
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/spec/yaml.h"
#include "tests/e2e_lib.h"

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

namespace sheaf::e2e {
namespace {

namespace fs = std::filesystem;

// ------------------------------------------------------------------ report

struct Row {
  std::string item, attack, counts;
  bool held;
};
std::vector<Row>& Rows() {
  static std::vector<Row> rows;
  return rows;
}

void Report(const std::string& item, const std::string& attack, const std::string& counts,
            bool held) {
  Rows().push_back({item, attack, counts, held});
  std::printf("[%s] %s: %s -> %s\n", item.c_str(), attack.c_str(), counts.c_str(),
              held ? "held" : "BROKEN");
  std::fflush(stdout);
}

void Note(const std::string& line) {
  std::printf("  %s\n", line.c_str());
  std::fflush(stdout);
}

// ------------------------------------------------------------------ helpers

bool Terminal(const proto::Job& j) { return j.state() >= proto::JOB_STATE_SUCCEEDED; }
bool Succeeded(const proto::Job& j) { return j.state() == proto::JOB_STATE_SUCCEEDED; }
std::string StateName(const proto::Job& j) { return proto::JobState_Name(j.state()); }

void WriteText(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

std::unique_ptr<grpc::ClientContext> Context(const std::string& token,
                                             absl::Duration timeout = absl::Seconds(10)) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
  context->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  return context;
}

// A channel of its own (no subchannel shared with other channels).
std::unique_ptr<proto::Coordinator::Stub> NewStub(const std::string& target, int unique = 0) {
  grpc::ChannelArguments args;
  args.SetInt("sheaf.attack.channel", unique);
  return proto::Coordinator::NewStub(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
}

// SubmitJob as `token` with the spec parsed from `yaml` (as the CLI does, but
// without the CLI's own validation: what a tenant calling gRPC sends).
grpc::Status SubmitRaw(E2eCluster& c, const std::string& token, const std::string& yaml,
                       const std::string& output_dir, proto::SubmitJobResponse* response,
                       const proto::ResourceRequest* resources = nullptr) {
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(yaml);
  if (!spec.ok()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("client-side parse: ", spec.status().message()));
  }
  spec->set_output_dir(output_dir);
  proto::SubmitJobRequest request;
  *request.mutable_spec() = *spec;
  if (resources != nullptr) *request.mutable_resources() = *resources;
  auto context = Context(token);
  return NewStub(c.target())->SubmitJob(context.get(), request, response);
}

int64_t RssKb(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      int64_t kb = 0;
      std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipWhitespace());
      if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kb)) return kb;
    }
  }
  return -1;
}

// Counts opens and reads of anything in the watched directories (inotify:
// IN_OPEN, IN_ACCESS), i.e. whether any process read outside the roots.
class OpenWatch {
 public:
  OpenWatch() : fd_(inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {}
  ~OpenWatch() { close(fd_); }
  bool Add(const fs::path& dir) {
    return inotify_add_watch(fd_, dir.c_str(), IN_OPEN | IN_ACCESS) >= 0;
  }
  // Events since the last call.
  int Drain() {
    int events = 0;
    alignas(inotify_event) char buffer[1 << 16];
    for (;;) {
      const ssize_t n = read(fd_, buffer, sizeof(buffer));
      if (n <= 0) break;
      for (char* p = buffer; p < buffer + n;) {
        auto* e = reinterpret_cast<inotify_event*>(p);
        ++events;
        p += sizeof(inotify_event) + e->len;
      }
    }
    return events;
  }

 private:
  int fd_;
};

// The outside of every root: a directory next to the roots whose name is a
// marker, so that a leaked path is found by grepping for it.
constexpr char kMarker[] = "OUTSIDE-7f3a";

std::string OutsideDir(E2eCluster& c) { return c.dir() + "/" + kMarker; }

// A small LoRA job on tiny-en over `train` (a data-root path).
std::string SmallJob(const std::string& train, int max_steps, int seed = 7) {
  JobOptions o;
  o.max_steps = max_steps;
  o.checkpoint_every = std::max(1, max_steps);
  o.seed = seed;
  std::string yaml = LoraJobYaml(o);
  const std::string from = "train: [corpus]";
  yaml.replace(yaml.find(from), from.size(), absl::StrCat("train: [", train, "]"));
  return yaml;
}

std::string WithField(std::string yaml, const std::string& from, const std::string& to) {
  const size_t at = yaml.find(from);
  if (at == std::string::npos) return yaml + "\n# (no " + from + ")\n";
  yaml.replace(at, from.size(), to);
  return yaml;
}

absl::StatusOr<proto::Job> WaitTerminal(E2eCluster& c, const std::string& id,
                                        absl::Duration timeout) {
  auto job = c.WaitFor(id, Terminal, timeout);
  return job;
}

// Every file the world's processes wrote to their log so far.
bool LogHas(const Process& p, const std::string& needle) {
  return ReadFile(p.log_path()).find(needle) != std::string::npos;
}

// Runs the sheaf CLI; returns its exit code and output (stdout + stderr).
struct CliResult {
  int code = -1;
  std::string output;
  double seconds = 0;
};
CliResult Cli(E2eCluster& c, const std::vector<std::string>& args, int n = 0) {
  static int calls = 0;
  const std::string log = absl::StrCat(c.dir(), "/cli.", ++calls, ".log");
  std::vector<std::string> argv = {Runfile("cli/sheaf")};
  argv.insert(argv.end(), args.begin(), args.end());
  const absl::Time start = absl::Now();
  CliResult r;
  auto p = Process::Start(argv, log);
  if (!p.ok()) {
    r.output = std::string(p.status().message());
    return r;
  }
  auto code = (*p)->Wait(absl::Seconds(120));
  r.code = code.ok() ? *code : -1;
  r.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  r.output = ReadFile(log);
  return r;
}

std::vector<std::string> Remote(E2eCluster& c) {
  const std::string token = c.dir() + "/alice.token";
  if (!fs::exists(token)) WriteText(token, absl::StrCat(AliceToken(), "\n"));
  fs::permissions(token, fs::perms::owner_read | fs::perms::owner_write);
  return {"--addr", c.target(), "--token-file", token};
}

std::vector<std::string> Concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Milliseconds a ListJobs takes (the coordinator still answering).
double ListMs(E2eCluster& c) {
  const absl::Time start = absl::Now();
  auto context = Context(AliceToken());
  proto::ListJobsRequest request;
  request.set_page_size(1);
  proto::ListJobsResponse response;
  grpc::Status s = NewStub(c.target())->ListJobs(context.get(), request, &response);
  return s.ok() ? absl::ToDoubleMilliseconds(absl::Now() - start) : -1;
}

// ------------------------------------------------------------------ item 1

void AttackBounds() {
  auto cluster = E2eCluster::Create("attack_bounds");
  if (!cluster.ok()) return Report("1", "bounds", cluster.status().ToString(), false);
  E2eCluster& c = **cluster;
  if (!c.StartCoordinator("10s").ok()) return Report("1", "bounds", "no coordinator", false);
  auto world = c.StartWorld(2, /*once=*/false, {"--memory-bytes", "512M"});
  if (!world.ok()) return Report("1", "bounds", world.status().ToString(), false);

  const std::string base = SmallJob("corpus", 4);
  struct Case {
    std::string field, from, to;
  };
  const std::vector<Case> cases = {
      {"train.batch_size", "batch_size: 8", "batch_size: 2000000000"},
      {"train.grad_accum", "batch_size: 8", "batch_size: 8, grad_accum: 2000000000"},
      {"lora.adapter.rank", "rank: 4", "rank: 1000000"},
      {"train.threads", "threads: 1", "threads: 100000"},
      {"data.seq_len", "seq_len: 64", "seq_len: 100000000"},
      {"train.max_steps", "max_steps: 4", "max_steps: 9000000000000"},
  };
  int refused = 0, named = 0, accepted = 0;
  for (const Case& k : cases) {
    proto::SubmitJobResponse response;
    grpc::Status s = SubmitRaw(c, AliceToken(), WithField(base, k.from, k.to), "", &response);
    if (s.ok()) {
      ++accepted;
      Note(absl::StrCat(k.field, ": ACCEPTED as ", response.job_id()));
    } else {
      ++refused;
      if (absl::StrContains(s.error_message(), k.field)) ++named;
      Note(absl::StrCat(k.field, ": refused ", s.error_code(), ": ",
                        s.error_message().substr(0, 160)));
    }
  }
  // Within every bound, but above what a 512 MiB-per-rank world holds:
  // accepted (a bigger world may come) and never leased to this one.
  const std::string big = WithField(WithField(base, "batch_size: 8", "batch_size: 4096"),
                                    "seq_len: 64", "seq_len: 4096");
  proto::SubmitJobResponse big_response;
  grpc::Status big_status = SubmitRaw(c, AliceToken(), big, "", &big_response);
  std::string big_state = "refused at submit: " + big_status.error_message().substr(0, 120);
  bool big_held = !big_status.ok();
  if (big_status.ok()) {
    absl::SleepFor(absl::Seconds(20));
    auto j = c.Get(big_response.job_id());
    big_held = j.ok() && j->state() == proto::JOB_STATE_PENDING && j->attempts() == 0;
    big_state = j.ok() ? absl::StrCat(StateName(*j), " after 20 s, attempts ", j->attempts(),
                                      ", waiting: '", j->waiting_reason().substr(0, 140), "'")
                       : j.status().ToString();
    c.Cancel(big_response.job_id()).IgnoreError();
  }
  Note("too big for the world: " + big_state);
  // The world is the one started above and still serves a normal job.
  auto ok_id = c.Submit(base, "after-bounds");
  auto ok_job = ok_id.ok() ? c.WaitFor(*ok_id, Succeeded, absl::Seconds(120))
                           : absl::StatusOr<proto::Job>(ok_id.status());
  const bool world_alive = !(*world)->Exited();
  Report("1", "unbounded numbers: batch_size 2e9, grad_accum 2e9, rank 1e6, threads 1e5, "
              "seq_len 1e8, max_steps 9e12; a job above the world's memory",
         absl::StrCat(refused, "/", cases.size(), " refused at submit (", named,
                      " naming the field), ", accepted, " accepted; too-big job: ", big_state,
                      "; world crashes ", world_alive ? "0" : "1",
                      "; next job ", ok_job.ok() ? "SUCCEEDED" : ok_job.status().ToString()),
         refused == static_cast<int>(cases.size()) && named == refused && big_held &&
             world_alive && ok_job.ok());
}

// ------------------------------------------------------------------ items 2, 3

void AttackSymlinks() {
  auto cluster = E2eCluster::Create("attack_symlinks");
  if (!cluster.ok()) return Report("2", "symlinks", cluster.status().ToString(), false);
  E2eCluster& c = **cluster;
  const fs::path outside = OutsideDir(c), data = c.dir() + "/data", models = c.dir() + "/models";
  std::string secret;
  for (int j = 0; j < 200; ++j) secret += "SECRET outside text, never to be read. ";
  WriteText(outside / "secret.txt", secret);
  WriteText(outside / "dir/secret.txt", secret);
  fs::create_directories(outside / "model");
  for (const char* f : {"config.json", "model.safetensors"}) {
    fs::copy_file(models / "tiny-en" / f, outside / "model" / f);
  }
  // (a) a file symlink inside a data folder, pointing out.
  fs::create_directories(data / "leak");
  fs::copy_file(data / "corpus/d1.txt", data / "leak/a.txt");
  fs::create_symlink(outside / "secret.txt", data / "leak/b.txt");
  // (b) model files symlinked out of the model root.
  fs::create_directories(models / "evil");
  fs::copy_file(models / "tiny-en/config.json", models / "evil/config.json");
  fs::create_symlink(outside / "model/model.safetensors", models / "evil/model.safetensors");
  // (c) the race: data/dir (real) and data/link (-> outside/dir) exchanged
  // in a loop with renameat2(RENAME_EXCHANGE).
  fs::create_directories(data / "dir");
  for (int i = 1; i <= 5; ++i) {
    fs::copy_file(data / absl::StrCat("corpus/d", i, ".txt"), data / absl::StrCat("dir/d", i, ".txt"));
  }
  fs::create_directory_symlink(outside / "dir", data / "link");

  OpenWatch watch;
  const bool watching = watch.Add(outside) && watch.Add(outside / "dir") &&
                        watch.Add(outside / "model");
  if (!c.StartCoordinator("10s").ok()) return Report("2", "symlinks", "no coordinator", false);
  auto world = c.StartWorld(1, /*once=*/false);
  if (!world.ok()) return Report("2", "symlinks", world.status().ToString(), false);
  watch.Drain();

  int leaks = 0;
  auto leaked = [&](const std::string& text) { return text.find(kMarker) != std::string::npos; };
  // (a) and (b): each job refused at submit or failed, never trained.
  int trained = 0, stopped = 0;
  std::vector<std::pair<std::string, std::string>> one_shot = {
      {SmallJob("leak", 2), "file symlink 1"}, {SmallJob("leak", 2, 8), "file symlink 2"},
      {WithField(SmallJob("corpus", 2), "base_model: tiny-en", "base_model: evil"),
       "model symlink"}};
  for (const auto& [yaml, what] : one_shot) {
    proto::SubmitJobResponse response;
    grpc::Status s = SubmitRaw(c, AliceToken(), yaml, "", &response);
    std::string outcome;
    if (!s.ok()) {
      ++stopped;
      leaks += leaked(s.error_message());
      outcome = "refused at submit: " + s.error_message();
    } else {
      auto j = WaitTerminal(c, response.job_id(), absl::Seconds(120));
      if (j.ok() && Succeeded(*j)) {
        ++trained;
      } else {
        ++stopped;
      }
      if (j.ok()) leaks += leaked(j->last_error());
      outcome = j.ok() ? absl::StrCat(StateName(*j), " (attempts ", j->attempts(), "): ",
                                      j->last_error())
                       : j.status().ToString();
    }
    Note(absl::StrCat(what, ": ", outcome.substr(0, 200)));
  }
  const int direct_reads = watch.Drain();
  Report("2", "file and model symlinks out of the roots (2 data jobs, 1 model job)",
         absl::StrCat(trained, " of 3 trained, ", stopped, " refused or failed; ", direct_reads,
                      " opens/reads outside the roots; ", leaks,
                      " outside paths in messages", watching ? "" : " (inotify unavailable)"),
         trained == 0 && direct_reads == 0 && leaks == 0 && watching);

  // (c) 60 jobs while the directory is exchanged with an outside link.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> swaps{0};
  std::thread swapper;
  // Submitted before the exchanges start (so all are accepted): the race is
  // between the world's checks and its opens. Then 60 more submitted during
  // the exchanges (the coordinator's check races too).
  const int kJobs = 60;
  int refused = 0, succeeded = 0, failed = 0, other = 0;
  leaks = 0;
  std::vector<std::string> ids;
  std::set<std::string> refusals, failures;
  auto submit_batch = [&](int first) {
    for (int i = 0; i < kJobs; ++i) {
      proto::SubmitJobResponse response;
      grpc::Status s = SubmitRaw(c, AliceToken(), SmallJob("dir", 2, first + i), "", &response);
      if (!s.ok()) {
        ++refused;
        leaks += leaked(s.error_message());
        if (refusals.size() < 3) refusals.insert(s.error_message().substr(0, 160));
      } else {
        ids.push_back(response.job_id());
      }
    }
  };
  // Not while a world could start on them before the exchanges begin.
  (*world)->Signal(SIGSTOP);
  for (pid_t p : Descendants((*world)->pid())) kill(p, SIGSTOP);
  submit_batch(100);
  const int accepted_before = static_cast<int>(ids.size());
  stop = false;
  swapper = std::thread([&] {
    const std::string a = (data / "dir").string(), b = (data / "link").string();
    while (!stop.load()) {
      if (syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0) {
        ++swaps;
      }
    }
  });
  for (pid_t p : Descendants((*world)->pid())) kill(p, SIGCONT);
  (*world)->Signal(SIGCONT);
  submit_batch(200);
  for (const std::string& id : ids) {
    auto j = WaitTerminal(c, id, absl::Seconds(300));
    if (!j.ok()) {
      ++other;
      continue;
    }
    leaks += leaked(j->last_error());
    if (Succeeded(*j)) {
      ++succeeded;
    } else {
      ++failed;
      if (failures.size() < 3) failures.insert(j->last_error().substr(0, 160));
    }
  }
  for (const std::string& r : refusals) Note("refused: " + r);
  for (const std::string& f : failures) Note("failed: " + f);
  stop = true;
  swapper.join();
  const int race_reads = watch.Drain();
  const bool world_alive = !(*world)->Exited();
  leaks += leaked(ReadFile((*world)->log_path())) + leaked(ReadFile(c.coordinator()->log_path()));
  Report("2", "renameat2 exchange race: 60 jobs accepted before it, 60 submitted during it",
         absl::StrCat(2 * kJobs, " jobs (", accepted_before, " accepted before the race) during ",
                      swaps.load(), " exchanges: ", refused,
                      " refused at submit, ", succeeded, " SUCCEEDED (on the inside files), ",
                      failed, " FAILED, ", other, " unfinished; ", race_reads,
                      " opens/reads outside; ", leaks, " outside paths in messages and logs; world ",
                      world_alive ? "alive" : "DEAD"),
         race_reads == 0 && leaks == 0 && world_alive && other == 0 &&
             accepted_before == kJobs);
}

void AttackSwapAfterSubmit() {
  auto cluster = E2eCluster::Create("attack_swap");
  if (!cluster.ok()) return Report("3", "swap", cluster.status().ToString(), false);
  E2eCluster& c = **cluster;
  const fs::path outside = OutsideDir(c), data = c.dir() + "/data";
  WriteText(outside / "dir/secret.txt", "SECRET outside text. SECRET outside text.");
  fs::create_directories(data / "victim");
  fs::copy_file(data / "corpus/d1.txt", data / "victim/d1.txt");
  OpenWatch watch;
  watch.Add(outside / "dir");
  if (!c.StartCoordinator("10s").ok()) return Report("3", "swap", "no coordinator", false);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto id = c.Submit(SmallJob("victim", 2, 20 + i), "");
    if (id.ok()) ids.push_back(*id);
  }
  // After submit (paths judged then), before any world runs them.
  fs::remove_all(data / "victim");
  fs::create_directory_symlink(outside / "dir", data / "victim");
  auto world = c.StartWorld(2, /*once=*/false);
  if (!world.ok()) return Report("3", "swap", world.status().ToString(), false);
  watch.Drain();
  int failed = 0, attempts = 0;
  std::string reason;
  for (const std::string& id : ids) {
    auto j = WaitTerminal(c, id, absl::Seconds(120));
    if (j.ok() && j->state() == proto::JOB_STATE_FAILED) ++failed;
    if (j.ok()) {
      attempts += j->attempts();
      reason = j->last_error();
    }
  }
  Note("last error: " + reason.substr(0, 200));
  auto next = c.Submit(SmallJob("corpus", 2), "");
  auto next_job = next.ok() ? c.WaitFor(*next, Succeeded, absl::Seconds(120))
                            : absl::StatusOr<proto::Job>(next.status());
  const bool world_alive = !(*world)->Exited();
  const int reads = watch.Drain();
  Report("3", "data dir swapped for an outside symlink after submit (3 jobs)",
         absl::StrCat(failed, "/", ids.size(), " FAILED, ", attempts, " attempts in all, ", reads,
                      " reads outside; worlds lost ", world_alive ? 0 : 1,
                      " (world restarts needed 0); next job ",
                      next_job.ok() ? "SUCCEEDED" : next_job.status().ToString()),
         ids.size() == 3 && failed == 3 && world_alive && reads == 0 && next_job.ok() &&
             reason.find(kMarker) == std::string::npos);
}

// ------------------------------------------------------------------ item 4

std::string FindFaketime() {
  for (const char* p : {"/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                        "/usr/lib/faketime/libfaketime.so.1"}) {
    if (fs::exists(p)) return p;
  }
  return "";
}

void AttackClock() {
  const std::string faketime = FindFaketime();
  if (faketime.empty()) {
    return Report("4", "wall-clock steps",
                  "SKIPPED: libfaketime not installed (apt-get install libfaketime)", true);
  }
  auto cluster = E2eCluster::Create("attack_clock");
  if (!cluster.ok()) return Report("4", "clock", cluster.status().ToString(), false);
  E2eCluster& c = **cluster;
  // The coordinator's wall clock (CLOCK_REALTIME) follows this file; its
  // monotonic clock is left alone, as a real clock step leaves it.
  const std::string offset_file = c.dir() + "/faketime";
  WriteText(offset_file, "+0\n");
  auto set_offset = [&](const std::string& offset) { WriteText(offset_file, offset + "\n"); };
  setenv("LD_PRELOAD", faketime.c_str(), 1);
  setenv("FAKETIME_TIMESTAMP_FILE", offset_file.c_str(), 1);
  setenv("FAKETIME_NO_CACHE", "1", 1);
  setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
  const absl::Status started = c.StartCoordinator("10s");
  unsetenv("LD_PRELOAD");
  unsetenv("FAKETIME_TIMESTAMP_FILE");
  if (!started.ok()) return Report("4", "clock", started.ToString(), false);

  // (a) Three forward steps of 20 s (TTL 10 s) under a healthy job.
  JobOptions o;
  o.max_steps = 900;
  o.checkpoint_every = 300;
  auto id = c.Submit(LoraJobYaml(o), "clock");
  auto world = c.StartWorld(2, /*once=*/false, {"--outage-grace-s", "120"});
  if (!id.ok() || !world.ok()) return Report("4", "clock", "setup failed", false);
  int64_t seconds = 0;
  for (int step = 1; step <= 3; ++step) {
    auto j = c.WaitFor(*id, [&](const proto::Job& x) { return x.progress().step() >= 100 * step; },
                       absl::Seconds(120));
    if (!j.ok()) break;
    seconds += 20;
    set_offset(absl::StrCat("+", seconds));
    absl::SleepFor(absl::Seconds(4));
  }
  // Prove the coordinator's clock moved: a job submitted now is stamped
  // ~60 s ahead of this process's clock.
  auto probe = c.Submit(SmallJob("corpus", 2), "clock-probe");
  int64_t skew_s = 0;
  if (probe.ok()) {
    auto pj = c.Get(*probe);
    if (pj.ok()) skew_s = (pj->created_unix_ms() - absl::ToUnixMillis(absl::Now())) / 1000;
    c.Cancel(*probe).IgnoreError();
  }
  auto done = c.WaitFor(*id, Succeeded, absl::Seconds(300));
  Report("4", "three +20 s wall-clock steps (TTL 10 s) under a 900-step job",
         absl::StrCat("coordinator clock skew at the end ", skew_s, " s; job ",
                      done.ok() ? absl::StrCat("SUCCEEDED, attempts ", done->attempts(),
                                               ", step ", done->progress().step())
                                : done.status().ToString()),
         done.ok() && done->attempts() == 1 && skew_s >= 50);

  // (b) A backward step of 1 h, then the world dies: the lease must expire
  // about one TTL later, not an hour.
  JobOptions o2;
  o2.max_steps = 3000;
  o2.checkpoint_every = 1000;
  auto id2 = c.Submit(LoraJobYaml(o2), "clock-back");
  if (!id2.ok()) return Report("4", "clock back", id2.status().ToString(), false);
  auto running = c.WaitFor(*id2, [](const proto::Job& x) { return x.progress().step() >= 20; },
                           absl::Seconds(120));
  set_offset("-3600");
  absl::SleepFor(absl::Seconds(2));
  (*world)->KillTree();
  const absl::Time killed = absl::Now();
  auto released = c.WaitFor(
      *id2, [](const proto::Job& x) { return x.state() != proto::JOB_STATE_RUNNING; },
      absl::Seconds(200));
  const double after = absl::ToDoubleSeconds(absl::Now() - killed);
  Report("4", "a -1 h wall-clock step, then the world is killed (TTL 10 s)",
         released.ok() ? absl::StrCat("lease released ", absl::StrFormat("%.1f", after),
                                      " s after the kill (", StateName(*released), ", '",
                                      released->last_error().substr(0, 100), "')")
                       : released.status().ToString(),
         running.ok() && released.ok() && after < 30);
  c.Cancel(*id2).IgnoreError();

  // (c) A +1 h step, then the world is killed. Under libfaketime a clock
  // ahead of the kernel's is what a real step back is to a timed wait that
  // began before it (Abseil sleeps to an absolute CLOCK_REALTIME deadline):
  // before base/monotonic_sleep the sweeper would have slept for the hour.
  set_offset("+0");
  auto world2 = c.StartWorld(2, /*once=*/false, {"--outage-grace-s", "120"});
  auto id3 = c.Submit(LoraJobYaml(o2), "clock-forward");
  if (!world2.ok() || !id3.ok()) return Report("4", "clock forward", "setup failed", false);
  auto running3 = c.WaitFor(*id3, [](const proto::Job& x) { return x.progress().step() >= 20; },
                            absl::Seconds(120));
  set_offset("+3600");
  absl::SleepFor(absl::Seconds(5));
  auto healthy = c.Get(*id3);
  (*world2)->KillTree();
  const absl::Time killed3 = absl::Now();
  auto released3 = c.WaitFor(
      *id3, [](const proto::Job& x) { return x.state() != proto::JOB_STATE_RUNNING; },
      absl::Seconds(200));
  const double after3 = absl::ToDoubleSeconds(absl::Now() - killed3);
  Report("4", "a +1 h wall-clock step (5 s of training), then the world is killed (TTL 10 s)",
         released3.ok() && healthy.ok()
             ? absl::StrCat("5 s after the step ", StateName(*healthy), " on attempt ",
                            healthy->attempts(), "; lease released ",
                            absl::StrFormat("%.1f", after3), " s after the kill (",
                            StateName(*released3), ")")
             : released3.status().ToString(),
         running3.ok() && healthy.ok() && healthy->state() == proto::JOB_STATE_RUNNING &&
             released3.ok() && after3 < 30);
  c.Cancel(*id3).IgnoreError();
}

// ------------------------------------------------------------------ item 5

void AttackOutages() {
  auto cluster = E2eCluster::Create("attack_outage");
  if (!cluster.ok()) return Report("5", "outage", cluster.status().ToString(), false);
  E2eCluster& c = **cluster;
  const std::string ttl = "10s";
  if (!c.StartCoordinator(ttl).ok()) return Report("5", "outage", "no coordinator", false);
  auto world = c.StartWorld(2, /*once=*/false, {"--outage-grace-s", "300"});
  if (!world.ok()) return Report("5", "outage", world.status().ToString(), false);

  // (a) Three 15 s outages (kill -9, restart on the same database).
  JobOptions o;
  o.max_steps = 1500;
  o.checkpoint_every = 250;
  auto id = c.Submit(LoraJobYaml(o), "outage");
  if (!id.ok()) return Report("5", "outage", id.status().ToString(), false);
  std::vector<int64_t> at;
  bool restarted = true;
  for (int k = 0; k < 3 && restarted; ++k) {
    auto j = c.WaitFor(*id, [&](const proto::Job& x) { return x.progress().step() >= 150 + 350 * k; },
                       absl::Seconds(300));
    if (!j.ok()) break;
    at.push_back(j->progress().step());
    c.KillCoordinator();
    absl::SleepFor(absl::Seconds(15));
    restarted = c.StartCoordinator(ttl).ok();
  }
  auto done = c.WaitFor(*id, Succeeded, absl::Seconds(400));
  Report("5", "three 15 s coordinator outages (kill -9; TTL 10 s) under a 1500-step job",
         absl::StrCat("outages at steps ", absl::StrJoin(at, ", "), "; ",
                      done.ok() ? absl::StrCat("SUCCEEDED, attempts ", done->attempts(),
                                               ", progress ", done->progress().step(), "/",
                                               done->progress().total_steps(), " loss ",
                                               done->progress().loss())
                                : done.status().ToString()),
         at.size() == 3 && done.ok() && done->attempts() == 1 &&
             done->progress().step() == o.max_steps);

  // (b) The job ends while the coordinator is down.
  JobOptions o2;
  o2.max_steps = 40;
  o2.checkpoint_every = 20;
  auto id2 = c.Submit(LoraJobYaml(o2), "outage-end");
  if (!id2.ok()) return Report("5", "outage end", id2.status().ToString(), false);
  auto j2 = c.WaitFor(*id2, [](const proto::Job& x) { return x.progress().step() >= 5; },
                      absl::Seconds(120));
  c.KillCoordinator();
  // Until the world has written the final adapter (training over), then 15 s.
  const std::string adapter = c.OutputOf("outage-end") + "/adapter/adapter_model.safetensors";
  for (int i = 0; i < 600 && !fs::exists(adapter); ++i) absl::SleepFor(absl::Milliseconds(100));
  const bool finished_in_outage = fs::exists(adapter);
  absl::SleepFor(absl::Seconds(15));
  const bool back = c.StartCoordinator(ttl).ok();
  auto done2 = c.WaitFor(*id2, Terminal, absl::Seconds(120));
  Report("5", "the job finishes during an outage (40 steps)",
         absl::StrCat(finished_in_outage ? "adapter written during the outage; "
                                         : "adapter NOT written during the outage; ",
                      done2.ok() ? absl::StrCat(StateName(*done2), ", attempts ",
                                                done2->attempts(), ", progress ",
                                                done2->progress().step(), "/",
                                                done2->progress().total_steps(), " loss ",
                                                done2->progress().loss())
                                 : done2.status().ToString()),
         j2.ok() && back && done2.ok() && Succeeded(*done2) && done2->progress().step() == 40 &&
             done2->progress().loss() > 0);
}

// ------------------------------------------------------------------ items 6, 7

void AttackFetch() {
  auto cluster = E2eCluster::Create("attack_fetch");
  if (!cluster.ok()) return Report("6", "fetch", cluster.status().ToString(), false);
  E2eCluster& c = **cluster;
  if (!c.StartCoordinator("10s").ok()) return Report("6", "fetch", "no coordinator", false);
  auto world = c.StartWorld(2, /*once=*/false);
  auto a = c.Submit(SmallJob("corpus", 6, 1), "a");
  auto b = c.Submit(SmallJob("corpus", 6, 2), "b");
  if (!a.ok() || !b.ok()) return Report("6", "fetch", "submit failed", false);
  auto ja = c.WaitFor(*a, Succeeded, absl::Seconds(180));
  auto jb = c.WaitFor(*b, Succeeded, absl::Seconds(180));
  if (!ja.ok() || !jb.ok()) return Report("6", "fetch", "jobs did not succeed", false);
  const std::string file = "adapter/adapter_model.safetensors";
  const std::string a_bytes = ReadFile(c.OutputOf("a") + "/" + file);
  const std::string b_bytes = ReadFile(c.OutputOf("b") + "/" + file);
  int spliced = 0, exact = 0, trials = 0;
  std::vector<std::string> codes;
  for (double cut : {0.1, 0.25, 0.5, 0.75, 0.99}) {
    ++trials;
    const fs::path dest = absl::StrCat(c.dir(), "/fetched-", trials);
    WriteText(dest / (file + ".part"),
              a_bytes.substr(0, static_cast<size_t>(cut * static_cast<double>(a_bytes.size()))));
    CliResult r = Cli(c, Concat({"fetch", *b, "-o", dest.string()}, Remote(c)));
    codes.push_back(absl::StrCat(r.code));
    const std::string got = ReadFile((dest / file).string());
    if (got == b_bytes) {
      ++exact;
    } else if (!got.empty()) {
      ++spliced;
    }
  }
  Report("6", "sheaf fetch of job B over a stale .part of job A's adapter (5 cut points)",
         absl::StrCat(spliced, " spliced, ", exact, "/", trials,
                      " equal to B's adapter byte for byte (exit codes ", absl::StrJoin(codes, ","),
                      ")"),
         spliced == 0 && exact == trials);

  // ---- item 7: stalled readers. A 64 MiB artifact to fetch.
  WriteText(c.OutputOf("a") + "/big.bin", std::string(64 << 20, 'x'));
  auto stall = [&](int n, std::vector<std::unique_ptr<grpc::ClientContext>>* contexts,
                   std::vector<std::unique_ptr<grpc::ClientReader<proto::ArtifactChunk>>>* readers,
                   std::vector<std::unique_ptr<proto::Coordinator::Stub>>* stubs) {
    int admitted = 0, exhausted = 0, other = 0;
    std::string message;
    for (int i = 0; i < n; ++i) {
      if (i % 50 == 0) stubs->push_back(NewStub(c.target(), 1000 + static_cast<int>(stubs->size())));
      auto context = Context(AliceToken(), absl::Seconds(600));
      proto::FetchArtifactsRequest request;
      request.set_job_id(*a);
      request.set_path("big.bin");
      auto reader = stubs->back()->FetchArtifacts(context.get(), request);
      proto::ArtifactChunk chunk;
      if (reader->Read(&chunk)) {
        ++admitted;  // one chunk taken, then never read again
        contexts->push_back(std::move(context));
        readers->push_back(std::move(reader));
      } else {
        grpc::Status s = reader->Finish();
        if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          ++exhausted;
          message = s.error_message();
        } else {
          ++other;
          message = s.error_message();
        }
      }
    }
    return std::make_tuple(admitted, exhausted, other, message);
  };
  auto run_phase = [&](const std::string& label, const std::vector<std::string>& flags,
                       bool expect_cut_off) {
    c.KillCoordinator();
    if (!c.StartCoordinator("10s", flags).ok()) {
      Report("7", label, "no coordinator", false);
      return;
    }
    absl::SleepFor(absl::Seconds(1));
    const pid_t pid = c.coordinator()->pid();
    const int64_t before = RssKb(pid);
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
    std::vector<std::unique_ptr<grpc::ClientReader<proto::ArtifactChunk>>> readers;
    std::vector<std::unique_ptr<proto::Coordinator::Stub>> stubs;
    auto [admitted, exhausted, other, message] = stall(400, &contexts, &readers, &stubs);
    absl::SleepFor(absl::Seconds(3));
    const int64_t held = RssKb(pid);
    const double list_ms = ListMs(c);
    std::string cut;
    bool cut_ok = true;
    if (expect_cut_off) {
      // The idle deadline (5 s) lets go of every stalled stream.
      absl::SleepFor(absl::Seconds(12));
      int ended = 0;
      for (auto& r : readers) {
        proto::ArtifactChunk chunk;
        int more = 0;
        while (r->Read(&chunk)) ++more;  // what was in flight, then the end
        grpc::Status s = r->Finish();
        ended += !s.ok();
      }
      cut = absl::StrCat("; after the idle deadline ", ended, "/", readers.size(),
                         " cut off by the coordinator");
      cut_ok = ended == static_cast<int>(readers.size());
    }
    for (auto& ctx : contexts) ctx->TryCancel();
    readers.clear();
    contexts.clear();
    Note(absl::StrCat(label, " refusal: ", message.substr(0, 160)));
    const double per_stream_kb =
        admitted > 0 ? static_cast<double>(held - before) / admitted : 0.0;
    Report("7", label,
           absl::StrCat("400 stalled readers: ", admitted, " admitted, ", exhausted,
                        " RESOURCE_EXHAUSTED, ", other, " other; coordinator RSS ", before / 1024,
                        " -> ", held / 1024, " MiB (",
                        absl::StrFormat("%.0f", per_stream_kb), " KiB per admitted stream); "
                        "ListJobs ", absl::StrFormat("%.0f", list_ms), " ms while held", cut),
           admitted + exhausted == 400 && (held - before) < 400 * 1024 && list_ms >= 0 &&
               list_ms < 2000 && cut_ok &&
               (flags.empty() ? admitted == 8 : true));
  };
  run_phase("defaults (64 in all, 8 per tenant, idle 5 s)", {"--fetch-idle-timeout", "5s"}, true);
  run_phase("per-tenant cap off (global cap 64)",
            {"--max-fetch-streams-per-tenant", "0", "--fetch-idle-timeout", "0"}, false);
  run_phase("no caps, no idle deadline (memory per stream only)",
            {"--max-fetch-streams", "0", "--max-fetch-streams-per-tenant", "0",
             "--fetch-idle-timeout", "0"},
            false);
}

// ------------------------------------------------------------------ items 8, 9

void AttackLyingConfigs() {
  auto cluster = E2eCluster::Create("attack_configs");
  if (!cluster.ok()) return Report("8", "configs", cluster.status().ToString(), false);
  E2eCluster& c = **cluster;
  const fs::path models = c.dir() + "/models";
  const std::string config = ReadFile((models / "tiny-en/config.json").string());
  auto lie = [&](const std::string& name, const std::string& key, const std::string& value) {
    fs::create_directories(models / name);
    fs::copy_file(models / "tiny-en/model.safetensors", models / name / "model.safetensors");
    std::string text = config;
    const std::string needle = "\"" + key + "\":";
    const size_t at = text.find(needle);
    const size_t end = text.find_first_of(",}", at);
    text.replace(at, end - at, needle + " " + value);
    WriteText(models / name / "config.json", text);
  };
  lie("hidden", "hidden_size", "16777216");
  lie("vocab", "vocab_size", "16777216");
  lie("inter", "intermediate_size", "16777216");
  lie("layers", "num_hidden_layers", "4096");
  // config.json as a character device (/dev/zero's numbers) and as a FIFO.
  fs::create_directories(models / "zero");
  fs::copy_file(models / "tiny-en/model.safetensors", models / "zero/model.safetensors");
  const bool have_dev =
      mknod((models / "zero/config.json").c_str(), S_IFCHR | 0644, makedev(1, 5)) == 0;
  fs::create_directories(models / "fifo");
  fs::copy_file(models / "tiny-en/model.safetensors", models / "fifo/model.safetensors");
  mkfifo((models / "fifo/config.json").c_str(), 0644);
  // A truncated weights file (item 10: a deterministic failure).
  fs::create_directories(models / "trunc");
  fs::copy_file(models / "tiny-en/config.json", models / "trunc/config.json");
  const std::string weights = ReadFile((models / "tiny-en/model.safetensors").string());
  WriteText(models / "trunc/model.safetensors", weights.substr(0, weights.size() / 2));

  if (!c.StartCoordinator("10s").ok()) return Report("8", "configs", "no coordinator", false);
  auto world = c.StartWorld(2, /*once=*/false);
  if (!world.ok()) return Report("8", "configs", world.status().ToString(), false);
  std::vector<std::string> names = {"hidden", "vocab", "inter", "layers", "fifo", "trunc"};
  if (have_dev) names.push_back("zero");
  int refused = 0, failed_once = 0, trained = 0, never_leased = 0;
  double worst_list_ms = 0;
  for (const std::string& name : names) {
    const absl::Time start = absl::Now();
    proto::SubmitJobResponse response;
    grpc::Status s = SubmitRaw(
        c, AliceToken(), WithField(SmallJob("corpus", 2), "base_model: tiny-en",
                                   "base_model: " + name),
        "", &response);
    std::string outcome;
    if (!s.ok()) {
      ++refused;
      outcome = absl::StrCat("refused at submit in ",
                             absl::StrFormat("%.2f", absl::ToDoubleSeconds(absl::Now() - start)),
                             " s: ", s.error_message());
    } else {
      worst_list_ms = std::max(worst_list_ms, ListMs(c));
      auto j = WaitTerminal(c, response.job_id(), absl::Seconds(90));
      if (!j.ok()) {
        // Still waiting: never leased to a world it does not fit?
        auto now = c.Get(response.job_id());
        if (now.ok() && now->state() == proto::JOB_STATE_PENDING && now->attempts() == 0) {
          ++never_leased;
          outcome = "PENDING after 90 s, never leased: " + now->waiting_reason();
        } else {
          outcome = j.status().ToString();
        }
        c.Cancel(response.job_id()).IgnoreError();
      } else {
        if (Succeeded(*j)) ++trained;
        if (j->state() == proto::JOB_STATE_FAILED && j->attempts() <= 1) ++failed_once;
        outcome = absl::StrCat(StateName(*j), " after attempts ", j->attempts(), " in ",
                               absl::StrFormat("%.1f", absl::ToDoubleSeconds(absl::Now() - start)),
                               " s: ", j->last_error());
      }
    }
    worst_list_ms = std::max(worst_list_ms, ListMs(c));
    Note(absl::StrCat(name, ": ", outcome.substr(0, 220)));
  }
  auto next = c.Submit(SmallJob("corpus", 2), "");
  auto next_job = next.ok() ? c.WaitFor(*next, Succeeded, absl::Seconds(120))
                            : absl::StatusOr<proto::Job>(next.status());
  const bool world_alive = !(*world)->Exited();
  Report("8/9/10", absl::StrCat("lying configs (hidden/vocab/intermediate 2^24, 4096 layers",
                                have_dev ? ", config.json a char device" : "",
                                ", a FIFO), a truncated safetensors"),
         absl::StrCat(names.size(), " jobs: ", refused, " refused at submit, ", failed_once,
                      " FAILED on their first attempt, ", never_leased, " never leased, ", trained,
                      " trained; world ",
                      world_alive ? "alive (0 crashes)" : "DEAD",
                      "; coordinator answered ListJobs within ",
                      absl::StrFormat("%.0f", worst_list_ms), " ms throughout; next job ",
                      next_job.ok() ? "SUCCEEDED" : next_job.status().ToString()),
         refused + failed_once + never_leased == static_cast<int>(names.size()) && trained == 0 &&
             world_alive &&
             next_job.ok() && worst_list_ms >= 0 && worst_list_ms < 2000);
}

// ------------------------------------------------------------------ item 10

int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

std::string FirstLine(const std::string& text) { return text.substr(0, text.find('\n')); }

std::string LastLine(std::string text) {
  while (!text.empty() && text.back() == '\n') text.pop_back();
  const size_t at = text.rfind('\n');
  return at == std::string::npos ? text : text.substr(at + 1);
}

void AttackSmallItems() {
  auto cluster = E2eCluster::Create("attack_small");
  if (!cluster.ok()) return Report("10", "small", cluster.status().ToString(), false);
  E2eCluster& c = **cluster;
  const int metrics_port = FreePort();
  if (!c.StartCoordinator("10s", {"--metrics-port", absl::StrCat(metrics_port)}).ok()) {
    return Report("10", "small", "no coordinator", false);
  }
  const std::vector<std::string> remote = Remote(c);
  const std::string spec = c.dir() + "/job.yaml";
  WriteText(spec, SmallJob("corpus", 2));
  auto world = c.StartWorld(2, /*once=*/false);
  if (!world.ok()) return Report("10", "small", world.status().ToString(), false);
  absl::SleepFor(absl::Seconds(8));  // registered by its first acquire

  // A request no world can satisfy (a 2-rank world is registered).
  CliResult wide = Cli(c, Concat({"submit", spec, "--min-world", "1000"}, remote));
  const size_t id_at = wide.output.rfind("job-");
  const std::string wide_id =
      id_at == std::string::npos ? "" : wide.output.substr(id_at, wide.output.find('\n', id_at) - id_at);
  const bool warned = absl::StrContains(wide.output, "warning") &&
                      absl::StrContains(wide.output, "1000");
  CliResult wide_status = Cli(c, Concat({"status", wide_id}, remote));
  const bool in_status = absl::StrContains(wide_status.output, "1000");
  Note("submit said: " + wide.output.substr(0, wide.output.find('\n')).substr(0, 220));
  Report("10", "submit --min-world 1000 (a 2-rank world registered)",
         absl::StrCat("exit ", wide.code, warned ? ", warns naming the request" : ", NO warning",
                      in_status ? "; status shows the waiting reason" : "; status SILENT"),
         wide.code == 0 && warned && in_status);

  // A second coordinator on the same address.
  {
    std::vector<std::string> argv = {Runfile("coordinator/sheaf-coordinator"), "--listen",
                                     c.target(), "--db", c.dir() + "/second.db", "--tokens",
                                     c.dir() + "/tokens", "--model-root", c.dir() + "/models",
                                     "--data-root", c.dir() + "/data", "--output-root",
                                     c.dir() + "/out"};
    auto second = Process::Start(argv, c.dir() + "/second.log");
    auto code = second.ok() ? (*second)->Wait(absl::Seconds(15)) : absl::StatusOr<int>(-1);
    const std::string log = second.ok() ? ReadFile((*second)->log_path()) : "";
    Report("10", "a second coordinator on the same host:port",
           absl::StrCat(code.ok() ? absl::StrCat("exit ", *code) : "STILL RUNNING", ": ",
                        LastLine(log)),
           code.ok() && *code != 0);
  }
  // --lease-ttl 1ns.
  {
    std::vector<std::string> argv = {Runfile("coordinator/sheaf-coordinator"), "--listen",
                                     "127.0.0.1:0", "--db", c.dir() + "/third.db", "--tokens",
                                     c.dir() + "/tokens", "--model-root", c.dir() + "/models",
                                     "--data-root", c.dir() + "/data", "--output-root",
                                     c.dir() + "/out", "--lease-ttl", "1ns"};
    auto p = Process::Start(argv, c.dir() + "/ttl.log");
    auto code = p.ok() ? (*p)->Wait(absl::Seconds(15)) : absl::StatusOr<int>(-1);
    Report("10", "coordinator --lease-ttl 1ns",
           absl::StrCat(code.ok() ? absl::StrCat("exit ", *code) : "STILL RUNNING", ": ",
                        p.ok() ? FirstLine(ReadFile((*p)->log_path())) : ""),
           code.ok() && *code == 2);
  }
  // The CLI reading /dev/zero, a 2 MiB spec, invalid UTF-8.
  {
    CliResult zero = Cli(c, Concat({"submit", "/dev/zero"}, remote));
    std::string big = SmallJob("corpus", 2) + "# ";
    big += std::string(2 << 20, 'x');
    WriteText(c.dir() + "/big.yaml", big + "\n");
    CliResult huge = Cli(c, Concat({"submit", c.dir() + "/big.yaml"}, remote));
    WriteText(c.dir() + "/bad.yaml", SmallJob("corpus", 2) + "note: \"\xff\xfe\"\n");
    CliResult utf8 = Cli(c, Concat({"submit", c.dir() + "/bad.yaml"}, remote));
    auto first_line = [](const std::string& s) { return s.substr(0, s.find('\n')).substr(0, 110); };
    Report("10", "sheaf submit /dev/zero; a 2 MiB spec; invalid UTF-8",
           absl::StrCat("/dev/zero: exit ", zero.code, " in ", absl::StrFormat("%.2f", zero.seconds),
                        " s ('", first_line(zero.output), "'); 2 MiB: exit ", huge.code, " ('",
                        first_line(huge.output), "'); UTF-8: exit ", utf8.code, " ('",
                        first_line(utf8.output), "')"),
           zero.code == 2 && zero.seconds < 5 && huge.code == 2 &&
               absl::StrContains(huge.output, "MiB") && utf8.code == 2 &&
               absl::StrContains(utf8.output, "UTF-8"));
  }
  // val_fraction: 0 at submit (raw gRPC, past the CLI).
  {
    proto::SubmitJobResponse response;
    grpc::Status s = SubmitRaw(c, AliceToken(),
                               WithField(SmallJob("corpus", 2), "val_fraction: 0.2",
                                         "val_fraction: 0"),
                               "", &response);
    Report("10", "val_fraction: 0 over raw gRPC",
           s.ok() ? "ACCEPTED" : absl::StrCat("refused: ", s.error_message().substr(0, 140)),
           !s.ok() && absl::StrContains(s.error_message(), "val_fraction"));
  }
  // A diverging loss: lr 1e30 (refused by its bound), then the largest lr
  // allowed; a NaN loss must fail the job at once as permanent.
  for (const char* lr : {"1.0e+30", "10"}) {
    proto::SubmitJobResponse response;
    grpc::Status s = SubmitRaw(c, AliceToken(),
                               WithField(SmallJob("corpus", 60), "lr: 0.002",
                                         absl::StrCat("lr: ", lr)),
                               "", &response);
    std::string outcome = s.ok() ? "" : "refused at submit: " + s.error_message().substr(0, 120);
    bool held = !s.ok();
    if (s.ok()) {
      auto j = WaitTerminal(c, response.job_id(), absl::Seconds(180));
      held = j.ok() && (Succeeded(*j) || (j->state() == proto::JOB_STATE_FAILED &&
                                          j->attempts() == 1));
      outcome = j.ok() ? absl::StrCat(StateName(*j), ", attempts ", j->attempts(), ": ",
                                      j->last_error().substr(0, 140))
                       : j.status().ToString();
    }
    Report("10", absl::StrCat("lr ", lr, " (a diverging loss), 60 steps"), outcome, held);
  }
  // Six idle sockets on the metrics port, then a scrape.
  {
    const int port = metrics_port;
    std::vector<int> idle;
    for (int i = 0; i < 6; ++i) idle.push_back(ConnectLoopback(port));
    const absl::Time start = absl::Now();
    const int fd = ConnectLoopback(port);
    const std::string get = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    std::string body;
    if (fd >= 0 && write(fd, get.data(), get.size()) == static_cast<ssize_t>(get.size())) {
      char buffer[4096];
      ssize_t n;
      while ((n = read(fd, buffer, sizeof(buffer))) > 0) body.append(buffer, n);
    }
    const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
    if (fd >= 0) close(fd);
    for (int s : idle) {
      if (s >= 0) close(s);
    }
    Report("10", "six idle sockets on /metrics, then a scrape",
           absl::StrCat("port ", port, ": scrape answered in ", absl::StrFormat("%.0f", ms),
                        " ms, ", body.size(), " bytes"),
           port > 0 && ms < 2000 && absl::StrContains(body, "200"));
  }
  // Page tokens: opaque, per tenant.
  {
    for (int i = 0; i < 3; ++i) c.Submit(SmallJob("corpus", 2), "").IgnoreError();
    auto context = Context(AliceToken());
    proto::ListJobsRequest request;
    request.set_page_size(1);
    proto::ListJobsResponse response;
    grpc::Status s = NewStub(c.target())->ListJobs(context.get(), request, &response);
    const std::string token = response.next_page_token();
    int64_t as_number = 0;
    const bool numeric = absl::SimpleAtoi(token, &as_number);
    Report("10", "ListJobs page tokens",
           absl::StrCat(s.ok() ? "" : s.error_message(), "token '", token.substr(0, 40), "' (",
                        token.size(), " chars), ", numeric ? "a plain number" : "opaque"),
           s.ok() && !token.empty() && !numeric);
  }
  if (!wide_id.empty()) c.Cancel(wide_id).IgnoreError();
}

// ------------------------------------------------------------------ kill loop

void AttackKillLoop() {
  auto cluster = E2eCluster::Create("attack_kill_loop");
  if (!cluster.ok()) return Report("-", "kill loop", cluster.status().ToString(), false);
  E2eCluster& c = **cluster;
  if (!c.StartCoordinator("10s").ok()) return Report("-", "kill loop", "no coordinator", false);
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<std::string> accepted;
  std::atomic<int> refused{0};
  std::thread submitter([&] {
    const std::string yaml = SmallJob("corpus", 2);
    int i = 0;
    while (!stop.load()) {
      proto::SubmitJobResponse response;
      grpc::Status s = SubmitRaw(c, AliceToken(), yaml, absl::StrCat("k", i++), &response);
      if (s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        accepted.push_back(response.job_id());
      } else {
        ++refused;
        absl::SleepFor(absl::Milliseconds(20));
      }
    }
  });
  std::mt19937 rng(9);
  int kills = 0;
  for (; kills < 37; ++kills) {
    absl::SleepFor(absl::Milliseconds(300 + rng() % 1200));
    c.KillCoordinator();
    absl::SleepFor(absl::Milliseconds(rng() % 300));
    if (!c.StartCoordinator("10s").ok()) break;
  }
  absl::SleepFor(absl::Seconds(1));
  stop = true;
  submitter.join();
  // Every accepted id is there after the last restart.
  std::set<std::string> found;
  std::string page;
  for (;;) {
    auto context = Context(AliceToken(), absl::Seconds(30));
    proto::ListJobsRequest request;
    request.set_page_size(1000);
    request.set_page_token(page);
    proto::ListJobsResponse response;
    if (!NewStub(c.target())->ListJobs(context.get(), request, &response).ok()) break;
    for (const proto::Job& j : response.jobs()) found.insert(j.id());
    page = response.next_page_token();
    if (page.empty()) break;
  }
  int lost = 0;
  for (const std::string& id : accepted) lost += found.count(id) == 0;
  Report("-", "submits while the coordinator is killed with kill -9 and restarted",
         absl::StrCat(kills, " kills; ", accepted.size(), " submits accepted, ", refused.load(),
                      " failed while it was down; ", accepted.size() - lost, "/", accepted.size(),
                      " accepted jobs present after the last restart (", lost, " lost)"),
         kills == 37 && lost == 0 && !accepted.empty());
}

}  // namespace
}  // namespace sheaf::e2e

int main(int argc, char** argv) {
  using namespace sheaf::e2e;
  signal(SIGPIPE, SIG_IGN);
  const std::vector<std::pair<std::string, std::function<void()>>> attacks = {
      {"bounds", AttackBounds},       {"symlinks", AttackSymlinks},
      {"swap", AttackSwapAfterSubmit}, {"clock", AttackClock},
      {"outage", AttackOutages},      {"fetch", AttackFetch},
      {"configs", AttackLyingConfigs}, {"small", AttackSmallItems},
      {"kill_loop", AttackKillLoop},
  };
  std::set<std::string> chosen(argv + 1, argv + argc);
  for (const std::string& name : chosen) {
    bool known = false;
    for (const auto& [n, f] : attacks) known |= n == name;
    if (!known) {
      std::fprintf(stderr, "attacks: unknown attack '%s'\n", name.c_str());
      return 2;
    }
  }
  const absl::Time start = absl::Now();
  for (const auto& [name, run] : attacks) {
    if (!chosen.empty() && !chosen.count(name)) continue;
    const absl::Time t0 = absl::Now();
    std::printf("== %s\n", name.c_str());
    std::fflush(stdout);
    run();
    std::printf("   (%s: %.0f s)\n", name.c_str(), absl::ToDoubleSeconds(absl::Now() - t0));
  }
  std::printf("\n| item | attack | counts | verdict |\n|---|---|---|---|\n");
  int broken = 0;
  for (const Row& r : Rows()) {
    std::printf("| %s | %s | %s | %s |\n", r.item.c_str(), r.attack.c_str(), r.counts.c_str(),
                r.held ? "held" : "**broken**");
    broken += !r.held;
  }
  std::printf("\n%zu attacks, %d broken, %.0f s\n", Rows().size(), broken,
              absl::ToDoubleSeconds(absl::Now() - start));
  return broken == 0 ? 0 : 1;
}
