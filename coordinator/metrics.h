// The coordinator's counters, gauges and queue-wait histogram, rendered in
// the Prometheus text exposition format (version 0.0.4).
//
// Thread-safety: thread-safe.
#ifndef SHEAF_COORDINATOR_METRICS_H_
#define SHEAF_COORDINATOR_METRICS_H_

#include <array>
#include <cstdint>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/coordinator.pb.h"

namespace sheaf::coordinator {

// Upper bounds (seconds) of the queue-wait histogram's buckets; +Inf last.
inline constexpr std::array<double, 16> kQueueWaitBucketsS = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
    2.5,   5,    10,    30,   60,  300,  900, 3600};

class CoordinatorMetrics {
 public:
  void CountSubmission();
  void CountHeartbeat();
  // A job entered `to`.
  void CountTransition(proto::JobState to);
  // Time a job spent PENDING before a world leased it.
  void ObserveQueueWait(absl::Duration wait);
  // The running job's last reported throughput.
  void SetJobTokensPerSecond(absl::string_view job_id, absl::string_view tenant,
                             double tokens_per_s);
  // The job stopped running: drop its gauges.
  void ForgetJob(absl::string_view job_id);

  // The whole exposition. `jobs_by_state` and `active_leases` are read from
  // the store at scrape time; states missing from the map are 0.
  std::string Render(const std::map<proto::JobState, int64_t>& jobs_by_state,
                     int64_t active_leases) const;

 private:
  struct JobGauge {
    std::string tenant;
    double tokens_per_s = 0;
  };

  mutable absl::Mutex mu_;
  int64_t submissions_total_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t heartbeats_total_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<proto::JobState, int64_t> transitions_total_ ABSL_GUARDED_BY(mu_);
  // Non-cumulative counts per bucket; the last is +Inf.
  std::array<int64_t, kQueueWaitBucketsS.size() + 1> queue_wait_counts_
      ABSL_GUARDED_BY(mu_) = {};
  double queue_wait_sum_s_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, JobGauge> jobs_ ABSL_GUARDED_BY(mu_);
};

// "pending" for JOB_STATE_PENDING, as the `state` label shows it.
std::string StateLabel(proto::JobState state);

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_METRICS_H_
