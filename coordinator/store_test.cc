#include "coordinator/store.h"

#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sheaf::coordinator {
namespace {

namespace fs = std::filesystem;

std::string TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string pattern =
      absl::StrCat(base ? base : "/tmp", "/store_test.XXXXXX");
  char* made = mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  return pattern;
}

proto::Job MakeJob(const std::string& id, const std::string& tenant = "alice",
                   int priority = 0, int min_ws = 1, int max_ws = 0,
                   int64_t memory = 0) {
  proto::Job job;
  job.set_id(id);
  job.set_tenant(tenant);
  job.set_state(proto::JOB_STATE_PENDING);
  job.set_kind("lora");
  job.set_priority(priority);
  job.mutable_resources()->set_min_world_size(min_ws);
  job.mutable_resources()->set_max_world_size(max_ws);
  job.mutable_resources()->set_memory_bytes(memory);
  job.mutable_spec()->set_name(absl::StrCat("spec of ", id));
  job.mutable_spec()->set_base_model("/models/tiny");
  job.set_created_unix_ms(1000);
  job.set_updated_unix_ms(1000);
  job.set_output_dir(absl::StrCat("/out/", tenant, "/", id));
  return job;
}

absl::Status Insert(JobStore& store, const proto::Job& job) {
  return store.Write(
      [&](StoreTxn& txn) { return txn.InsertJob(job).status(); });
}

absl::StatusOr<proto::Job> Get(JobStore& store, const std::string& id) {
  proto::Job job;
  absl::Status status = store.Read([&](StoreTxn& txn) -> absl::Status {
    absl::StatusOr<proto::Job> got = txn.GetJob(id);
    if (!got.ok()) return got.status();
    job = *got;
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return job;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override { path_ = TempDir() + "/jobs.db"; }

  std::unique_ptr<JobStore> Open(SyncMode sync = SyncMode::kFull) {
    absl::StatusOr<std::unique_ptr<JobStore>> store =
        JobStore::Open({.path = path_, .sync = sync});
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  std::string path_;
};

TEST_F(StoreTest, JobRoundTripsAndSurvivesReopen) {
  proto::Job job = MakeJob("job-1");
  (*job.mutable_metrics())["auc"] = 0.8125;
  job.mutable_progress()->set_step(7);
  job.mutable_progress()->set_val_loss(1.5);
  {
    auto store = Open();
    ASSERT_TRUE(Insert(*store, job).ok());
  }
  auto store = Open();
  absl::StatusOr<proto::Job> got = Get(*store, "job-1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), job.SerializeAsString())
      << got->DebugString();
  EXPECT_TRUE(absl::IsNotFound(Get(*store, "job-2").status()));
}

TEST_F(StoreTest, DuplicateIdIsAlreadyExists) {
  auto store = Open();
  ASSERT_TRUE(Insert(*store, MakeJob("job-1")).ok());
  absl::Status status = Insert(*store, MakeJob("job-1"));
  EXPECT_TRUE(absl::IsAlreadyExists(status)) << status;
}

TEST_F(StoreTest, UpdateIsCompareAndSetOnState) {
  auto store = Open();
  ASSERT_TRUE(Insert(*store, MakeJob("job-1")).ok());
  proto::Job leased = MakeJob("job-1");
  leased.set_state(proto::JOB_STATE_LEASED);
  leased.set_attempts(1);
  ASSERT_TRUE(store
                  ->Write([&](StoreTxn& txn) {
                    return txn.UpdateJob(leased, proto::JOB_STATE_PENDING);
                  })
                  .ok());
  // A second transition from PENDING (a stale view) must not apply.
  proto::Job stale = MakeJob("job-1");
  stale.set_state(proto::JOB_STATE_CANCELLED);
  absl::Status status = store->Write([&](StoreTxn& txn) {
    return txn.UpdateJob(stale, proto::JOB_STATE_PENDING);
  });
  EXPECT_TRUE(absl::IsAborted(status)) << status;
  EXPECT_NE(status.message().find("LEASED"), std::string::npos) << status;
  EXPECT_EQ(Get(*store, "job-1")->state(), proto::JOB_STATE_LEASED);
  proto::Job missing = MakeJob("job-9");
  EXPECT_TRUE(absl::IsNotFound(store->Write([&](StoreTxn& txn) {
    return txn.UpdateJob(missing, proto::JOB_STATE_PENDING);
  })));
}

TEST_F(StoreTest, FailedWriteLeavesNoTrace) {
  auto store = Open();
  absl::Status status = store->Write([&](StoreTxn& txn) -> absl::Status {
    absl::Status inserted = txn.InsertJob(MakeJob("job-1")).status();
    if (!inserted.ok()) return inserted;
    return absl::InvalidArgumentError("changed my mind");
  });
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_TRUE(absl::IsNotFound(Get(*store, "job-1").status()));
  // Reads cannot write.
  status = store->Read(
      [&](StoreTxn& txn) { return txn.InsertJob(MakeJob("job-2")).status(); });
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
}

TEST_F(StoreTest, ListFiltersAndPaginatesInSubmissionOrder) {
  auto store = Open();
  for (int i = 0; i < 10; ++i) {
    proto::Job job = MakeJob(absl::StrCat("job-", i), i % 2 ? "bob" : "alice");
    if (i == 4) job.set_kind("pretrain");
    if (i == 6) job.set_state(proto::JOB_STATE_SUCCEEDED);
    ASSERT_TRUE(Insert(*store, job).ok());
  }
  std::vector<std::string> ids;
  JobQuery query;
  query.tenant = "alice";
  query.limit = 2;
  while (true) {
    JobPage page;
    ASSERT_TRUE(store
                    ->Read([&](StoreTxn& txn) -> absl::Status {
                      auto got = txn.ListJobs(query);
                      if (!got.ok()) return got.status();
                      page = *got;
                      return absl::OkStatus();
                    })
                    .ok());
    for (const proto::Job& job : page.jobs) ids.push_back(job.id());
    if (!page.more) break;
    query.after_seq = page.seqs.back();
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"job-0", "job-2", "job-4", "job-6",
                                           "job-8"}));
  query = JobQuery();
  query.kind = "pretrain";
  query.state = proto::JOB_STATE_PENDING;
  ASSERT_TRUE(store
                  ->Read([&](StoreTxn& txn) -> absl::Status {
                    auto got = txn.ListJobs(query);
                    EXPECT_TRUE(got.ok());
                    EXPECT_EQ(got->jobs.size(), 1u);
                    EXPECT_EQ(got->jobs[0].id(), "job-4");
                    auto counts = txn.CountJobsByState();
                    EXPECT_EQ((*counts)[proto::JOB_STATE_PENDING], 9);
                    EXPECT_EQ((*counts)[proto::JOB_STATE_SUCCEEDED], 1);
                    return absl::OkStatus();
                  })
                  .ok());
}

TEST_F(StoreTest, NextPendingJobIsPriorityThenAgeAmongThoseThatFit) {
  auto store = Open();
  ASSERT_TRUE(Insert(*store, MakeJob("old-low", "a", 0)).ok());
  ASSERT_TRUE(Insert(*store, MakeJob("big", "a", 9, /*min_ws=*/4)).ok());
  ASSERT_TRUE(Insert(*store, MakeJob("hungry", "a", 9, 1, 0, 1 << 30)).ok());
  ASSERT_TRUE(Insert(*store, MakeJob("small-only", "a", 9, 1, 1)).ok());
  ASSERT_TRUE(Insert(*store, MakeJob("high", "a", 5)).ok());
  ASSERT_TRUE(Insert(*store, MakeJob("high-later", "a", 5)).ok());
  auto next = [&](int ws, int64_t mem) {
    std::string id = "none";
    EXPECT_TRUE(store
                    ->Read([&](StoreTxn& txn) -> absl::Status {
                      auto got = txn.NextPendingJob(ws, mem);
                      if (!got.ok()) return got.status();
                      if (got->has_value()) id = (*got)->id();
                      return absl::OkStatus();
                    })
                    .ok());
    return id;
  };
  EXPECT_EQ(next(1, 0), "small-only");
  EXPECT_EQ(next(2, 0), "high");        // small-only needs exactly 1 rank
  EXPECT_EQ(next(4, 0), "big");         // needs >= 4 ranks
  EXPECT_EQ(next(2, 2LL << 30), "hungry");
}

TEST_F(StoreTest, LeasesRoundTrip) {
  auto store = Open();
  ASSERT_TRUE(Insert(*store, MakeJob("job-1")).ok());
  ASSERT_TRUE(Insert(*store, MakeJob("job-2")).ok());
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  LeaseRecord lease{"lease-a", "job-1", "world-x", 1, t0, t0 + absl::Seconds(30)};
  LeaseRecord other{"lease-b", "job-2", "world-y", 2, t0, t0 + absl::Seconds(60)};
  ASSERT_TRUE(store
                  ->Write([&](StoreTxn& txn) -> absl::Status {
                    absl::Status s = txn.InsertLease(lease);
                    if (!s.ok()) return s;
                    return txn.InsertLease(other);
                  })
                  .ok());
  // A second lease on the same job is refused.
  LeaseRecord twice = lease;
  twice.lease_id = "lease-c";
  EXPECT_TRUE(absl::IsAlreadyExists(
      store->Write([&](StoreTxn& txn) { return txn.InsertLease(twice); })));
  ASSERT_TRUE(store
                  ->Write([&](StoreTxn& txn) {
                    return txn.RenewLease("lease-a", t0 + absl::Seconds(90));
                  })
                  .ok());
  ASSERT_TRUE(store
                  ->Read([&](StoreTxn& txn) -> absl::Status {
                    auto got = txn.GetLease("lease-a");
                    EXPECT_TRUE(got.ok());
                    EXPECT_EQ(got->job_id, "job-1");
                    EXPECT_EQ(got->attempt, 1);
                    EXPECT_EQ(got->expires_at, t0 + absl::Seconds(90));
                    auto expired = txn.LeasesExpiredBefore(t0 + absl::Seconds(61));
                    EXPECT_EQ(expired->size(), 1u);
                    EXPECT_EQ((*expired)[0].lease_id, "lease-b");
                    EXPECT_EQ(*txn.CountLeases(), 2);
                    EXPECT_TRUE(absl::IsNotFound(txn.GetLease("nope").status()));
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE(
      store->Write([&](StoreTxn& txn) { return txn.DeleteLease("lease-b"); })
          .ok());
  EXPECT_TRUE(absl::IsNotFound(
      store->Write([&](StoreTxn& txn) { return txn.DeleteLease("lease-b"); })));
  EXPECT_TRUE(absl::IsNotFound(store->Write([&](StoreTxn& txn) {
    return txn.RenewLease("lease-b", t0);
  })));
}

TEST_F(StoreTest, WorldsRoundTrip) {
  auto store = Open();
  WorldRecord world;
  world.world_id = "world-1";
  world.info.set_world_size(4);
  world.info.set_hostname("node7");
  world.info.add_devices("cuda:0");
  world.registered_at = absl::FromUnixSeconds(5);
  ASSERT_TRUE(
      store->Write([&](StoreTxn& txn) { return txn.InsertWorld(world); }).ok());
  ASSERT_TRUE(store
                  ->Read([&](StoreTxn& txn) -> absl::Status {
                    auto got = txn.GetWorld("world-1");
                    EXPECT_TRUE(got.ok());
                    EXPECT_EQ(got->info.world_size(), 4);
                    EXPECT_EQ(got->info.devices(0), "cuda:0");
                    EXPECT_TRUE(absl::IsNotFound(txn.GetWorld("w").status()));
                    return absl::OkStatus();
                  })
                  .ok());
}

TEST_F(StoreTest, ConcurrentWritersAreGroupCommitted) {
  auto store = Open();
  constexpr int kThreads = 8;
  constexpr int kPerThread = 40;
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        absl::Status s = Insert(*store, MakeJob(absl::StrCat("job-", t, "-", i)));
        if (!s.ok()) results[t] = s;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(store->writes_committed(), kThreads * kPerThread);
  EXPECT_LE(store->batches_committed(), store->writes_committed());
  std::printf("group commit: %lld writes in %lld transactions\n",
              static_cast<long long>(store->writes_committed()),
              static_cast<long long>(store->batches_committed()));
  ASSERT_TRUE(store
                  ->Read([&](StoreTxn& txn) -> absl::Status {
                    auto counts = txn.CountJobsByState();
                    EXPECT_EQ((*counts)[proto::JOB_STATE_PENDING],
                              kThreads * kPerThread);
                    return absl::OkStatus();
                  })
                  .ok());
}

TEST_F(StoreTest, SecondOpenOfTheSameFileIsRefused) {
  auto store = Open();
  absl::StatusOr<std::unique_ptr<JobStore>> second =
      JobStore::Open({.path = path_});
  EXPECT_TRUE(absl::IsFailedPrecondition(second.status())) << second.status();
  EXPECT_NE(second.status().message().find("another coordinator"),
            std::string::npos)
      << second.status();
}

TEST_F(StoreTest, NewerSchemaIsRefused) {
  Open().reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE schema_version SET version = 99", nullptr,
                         nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  absl::StatusOr<std::unique_ptr<JobStore>> store =
      JobStore::Open({.path = path_});
  EXPECT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
  EXPECT_NE(store.status().message().find("version 99"), std::string::npos);
}

TEST_F(StoreTest, VersionOneDatabaseGainsDeviceKind) {
  {
    auto store = Open();
    ASSERT_TRUE(Insert(*store, MakeJob("old")).ok());
  }
  // Back to version 1's jobs table.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "ALTER TABLE jobs DROP COLUMN device_kind; "
                         "ALTER TABLE jobs DROP COLUMN memory_estimate; "
                         "UPDATE schema_version SET version = 1",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  auto store = Open();
  proto::Job cuda = MakeJob("cuda");
  cuda.mutable_resources()->set_device_kind(proto::DEVICE_KIND_CUDA);
  ASSERT_TRUE(Insert(*store, cuda).ok());
  auto next = [&](proto::DeviceKind kind) {
    std::string id = "none";
    EXPECT_TRUE(store
                    ->Read([&](StoreTxn& txn) -> absl::Status {
                      auto got = txn.NextPendingJob(1, 0, kind);
                      if (!got.ok()) return got.status();
                      if (got->has_value()) id = (*got)->id();
                      return absl::OkStatus();
                    })
                    .ok());
    return id;
  };
  // The old job has no device kind: cpu.
  EXPECT_EQ(next(proto::DEVICE_KIND_CPU), "old");
  EXPECT_EQ(next(proto::DEVICE_KIND_UNSPECIFIED), "old");
  EXPECT_EQ(next(proto::DEVICE_KIND_CUDA), "cuda");
  absl::StatusOr<proto::Job> got = Get(*store, "cuda");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->resources().device_kind(), proto::DEVICE_KIND_CUDA);
  got = Get(*store, "old");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->resources().device_kind(), proto::DEVICE_KIND_UNSPECIFIED);
}

TEST_F(StoreTest, VersionTwoDatabaseGainsMemoryEstimate) {
  {
    auto store = Open();
    ASSERT_TRUE(Insert(*store, MakeJob("old")).ok());
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "ALTER TABLE jobs DROP COLUMN memory_estimate; "
                         "UPDATE schema_version SET version = 2",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  auto store = Open();
  proto::Job big = MakeJob("big");
  big.mutable_memory_estimate()->set_trainable_bytes(int64_t{1} << 40);
  big.mutable_memory_estimate()->set_batch_size(4);
  ASSERT_TRUE(Insert(*store, big).ok());
  absl::StatusOr<proto::Job> got = Get(*store, "old");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->has_memory_estimate());
  got = Get(*store, "big");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->memory_estimate().trainable_bytes(), int64_t{1} << 40);
  EXPECT_EQ(got->memory_estimate().batch_size(), 4);
}

TEST_F(StoreTest, NextPendingJobSkipsJobsThatDoNotFit) {
  auto store = Open();
  proto::Job first = MakeJob("first");
  first.set_priority(5);
  ASSERT_TRUE(Insert(*store, first).ok());
  ASSERT_TRUE(Insert(*store, MakeJob("second")).ok());
  std::string id = "none";
  ASSERT_TRUE(store
                  ->Read([&](StoreTxn& txn) -> absl::Status {
                    auto got = txn.NextPendingJob(
                        1, 0, proto::DEVICE_KIND_CPU,
                        [](const proto::Job& job) { return job.id() != "first"; });
                    if (!got.ok()) return got.status();
                    if (got->has_value()) id = (*got)->id();
                    return absl::OkStatus();
                  })
                  .ok());
  // The higher-priority job does not fit; the one behind it is not blocked.
  EXPECT_EQ(id, "second");
}

TEST_F(StoreTest, GarbageFileIsDataLoss) {
  std::ofstream(path_) << std::string(8192, 'x');
  absl::StatusOr<std::unique_ptr<JobStore>> store =
      JobStore::Open({.path = path_});
  EXPECT_TRUE(absl::IsDataLoss(store.status())) << store.status();
  EXPECT_TRUE(absl::IsInvalidArgument(JobStore::Open({}).status()));
}

// Runs `child` in a forked process that reports accepted job ids on a pipe,
// kills it with SIGKILL after `kill_after` ids (or lets it _exit(9) by
// itself), and returns the ids it reported.
std::vector<std::string> RunAndKill(
    const std::function<void(int write_fd)>& child, int kill_after) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    child(fds[1]);
    _exit(9);  // Never reached normally; no destructors, no sqlite3_close.
  }
  close(fds[1]);
  std::vector<std::string> ids;
  std::string buffer;
  char chunk[256];
  while (static_cast<int>(ids.size()) < kill_after) {
    const ssize_t n = read(fds[0], chunk, sizeof(chunk));
    if (n <= 0) break;
    buffer.append(chunk, static_cast<size_t>(n));
    size_t newline;
    while ((newline = buffer.find('\n')) != std::string::npos) {
      ids.push_back(buffer.substr(0, newline));
      buffer.erase(0, newline + 1);
    }
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  close(fds[0]);
  return ids;
}

void Report(int fd, const std::string& id) {
  const std::string line = id + "\n";
  if (write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    _exit(3);
  }
}

class CrashTest : public StoreTest,
                  public ::testing::WithParamInterface<SyncMode> {};

TEST_P(CrashTest, KillMidStreamLosesNoAcceptedJob) {
  Open(GetParam()).reset();  // Create the schema first.
  const std::string path = path_;
  const SyncMode sync = GetParam();
  // The child submits jobs as fast as it can, several writers at once so
  // that batches are in flight, until it is killed.
  std::vector<std::string> accepted = RunAndKill(
      [path, sync](int fd) {
        auto store = JobStore::Open({.path = path, .sync = sync});
        if (!store.ok()) _exit(2);
        std::vector<std::thread> writers;
        for (int t = 0; t < 4; ++t) {
          writers.emplace_back([&, t] {
            for (int i = 0;; ++i) {
              const std::string id = absl::StrCat("job-", t, "-", i);
              if (!Insert(**store, MakeJob(id)).ok()) _exit(4);
              Report(fd, id);
            }
          });
        }
        for (auto& w : writers) w.join();
      },
      /*kill_after=*/200);
  ASSERT_GE(accepted.size(), 200u);  // Maybe more: reads come in chunks.

  auto store = Open(GetParam());
  ASSERT_NE(store, nullptr);
  for (const std::string& id : accepted) {
    EXPECT_TRUE(Get(*store, id).ok()) << "accepted job " << id << " lost";
  }
  // And the database is sound.
  sqlite3* db = nullptr;
  store.reset();
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &stmt, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)), "ok");
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

TEST_P(CrashTest, ExitWithoutCloseKeepsCommittedJobs) {
  const std::string path = path_;
  const SyncMode sync = GetParam();
  std::vector<std::string> accepted = RunAndKill(
      [path, sync](int fd) {
        auto store = JobStore::Open({.path = path, .sync = sync});
        if (!store.ok()) _exit(2);
        for (int i = 0; i < 25; ++i) {
          const std::string id = absl::StrCat("job-", i);
          if (!Insert(**store, MakeJob(id)).ok()) _exit(4);
          Report(fd, id);
        }
        _exit(9);  // The store is never closed.
      },
      /*kill_after=*/25);
  ASSERT_EQ(accepted.size(), 25u);
  auto store = Open(GetParam());
  ASSERT_NE(store, nullptr);
  for (const std::string& id : accepted) {
    EXPECT_TRUE(Get(*store, id).ok()) << "accepted job " << id << " lost";
  }
}

INSTANTIATE_TEST_SUITE_P(SyncModes, CrashTest,
                         ::testing::Values(SyncMode::kFull, SyncMode::kNormal),
                         [](const auto& info) {
                           return info.param == SyncMode::kFull ? "Full"
                                                                : "Normal";
                         });

}  // namespace
}  // namespace sheaf::coordinator
