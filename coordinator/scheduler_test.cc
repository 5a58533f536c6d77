#include "coordinator/scheduler.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace sheaf::coordinator {
namespace {

std::string TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string pattern =
      absl::StrCat(base ? base : "/tmp", "/scheduler_test.XXXXXX");
  EXPECT_NE(mkdtemp(pattern.data()), nullptr);
  return pattern;
}

// Records "JOB FROM->TO" for every change.
class Recorder : public SchedulerObserver {
 public:
  void OnStateChange(const proto::Job& job, proto::JobState from,
                     absl::Duration, absl::string_view reason) override {
    absl::MutexLock lock(&mu_);
    changes_.push_back(absl::StrCat(job.id(), " ", proto::JobState_Name(from),
                                    "->", proto::JobState_Name(job.state())));
    reasons_.push_back(std::string(reason));
  }
  void OnProgress(const proto::Job& job) override {
    absl::MutexLock lock(&mu_);
    ++progress_;
  }
  std::vector<std::string> changes() {
    absl::MutexLock lock(&mu_);
    return changes_;
  }
  std::string last_reason() {
    absl::MutexLock lock(&mu_);
    return reasons_.empty() ? "" : reasons_.back();
  }
  int progress() {
    absl::MutexLock lock(&mu_);
    return progress_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> changes_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> reasons_ ABSL_GUARDED_BY(mu_);
  int progress_ ABSL_GUARDED_BY(mu_) = 0;
};

proto::Job NewJob(const std::string& id, int priority = 0, int min_ws = 1,
                  int max_ws = 0, int64_t memory = 0) {
  proto::Job job;
  job.set_id(id);
  job.set_tenant("alice");
  job.set_kind("lora");
  job.set_priority(priority);
  job.mutable_resources()->set_min_world_size(min_ws);
  job.mutable_resources()->set_max_world_size(max_ws);
  job.mutable_resources()->set_memory_bytes(memory);
  job.mutable_spec()->set_name(id);
  job.set_output_dir("/out/alice/" + id);
  return job;
}

proto::RegisterWorldRequest World(int size, int64_t memory = 1LL << 34) {
  proto::RegisterWorldRequest world;
  world.set_world_size(size);
  world.set_memory_bytes(memory);
  world.set_hostname("node");
  return world;
}

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = TempDir() + "/jobs.db";
    Start();
  }

  void Start() {
    auto store = JobStore::Open({.path = path_});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    SchedulerOptions options;
    options.lease_ttl = absl::Seconds(30);
    options.max_attempts = max_attempts_;
    options.run_sweeper = false;
    options.sweep_interval = absl::Milliseconds(20);
    options.stall_floor = stall_floor_;
    options.stall_factor = stall_factor_;
    options.setup_timeout = setup_timeout_;
    options.revive_window = revive_window_;
    auto scheduler = Scheduler::Create(store_.get(), &clock_, options, &recorder_);
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    scheduler_ = *std::move(scheduler);
  }

  void Restart() {
    scheduler_.reset();
    store_.reset();
    Start();
  }

  std::string Register(int size, int64_t memory = 1LL << 34) {
    auto id = scheduler_->RegisterWorld(World(size, memory));
    EXPECT_TRUE(id.ok()) << id.status();
    return id.value_or("");
  }

  // Acquire without waiting.
  std::optional<proto::Lease> AcquireNow(const std::string& world) {
    auto lease = scheduler_->Acquire(world, absl::Now());
    EXPECT_TRUE(lease.ok()) << lease.status();
    return lease.ok() ? *lease : std::nullopt;
  }

  proto::Job Get(const std::string& id) {
    proto::Job job;
    EXPECT_TRUE(store_
                    ->Read([&](StoreTxn& txn) -> absl::Status {
                      auto got = txn.GetJob(id);
                      if (!got.ok()) return got.status();
                      job = *got;
                      return absl::OkStatus();
                    })
                    .ok());
    return job;
  }

  proto::HeartbeatAction Beat(const std::string& lease_id, int64_t step = 1) {
    proto::Progress progress;
    progress.set_step(step);
    progress.set_tokens_per_s(1000);
    google::protobuf::Map<std::string, double> metrics;
    metrics["auc"] = 0.75;
    auto result = scheduler_->Heartbeat(lease_id, progress, metrics);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result->action : proto::HEARTBEAT_ACTION_UNSPECIFIED;
  }

  absl::StatusOr<proto::JobState> Complete(const std::string& lease_id,
                                           bool success,
                                           const std::string& error = "",
                                           bool permanent = false) {
    proto::CompleteJobRequest request;
    request.set_lease_id(lease_id);
    request.set_success(success);
    request.set_error(error);
    request.set_permanent(permanent);
    return scheduler_->Complete(request);
  }

  int max_attempts_ = 3;
  absl::Duration stall_floor_ = absl::Minutes(5);
  double stall_factor_ = 5;
  absl::Duration setup_timeout_ = absl::Minutes(30);
  absl::Duration revive_window_ = absl::Hours(1);
  std::string path_;
  FakeClock clock_;
  Recorder recorder_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, HappyPathEndsSucceeded) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string world = Register(2);
  std::optional<proto::Lease> lease = AcquireNow(world);
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->job_id(), "job-1");
  EXPECT_EQ(lease->attempt(), 1);
  EXPECT_EQ(lease->ttl_ms(), 30000);
  EXPECT_EQ(lease->heartbeat_interval_ms(), 10000);
  EXPECT_EQ(lease->spec().name(), "job-1");
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_LEASED);
  EXPECT_EQ(Beat(lease->lease_id()), proto::HEARTBEAT_ACTION_KEEP_GOING);
  proto::Job running = Get("job-1");
  EXPECT_EQ(running.state(), proto::JOB_STATE_RUNNING);
  EXPECT_EQ(running.progress().step(), 1);
  EXPECT_EQ(running.metrics().at("auc"), 0.75);
  EXPECT_EQ(running.world_id(), world);
  ASSERT_EQ(*Complete(lease->lease_id(), true), proto::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(recorder_.changes(),
            (std::vector<std::string>{
                "job-1 JOB_STATE_UNSPECIFIED->JOB_STATE_PENDING",
                "job-1 JOB_STATE_PENDING->JOB_STATE_LEASED",
                "job-1 JOB_STATE_LEASED->JOB_STATE_RUNNING",
                "job-1 JOB_STATE_RUNNING->JOB_STATE_SUCCEEDED"}));
  EXPECT_EQ(recorder_.progress(), 1);
  // The lease is gone: a second completion is refused.
  EXPECT_TRUE(absl::IsFailedPrecondition(
      Complete(lease->lease_id(), true).status()));
}

TEST_F(SchedulerTest, PlacesByPriorityThenAgeAmongJobsThatFit) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("low")).ok());
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(scheduler_->Submit(NewJob("wide", 5, /*min_ws=*/8)).ok());
  ASSERT_TRUE(scheduler_->Submit(NewJob("fat", 5, 1, 0, 1LL << 40)).ok());
  ASSERT_TRUE(scheduler_->Submit(NewJob("high-1", 5)).ok());
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(scheduler_->Submit(NewJob("high-2", 5)).ok());
  const std::string small = Register(2);
  const std::string big = Register(8);
  EXPECT_EQ(AcquireNow(small)->job_id(), "high-1");
  EXPECT_EQ(AcquireNow(small)->job_id(), "high-2");
  EXPECT_EQ(AcquireNow(small)->job_id(), "low");
  EXPECT_FALSE(AcquireNow(small).has_value());  // wide and fat do not fit
  EXPECT_EQ(AcquireNow(big)->job_id(), "wide");
  EXPECT_FALSE(AcquireNow(big).has_value());
  EXPECT_TRUE(absl::IsNotFound(
      scheduler_->Acquire("world-nope", absl::Now()).status()));
}

TEST_F(SchedulerTest, MatchesTheDeviceKind) {
  auto job = [](const std::string& id, proto::DeviceKind kind, int priority) {
    proto::Job j = NewJob(id, priority);
    j.mutable_resources()->set_device_kind(kind);
    return j;
  };
  // The cuda job has the highest priority, so only the device kind keeps
  // it off the cpu worlds.
  ASSERT_TRUE(scheduler_->Submit(job("gpu", proto::DEVICE_KIND_CUDA, 9)).ok());
  ASSERT_TRUE(
      scheduler_->Submit(job("unset", proto::DEVICE_KIND_UNSPECIFIED, 5)).ok());
  ASSERT_TRUE(scheduler_->Submit(job("cpu", proto::DEVICE_KIND_CPU, 1)).ok());
  auto world = [this](proto::DeviceKind kind) {
    proto::RegisterWorldRequest info = World(2);
    info.set_device_kind(kind);
    auto id = scheduler_->RegisterWorld(info);
    EXPECT_TRUE(id.ok()) << id.status();
    return id.value_or("");
  };
  const std::string legacy = Register(2);  // A world that names no kind.
  const std::string cpu = world(proto::DEVICE_KIND_CPU);
  const std::string cuda = world(proto::DEVICE_KIND_CUDA);
  EXPECT_EQ(AcquireNow(legacy)->job_id(), "unset");
  EXPECT_EQ(AcquireNow(cpu)->job_id(), "cpu");
  EXPECT_FALSE(AcquireNow(cpu).has_value());  // gpu is left
  EXPECT_FALSE(AcquireNow(legacy).has_value());
  EXPECT_EQ(AcquireNow(cuda)->job_id(), "gpu");
  // And a cpu job never goes to a cuda world.
  ASSERT_TRUE(scheduler_->Submit(job("cpu-2", proto::DEVICE_KIND_CPU, 9)).ok());
  EXPECT_FALSE(AcquireNow(cuda).has_value());
  EXPECT_EQ(AcquireNow(cpu)->job_id(), "cpu-2");
}

TEST_F(SchedulerTest, HeartbeatsKeepTheLeaseAlive) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string lease_id = AcquireNow(Register(1))->lease_id();
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(absl::Seconds(20));  // 100 s in all, TTL 30 s
    EXPECT_EQ(Beat(lease_id, i), proto::HEARTBEAT_ACTION_KEEP_GOING);
    EXPECT_EQ(*scheduler_->ExpireLeases(), 0);
  }
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_RUNNING);
}

TEST_F(SchedulerTest, ExpiredLeaseRequeuesAndLateReportsChangeNothing) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string world_a = Register(1);
  const std::string world_b = Register(1);
  const proto::Lease first = *AcquireNow(world_a);
  EXPECT_EQ(Beat(first.lease_id()), proto::HEARTBEAT_ACTION_KEEP_GOING);
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  proto::Job job = Get("job-1");
  EXPECT_EQ(job.state(), proto::JOB_STATE_PENDING);
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_NE(job.last_error().find("lease expired"), std::string::npos);

  const proto::Lease second = *AcquireNow(world_b);
  EXPECT_EQ(second.job_id(), "job-1");
  EXPECT_EQ(second.attempt(), 2);
  // World A wakes up: its heartbeat and its result are refused and do not
  // disturb world B's lease.
  EXPECT_EQ(Beat(first.lease_id()), proto::HEARTBEAT_ACTION_LEASE_LOST);
  EXPECT_TRUE(
      absl::IsFailedPrecondition(Complete(first.lease_id(), true).status()));
  job = Get("job-1");
  EXPECT_EQ(job.state(), proto::JOB_STATE_LEASED);
  EXPECT_EQ(job.world_id(), world_b);
  EXPECT_EQ(Beat(second.lease_id()), proto::HEARTBEAT_ACTION_KEEP_GOING);
  EXPECT_EQ(*Complete(second.lease_id(), true), proto::JOB_STATE_SUCCEEDED);
}

TEST_F(SchedulerTest, LateHeartbeatBeforeTheSweepIsLostToo) {
  revive_window_ = absl::ZeroDuration();  // without the outage rule (see below)
  Restart();
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const proto::Lease lease = *AcquireNow(Register(1));
  clock_.Advance(absl::Seconds(31));
  // No sweep ran; the heartbeat itself finds the lease expired.
  EXPECT_EQ(Beat(lease.lease_id()), proto::HEARTBEAT_ACTION_LEASE_LOST);
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_PENDING);
}

TEST_F(SchedulerTest, LateCompletionIsRefusedAndRequeues) {
  revive_window_ = absl::ZeroDuration();  // without the outage rule (see below)
  Restart();
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const proto::Lease lease = *AcquireNow(Register(1));
  clock_.Advance(absl::Seconds(31));
  absl::Status status = Complete(lease.lease_id(), true).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
  EXPECT_NE(status.message().find("expired"), std::string::npos);
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_PENDING);
}

TEST_F(SchedulerTest, JobFailsAfterMaxAttemptsWithTheLastError) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string world = Register(1);
  // Attempt 1: the world reports a failure; retried.
  proto::Lease lease = *AcquireNow(world);
  EXPECT_EQ(*Complete(lease.lease_id(), false, "NaN loss at step 12"),
            proto::JOB_STATE_PENDING);
  // Attempt 2: the world is lost.
  lease = *AcquireNow(world);
  EXPECT_EQ(lease.attempt(), 2);
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  // Attempt 3: fails again; no attempts left.
  lease = *AcquireNow(world);
  EXPECT_EQ(lease.attempt(), 3);
  EXPECT_EQ(*Complete(lease.lease_id(), false, "out of memory"),
            proto::JOB_STATE_FAILED);
  proto::Job job = Get("job-1");
  EXPECT_EQ(job.state(), proto::JOB_STATE_FAILED);
  EXPECT_EQ(job.attempts(), 3);
  EXPECT_EQ(job.last_error(), "attempt 3: out of memory");
  EXPECT_FALSE(AcquireNow(world).has_value());
}

TEST_F(SchedulerTest, ExpiryOnTheLastAttemptFails) {
  max_attempts_ = 1;
  Restart();
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  AcquireNow(Register(1));
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  proto::Job job = Get("job-1");
  EXPECT_EQ(job.state(), proto::JOB_STATE_FAILED);
  EXPECT_NE(job.last_error().find("attempt 1: lease expired"),
            std::string::npos);
}

TEST_F(SchedulerTest, PermanentFailureIsNotRetried) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const proto::Lease lease = *AcquireNow(Register(1));
  EXPECT_EQ(*Complete(lease.lease_id(), false, "no such file", true),
            proto::JOB_STATE_FAILED);
  EXPECT_EQ(Get("job-1").attempts(), 1);
}

TEST_F(SchedulerTest, CancelPendingIsImmediate) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  auto cancelled = scheduler_->Cancel("job-1");
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state(), proto::JOB_STATE_CANCELLED);
  EXPECT_FALSE(AcquireNow(Register(1)).has_value());
  // Again: a no-op.
  EXPECT_EQ(scheduler_->Cancel("job-1")->state(), proto::JOB_STATE_CANCELLED);
  EXPECT_TRUE(absl::IsNotFound(scheduler_->Cancel("job-2").status()));
}

TEST_F(SchedulerTest, CancelReachesTheWorldAtItsNextHeartbeat) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const proto::Lease lease = *AcquireNow(Register(1));
  EXPECT_EQ(Beat(lease.lease_id()), proto::HEARTBEAT_ACTION_KEEP_GOING);
  auto job = scheduler_->Cancel("job-1");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), proto::JOB_STATE_RUNNING);
  EXPECT_TRUE(job->cancel_requested());
  EXPECT_EQ(Beat(lease.lease_id()), proto::HEARTBEAT_ACTION_CANCEL);
  EXPECT_EQ(*Complete(lease.lease_id(), false, "stopped"),
            proto::JOB_STATE_CANCELLED);
  EXPECT_TRUE(scheduler_->Cancel("job-1").ok());  // CANCELLED: a no-op
}

TEST_F(SchedulerTest, CancelOfAFinishedJobIsRefused) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const proto::Lease lease = *AcquireNow(Register(1));
  ASSERT_TRUE(Complete(lease.lease_id(), true).ok());
  absl::Status status = scheduler_->Cancel("job-1").status();
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
  EXPECT_NE(status.message().find("SUCCEEDED"), std::string::npos);
}

TEST_F(SchedulerTest, CancelledJobWhoseWorldIsLostEndsCancelled) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  AcquireNow(Register(1));
  ASSERT_TRUE(scheduler_->Cancel("job-1").ok());
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_CANCELLED);
}

TEST_F(SchedulerTest, RestartExtendsLeasesByOneTtlInsteadOfExpiringThem) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("lost", 1)).ok());
  ASSERT_TRUE(scheduler_->Submit(NewJob("alive", 0)).ok());
  const std::string world = Register(1);
  const proto::Lease lost = *AcquireNow(world);
  clock_.Advance(absl::Seconds(20));
  const proto::Lease alive = *AcquireNow(world);
  ASSERT_EQ(lost.job_id(), "lost");
  ASSERT_EQ(alive.job_id(), "alive");
  // The coordinator goes away for 45 s, longer than the TTL (30): both
  // leases would have expired meanwhile. The restart must not charge
  // either job an attempt: every lease gets one TTL from the restart.
  scheduler_.reset();
  store_.reset();
  clock_.Advance(absl::Seconds(45));
  Start();
  EXPECT_EQ(Get("lost").state(), proto::JOB_STATE_LEASED);
  EXPECT_EQ(Get("alive").state(), proto::JOB_STATE_LEASED);
  ASSERT_TRUE(scheduler_->ExpireLeases().ok());
  EXPECT_EQ(Get("lost").state(), proto::JOB_STATE_LEASED);
  // `alive`'s world heartbeats (the world registered before the restart
  // still works); `lost`'s does not and expires one TTL after the restart.
  clock_.Advance(absl::Seconds(20));
  EXPECT_EQ(Beat(alive.lease_id()), proto::HEARTBEAT_ACTION_KEEP_GOING);
  clock_.Advance(absl::Seconds(11));
  auto expired = scheduler_->ExpireLeases();
  ASSERT_TRUE(expired.ok());
  EXPECT_EQ(*expired, 1);
  proto::Job job = Get("lost");
  EXPECT_EQ(job.state(), proto::JOB_STATE_PENDING);
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_EQ(Get("alive").state(), proto::JOB_STATE_RUNNING);
  EXPECT_EQ(Beat(alive.lease_id()), proto::HEARTBEAT_ACTION_KEEP_GOING);
  const proto::Lease again = *AcquireNow(world);
  EXPECT_EQ(again.job_id(), "lost");
  EXPECT_EQ(again.attempt(), 2);
}

TEST_F(SchedulerTest, RecoversAfterTheCoordinatorIsKilled) {
  // Let a child process own the database, lease a job, and die by SIGKILL.
  scheduler_.reset();
  store_.reset();
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const std::string path = path_;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    FakeClock clock;  // Same start as the parent's.
    auto store = JobStore::Open({.path = path});
    if (!store.ok()) _exit(2);
    SchedulerOptions options;
    options.run_sweeper = false;
    auto scheduler = Scheduler::Create(store->get(), &clock, options, nullptr);
    if (!scheduler.ok()) _exit(3);
    if (!(*scheduler)->Submit(NewJob("leased", 1)).ok()) _exit(4);
    if (!(*scheduler)->Submit(NewJob("waiting", 0)).ok()) _exit(5);
    auto world = (*scheduler)->RegisterWorld(World(1));
    if (!world.ok()) _exit(6);
    auto lease = (*scheduler)->Acquire(*world, absl::Now());
    if (!lease.ok() || !lease->has_value()) _exit(7);
    if (write(fds[1], "ready", 5) != 5) _exit(8);
    while (true) pause();
  }
  close(fds[1]);
  char buffer[8] = {};
  ASSERT_EQ(read(fds[0], buffer, 5), 5);
  close(fds[0]);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));

  clock_.Advance(absl::Minutes(1));  // The lease ran out while nobody ran.
  Start();
  // The restart gives the lease one TTL for its world to heartbeat...
  EXPECT_EQ(Get("leased").state(), proto::JOB_STATE_LEASED);
  // ...and nobody does.
  clock_.Advance(absl::Seconds(31));
  ASSERT_TRUE(scheduler_->ExpireLeases().ok());
  proto::Job leased = Get("leased");
  EXPECT_EQ(leased.state(), proto::JOB_STATE_PENDING);
  EXPECT_EQ(leased.attempts(), 1);
  EXPECT_NE(leased.last_error().find("lease expired"), std::string::npos);
  proto::Job waiting = Get("waiting");
  EXPECT_EQ(waiting.state(), proto::JOB_STATE_PENDING);
  EXPECT_EQ(waiting.attempts(), 0);
  const proto::Lease again = *AcquireNow(Register(1));
  EXPECT_EQ(again.job_id(), "leased");
  EXPECT_EQ(again.attempt(), 2);
}

TEST_F(SchedulerTest, ACancelledAcquireIsNeverHandedALease) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string world = Register(1);
  // The caller went away before the scheduler looked for a job.
  auto none = scheduler_->Acquire(world, absl::Now() + absl::Seconds(5),
                                  [] { return true; });
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  proto::Job job = Get("job-1");
  EXPECT_EQ(job.state(), proto::JOB_STATE_PENDING);
  EXPECT_EQ(job.attempts(), 0);
}

TEST_F(SchedulerTest, ALeaseGrantedAsTheCallIsCancelledIsUndone) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string world = Register(1);
  // Not cancelled when the iteration starts, cancelled by the time the
  // lease is granted.
  int calls = 0;
  auto none = scheduler_->Acquire(world, absl::Now() + absl::Seconds(5),
                                  [&calls] { return ++calls > 1; });
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  proto::Job job = Get("job-1");
  EXPECT_EQ(job.state(), proto::JOB_STATE_PENDING);
  EXPECT_EQ(job.attempts(), 0);
  int64_t leases = -1;
  ASSERT_TRUE(store_
                  ->Read([&](StoreTxn& txn) -> absl::Status {
                    auto n = txn.CountLeases();
                    if (!n.ok()) return n.status();
                    leases = *n;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(leases, 0);
  // The job goes to the next caller as a first attempt.
  const proto::Lease lease = *AcquireNow(world);
  EXPECT_EQ(lease.job_id(), "job-1");
  EXPECT_EQ(lease.attempt(), 1);
}

TEST_F(SchedulerTest, AReleasedJobGoesBackWithoutCountingAnAttempt) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string world = Register(1);
  // More hand-backs than max_attempts (3): none of them counts.
  for (int i = 0; i < 5; ++i) {
    const proto::Lease lease = *AcquireNow(world);
    EXPECT_EQ(lease.attempt(), 1);
    proto::CompleteJobRequest request;
    request.set_lease_id(lease.lease_id());
    request.set_released(true);
    request.set_error("worker stopped (SIGTERM)");
    auto state = scheduler_->Complete(request);
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_EQ(*state, proto::JOB_STATE_PENDING);
    proto::Job job = Get("job-1");
    EXPECT_EQ(job.state(), proto::JOB_STATE_PENDING);
    EXPECT_EQ(job.attempts(), 0);
    EXPECT_NE(job.last_error().find("worker stopped (SIGTERM)"), std::string::npos)
        << job.last_error();
    EXPECT_NE(job.last_error().find("released"), std::string::npos);
  }
  // A real failure still counts.
  const proto::Lease lease = *AcquireNow(world);
  ASSERT_TRUE(Complete(lease.lease_id(), false, "boom").ok());
  EXPECT_EQ(Get("job-1").attempts(), 1);
}

TEST_F(SchedulerTest, LongPollWakesWhenAJobArrives) {
  const std::string world = Register(1);
  absl::StatusOr<std::optional<proto::Lease>> result;
  const absl::Time start = absl::Now();
  std::thread waiter([&] {
    result = scheduler_->Acquire(world, start + absl::Seconds(50));
  });
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  waiter.join();
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->has_value());
  EXPECT_EQ((*result)->job_id(), "job-1");
  // Woke on the submit, not at its deadline (50 s): half of it is a bound a
  // loaded machine cannot reach, and failing still ends before the timeout.
  EXPECT_LT(absl::Now() - start, absl::Seconds(25));
}

TEST_F(SchedulerTest, LongPollNoticesExpiryOnTheFakeClock) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  AcquireNow(Register(1));
  const std::string other = Register(1);
  absl::StatusOr<std::optional<proto::Lease>> result;
  std::thread waiter([&] {
    result = scheduler_->Acquire(other, absl::Now() + absl::Seconds(20));
  });
  absl::SleepFor(absl::Milliseconds(50));
  clock_.Advance(absl::Minutes(1));  // Nobody calls ExpireLeases.
  waiter.join();
  ASSERT_TRUE(result.ok() && result->has_value());
  EXPECT_EQ((*result)->attempt(), 2);
}

TEST_F(SchedulerTest, LongPollTimesOutAndShutdownReleasesWaiters) {
  const std::string world = Register(1);
  auto none = scheduler_->Acquire(world, absl::Now() + absl::Milliseconds(50));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  std::thread waiter([&] {
    auto r = scheduler_->Acquire(world, absl::Now() + absl::Seconds(50));
    EXPECT_TRUE(r.ok() && !r->has_value());
  });
  absl::SleepFor(absl::Milliseconds(50));
  const absl::Time start = absl::Now();
  scheduler_->Shutdown();
  waiter.join();
  // Released by Shutdown, not by its 50 s deadline (see above).
  EXPECT_LT(absl::Now() - start, absl::Seconds(25));
}

TEST_F(SchedulerTest, ConcurrentWorldsNeverShareAJob) {
  constexpr int kJobs = 60;
  for (int i = 0; i < kJobs; ++i) {
    ASSERT_TRUE(scheduler_->Submit(NewJob(absl::StrCat("job-", i))).ok());
  }
  absl::Mutex mu;
  std::vector<std::string> seen;
  std::vector<std::thread> worlds;
  for (int w = 0; w < 6; ++w) {
    worlds.emplace_back([&] {
      const std::string world = Register(1);
      while (true) {
        auto lease = scheduler_->Acquire(world, absl::Now());
        ASSERT_TRUE(lease.ok());
        if (!lease->has_value()) return;
        ASSERT_TRUE(Complete((*lease)->lease_id(), true).ok());
        absl::MutexLock lock(&mu);
        seen.push_back((*lease)->job_id());
      }
    });
  }
  for (auto& t : worlds) t.join();
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen.size(), static_cast<size_t>(kJobs));
  EXPECT_EQ(std::unique(seen.begin(), seen.end()), seen.end());
}

TEST(SchedulerOptionsTest, BadOptionsAreRejected) {
  FakeClock clock;
  SchedulerOptions options;
  options.max_attempts = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(
      Scheduler::Create(nullptr, &clock, options, nullptr).status()));
  options = SchedulerOptions();
  options.lease_ttl = absl::ZeroDuration();
  EXPECT_TRUE(absl::IsInvalidArgument(
      Scheduler::Create(nullptr, &clock, options, nullptr).status()));
}

TEST(NewRandomIdTest, IdsAreDistinctHex) {
  const std::string a = NewRandomId("job-", 8);
  const std::string b = NewRandomId("job-", 8);
  EXPECT_EQ(a.size(), 4u + 16u);
  EXPECT_NE(a, b);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef", 4), std::string::npos);
}

}  // namespace
}  // namespace sheaf::coordinator

namespace sheaf::coordinator {
namespace {

// Issue 9, item 1: a job whose memory estimate exceeds a world's memory per
// rank is never leased to it (it waits for a world it fits), and a larger
// world, whose ranks each need less, gets it.
TEST_F(SchedulerTest, NeverLeasesAJobToAWorldItDoesNotFit) {
  proto::Job big = NewJob("big");
  // 6 GiB of frozen weights (sharded) + 1 GiB replicated; 1 sequence.
  big.mutable_memory_estimate()->set_frozen_bytes(int64_t{6} << 30);
  big.mutable_memory_estimate()->set_trainable_bytes(int64_t{1} << 30);
  big.mutable_memory_estimate()->set_batch_size(1);
  ASSERT_TRUE(scheduler_->Submit(big).ok());
  ASSERT_TRUE(scheduler_->Submit(NewJob("small")).ok());
  const MemoryEstimate e = FromProto(big.memory_estimate());
  ASSERT_GT(e.PerRank(1), int64_t{8} << 30);
  ASSERT_LT(e.PerRank(4), int64_t{4} << 30);
  // One rank of 4 GiB: "big" does not fit; "small" behind it is leased.
  const std::string one = Register(1, int64_t{4} << 30);
  std::optional<proto::Lease> lease = AcquireNow(one);
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->job_id(), "small");
  EXPECT_FALSE(AcquireNow(one).has_value());
  EXPECT_EQ(Get("big").state(), proto::JOB_STATE_PENDING);
  // Four ranks of 4 GiB each: it fits.
  const std::string four = Register(4, int64_t{4} << 30);
  lease = AcquireNow(four);
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->job_id(), "big");
}

TEST(JobFitsWorldTest, UnknownEstimateOrMemoryIsMatchedByTheRequestAlone) {
  proto::Job job;
  EXPECT_TRUE(JobFitsWorld(job, World(1, 1)));
  job.mutable_memory_estimate()->set_trainable_bytes(int64_t{1} << 40);
  EXPECT_FALSE(JobFitsWorld(job, World(1, int64_t{1} << 30)));
  EXPECT_TRUE(JobFitsWorld(job, World(1, 0)));
}

}  // namespace
}  // namespace sheaf::coordinator

namespace sheaf::coordinator {
namespace {

// Issue 9, item 4: three forward steps of the wall clock of 2/3 TTL each
// (20 s, TTL 30 s) with heartbeats in between failed a healthy job; now
// only monotonic time counts.
TEST_F(SchedulerTest, WallClockStepsForwardDoNotExpireAHealthyLease) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string world = Register(1);
  std::optional<proto::Lease> lease = AcquireNow(world);
  ASSERT_TRUE(lease.has_value());
  for (int i = 0; i < 3; ++i) {
    clock_.Set(clock_.Now() + absl::Minutes(2));  // 4 TTLs of wall time
    clock_.Advance(absl::Seconds(1));
    EXPECT_EQ(*scheduler_->ExpireLeases(), 0);
    EXPECT_EQ(Beat(lease->lease_id()), proto::HEARTBEAT_ACTION_KEEP_GOING);
  }
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_RUNNING);
  ASSERT_EQ(*Complete(lease->lease_id(), true), proto::JOB_STATE_SUCCEEDED);
}

// A 1 h backward step left a dead world's job RUNNING for over 109 s (TTL
// 10 s): now it expires one TTL of monotonic time after its last renewal.
TEST_F(SchedulerTest, AWallClockStepBackDoesNotKeepADeadLease) {
  revive_window_ = absl::ZeroDuration();  // the late beat is the old rule
  Restart();
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string world = Register(1);
  std::optional<proto::Lease> lease = AcquireNow(world);
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(Beat(lease->lease_id()), proto::HEARTBEAT_ACTION_KEEP_GOING);
  clock_.Set(clock_.Now() - absl::Hours(1));
  clock_.Advance(absl::Seconds(29));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 0);
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_PENDING);
  // Its late heartbeat is refused.
  EXPECT_EQ(Beat(lease->lease_id()), proto::HEARTBEAT_ACTION_LEASE_LOST);
}

// The restart rule is kept: after a restart every lease gets one TTL of
// monotonic time, whatever the wall clock did meanwhile.
TEST_F(SchedulerTest, ARestartGivesEveryLeaseOneTtlWhateverTheWallClockDid) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string world = Register(1);
  std::optional<proto::Lease> lease = AcquireNow(world);
  ASSERT_TRUE(lease.has_value());
  clock_.Advance(absl::Seconds(25));
  clock_.Set(clock_.Now() + absl::Hours(5));
  Restart();
  clock_.Advance(absl::Seconds(20));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 0);
  EXPECT_EQ(Beat(lease->lease_id()), proto::HEARTBEAT_ACTION_KEEP_GOING);
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
}

TEST(FakeClockTest, SetStepsOnlyTheWallClock) {
  FakeClock clock;
  const absl::Duration mono = clock.Monotonic();
  clock.Set(clock.Now() - absl::Hours(1));
  EXPECT_EQ(clock.Monotonic(), mono);
  clock.Advance(absl::Seconds(3));
  EXPECT_EQ(clock.Monotonic(), mono + absl::Seconds(3));
  EXPECT_GE(Clock::Real()->Monotonic(), absl::ZeroDuration());
}

}  // namespace
}  // namespace sheaf::coordinator

namespace sheaf::coordinator {
namespace {

// Stuck worlds (issue 15): heartbeats that keep coming with progress that
// does not move lose the lease. Heartbeats every 10 s keep the 30 s TTL
// alive throughout, so only the stall rule can expire these leases.
class StallTest : public SchedulerTest {
 protected:
  void SetUp() override {
    stall_floor_ = absl::Seconds(60);
    stall_factor_ = 5;
    setup_timeout_ = absl::Seconds(120);
    SchedulerTest::SetUp();
  }
  // Heartbeats every 10 s for `span` with an unchanged `step`; returns the
  // first answer that is not KEEP_GOING (or KEEP_GOING).
  proto::HeartbeatAction HoldStep(const std::string& lease_id, int64_t step, absl::Duration span) {
    for (absl::Duration t = absl::ZeroDuration(); t < span; t += absl::Seconds(10)) {
      clock_.Advance(absl::Seconds(10));
      const proto::HeartbeatAction action = Beat(lease_id, step);
      if (action != proto::HEARTBEAT_ACTION_KEEP_GOING) return action;
    }
    return proto::HEARTBEAT_ACTION_KEEP_GOING;
  }
};

TEST_F(StallTest, ProgressThatStopsMovingLosesTheLeaseAfterTheFloor) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string lease_id = AcquireNow(Register(2))->lease_id();
  EXPECT_EQ(Beat(lease_id, 0), proto::HEARTBEAT_ACTION_KEEP_GOING);
  for (int step = 1; step <= 5; ++step) {  // a step every 10 s
    clock_.Advance(absl::Seconds(10));
    EXPECT_EQ(Beat(lease_id, step), proto::HEARTBEAT_ACTION_KEEP_GOING);
  }
  // Longest gap 10 s: limit max(60 s, 5 x 10 s) = 60 s. At 60 s still kept.
  EXPECT_EQ(HoldStep(lease_id, 5, absl::Seconds(60)), proto::HEARTBEAT_ACTION_KEEP_GOING);
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_RUNNING);
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(Beat(lease_id, 5), proto::HEARTBEAT_ACTION_LEASE_LOST);
  const proto::Job job = Get("job-1");
  EXPECT_EQ(job.state(), proto::JOB_STATE_PENDING);
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_NE(job.last_error().find("kept heartbeating but made no progress for 1m10s at step 5/0"),
            std::string::npos)
      << job.last_error();
  EXPECT_NE(job.last_error().find("stall limit 1m"), std::string::npos) << job.last_error();
  // The lease is gone: the world's late report is refused, a new world
  // gets the job.
  EXPECT_TRUE(absl::IsFailedPrecondition(Complete(lease_id, true).status()));
  std::optional<proto::Lease> again = AcquireNow(Register(2));
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->attempt(), 2);
}

TEST_F(StallTest, LongGapsSeenBeforeRaiseTheLimit) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string lease_id = AcquireNow(Register(1))->lease_id();
  EXPECT_EQ(Beat(lease_id, 0), proto::HEARTBEAT_ACTION_KEEP_GOING);
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(Beat(lease_id, 1), proto::HEARTBEAT_ACTION_KEEP_GOING);  // set-up over
  // A 50 s step (within the 60 s floor), then a 250 s one (an evaluation,
  // say), which 5 x 50 s allows; each gap raises the limit to 5 x the
  // longest gap seen, so the next stall may last 1250 s.
  EXPECT_EQ(HoldStep(lease_id, 1, absl::Seconds(50)), proto::HEARTBEAT_ACTION_KEEP_GOING);
  EXPECT_EQ(Beat(lease_id, 2), proto::HEARTBEAT_ACTION_KEEP_GOING);
  EXPECT_EQ(HoldStep(lease_id, 2, absl::Seconds(250)), proto::HEARTBEAT_ACTION_KEEP_GOING);
  EXPECT_EQ(Beat(lease_id, 3), proto::HEARTBEAT_ACTION_KEEP_GOING);  // 250 s gap: limit 1250 s
  EXPECT_EQ(HoldStep(lease_id, 3, absl::Seconds(1250)), proto::HEARTBEAT_ACTION_KEEP_GOING);
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(Beat(lease_id, 3), proto::HEARTBEAT_ACTION_LEASE_LOST);
  EXPECT_NE(Get("job-1").last_error().find("longest gap between progress so far, 4m10s"),
            std::string::npos)
      << Get("job-1").last_error();
}

TEST_F(StallTest, SetUpHasItsOwnLimit) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string lease_id = AcquireNow(Register(1))->lease_id();
  EXPECT_EQ(Beat(lease_id, 0), proto::HEARTBEAT_ACTION_KEEP_GOING);
  // Loading for 120 s (the set-up limit) is fine; the floor (60 s) does
  // not apply before progress first moves.
  EXPECT_EQ(HoldStep(lease_id, 0, absl::Seconds(120)), proto::HEARTBEAT_ACTION_KEEP_GOING);
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(Beat(lease_id, 0), proto::HEARTBEAT_ACTION_LEASE_LOST);
  EXPECT_NE(Get("job-1").last_error().find("a rank may be stuck in set-up"), std::string::npos)
      << Get("job-1").last_error();
}

TEST_F(StallTest, HeartbeatsInPhaseSetupDoNotEndSetUp) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string lease_id = AcquireNow(Register(1))->lease_id();
  google::protobuf::Map<std::string, double> none;
  proto::Progress setup;
  setup.set_phase("setup");
  ASSERT_EQ(scheduler_->Heartbeat(lease_id, proto::Progress(), none)->action,
            proto::HEARTBEAT_ACTION_KEEP_GOING);
  for (int i = 0; i < 12; ++i) {  // 120 s of set-up: within its limit, beyond the floor
    clock_.Advance(absl::Seconds(10));
    ASSERT_EQ(scheduler_->Heartbeat(lease_id, setup, none)->action,
              proto::HEARTBEAT_ACTION_KEEP_GOING)
        << i;
  }
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(scheduler_->Heartbeat(lease_id, setup, none)->action,
            proto::HEARTBEAT_ACTION_LEASE_LOST);
  EXPECT_NE(Get("job-1").last_error().find("stuck in set-up"), std::string::npos);
}

TEST_F(StallTest, ZeroTurnsBothRulesOff) {
  stall_floor_ = absl::ZeroDuration();
  setup_timeout_ = absl::ZeroDuration();
  Restart();
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string lease_id = AcquireNow(Register(1))->lease_id();
  EXPECT_EQ(HoldStep(lease_id, 0, absl::Hours(2)), proto::HEARTBEAT_ACTION_KEEP_GOING);
  EXPECT_EQ(Beat(lease_id, 1), proto::HEARTBEAT_ACTION_KEEP_GOING);
  EXPECT_EQ(HoldStep(lease_id, 1, absl::Hours(2)), proto::HEARTBEAT_ACTION_KEEP_GOING);
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_RUNNING);
}

TEST_F(StallTest, BadStallOptionsAreRefused) {
  SchedulerOptions options;
  options.stall_factor = 0.5;
  EXPECT_TRUE(absl::IsInvalidArgument(
      Scheduler::Create(store_.get(), &clock_, options, nullptr).status()));
  options = SchedulerOptions();
  options.stall_floor = absl::Seconds(5);  // below two heartbeats (10 s each)
  EXPECT_TRUE(absl::IsInvalidArgument(
      Scheduler::Create(store_.get(), &clock_, options, nullptr).status()));
}

TEST_F(SchedulerTest, CompletionKeepsTheLastMetrics) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string lease_id = AcquireNow(Register(1))->lease_id();
  EXPECT_EQ(Beat(lease_id), proto::HEARTBEAT_ACTION_KEEP_GOING);  // auc 0.75
  proto::CompleteJobRequest request;
  request.set_lease_id(lease_id);
  request.set_success(true);
  (*request.mutable_metrics())["val_loss/nl"] = 1.25;
  (*request.mutable_metrics())["auc"] = 0.8;
  ASSERT_EQ(*scheduler_->Complete(request), proto::JOB_STATE_SUCCEEDED);
  const proto::Job job = Get("job-1");
  EXPECT_EQ(job.metrics().at("val_loss/nl"), 1.25);
  EXPECT_EQ(job.metrics().at("auc"), 0.8);
}

}  // namespace
}  // namespace sheaf::coordinator

namespace sheaf::coordinator {
namespace {

// Issue 9, item 5: a world cut off from the coordinator for longer than the
// TTL gets its lease back if nobody had the job since.
TEST_F(SchedulerTest, AWorldBackFromAnOutageGetsItsLeaseBackIfNobodyHadTheJob) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const std::string world = Register(1);
  const proto::Lease lease = *AcquireNow(world);
  EXPECT_EQ(Beat(lease.lease_id(), 3), proto::HEARTBEAT_ACTION_KEEP_GOING);
  clock_.Advance(absl::Seconds(45));  // 1.5 TTLs without a heartbeat
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_PENDING);
  // The world is back before another took the job: same lease, same attempt.
  EXPECT_EQ(Beat(lease.lease_id(), 9), proto::HEARTBEAT_ACTION_KEEP_GOING);
  proto::Job job = Get("job-1");
  EXPECT_EQ(job.state(), proto::JOB_STATE_RUNNING);
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_EQ(job.world_id(), world);
  EXPECT_EQ(job.progress().step(), 9);
  EXPECT_NE(job.last_error().find("reconnected after its lease had expired"), std::string::npos)
      << job.last_error();
  // No other world can take it now, and the lease lives on.
  EXPECT_FALSE(AcquireNow(Register(1)).has_value());
  clock_.Advance(absl::Seconds(20));
  EXPECT_EQ(Beat(lease.lease_id(), 10), proto::HEARTBEAT_ACTION_KEEP_GOING);
  EXPECT_EQ(*Complete(lease.lease_id(), true), proto::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Get("job-1").attempts(), 1);
}

TEST_F(SchedulerTest, AResultReportedAfterAnOutageCountsIfNobodyHadTheJob) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const proto::Lease lease = *AcquireNow(Register(1));
  EXPECT_EQ(Beat(lease.lease_id()), proto::HEARTBEAT_ACTION_KEEP_GOING);
  clock_.Advance(absl::Minutes(2));  // not swept: Complete finds it expired
  EXPECT_EQ(*Complete(lease.lease_id(), true), proto::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Get("job-1").attempts(), 1);
  // Swept first: the same.
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-2")).ok());
  const proto::Lease second = *AcquireNow(Register(1));
  clock_.Advance(absl::Minutes(2));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(*Complete(second.lease_id(), true), proto::JOB_STATE_SUCCEEDED);
}

TEST_F(SchedulerTest, NoRevivalOnceAnotherWorldHadTheJobOrAfterTheWindow) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const proto::Lease first = *AcquireNow(Register(1));
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  const proto::Lease second = *AcquireNow(Register(1));  // attempt 2
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);  // world 2 is lost too: PENDING again
  ASSERT_EQ(Get("job-1").state(), proto::JOB_STATE_PENDING);
  // World 1 is back, but world 2 has had the job since: refused.
  EXPECT_EQ(Beat(first.lease_id()), proto::HEARTBEAT_ACTION_LEASE_LOST);
  EXPECT_TRUE(absl::IsFailedPrecondition(Complete(first.lease_id(), true).status()));
  // World 2 may come back (nobody had it since), but only within the window.
  clock_.Advance(absl::Hours(1) + absl::Seconds(1));
  EXPECT_EQ(Beat(second.lease_id()), proto::HEARTBEAT_ACTION_LEASE_LOST);
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_PENDING);
}

TEST_F(SchedulerTest, NoRevivalForACancelledJobOrAStalledLease) {
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-1")).ok());
  const proto::Lease lease = *AcquireNow(Register(1));
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  ASSERT_TRUE(scheduler_->Cancel("job-1").ok());  // PENDING: CANCELLED at once
  EXPECT_EQ(Beat(lease.lease_id()), proto::HEARTBEAT_ACTION_LEASE_LOST);
  EXPECT_EQ(Get("job-1").state(), proto::JOB_STATE_CANCELLED);

  stall_floor_ = absl::Seconds(60);
  Restart();
  ASSERT_TRUE(scheduler_->Submit(NewJob("job-2")).ok());
  const proto::Lease stuck = *AcquireNow(Register(1));
  EXPECT_EQ(Beat(stuck.lease_id(), 0), proto::HEARTBEAT_ACTION_KEEP_GOING);
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(Beat(stuck.lease_id(), 1), proto::HEARTBEAT_ACTION_KEEP_GOING);
  proto::HeartbeatAction action = proto::HEARTBEAT_ACTION_KEEP_GOING;
  for (int i = 0; i < 10 && action == proto::HEARTBEAT_ACTION_KEEP_GOING; ++i) {
    clock_.Advance(absl::Seconds(10));
    action = Beat(stuck.lease_id(), 1);
  }
  EXPECT_EQ(action, proto::HEARTBEAT_ACTION_LEASE_LOST);  // stalled
  // Its next heartbeat does not bring it back: a stuck world stays lost.
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(Beat(stuck.lease_id(), 1), proto::HEARTBEAT_ACTION_LEASE_LOST);
  EXPECT_EQ(Get("job-2").state(), proto::JOB_STATE_PENDING);
}

}  // namespace
}  // namespace sheaf::coordinator
