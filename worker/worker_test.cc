// Worker against a real in-process coordinator (gRPC on loopback, SQLite),
// training LoRA jobs on models/tiny-en: worlds of one rank, and a world of
// two ranks as threads (dist::ThreadWorld) for the control protocol. The
// multi-process versions (mpirun, kill -9) are tests/e2e_*.
#include "worker/worker.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/clock.h"
#include "coordinator/local_coordinator.h"
#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "dist/thread_communicator.h"
#include "gtest/gtest.h"
#include "proto/coordinator.grpc.pb.h"

namespace sheaf::worker {
namespace {

namespace fs = std::filesystem;
using coordinator::LocalCoordinator;

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// A LoRA job on tiny-en, paths relative to the coordinator's roots.
std::string JobYaml(int max_steps, int checkpoint_every = 2) {
  return absl::StrCat(R"(
base_model: tiny-en
seed: 5
data: {train: [corpus], seq_len: 32, val_fraction: 0.25}
optimizer: {lr: 0.002}
schedule: {warmup_steps: 1}
train: {batch_size: 2, max_steps: )",
                      max_steps, ", eval_every: 0, eval_batches: 1, checkpoint_every: ",
                      checkpoint_every, R"(, threads: 1, log_every: 25}
lora: {adapter: {rank: 2, alpha: 4, targets: [q_proj, v_proj]}}
)");
}

class WorkerTest : public ::testing::Test {
 protected:
  void Start(coordinator::LocalCoordinatorOptions options = {}) {
    if (options.scheduler.lease_ttl == absl::Seconds(30)) {
      options.scheduler.lease_ttl = absl::Seconds(3);  // heartbeats every 1 s
    }
    options.scheduler.sweep_interval = absl::Milliseconds(100);
    auto lc = LocalCoordinator::Start(std::move(options));
    ASSERT_TRUE(lc.ok()) << lc.status();
    lc_ = std::move(*lc);
    if (cert_pem_.empty()) {
      stub_ = lc_->NewStub();
    } else {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = cert_pem_;
      stub_ = proto::Coordinator::NewStub(
          grpc::CreateChannel(lc_->target(), grpc::SslCredentials(ssl)));
    }
    const char* srcdir = std::getenv("TEST_SRCDIR");
    ASSERT_NE(srcdir, nullptr);
    const fs::path model = fs::path(srcdir) / "sheaf/models/tiny-en";
    fs::create_directories(lc_->model_root() + "/tiny-en");
    for (const char* f : {"config.json", "model.safetensors"}) {
      fs::copy_file(model / f, fs::path(lc_->model_root()) / "tiny-en" / f);
    }
    fs::create_directories(lc_->data_root() + "/corpus");
    for (int i = 0; i < 20; ++i) {
      std::ofstream f(absl::StrCat(lc_->data_root(), "/corpus/d", i, ".txt"));
      for (int j = 0; j < 30; ++j) f << "Line " << i * j << ": the quick brown fox jumps. ";
    }
  }

  WorkerOptions Options() const {
    WorkerOptions o;
    o.client.target = lc_->target();
    o.client.token = LocalCoordinator::kWorkerToken;
    o.roots = {lc_->model_root(), lc_->data_root(), lc_->output_root()};
    o.memory_bytes = 1 << 30;
    o.once = true;
    o.acquire_wait = absl::Seconds(1);
    o.max_backoff = absl::Milliseconds(200);
    return o;
  }

  std::string Submit(const std::string& yaml, const std::string& output_dir) {
    auto spec = ParseJobSpecYaml(yaml);
    EXPECT_TRUE(spec.ok()) << spec.status();
    spec->set_output_dir(output_dir);
    grpc::ClientContext context;
    coordinator::SetBearerToken(&context, LocalCoordinator::kAliceToken);
    proto::SubmitJobRequest request;
    *request.mutable_spec() = *spec;
    proto::SubmitJobResponse response;
    grpc::Status status = stub_->SubmitJob(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.job_id();
  }

  proto::Job Get(const std::string& id) {
    grpc::ClientContext context;
    coordinator::SetBearerToken(&context, LocalCoordinator::kAliceToken);
    proto::GetJobRequest request;
    request.set_job_id(id);
    proto::Job job;
    grpc::Status status = stub_->GetJob(&context, request, &job);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return job;
  }

  // Polls until `pred` holds (true), or the job ended, or `timeout` passed
  // (false).
  bool WaitFor(const std::string& id, const std::function<bool(const proto::Job&)>& pred,
               absl::Duration timeout = absl::Seconds(60)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      const proto::Job job = Get(id);
      if (pred(job)) return true;
      if (job.state() >= proto::JOB_STATE_SUCCEEDED) {
        ADD_FAILURE() << "job ended " << proto::JobState_Name(job.state()) << ": " << job.last_error();
        return false;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  void Cancel(const std::string& id) {
    grpc::ClientContext context;
    coordinator::SetBearerToken(&context, LocalCoordinator::kAliceToken);
    proto::CancelJobRequest request;
    request.set_job_id(id);
    proto::Job job;
    ASSERT_TRUE(stub_->CancelJob(&context, request, &job).ok());
  }

  // Runs a world of one on a thread.
  struct Running {
    std::unique_ptr<Worker> worker;
    absl::Status status;
    std::thread thread;
    void Join() {
      if (thread.joinable()) thread.join();
    }
    ~Running() {
      if (worker) worker->RequestStop();
      Join();
    }
  };
  std::unique_ptr<Running> RunWorld(WorkerOptions options) {
    auto r = std::make_unique<Running>();
    auto w = Worker::Create(std::move(options), nullptr);
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return r;
    r->worker = std::move(*w);
    Running* raw = r.get();
    r->thread = std::thread([raw] { raw->status = raw->worker->Run(); });
    return r;
  }

  std::string Out(const std::string& dir) const {
    return absl::StrCat(lc_->output_root(), "/alice/", dir);
  }

  std::unique_ptr<LocalCoordinator> lc_;
  std::unique_ptr<proto::Coordinator::Stub> stub_;
  std::string cert_pem_;  // set: the coordinator serves TLS with it
};

TEST_F(WorkerTest, AWorldOfOneRunsAJobToSuccess) {
  Start();
  const std::string id = Submit(JobYaml(6), "ok");
  auto world = RunWorld(Options());
  world->Join();
  ASSERT_TRUE(world->status.ok()) << world->status;
  proto::Job job = Get(id);
  ASSERT_EQ(job.state(), proto::JOB_STATE_SUCCEEDED) << job.last_error();
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_EQ(job.artifact_dir(), Out("ok"));
  EXPECT_EQ(job.progress().step(), 6);
  EXPECT_EQ(job.progress().total_steps(), 6);
  EXPECT_GT(job.progress().loss(), 0);
  EXPECT_TRUE(fs::exists(Out("ok") + "/adapter/adapter_model.safetensors"));
  EXPECT_TRUE(fs::exists(Out("ok") + "/spec.yaml"));
  const std::string log = ReadFile(Out("ok") + "/train.log");
  EXPECT_NE(log.find(absl::StrCat("job ", id, " (tenant alice, attempt 1)")), std::string::npos) << log;
  EXPECT_NE(log.find("step 6/6 "), std::string::npos) << log;
  EXPECT_NE(log.find("succeeded"), std::string::npos) << log;
  EXPECT_EQ(world->worker->stats().succeeded, 1);
  EXPECT_FALSE(world->worker->world_id().empty());
}

TEST_F(WorkerTest, AWorldOfTwoThreadsAgreesOnEveryStep) {
  Start();
  const std::string id = Submit(JobYaml(4), "two");
  dist::ThreadWorld world(2);
  std::unique_ptr<Worker> workers[2];
  absl::Status status[2];
  for (int r = 0; r < 2; ++r) {
    auto w = Worker::Create(Options(), world.rank(r));
    ASSERT_TRUE(w.ok()) << w.status();
    workers[r] = std::move(*w);
  }
  std::thread t1([&] { status[1] = workers[1]->Run(); });
  status[0] = workers[0]->Run();
  t1.join();
  ASSERT_TRUE(status[0].ok()) << status[0];
  ASSERT_TRUE(status[1].ok()) << status[1];
  proto::Job job = Get(id);
  ASSERT_EQ(job.state(), proto::JOB_STATE_SUCCEEDED) << job.last_error();
  EXPECT_TRUE(fs::exists(Out("two") + "/adapter/adapter_model.safetensors"));
  EXPECT_EQ(workers[0]->stats().succeeded, 1);
  EXPECT_EQ(workers[1]->stats().jobs, 1);
  EXPECT_TRUE(workers[1]->world_id().empty());  // only rank 0 talks to the coordinator
}

TEST_F(WorkerTest, AStopOnOneRankStopsTheWholeWorldAndGivesTheJobBack) {
  Start();
  const std::string id = Submit(JobYaml(100000, 0), "one-rank-stop");
  dist::ThreadWorld world(2);
  std::unique_ptr<Worker> workers[2];
  absl::Status status[2];
  for (int r = 0; r < 2; ++r) {
    WorkerOptions o = Options();
    o.once = false;  // only the stop ends the world
    auto w = Worker::Create(o, world.rank(r));
    ASSERT_TRUE(w.ok()) << w.status();
    workers[r] = std::move(*w);
  }
  std::thread t0([&] { status[0] = workers[0]->Run(); });
  std::thread t1([&] { status[1] = workers[1]->Run(); });
  const bool running = WaitFor(id, [](const proto::Job& j) { return j.progress().step() >= 2; });
  workers[1]->RequestStop();  // SIGTERM reached rank 1 only
  t0.join();
  t1.join();
  ASSERT_TRUE(running);
  ASSERT_TRUE(status[0].ok()) << status[0];
  ASSERT_TRUE(status[1].ok()) << status[1];
  proto::Job job = Get(id);
  EXPECT_EQ(job.state(), proto::JOB_STATE_PENDING) << "rank 0 must not lease it again before stopping";
  EXPECT_EQ(job.attempts(), 0) << "a hand-back does not count as an attempt";
  EXPECT_NE(job.last_error().find("worker stopped (SIGTERM)"), std::string::npos) << job.last_error();
  EXPECT_EQ(workers[0]->stats().given_back, 1);
}

TEST_F(WorkerTest, ATlsCoordinatorIsReachedWithTheCaCertificate) {
  const std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/tls");
  fs::create_directories(dir);
  const std::string command = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
      dir, "/key.pem -out ", dir, "/cert.pem >/dev/null 2>&1");
  ASSERT_EQ(std::system(command.c_str()), 0) << "openssl could not make a test certificate";
  cert_pem_ = ReadFile(dir + "/cert.pem");
  coordinator::LocalCoordinatorOptions options;
  options.tls_cert_path = dir + "/cert.pem";
  options.tls_key_path = dir + "/key.pem";
  Start(options);
  const std::string id = Submit(JobYaml(2), "tls");
  WorkerOptions o = Options();
  o.client.ca_pem = cert_pem_;
  auto world = RunWorld(o);
  world->Join();
  ASSERT_TRUE(world->status.ok()) << world->status;
  EXPECT_EQ(Get(id).state(), proto::JOB_STATE_SUCCEEDED);

  // Without the CA the world cannot register, and keeps trying until idle.
  o.client.ca_pem.clear();
  o.once = false;
  o.idle_exit = absl::Seconds(1);
  auto plain = RunWorld(o);
  plain->Join();
  EXPECT_TRUE(plain->status.ok()) << plain->status;
  EXPECT_TRUE(plain->worker->world_id().empty());
}

TEST_F(WorkerTest, PathsOutsideTheWorldsRootsAreRefusedBeforeAnythingIsOpened) {
  coordinator::LocalCoordinatorOptions options;
  options.scheduler.max_attempts = 1;
  Start(options);
  const std::string id = Submit(JobYaml(2), "refused");
  WorkerOptions o = Options();
  o.once = false;  // the refusal alone must end the world
  const std::string elsewhere = lc_->dir() + "/other-models";
  fs::create_directories(elsewhere);
  o.roots.model_root = elsewhere;
  auto world = RunWorld(o);
  world->Join();
  // A misconfigured world: it hands the job back and exits with an error
  // instead of taking (and refusing) jobs again.
  EXPECT_EQ(world->status.code(), absl::StatusCode::kFailedPrecondition) << world->status;
  EXPECT_NE(world->status.message().find("roots"), std::string::npos) << world->status;
  EXPECT_EQ(world->worker->stats().jobs, 1);
  EXPECT_EQ(world->worker->stats().given_back, 1);
  proto::Job job = Get(id);
  // Released: back in the queue for another world, no attempt counted
  // (max_attempts is 1).
  EXPECT_EQ(job.state(), proto::JOB_STATE_PENDING);
  EXPECT_EQ(job.attempts(), 0);
  EXPECT_NE(job.last_error().find("this world's roots refuse the job: base_model"), std::string::npos)
      << job.last_error();
  EXPECT_FALSE(fs::exists(Out("refused") + "/checkpoints"));

  // A world with the right roots runs it.
  auto good = RunWorld(Options());
  good->Join();
  ASSERT_TRUE(good->status.ok()) << good->status;
  EXPECT_EQ(Get(id).state(), proto::JOB_STATE_SUCCEEDED);
}

TEST_F(WorkerTest, ANewJobNeverResumesAnotherJobsRunInItsOutputDir) {
  Start();  // max_attempts 3: only a permanent failure ends it at once
  const std::string first = Submit(JobYaml(4, 2), "shared");
  auto world = RunWorld(Options());
  world->Join();
  ASSERT_TRUE(world->status.ok()) << world->status;
  ASSERT_EQ(Get(first).state(), proto::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(ReadFile(Out("shared") + "/.sheaf-job"), first + "\n");
  ASSERT_FALSE(fs::is_empty(Out("shared") + "/checkpoints"));

  // A second job with the same output_dir, on a world of two ranks: both
  // ranks learn the refusal, nobody waits, the job fails at once.
  const std::string second = Submit(JobYaml(8, 2), "shared");
  dist::ThreadWorld two(2);
  std::unique_ptr<Worker> workers[2];
  absl::Status status[2];
  for (int r = 0; r < 2; ++r) {
    auto w = Worker::Create(Options(), two.rank(r));
    ASSERT_TRUE(w.ok()) << w.status();
    workers[r] = std::move(*w);
  }
  std::thread t1([&] { status[1] = workers[1]->Run(); });
  status[0] = workers[0]->Run();
  t1.join();
  ASSERT_TRUE(status[0].ok()) << status[0];
  ASSERT_TRUE(status[1].ok()) << status[1];
  proto::Job job = Get(second);
  EXPECT_EQ(job.state(), proto::JOB_STATE_FAILED);
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_NE(job.last_error().find(absl::StrCat("output_dir ", Out("shared"), " holds job ", first,
                                               "'s run; submit with another output_dir")),
            std::string::npos)
      << job.last_error();
  EXPECT_EQ(ReadFile(Out("shared") + "/.sheaf-job"), first + "\n");
  EXPECT_EQ(workers[0]->stats().failed, 1);
  EXPECT_EQ(workers[1]->stats().jobs, 1);
}

TEST(ClaimOutputDirTest, ClaimsOnceAndRefusesOthers) {
  const std::string dir = absl::StrCat(std::getenv("TEST_TMPDIR"), "/claim");
  fs::create_directories(dir);
  auto c = ClaimOutputDir(dir, "job-a");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c, OutputClaim::kFresh);
  c = ClaimOutputDir(dir, "job-a");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c, OutputClaim::kResume);
  c = ClaimOutputDir(dir, "job-b");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(c.status().message().find("holds job job-a's run"), std::string::npos) << c.status();
  // No stray temporary files.
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) ++files, (void)e;
  EXPECT_EQ(files, 1);
  // An unclaimed directory with another run's checkpoints is not taken.
  const std::string old = absl::StrCat(std::getenv("TEST_TMPDIR"), "/old-run");
  fs::create_directories(old + "/checkpoints/step-2");
  EXPECT_EQ(ClaimOutputDir(old, "job-c").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(fs::exists(old + "/.sheaf-job"));
}

TEST_F(WorkerTest, ASpecOrDataErrorFailsTheJobPermanently) {
  Start();  // max_attempts 3: only a permanent failure ends it at once
  std::string yaml = JobYaml(2);
  yaml.replace(yaml.find("[corpus]"), 8, "[no-such-corpus]");  // inside the root, missing
  const std::string id = Submit(yaml, "missing");
  auto world = RunWorld(Options());
  world->Join();
  ASSERT_TRUE(world->status.ok()) << world->status;
  proto::Job job = Get(id);
  EXPECT_EQ(job.state(), proto::JOB_STATE_FAILED);
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_NE(job.last_error().find("no-such-corpus"), std::string::npos) << job.last_error();
  EXPECT_EQ(world->worker->stats().failed, 1);
}

TEST_F(WorkerTest, CancelStopsTheRunningJobAtTheNextHeartbeat) {
  Start();
  const std::string id = Submit(JobYaml(100000, 0), "cancel");
  auto world = RunWorld(Options());
  ASSERT_TRUE(WaitFor(id, [](const proto::Job& j) { return j.progress().step() >= 2; }));
  const absl::Time cancelled = absl::Now();
  Cancel(id);
  world->Join();
  const absl::Duration took = absl::Now() - cancelled;
  ASSERT_TRUE(world->status.ok()) << world->status;
  // A 1 s heartbeat, one step, a checkpoint: seconds. The job has 100000
  // steps left (minutes at least), so only the cancel can end it within 60 s,
  // a bound that a loaded machine does not reach.
  EXPECT_LT(took, absl::Seconds(60));
  proto::Job job = Get(id);
  EXPECT_EQ(job.state(), proto::JOB_STATE_CANCELLED);
  EXPECT_EQ(world->worker->stats().cancelled, 1);
  EXPECT_FALSE(fs::is_empty(Out("cancel") + "/checkpoints"));
}

TEST_F(WorkerTest, AStopRequestGivesTheJobBackAndTheNextWorldResumesIt) {
  Start();
  const std::string id = Submit(JobYaml(200, 50), "stop");
  auto first = RunWorld(Options());
  ASSERT_TRUE(WaitFor(id, [](const proto::Job& j) { return j.progress().step() >= 5; }));
  first->worker->RequestStop();  // what SIGTERM does
  first->Join();
  ASSERT_TRUE(first->status.ok()) << first->status;
  EXPECT_EQ(first->worker->stats().given_back, 1);
  proto::Job job = Get(id);
  ASSERT_EQ(job.state(), proto::JOB_STATE_PENDING);
  EXPECT_NE(job.last_error().find("worker stopped (SIGTERM)"), std::string::npos);
  EXPECT_EQ(job.attempts(), 0) << "a hand-back does not count as an attempt";
  const int64_t stopped_at = job.progress().step();
  EXPECT_GE(stopped_at, 5);
  EXPECT_LT(stopped_at, 200);

  auto second = RunWorld(Options());
  second->Join();
  ASSERT_TRUE(second->status.ok()) << second->status;
  job = Get(id);
  ASSERT_EQ(job.state(), proto::JOB_STATE_SUCCEEDED) << job.last_error();
  EXPECT_EQ(job.attempts(), 1);
  const std::string log = ReadFile(Out("stop") + "/train.log");
  EXPECT_NE(log.find(absl::StrCat("(step ", stopped_at, ")")), std::string::npos)
      << "the second lease must resume from the stop's checkpoint:\n" << log;
  EXPECT_EQ(ReadFile(Out("stop") + "/.sheaf-job"), id + "\n");
}

TEST_F(WorkerTest, ALostLeaseStopsTheJobWithoutCompletingIt) {
  coordinator::FakeClock clock(absl::Now());
  coordinator::LocalCoordinatorOptions options;
  options.clock = &clock;
  options.scheduler.lease_ttl = absl::Seconds(3);
  // No revival: with it (the default) the world's next heartbeat would get
  // the expired lease back, as nobody else took the job (scheduler.h);
  // scheduler_test covers revival, this test the world's side of a loss.
  options.scheduler.revive_window = absl::ZeroDuration();
  Start(options);
  const std::string id = Submit(JobYaml(100000, 0), "lost");
  auto world = RunWorld(Options());
  ASSERT_TRUE(WaitFor(id, [](const proto::Job& j) { return j.progress().step() >= 2; }));
  clock.Advance(absl::Seconds(60));  // the coordinator expires the lease
  world->Join();
  ASSERT_TRUE(world->status.ok()) << world->status;
  EXPECT_EQ(world->worker->stats().lost, 1);
  proto::Job job = Get(id);
  EXPECT_EQ(job.state(), proto::JOB_STATE_PENDING);
  EXPECT_EQ(job.last_error().find("SIGTERM"), std::string::npos);
  world.reset();
  lc_.reset();  // before `clock` goes
}

TEST_F(WorkerTest, AnIdleWorldExitsAndABadTokenIsRefused) {
  Start();
  WorkerOptions o = Options();
  o.once = false;
  o.idle_exit = absl::Milliseconds(1500);
  const absl::Time start = absl::Now();
  auto idle = RunWorld(o);
  idle->Join();
  EXPECT_TRUE(idle->status.ok()) << idle->status;
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(1500));
  // Its idle timer ended it (nothing else does with once = false); the bound
  // only stops a world that never exits.
  EXPECT_LT(absl::Now() - start, absl::Seconds(60));

  o.client.token = LocalCoordinator::kAliceToken;  // a tenant's token
  auto refused = RunWorld(o);
  refused->Join();
  EXPECT_EQ(refused->status.code(), absl::StatusCode::kPermissionDenied) << refused->status;

  o.client.token = "not-a-token-at-all-0000";
  auto unknown = RunWorld(o);
  unknown->Join();
  EXPECT_EQ(unknown->status.code(), absl::StatusCode::kUnauthenticated) << unknown->status;
}

}  // namespace
}  // namespace sheaf::worker

namespace sheaf::worker {
namespace {

// Issue 9, items 2 and 3: a data file swapped for a symlink to the outside
// after submit is refused when it is opened (it used to be read), the job
// fails permanently with the path relative to the root, and the world
// keeps serving; a data directory swapped for such a symlink is the job's
// fault too (it used to release the job and kill every world that leased
// it).
TEST_F(WorkerTest, SymlinksSwappedInAfterSubmitFailTheJobNotTheWorld) {
  Start();  // max_attempts 3: only a permanent failure ends it at once
  const std::string outside = lc_->dir() + "/outside";
  fs::create_directories(outside + "/corpus");
  std::ofstream(outside + "/secret.txt") << "SECRET SECRET SECRET";
  std::ofstream(outside + "/corpus/secret.txt") << "SECRET SECRET SECRET";

  // A file inside the data folder becomes a symlink to the outside.
  const std::string file_job = Submit(JobYaml(2), "file-link");
  fs::remove(lc_->data_root() + "/corpus/d3.txt");
  fs::create_symlink(outside + "/secret.txt", lc_->data_root() + "/corpus/d3.txt");
  WorkerOptions o = Options();
  o.once = false;
  o.idle_exit = absl::Seconds(3);
  auto world = RunWorld(o);
  auto ended = [&](const std::string& id) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (absl::Now() < deadline && Get(id).state() < proto::JOB_STATE_SUCCEEDED) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    return Get(id);
  };
  proto::Job job = ended(file_job);
  EXPECT_EQ(job.state(), proto::JOB_STATE_FAILED);
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_NE(job.last_error().find("corpus/d3.txt"), std::string::npos) << job.last_error();
  EXPECT_NE(job.last_error().find("leads outside"), std::string::npos) << job.last_error();
  EXPECT_EQ(job.last_error().find(outside), std::string::npos) << job.last_error();
  fs::remove(lc_->data_root() + "/corpus/d3.txt");
  // That world survived the failed job and exits when idle. The next swap
  // must happen between submit and lease, so no world may be polling when
  // the job is submitted (a polling world leases it at once).
  world->Join();
  EXPECT_TRUE(world->status.ok()) << world->status;
  EXPECT_EQ(world->worker->stats().jobs, 1);

  // The whole data directory becomes a symlink to the outside.
  fs::create_directories(lc_->data_root() + "/corpus2");
  fs::copy(lc_->data_root() + "/corpus", lc_->data_root() + "/corpus2");
  std::string yaml = JobYaml(2);
  yaml.replace(yaml.find("[corpus]"), 8, "[corpus2]");
  const std::string dir_job = Submit(yaml, "dir-link");
  fs::remove_all(lc_->data_root() + "/corpus2");
  fs::create_directory_symlink(outside + "/corpus", lc_->data_root() + "/corpus2");
  world = RunWorld(o);
  job = ended(dir_job);
  EXPECT_EQ(job.state(), proto::JOB_STATE_FAILED) << job.last_error();
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_NE(job.last_error().find("data.train[0]"), std::string::npos) << job.last_error();
  EXPECT_EQ(job.last_error().find(outside), std::string::npos) << job.last_error();

  // The world is still serving: a good job runs to success on it.
  const std::string good = Submit(JobYaml(2), "after");
  job = ended(good);
  EXPECT_EQ(job.state(), proto::JOB_STATE_SUCCEEDED) << job.last_error();
  world->Join();
  EXPECT_TRUE(world->status.ok()) << world->status;
  EXPECT_EQ(world->worker->stats().jobs, 2);
}

// Issue 9, item 1: the world checks the job's estimate against each rank
// before it allocates anything.
TEST(CheckJobFitsRankTest, ATooLargeJobIsResourceExhaustedNamingTheEstimate) {
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(
      "output_dir: o\ndata: {train: [d], seq_len: 64}\ntrain: {max_steps: 1, batch_size: 64}\n"
      "pretrain:\n  model: {hidden_size: 256, intermediate_size: 688, num_hidden_layers: 4,\n"
      "                  num_attention_heads: 8, vocab_size: 258}\n");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ApplyDefaults(&*spec);
  absl::Status s = CheckJobFitsRank(*spec, 1, int64_t{16} << 20);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(s.message().find("the job needs about"), std::string::npos) << s;
  EXPECT_NE(s.message().find("this rank has 16.0 MiB"), std::string::npos) << s;
  EXPECT_FALSE(IsPermanentFailure(s));  // a larger world may run it
  EXPECT_TRUE(CheckJobFitsRank(*spec, 1, int64_t{8} << 30).ok());
  EXPECT_TRUE(CheckJobFitsRank(*spec, 1, 0).ok());  // unknown memory
}

TEST(IsPermanentFailureTest, DeterministicFailuresArePermanent) {
  EXPECT_TRUE(IsPermanentFailure(absl::DataLossError("truncated safetensors")));
  EXPECT_TRUE(IsPermanentFailure(absl::FailedPreconditionError("loss is nan")));
  EXPECT_TRUE(IsPermanentFailure(absl::PermissionDeniedError("symlink leads outside")));
  EXPECT_FALSE(IsPermanentFailure(absl::UnavailableError("disk")));
  EXPECT_FALSE(IsPermanentFailure(absl::ResourceExhaustedError("memory")));
  EXPECT_FALSE(IsPermanentFailure(absl::InternalError("world broke")));
}

}  // namespace
}  // namespace sheaf::worker
