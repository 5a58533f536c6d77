#include "coordinator/events.h"

#include <thread>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace sheaf::coordinator {
namespace {

proto::JobEvent Progress(const std::string& job, int64_t step) {
  proto::JobEvent event;
  event.set_job_id(job);
  event.mutable_progress()->set_step(step);
  return event;
}

proto::JobEvent Change(const std::string& job, proto::JobState to) {
  proto::JobEvent event;
  event.set_job_id(job);
  event.mutable_state_change()->set_to(to);
  return event;
}

TEST(JobEventHubTest, DeliversOnlyTheWatchedJobsEventsInOrder) {
  JobEventHub hub;
  hub.Publish(Progress("a", 0));  // Nobody watches: dropped.
  auto a1 = hub.Subscribe("a");
  auto a2 = hub.Subscribe("a");
  auto b = hub.Subscribe("b");
  EXPECT_EQ(hub.watched_jobs(), 2u);
  hub.Publish(Progress("a", 1));
  hub.Publish(Change("a", proto::JOB_STATE_SUCCEEDED));
  for (auto* sub : {a1.get(), a2.get()}) {
    auto first = sub->Next(absl::Seconds(1));
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(first->progress().step(), 1);
    auto second = sub->Next(absl::Seconds(1));
    ASSERT_TRUE(second.has_value());
    EXPECT_EQ(second->state_change().to(), proto::JOB_STATE_SUCCEEDED);
  }
  EXPECT_FALSE(b->Next(absl::Milliseconds(10)).has_value());
  a1.reset();
  a2.reset();
  EXPECT_EQ(hub.watched_jobs(), 1u);
}

TEST(JobEventHubTest, SlowWatcherLosesProgressNotStateChanges) {
  JobEventHub hub(/*max_queued=*/2);
  auto sub = hub.Subscribe("a");
  hub.Publish(Progress("a", 1));
  hub.Publish(Progress("a", 2));
  hub.Publish(Progress("a", 3));  // Dropped: queue full.
  hub.Publish(Change("a", proto::JOB_STATE_FAILED));
  EXPECT_EQ(sub->Next(absl::Seconds(1))->progress().step(), 1);
  EXPECT_EQ(sub->Next(absl::Seconds(1))->progress().step(), 2);
  EXPECT_EQ(sub->Next(absl::Seconds(1))->state_change().to(),
            proto::JOB_STATE_FAILED);
}

TEST(JobEventHubTest, NextWakesOnPublishAndOnShutdown) {
  JobEventHub hub;
  auto sub = hub.Subscribe("a");
  std::thread publisher([&] {
    absl::SleepFor(absl::Milliseconds(20));
    hub.Publish(Progress("a", 7));
  });
  auto event = sub->Next(absl::Seconds(10));
  publisher.join();
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->progress().step(), 7);
  std::thread stopper([&] {
    absl::SleepFor(absl::Milliseconds(20));
    hub.Shutdown();
  });
  const absl::Time start = absl::Now();
  EXPECT_FALSE(sub->Next(absl::Seconds(50)).has_value());
  stopper.join();
  EXPECT_TRUE(sub->closed());
  // Woken by Shutdown, not by Next's 50 s timeout: half of it cannot be
  // reached by a loaded machine, and a failure still ends before the test
  // timeout.
  EXPECT_LT(absl::Now() - start, absl::Seconds(25));
}

}  // namespace
}  // namespace sheaf::coordinator
