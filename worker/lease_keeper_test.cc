// LeaseKeeper against a real in-process coordinator (gRPC on loopback,
// SQLite): renewals carry progress, CANCEL and LEASE_LOST become verdicts,
// and an unreachable coordinator expires the lease locally.
#include "worker/lease_keeper.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "coordinator/clock.h"
#include "coordinator/local_coordinator.h"
#include "gtest/gtest.h"
#include "proto/coordinator.grpc.pb.h"
#include "worker/client.h"

namespace sheaf::worker {
namespace {

using coordinator::LocalCoordinator;

class LeaseKeeperTest : public ::testing::Test {
 protected:
  void Start(coordinator::LocalCoordinatorOptions options) {
    auto lc = LocalCoordinator::Start(std::move(options));
    ASSERT_TRUE(lc.ok()) << lc.status();
    lc_ = std::move(*lc);
    stub_ = lc_->NewStub();
    ClientOptions client_options;
    client_options.target = lc_->target();
    client_options.token = LocalCoordinator::kWorkerToken;
    auto client = CoordinatorClient::Create(client_options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }

  // Submits a job as alice and leases it to a fresh world of one.
  void SubmitAndLease() {
    {
      grpc::ClientContext context;
      coordinator::SetBearerToken(&context, LocalCoordinator::kAliceToken);
      proto::SubmitJobRequest request;
      request.mutable_spec()->set_base_model("tiny");
      request.mutable_spec()->mutable_data()->add_train("corpus.txt");
      request.mutable_spec()->mutable_train()->set_max_steps(10);
      request.mutable_spec()->mutable_lora();
      proto::SubmitJobResponse response;
      ASSERT_TRUE(stub_->SubmitJob(&context, request, &response).ok());
      job_id_ = response.job_id();
    }
    proto::RegisterWorldRequest world;
    world.set_world_size(1);
    auto registered = client_->RegisterWorld(world, absl::Seconds(5));
    ASSERT_TRUE(registered.ok()) << registered.status();
    proto::AcquireJobRequest acquire;
    acquire.set_world_id(registered->world_id());
    acquire.set_wait_ms(2000);
    auto acquired = client_->AcquireJob(acquire, absl::Seconds(5));
    ASSERT_TRUE(acquired.ok()) << acquired.status();
    ASSERT_TRUE(acquired->has_lease());
    lease_ = acquired->lease();
    granted_ = absl::Now();
  }

  proto::Job GetJob() {
    grpc::ClientContext context;
    coordinator::SetBearerToken(&context, LocalCoordinator::kAliceToken);
    proto::GetJobRequest request;
    request.set_job_id(job_id_);
    proto::Job job;
    EXPECT_TRUE(stub_->GetJob(&context, request, &job).ok());
    return job;
  }

  LeaseKeeper::Options KeeperOptions() {
    LeaseKeeper::Options o;
    o.ttl = absl::Milliseconds(lease_.ttl_ms());
    o.heartbeat_interval = absl::Milliseconds(lease_.heartbeat_interval_ms());
    o.min_backoff = absl::Milliseconds(50);
    o.on_verdict = [this](LeaseVerdict v) {
      verdicts_.fetch_add(1);
      last_verdict_ = v;
      if (!notified_.HasBeenNotified()) notified_.Notify();
    };
    return o;
  }

  static coordinator::LocalCoordinatorOptions Ttl(absl::Duration ttl) {
    coordinator::LocalCoordinatorOptions o;
    o.scheduler.lease_ttl = ttl;
    o.scheduler.sweep_interval = absl::Milliseconds(50);
    return o;
  }

  std::unique_ptr<LocalCoordinator> lc_;
  std::unique_ptr<proto::Coordinator::Stub> stub_;
  std::unique_ptr<CoordinatorClient> client_;
  std::string job_id_;
  proto::Lease lease_;
  absl::Time granted_;
  std::atomic<int> verdicts_{0};
  std::atomic<LeaseVerdict> last_verdict_{LeaseVerdict::kKeepGoing};
  absl::Notification notified_;
};

TEST_F(LeaseKeeperTest, RenewsTheLeaseBeyondItsTtlAndReportsProgress) {
  Start(Ttl(absl::Milliseconds(600)));
  SubmitAndLease();
  EXPECT_EQ(lease_.heartbeat_interval_ms(), 200);
  auto keeper = LeaseKeeper::Start(client_.get(), lease_.lease_id(), granted_, KeeperOptions());
  proto::Progress p;
  p.set_step(3);
  p.set_total_steps(10);
  p.set_loss(2.5);
  keeper->SetProgress(p, {{"lr", 0.001}});
  absl::SleepFor(absl::Milliseconds(1500));  // 2.5 TTLs
  EXPECT_EQ(keeper->verdict(), LeaseVerdict::kKeepGoing);
  EXPECT_GE(keeper->heartbeats_sent(), 5);
  EXPECT_EQ(keeper->heartbeats_failed(), 0);
  EXPECT_GT(keeper->expiry(), absl::Now());
  proto::Job job = GetJob();
  EXPECT_EQ(job.state(), proto::JOB_STATE_RUNNING);
  EXPECT_EQ(job.progress().step(), 3);
  EXPECT_EQ(job.progress().total_steps(), 10);
  EXPECT_DOUBLE_EQ(job.metrics().at("lr"), 0.001);
  keeper->Stop();
  EXPECT_EQ(verdicts_.load(), 0);
}

TEST_F(LeaseKeeperTest, CancelIsAVerdictOnceAndHeartbeatsGoOn) {
  Start(Ttl(absl::Milliseconds(600)));
  SubmitAndLease();
  auto keeper = LeaseKeeper::Start(client_.get(), lease_.lease_id(), granted_, KeeperOptions());
  {
    grpc::ClientContext context;
    coordinator::SetBearerToken(&context, LocalCoordinator::kAliceToken);
    proto::CancelJobRequest request;
    request.set_job_id(job_id_);
    proto::Job job;
    ASSERT_TRUE(stub_->CancelJob(&context, request, &job).ok());
    EXPECT_TRUE(job.cancel_requested());
  }
  ASSERT_TRUE(notified_.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(last_verdict_.load(), LeaseVerdict::kCancel);
  const int64_t sent = keeper->heartbeats_sent();
  absl::SleepFor(absl::Milliseconds(900));  // past the TTL: still held
  EXPECT_GT(keeper->heartbeats_sent(), sent);
  EXPECT_EQ(verdicts_.load(), 1);
  keeper->Stop();
  // The lease is still ours: completing it makes the job CANCELLED.
  proto::CompleteJobRequest complete;
  complete.set_lease_id(lease_.lease_id());
  complete.set_error("cancelled");
  auto done = client_->CompleteJob(complete, absl::Seconds(5));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), proto::JOB_STATE_CANCELLED);
}

TEST_F(LeaseKeeperTest, AnExpiredLeaseIsLost) {
  coordinator::FakeClock clock;
  coordinator::LocalCoordinatorOptions options = Ttl(absl::Seconds(10));
  options.clock = &clock;
  // Without the outage rule, which would give the lease back (see below).
  options.scheduler.revive_window = absl::ZeroDuration();
  Start(options);
  SubmitAndLease();
  auto keeper = LeaseKeeper::Start(client_.get(), lease_.lease_id(), granted_, KeeperOptions());
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(keeper->verdict(), LeaseVerdict::kKeepGoing);
  clock.Advance(absl::Seconds(30));  // the coordinator's lease expires
  ASSERT_TRUE(notified_.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(last_verdict_.load(), LeaseVerdict::kLeaseLost);
  keeper->Stop();
  EXPECT_EQ(GetJob().state(), proto::JOB_STATE_PENDING);
  lc_.reset();  // before `clock` goes
}

TEST_F(LeaseKeeperTest, AnUnreachableCoordinatorExpiresTheLeaseLocally) {
  Start(Ttl(absl::Milliseconds(900)));
  SubmitAndLease();
  auto keeper = LeaseKeeper::Start(client_.get(), lease_.lease_id(), granted_, KeeperOptions());
  absl::SleepFor(absl::Milliseconds(400));
  ASSERT_GE(keeper->heartbeats_sent(), 1);
  const absl::Time stopped = absl::Now();
  lc_->Stop();
  ASSERT_TRUE(notified_.WaitForNotificationWithTimeout(absl::Seconds(50)));
  EXPECT_EQ(last_verdict_.load(), LeaseVerdict::kExpired);
  // Not before the lease could have expired, and not long after: the keeper
  // itself gave up on its 900 ms lease, well before the 50 s hang-stopper
  // (a bound a loaded machine cannot reach).
  const absl::Duration waited = absl::Now() - stopped;
  EXPECT_GE(absl::Now(), keeper->expiry());
  EXPECT_LT(waited, absl::Seconds(25));
  EXPECT_GE(keeper->heartbeats_failed(), 1);
  keeper->Stop();
}

TEST_F(LeaseKeeperTest, AnExpiredLeaseNobodyTookComesBackAtTheNextHeartbeat) {
  coordinator::FakeClock clock;
  coordinator::LocalCoordinatorOptions options = Ttl(absl::Seconds(10));
  options.clock = &clock;
  Start(options);
  SubmitAndLease();
  auto keeper = LeaseKeeper::Start(client_.get(), lease_.lease_id(), granted_, KeeperOptions());
  absl::SleepFor(absl::Milliseconds(200));
  clock.Advance(absl::Seconds(30));  // the coordinator's lease expires...
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (GetJob().state() == proto::JOB_STATE_RUNNING && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  // ...and the keeper's next heartbeat (every 3.3 s) brings it back.
  absl::SleepFor(absl::Seconds(4));
  const proto::Job job = GetJob();
  EXPECT_EQ(job.state(), proto::JOB_STATE_RUNNING);
  EXPECT_EQ(job.attempts(), 1);
  EXPECT_NE(job.last_error().find("reconnected"), std::string::npos) << job.last_error();
  EXPECT_EQ(keeper->verdict(), LeaseVerdict::kKeepGoing);
  keeper->Stop();
  lc_.reset();  // before `clock` goes
}

TEST_F(LeaseKeeperTest, WithAnOutageGraceTheJobGoesOnPastTheExpiryUntilAnotherWorldClaimsIt) {
  Start(Ttl(absl::Milliseconds(900)));
  SubmitAndLease();
  std::atomic<bool> ours{true};
  LeaseKeeper::Options o = KeeperOptions();
  o.outage_grace = absl::Seconds(60);
  o.still_ours = [&ours] { return ours.load(); };
  auto keeper = LeaseKeeper::Start(client_.get(), lease_.lease_id(), granted_, o);
  absl::SleepFor(absl::Milliseconds(400));
  lc_->Stop();
  absl::SleepFor(absl::Seconds(3));  // > 3 TTLs
  EXPECT_GT(absl::Now(), keeper->expiry());
  EXPECT_EQ(keeper->verdict(), LeaseVerdict::kKeepGoing);
  EXPECT_EQ(verdicts_.load(), 0);
  EXPECT_GT(keeper->report_deadline(), absl::Now() + absl::Seconds(50));
  ours = false;  // another world wrote its claim into output_dir
  ASSERT_TRUE(notified_.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(last_verdict_.load(), LeaseVerdict::kLeaseLost);
  keeper->Stop();
}

}  // namespace
}  // namespace sheaf::worker
