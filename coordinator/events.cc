#include "coordinator/events.h"

#include <algorithm>

namespace sheaf::coordinator {

JobEventHub::~JobEventHub() = default;

std::unique_ptr<JobEventHub::Subscription> JobEventHub::Subscribe(
    absl::string_view job_id) {
  std::unique_ptr<Subscription> subscription(
      new Subscription(this, std::string(job_id)));
  std::lock_guard<std::mutex> lock(mu_);
  watchers_[std::string(job_id)].push_back(&subscription->queue_);
  return subscription;
}

void JobEventHub::Unsubscribe(const std::string& job_id, Queue* queue) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = watchers_.find(job_id);
  if (it == watchers_.end()) return;
  std::vector<Queue*>& queues = it->second;
  queues.erase(std::remove(queues.begin(), queues.end(), queue), queues.end());
  if (queues.empty()) watchers_.erase(it);
}

void JobEventHub::Publish(const proto::JobEvent& event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = watchers_.find(event.job_id());
    if (it == watchers_.end()) return;
    for (Queue* queue : it->second) {
      if (queue->events.size() >= max_queued_ && event.has_progress()) continue;
      queue->events.push_back(event);
    }
  }
  cv_.notify_all();
}

void JobEventHub::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    shutdown_ = true;
  }
  cv_.notify_all();
}

size_t JobEventHub::watched_jobs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return watchers_.size();
}

std::optional<proto::JobEvent> JobEventHub::Subscription::Next(
    absl::Duration timeout) {
  JobEventHub* hub = hub_;
  std::unique_lock<std::mutex> lock(hub->mu_);
  auto ready = [this, hub] { return hub->shutdown_ || !queue_.events.empty(); };
  // steady_clock: pthread_cond_clockwait(CLOCK_MONOTONIC).
  hub->cv_.wait_for(lock,
                    absl::ToChronoNanoseconds(
                        std::clamp(timeout, absl::ZeroDuration(), absl::Hours(24 * 365))),
                    ready);
  if (hub->shutdown_ || queue_.events.empty()) return std::nullopt;
  proto::JobEvent event = std::move(queue_.events.front());
  queue_.events.pop_front();
  return event;
}

bool JobEventHub::Subscription::closed() const {
  std::lock_guard<std::mutex> lock(hub_->mu_);
  return hub_->shutdown_;
}

}  // namespace sheaf::coordinator
