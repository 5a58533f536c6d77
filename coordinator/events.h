// Fan-out of job events (state changes, progress) to WatchJob streams.
//
// A watcher subscribes to one job and pulls events from its own queue.
// Events of jobs nobody watches are dropped at once: the hub keeps nothing
// for them (a new watcher reads the job's current state from the store).
// A watcher that falls more than `max_queued` events behind loses progress
// events, never state changes.
//
// Thread-safety: thread-safe. A Subscription is used by one thread.
#ifndef SHEAF_COORDINATOR_EVENTS_H_
#define SHEAF_COORDINATOR_EVENTS_H_

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/coordinator.pb.h"

namespace sheaf::coordinator {

class JobEventHub {
 public:
  class Subscription;

  explicit JobEventHub(size_t max_queued = 1024) : max_queued_(max_queued) {}
  // Every Subscription must be gone first.
  ~JobEventHub();

  // Events of `job_id` published from now on reach the subscription.
  std::unique_ptr<Subscription> Subscribe(absl::string_view job_id);
  void Publish(const proto::JobEvent& event);
  // Wakes every subscriber; Next() returns nullopt from now on.
  void Shutdown();

  // Jobs with at least one watcher (for tests).
  size_t watched_jobs() const;

 private:
  struct Queue {
    std::deque<proto::JobEvent> events;
  };

  void Unsubscribe(const std::string& job_id, Queue* queue);

  const size_t max_queued_;
  // A std::mutex and condition variable rather than absl::Mutex: Next's
  // timed wait must run on CLOCK_MONOTONIC (Abseil 20220623 sleeps to an
  // absolute CLOCK_REALTIME deadline, which a wall-clock step moves;
  // base/monotonic_sleep.h).
  mutable std::mutex mu_;
  std::condition_variable cv_;                                           // on mu_
  std::map<std::string, std::vector<Queue*>, std::less<>> watchers_;    // guarded by mu_
  bool shutdown_ = false;                                                // guarded by mu_

 public:
  class Subscription {
   public:
    ~Subscription() { hub_->Unsubscribe(job_id_, &queue_); }
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;

    // The next event, waiting up to `timeout`; nullopt on timeout or once
    // the hub has shut down (see closed()).
    std::optional<proto::JobEvent> Next(absl::Duration timeout);
    bool closed() const;

   private:
    friend class JobEventHub;
    Subscription(JobEventHub* hub, std::string job_id)
        : hub_(hub), job_id_(std::move(job_id)) {}

    JobEventHub* const hub_;
    const std::string job_id_;
    Queue queue_;  // Guarded by hub_->mu_.
  };
};

}  // namespace sheaf::coordinator

#endif  // SHEAF_COORDINATOR_EVENTS_H_
