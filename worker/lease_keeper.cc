#include "worker/lease_keeper.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace sheaf::worker {

const char* LeaseVerdictName(LeaseVerdict verdict) {
  switch (verdict) {
    case LeaseVerdict::kKeepGoing:
      return "keep_going";
    case LeaseVerdict::kCancel:
      return "cancel";
    case LeaseVerdict::kLeaseLost:
      return "lease_lost";
    case LeaseVerdict::kExpired:
      return "expired";
  }
  return "?";
}

LeaseKeeper::LeaseKeeper(CoordinatorClient* client, std::string lease_id,
                         absl::Time granted, Options options)
    : client_(client),
      lease_id_(std::move(lease_id)),
      options_(std::move(options)),
      interval_(options_.heartbeat_interval > absl::ZeroDuration()
                    ? options_.heartbeat_interval
                    : options_.ttl / 3) {
  // Kept on the monotonic clock: a step of the host's wall clock must not
  // move the heartbeat schedule (a step back of an hour would mean no
  // heartbeat for an hour).
  expiry_ = MonotonicNow() + (granted + options_.ttl - absl::Now());
}

std::unique_ptr<LeaseKeeper> LeaseKeeper::Start(CoordinatorClient* client,
                                                std::string lease_id,
                                                absl::Time granted, Options options) {
  std::unique_ptr<LeaseKeeper> keeper(
      new LeaseKeeper(client, std::move(lease_id), granted, std::move(options)));
  keeper->thread_ = std::thread([k = keeper.get()] { k->Loop(); });
  return keeper;
}

LeaseKeeper::~LeaseKeeper() { Stop(); }

void LeaseKeeper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  stop_.Stop();
  if (thread_.joinable()) thread_.join();
}

void LeaseKeeper::SetProgress(const proto::Progress& progress,
                              const std::map<std::string, double>& metrics) {
  absl::MutexLock lock(&mu_);
  progress_ = progress;
  metrics_ = metrics;
}

std::map<std::string, double> LeaseKeeper::metrics() const {
  absl::MutexLock lock(&mu_);
  return metrics_;
}

proto::Progress LeaseKeeper::progress() const {
  absl::MutexLock lock(&mu_);
  return progress_;
}

LeaseVerdict LeaseKeeper::verdict() const {
  absl::MutexLock lock(&mu_);
  return verdict_;
}

absl::Time LeaseKeeper::expiry() const {
  absl::MutexLock lock(&mu_);
  return absl::Now() + (expiry_ - MonotonicNow());
}

absl::Time LeaseKeeper::report_deadline() const {
  absl::MutexLock lock(&mu_);
  return absl::Now() + (expiry_ - MonotonicNow()) + options_.outage_grace;
}

int64_t LeaseKeeper::heartbeats_sent() const {
  absl::MutexLock lock(&mu_);
  return sent_;
}

int64_t LeaseKeeper::heartbeats_failed() const {
  absl::MutexLock lock(&mu_);
  return failed_;
}

void LeaseKeeper::SetVerdict(LeaseVerdict verdict) {
  bool first = false;
  {
    absl::MutexLock lock(&mu_);
    if (verdict_ == LeaseVerdict::kKeepGoing) {
      verdict_ = verdict;
      first = true;
    }
  }
  if (first && options_.on_verdict) options_.on_verdict(verdict);
}

void LeaseKeeper::Loop() {
  absl::Duration backoff = options_.min_backoff;
  // Every time here is MonotonicNow() (base/monotonic_sleep.h).
  absl::Time next = MonotonicNow();
  while (true) {
    proto::HeartbeatRequest request;
    absl::Time expiry;
    if (stop_.SleepUnlessStopped(next - MonotonicNow())) return;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      request.set_lease_id(lease_id_);
      *request.mutable_progress() = progress_;
      for (const auto& [name, value] : metrics_) (*request.mutable_metrics())[name] = value;
      expiry = expiry_;
    }
    const absl::Time sent = MonotonicNow();
    // A heartbeat may take as long as the lease has left, but no longer
    // than an interval (then it is sent again with fresher progress).
    const absl::Duration timeout =
        std::clamp(expiry - sent,
                   options_.outage_grace > absl::ZeroDuration() ? absl::Seconds(1)
                                                                : absl::Milliseconds(100),
                   std::max(interval_, absl::Seconds(1)));
    absl::StatusOr<proto::HeartbeatResponse> response =
        client_->Heartbeat(request, timeout);
    const absl::Time now = MonotonicNow();
    if (response.ok()) {
      {
        absl::MutexLock lock(&mu_);
        ++sent_;
        if (response->ttl_ms() > 0) expiry_ = sent + absl::Milliseconds(response->ttl_ms());
      }
      backoff = options_.min_backoff;
      switch (response->action()) {
        case proto::HEARTBEAT_ACTION_CANCEL:
          SetVerdict(LeaseVerdict::kCancel);
          break;
        case proto::HEARTBEAT_ACTION_LEASE_LOST:
          if (options_.log) options_.log("heartbeat: the coordinator says the lease is lost");
          SetVerdict(LeaseVerdict::kLeaseLost);
          return;
        default:
          break;
      }
      next = sent + interval_;
      continue;
    }
    {
      absl::MutexLock lock(&mu_);
      ++failed_;
    }
    const bool unreachable = absl::IsUnavailable(response.status()) ||
                             absl::IsDeadlineExceeded(response.status());
    if (now >= expiry && unreachable && now < expiry + options_.outage_grace) {
      // Training on through the outage (see the class comment).
      if (options_.still_ours && !options_.still_ours()) {
        if (options_.log) {
          options_.log("heartbeat: another world has claimed the job's output directory: "
                       "stopping the job");
        }
        SetVerdict(LeaseVerdict::kLeaseLost);
        return;
      }
      if (options_.log && now >= next_outage_log_) {
        options_.log(absl::StrCat(
            "heartbeat: the coordinator cannot be reached (", response.status().ToString(),
            "); the lease expired ", absl::FormatDuration(absl::Trunc(now - expiry, absl::Seconds(1))),
            " ago by our clock; training on (the coordinator gives the lease back unless another "
            "world has had the job; ",
            absl::FormatDuration(absl::Trunc(expiry + options_.outage_grace - now, absl::Seconds(1))),
            " of outage grace left)"));
        next_outage_log_ = now + std::max(interval_, absl::Seconds(10));
      }
      next = now + std::min(backoff, interval_);
      backoff = std::min(backoff * 2, interval_);
      continue;
    }
    if (now >= expiry) {
      if (options_.log) {
        options_.log(absl::StrCat("heartbeat: ", response.status().ToString(),
                                  "; the lease has expired by now: stopping the job"));
      }
      SetVerdict(LeaseVerdict::kExpired);
      return;
    }
    if (options_.log) {
      options_.log(absl::StrCat("heartbeat failed (", response.status().ToString(),
                                "); retrying, the lease has ",
                                absl::FormatDuration(absl::Trunc(expiry - now, absl::Milliseconds(100))),
                                " left"));
    }
    // Retry soon, but never past the expiry: the last try is at expiry.
    next = std::min(now + backoff, expiry);
    backoff = std::min(backoff * 2, std::max(interval_, options_.min_backoff));
  }
}

}  // namespace sheaf::worker
