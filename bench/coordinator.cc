// Coordinator throughput: clients submit N small jobs over gRPC while W
// simulated worlds (threads) drain them (acquire, one heartbeat, complete)
// against a real in-process server on loopback with a real SQLite file.
//
// Prints `name value unit` lines: submissions/s, SubmitJob latency p50/p99,
// scheduling delay (submit -> acquire) p50/p99 under that load (where the
// backlog dominates it) and on an idle system (one job at a time: the
// long-poll wake-up), the drain rate, and, as the
// in-process reference, the rate of bare sequential store inserts with the
// same sync mode (so submit_vs_store is a ratio that means something on a
// noisy machine).
//
// usage: coordinator [--jobs N] [--worlds W] [--clients C] [--sync full|normal]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "coordinator/local_coordinator.h"
#include "coordinator/store.h"
#include "proto/coordinator.grpc.pb.h"

namespace sheaf::coordinator {
namespace {

struct Options {
  int jobs = 10000;
  int worlds = 8;
  int clients = 8;
  SyncMode sync = SyncMode::kFull;
};

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1,
                                static_cast<size_t>(q * (values.size() - 1) + 0.5));
  return values[index];
}

void Print(const char* name, double value, const char* unit) {
  std::printf("%s %.3f %s\n", name, value, unit);
}

// Jobs submitted one at a time on an idle system after the loaded phase.
constexpr int kIdleJobs = 100;

proto::JobSpec SmallSpec(int phase, int64_t submitted_ns) {
  proto::JobSpec spec;
  // The phase and submit time ride in the name, so a world can time the
  // delay.
  spec.set_name(absl::StrCat(phase, " ", submitted_ns));
  spec.set_base_model("tiny");
  spec.mutable_data()->add_train("corpus.txt");
  spec.mutable_train()->set_max_steps(10);
  spec.mutable_lora();
  return spec;
}

// Bare store inserts, one after the other: the reference rate.
double StoreInsertRate(const std::string& dir, SyncMode sync, int n) {
  auto store = JobStore::Open({.path = dir + "/reference.db", .sync = sync});
  if (!store.ok()) {
    std::fprintf(stderr, "reference store: %s\n", store.status().ToString().c_str());
    return 0;
  }
  proto::Job job;
  job.set_tenant("alice");
  job.set_kind("lora");
  *job.mutable_spec() = SmallSpec(0, 0);
  const absl::Time start = absl::Now();
  for (int i = 0; i < n; ++i) {
    job.set_id(absl::StrCat("job-", i));
    absl::Status status = (*store)->Write(
        [&](StoreTxn& txn) { return txn.InsertJob(job).status(); });
    if (!status.ok()) return 0;
  }
  return n / absl::ToDoubleSeconds(absl::Now() - start);
}

int Run(const Options& options) {
  LocalCoordinatorOptions local_options;
  local_options.sync = options.sync;
  local_options.scheduler.lease_ttl = absl::Seconds(30);
  auto local = LocalCoordinator::Start(local_options);
  if (!local.ok()) {
    std::fprintf(stderr, "start: %s\n", local.status().ToString().c_str());
    return 1;
  }
  const std::string target = (*local)->target();

  std::atomic<int> completed{0};
  std::atomic<int> errors{0};
  absl::Mutex mu;
  std::vector<double> submit_ms;
  std::vector<double> delay_ms;
  std::vector<double> idle_delay_ms;
  std::atomic<bool> stop{false};
  submit_ms.reserve(options.jobs);
  delay_ms.reserve(options.jobs);

  std::vector<std::thread> worlds;
  for (int w = 0; w < options.worlds; ++w) {
    worlds.emplace_back([&] {
      auto stub = proto::Coordinator::NewStub(
          grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
      std::string world_id;
      {
        grpc::ClientContext context;
        SetBearerToken(&context, LocalCoordinator::kWorkerToken);
        proto::RegisterWorldRequest request;
        request.set_world_size(1);
        request.set_hostname("bench");
        proto::RegisterWorldResponse response;
        if (!stub->RegisterWorld(&context, request, &response).ok()) {
          ++errors;
          return;
        }
        world_id = response.world_id();
      }
      std::vector<double> local_delays[2];
      while (!stop.load() && errors.load() == 0) {
        grpc::ClientContext context;
        SetBearerToken(&context, LocalCoordinator::kWorkerToken);
        context.set_deadline(std::chrono::system_clock::now() +
                             std::chrono::seconds(5));
        proto::AcquireJobRequest request;
        request.set_world_id(world_id);
        request.set_wait_ms(500);
        proto::AcquireJobResponse response;
        if (!stub->AcquireJob(&context, request, &response).ok()) {
          ++errors;
          break;
        }
        if (!response.has_lease()) continue;
        const proto::Lease& lease = response.lease();
        const double delay_ms_now = [&] {
          const std::string& name = lease.spec().name();
          int64_t submitted_ns = 0;
          if (name.size() < 3 ||
              !absl::SimpleAtoi(name.substr(2), &submitted_ns)) {
            return -1.0;
          }
          return (absl::GetCurrentTimeNanos() - submitted_ns) / 1e6;
        }();
        if (delay_ms_now >= 0) {
          local_delays[lease.spec().name()[0] == '1'].push_back(delay_ms_now);
        }
        grpc::ClientContext beat_context;
        SetBearerToken(&beat_context, LocalCoordinator::kWorkerToken);
        proto::HeartbeatRequest beat;
        beat.set_lease_id(lease.lease_id());
        beat.mutable_progress()->set_step(10);
        beat.mutable_progress()->set_tokens_per_s(1000);
        proto::HeartbeatResponse beat_response;
        grpc::ClientContext complete_context;
        SetBearerToken(&complete_context, LocalCoordinator::kWorkerToken);
        proto::CompleteJobRequest complete;
        complete.set_lease_id(lease.lease_id());
        complete.set_success(true);
        proto::CompleteJobResponse complete_response;
        if (!stub->Heartbeat(&beat_context, beat, &beat_response).ok() ||
            !stub->CompleteJob(&complete_context, complete, &complete_response)
                 .ok()) {
          ++errors;
          break;
        }
        ++completed;
      }
      absl::MutexLock lock(&mu);
      delay_ms.insert(delay_ms.end(), local_delays[0].begin(),
                      local_delays[0].end());
      idle_delay_ms.insert(idle_delay_ms.end(), local_delays[1].begin(),
                           local_delays[1].end());
    });
  }

  const absl::Time start = absl::Now();
  std::vector<std::thread> clients;
  for (int c = 0; c < options.clients; ++c) {
    const int count = options.jobs / options.clients +
                      (c < options.jobs % options.clients ? 1 : 0);
    clients.emplace_back([&, count] {
      auto stub = proto::Coordinator::NewStub(
          grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
      std::vector<double> latencies;
      for (int i = 0; i < count; ++i) {
        grpc::ClientContext context;
        SetBearerToken(&context, LocalCoordinator::kAliceToken);
        proto::SubmitJobRequest request;
        const int64_t now_ns = absl::GetCurrentTimeNanos();
        *request.mutable_spec() = SmallSpec(0, now_ns);
        proto::SubmitJobResponse response;
        if (!stub->SubmitJob(&context, request, &response).ok()) {
          ++errors;
          return;
        }
        latencies.push_back((absl::GetCurrentTimeNanos() - now_ns) / 1e6);
      }
      absl::MutexLock lock(&mu);
      submit_ms.insert(submit_ms.end(), latencies.begin(), latencies.end());
    });
  }
  for (auto& client : clients) client.join();
  const double submit_s = absl::ToDoubleSeconds(absl::Now() - start);
  while (completed.load() < options.jobs && errors.load() == 0) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  const double drain_s = absl::ToDoubleSeconds(absl::Now() - start);

  // Idle phase: one job at a time, every world long-polling.
  auto stub = proto::Coordinator::NewStub(
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  for (int i = 0; i < kIdleJobs && errors.load() == 0; ++i) {
    const int before = completed.load();
    grpc::ClientContext context;
    SetBearerToken(&context, LocalCoordinator::kAliceToken);
    proto::SubmitJobRequest request;
    *request.mutable_spec() = SmallSpec(1, absl::GetCurrentTimeNanos());
    proto::SubmitJobResponse response;
    if (!stub->SubmitJob(&context, request, &response).ok()) ++errors;
    while (completed.load() == before && errors.load() == 0) {
      absl::SleepFor(absl::Milliseconds(1));
    }
  }
  stop = true;
  for (auto& world : worlds) world.join();
  if (errors.load() > 0) {
    std::fprintf(stderr, "%d calls failed\n", errors.load());
    return 1;
  }
  const double reference = StoreInsertRate((*local)->dir(), options.sync, 2000);
  const double submit_rate = options.jobs / submit_s;

  Print("coordinator_jobs", options.jobs, "jobs");
  Print("coordinator_worlds", options.worlds, "worlds");
  Print("coordinator_submit_rate", submit_rate, "jobs/s");
  Print("coordinator_submit_latency_p50", Percentile(submit_ms, 0.50), "ms");
  Print("coordinator_submit_latency_p99", Percentile(submit_ms, 0.99), "ms");
  Print("coordinator_sched_delay_p50", Percentile(delay_ms, 0.50), "ms");
  Print("coordinator_sched_delay_p99", Percentile(delay_ms, 0.99), "ms");
  Print("coordinator_idle_sched_delay_p50", Percentile(idle_delay_ms, 0.50), "ms");
  Print("coordinator_idle_sched_delay_p99", Percentile(idle_delay_ms, 0.99), "ms");
  Print("coordinator_drain_rate", options.jobs / drain_s, "jobs/s");
  Print("coordinator_reference_store_insert_rate", reference, "inserts/s");
  Print("coordinator_submit_vs_store", reference > 0 ? submit_rate / reference : 0,
        "ratio");
  return 0;
}

}  // namespace
}  // namespace sheaf::coordinator

int main(int argc, char** argv) {
  sheaf::coordinator::Options options;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    bool ok = true;
    if (flag == "--jobs") {
      ok = absl::SimpleAtoi(value, &options.jobs) && options.jobs > 0;
    } else if (flag == "--worlds") {
      ok = absl::SimpleAtoi(value, &options.worlds) && options.worlds > 0;
    } else if (flag == "--clients") {
      ok = absl::SimpleAtoi(value, &options.clients) && options.clients > 0;
    } else if (flag == "--sync") {
      ok = value == "full" || value == "normal";
      options.sync = value == "full" ? sheaf::coordinator::SyncMode::kFull
                                     : sheaf::coordinator::SyncMode::kNormal;
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr,
                   "usage: coordinator [--jobs N] [--worlds W] [--clients C] "
                   "[--sync full|normal]\n");
      return 2;
    }
  }
  return sheaf::coordinator::Run(options);
}
