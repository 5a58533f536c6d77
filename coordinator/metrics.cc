#include "coordinator/metrics.h"

#include <cmath>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace sheaf::coordinator {
namespace {

// Label values: backslash, double quote and newline are escaped.
std::string EscapeLabel(absl::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // The shortest form that reads back exactly (0.005, not 0.0050...01).
  std::string text;
  for (int digits = 15; digits <= 17; ++digits) {
    text = absl::StrFormat("%.*g", digits, v);
    if (std::strtod(text.c_str(), nullptr) == v) break;
  }
  return text;
}

void Header(std::string* out, absl::string_view name, absl::string_view type,
            absl::string_view help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ",
                  type, "\n");
}

constexpr proto::JobState kStates[] = {
    proto::JOB_STATE_PENDING,   proto::JOB_STATE_LEASED,
    proto::JOB_STATE_RUNNING,   proto::JOB_STATE_SUCCEEDED,
    proto::JOB_STATE_FAILED,    proto::JOB_STATE_CANCELLED};

}  // namespace

std::string StateLabel(proto::JobState state) {
  const std::string& full = proto::JobState_Name(state);
  absl::string_view name = full;
  absl::ConsumePrefix(&name, "JOB_STATE_");
  return absl::AsciiStrToLower(name);
}

void CoordinatorMetrics::CountSubmission() {
  absl::MutexLock lock(&mu_);
  ++submissions_total_;
}

void CoordinatorMetrics::CountHeartbeat() {
  absl::MutexLock lock(&mu_);
  ++heartbeats_total_;
}

void CoordinatorMetrics::CountTransition(proto::JobState to) {
  absl::MutexLock lock(&mu_);
  ++transitions_total_[to];
}

void CoordinatorMetrics::ObserveQueueWait(absl::Duration wait) {
  const double s = absl::ToDoubleSeconds(wait);
  absl::MutexLock lock(&mu_);
  size_t bucket = 0;
  while (bucket < kQueueWaitBucketsS.size() && s > kQueueWaitBucketsS[bucket]) {
    ++bucket;
  }
  ++queue_wait_counts_[bucket];
  queue_wait_sum_s_ += s;
}

void CoordinatorMetrics::SetJobTokensPerSecond(absl::string_view job_id,
                                               absl::string_view tenant,
                                               double tokens_per_s) {
  absl::MutexLock lock(&mu_);
  JobGauge& gauge = jobs_[std::string(job_id)];
  gauge.tenant = std::string(tenant);
  gauge.tokens_per_s = tokens_per_s;
}

void CoordinatorMetrics::ForgetJob(absl::string_view job_id) {
  absl::MutexLock lock(&mu_);
  jobs_.erase(std::string(job_id));
}

std::string CoordinatorMetrics::Render(
    const std::map<proto::JobState, int64_t>& jobs_by_state,
    int64_t active_leases) const {
  std::string out;
  Header(&out, "sheaf_jobs", "gauge", "Jobs in the store, by state.");
  for (proto::JobState state : kStates) {
    auto it = jobs_by_state.find(state);
    absl::StrAppend(&out, "sheaf_jobs{state=\"", StateLabel(state), "\"} ",
                    it == jobs_by_state.end() ? 0 : it->second, "\n");
  }
  Header(&out, "sheaf_active_leases", "gauge",
         "Leases held by worlds right now.");
  absl::StrAppend(&out, "sheaf_active_leases ", active_leases, "\n");

  absl::MutexLock lock(&mu_);
  Header(&out, "sheaf_submissions_total", "counter",
         "Jobs accepted since the coordinator started.");
  absl::StrAppend(&out, "sheaf_submissions_total ", submissions_total_, "\n");
  Header(&out, "sheaf_heartbeats_total", "counter",
         "Heartbeats that renewed a lease since the coordinator started.");
  absl::StrAppend(&out, "sheaf_heartbeats_total ", heartbeats_total_, "\n");
  Header(&out, "sheaf_job_transitions_total", "counter",
         "Job state changes since the coordinator started, by new state.");
  for (proto::JobState state : kStates) {
    auto it = transitions_total_.find(state);
    absl::StrAppend(&out, "sheaf_job_transitions_total{to=\"",
                    StateLabel(state), "\"} ",
                    it == transitions_total_.end() ? 0 : it->second, "\n");
  }
  Header(&out, "sheaf_queue_wait_seconds", "histogram",
         "Time from a job becoming PENDING to a world leasing it.");
  int64_t cumulative = 0;
  for (size_t i = 0; i < queue_wait_counts_.size(); ++i) {
    cumulative += queue_wait_counts_[i];
    const std::string le = i < kQueueWaitBucketsS.size()
                               ? Number(kQueueWaitBucketsS[i])
                               : std::string("+Inf");
    absl::StrAppend(&out, "sheaf_queue_wait_seconds_bucket{le=\"", le, "\"} ",
                    cumulative, "\n");
  }
  absl::StrAppend(&out, "sheaf_queue_wait_seconds_sum ",
                  Number(queue_wait_sum_s_), "\n",
                  "sheaf_queue_wait_seconds_count ", cumulative, "\n");
  Header(&out, "sheaf_job_tokens_per_second", "gauge",
         "Training throughput each running job last reported.");
  for (const auto& [job_id, gauge] : jobs_) {
    absl::StrAppend(&out, "sheaf_job_tokens_per_second{job=\"",
                    EscapeLabel(job_id), "\",tenant=\"",
                    EscapeLabel(gauge.tenant), "\"} ",
                    Number(gauge.tokens_per_s), "\n");
  }
  return out;
}

}  // namespace sheaf::coordinator
