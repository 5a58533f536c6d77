#include "cli/display.h"

#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

namespace sheaf::cli {
namespace {

proto::Progress Progress(int64_t step, bool with_val) {
  proto::Progress p;
  p.set_step(step);
  p.set_total_steps(150);
  p.set_loss(1.23456);
  if (with_val) p.set_val_loss(1.5);
  p.set_tokens_per_s(2345.4);
  p.set_eta_s(72.9);
  return p;
}

TEST(DisplayTest, Durations) {
  EXPECT_EQ(FormatDuration(0), "0s");
  EXPECT_EQ(FormatDuration(59.9), "59s");
  EXPECT_EQ(FormatDuration(72.9), "1m12s");
  EXPECT_EQ(FormatDuration(3 * 3600 + 2 * 60 + 5), "3h02m");
  EXPECT_EQ(FormatDuration(-1), "?");
}

TEST(DisplayTest, ProgressLineAndBar) {
  EXPECT_EQ(FormatProgressLine(Progress(120, true)),
            "step 120/150 loss 1.2346 val_loss 1.5000 tokens/s 2345 eta 1m12s");
  EXPECT_EQ(FormatProgressLine(Progress(3, false)),
            "step 3/150 loss 1.2346 tokens/s 2345 eta 1m12s");
  proto::Progress setup = Progress(0, false);
  setup.set_phase("setup");
  EXPECT_EQ(FormatProgressLine(setup), "setup: step 0/150 loss 1.2346 tokens/s 2345 eta 1m12s");
  setup.set_phase("train");  // the usual phase is not shown
  EXPECT_EQ(FormatProgressLine(setup), "step 0/150 loss 1.2346 tokens/s 2345 eta 1m12s");
  EXPECT_EQ(FormatProgressBar(Progress(120, true), 10),
            "[########> ] 120/150  80%  loss 1.2346  val 1.5000  2345 tok/s  ETA 1m12s");
  proto::Progress done = Progress(150, false);
  done.set_eta_s(0);
  EXPECT_EQ(FormatProgressBar(done, 4), "[####] 150/150  100%  loss 1.2346  2345 tok/s");
  // Unknown total: no bar fill, no percentage.
  proto::Progress open;
  open.set_step(7);
  EXPECT_EQ(FormatProgressBar(open, 4), "[    ] 7  loss 0.0000  0 tok/s");
}

TEST(DisplayTest, StateChanges) {
  proto::StateChange change;
  change.set_from(proto::JOB_STATE_LEASED);
  change.set_to(proto::JOB_STATE_RUNNING);
  change.set_attempt(1);
  change.set_world_id("world-1");
  EXPECT_EQ(FormatStateChange("job-1", change),
            "job-1: LEASED -> RUNNING (attempt 1, world world-1)");
  change.set_from(proto::JOB_STATE_UNSPECIFIED);
  change.set_to(proto::JOB_STATE_CANCELLED);
  change.set_attempt(0);
  change.clear_world_id();
  change.set_reason("cancelled by tenant");
  EXPECT_EQ(FormatStateChange("job-1", change), "job-1: CANCELLED: cancelled by tenant");
  EXPECT_EQ(StateName(static_cast<proto::JobState>(42)), "UNKNOWN(42)");
}

TEST(DisplayTest, TableAndDetails) {
  proto::Job job;
  job.set_id("job-0123456789abcdef");
  job.set_state(proto::JOB_STATE_RUNNING);
  job.set_kind("lora");
  job.set_tenant("alice");
  job.set_priority(5);
  job.set_created_unix_ms(86400000);
  job.mutable_spec()->set_name("tiny de");
  *job.mutable_progress() = Progress(120, true);
  job.mutable_resources()->set_min_world_size(2);
  job.mutable_resources()->set_memory_bytes(1LL << 30);
  (*job.mutable_metrics())["b"] = 2;
  (*job.mutable_metrics())["a"] = 0.5;
  job.set_output_dir("/out/alice/x");
  job.set_artifact_dir("/out/alice/x");
  const absl::TimeZone utc = absl::UTCTimeZone();
  EXPECT_EQ(FormatJobTableRow(job, utc).substr(0, 64),
            "job-0123456789abcdef   RUNNING    lora          5  1970-01-02 00");
  EXPECT_NE(FormatJobTableRow(job, utc).find("120/150 loss 1.235"), std::string::npos);
  EXPECT_EQ(FormatJobTableHeader().substr(0, 5), "ID   ");
  const std::string details = FormatJobDetails(job, utc);
  EXPECT_NE(details.find("state:       RUNNING\n"), std::string::npos) << details;
  EXPECT_NE(details.find("resources:   2 or more ranks, 1.0 GiB per rank\n"), std::string::npos)
      << details;
  EXPECT_NE(details.find("metrics:     a=0.5 b=2\n"), std::string::npos) << details;
  EXPECT_NE(details.find("created:     1970-01-02 00:00:00\n"), std::string::npos) << details;
  EXPECT_EQ(details.find("artifact_dir"), std::string::npos) << details;
  EXPECT_EQ(details.find("updated"), std::string::npos) << details;
}

TEST(DisplayTest, JsonLineRoundTrips) {
  proto::Job job;
  job.set_id("job-1");
  job.set_state(proto::JOB_STATE_FAILED);
  job.set_created_unix_ms(1234);
  const std::string line = ToJsonLine(job);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_NE(line.find("\"state\":\"JOB_STATE_FAILED\""), std::string::npos) << line;
  // Default values are printed too, so scripts can rely on every key.
  EXPECT_NE(line.find("\"priority\":0"), std::string::npos) << line;
  proto::Job back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(line, &back).ok());
  EXPECT_EQ(back.created_unix_ms(), 1234);
  EXPECT_EQ(back.state(), proto::JOB_STATE_FAILED);
}

}  // namespace
}  // namespace sheaf::cli
