#include "cli/args.h"

#include "gtest/gtest.h"

namespace sheaf::cli {
namespace {

TEST(ParseJobStateTest, AnyCaseWithOrWithoutPrefix) {
  EXPECT_EQ(*ParseJobState("running"), proto::JOB_STATE_RUNNING);
  EXPECT_EQ(*ParseJobState("SUCCEEDED"), proto::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(*ParseJobState("job_state_cancelled"), proto::JOB_STATE_CANCELLED);
  absl::Status bad = ParseJobState("done").status();
  EXPECT_EQ(bad.message(),
            "--state: unknown state 'done' (one of pending, leased, running, succeeded, "
            "failed, cancelled)");
  EXPECT_FALSE(ParseJobState("unspecified").ok());
}

}  // namespace
}  // namespace sheaf::cli
