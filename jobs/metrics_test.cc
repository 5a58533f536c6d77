// The metrics sink writes lines that parse as JSON, with the precision the
// hand-formatted lines had, step first; non-finite values become null;
// summary.json escapes its strings; truncation keeps steps 1..step.
#include "jobs/metrics.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/json.h"
#include "gtest/gtest.h"

namespace sheaf::jobs {
namespace {

namespace fs = std::filesystem;

std::string Read(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

TEST(Metrics, SameTextAsTheHandFormattedLines) {
  // The line the trainer used to write with StrFormat, for these values.
  const std::string line = FormatMetrics({{"step", 7},
                                          {"loss", 5.123456789},
                                          {"val_loss", 4.5},
                                          {"val_ppl", std::exp(4.5)},
                                          {"lr", 0.000123456789},
                                          {"grad_norm", 0.25},
                                          {"tokens_per_s", 1234.56},
                                          {"control_bytes", 4096}});
  EXPECT_EQ(line,
            "{\"step\": 7, \"control_bytes\": 4096, \"grad_norm\": 0.250000, \"loss\": 5.123457, "
            "\"lr\": 0.000123457, \"tokens_per_s\": 1234.6, \"val_loss\": 4.500000, "
            "\"val_ppl\": 90.0171}");
  absl::StatusOr<Json> j = Json::Parse(line);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->Find("step")->as_int64(), 7);
  EXPECT_DOUBLE_EQ(j->Find("lr")->as_double(), 0.000123457);
}

TEST(Metrics, NonFiniteValuesAreNullAndUnknownKeysRoundTrip) {
  const std::string line = FormatMetrics(
      {{"grad_norm", std::numeric_limits<double>::quiet_NaN()},
       {"loss", std::numeric_limits<double>::infinity()},
       {"custom", 0.1}});
  absl::StatusOr<Json> j = Json::Parse(line);
  ASSERT_TRUE(j.ok()) << line << ": " << j.status();
  EXPECT_TRUE(j->Find("grad_norm")->is_null());
  EXPECT_TRUE(j->Find("loss")->is_null());
  EXPECT_EQ(j->Find("custom")->as_double(), 0.1);  // shortest round trip
}

TEST(Metrics, SummaryEscapesStringsAndTruncateKeepsEarlierSteps) {
  const std::string dir = ::testing::TempDir() + "/metrics_test";
  fs::remove_all(dir);
  fs::create_directories(dir);
  MetricsSink sink(dir, true);
  for (int s = 0; s <= 5; ++s) ASSERT_TRUE(sink.Append({{"step", s}, {"loss", 1.0 / (s + 1)}}).ok());
  ASSERT_TRUE(sink.TruncateAfter(3).ok());
  std::istringstream lines(Read(sink.metrics_path()));
  int n = 0;
  for (std::string l; std::getline(lines, l); ++n) {
    absl::StatusOr<Json> j = Json::Parse(l);
    ASSERT_TRUE(j.ok()) << l;
    EXPECT_EQ(j->Find("step")->as_int64(), n);
  }
  EXPECT_EQ(n, 4);  // steps 0..3
  const std::string odd_path = "out/\"quoted\" \\dir\n";
  ASSERT_TRUE(sink.WriteSummary({{"steps", 5}, {"final_val_loss", 2.0}}, {{"export", odd_path}}).ok());
  absl::StatusOr<Json> summary = Json::Parse(Read(dir + "/summary.json"));
  ASSERT_TRUE(summary.ok()) << Read(dir + "/summary.json") << summary.status();
  EXPECT_EQ(summary->Find("export")->as_string(), odd_path);
  EXPECT_EQ(summary->Find("steps")->as_int64(), 5);
  // A non-writing sink (rank > 0) writes nothing.
  MetricsSink quiet(dir + "/none", false);
  EXPECT_TRUE(quiet.Append({{"step", 1}}).ok());
  EXPECT_FALSE(fs::exists(dir + "/none"));
}

}  // namespace
}  // namespace sheaf::jobs
