#include "cli/args.h"

#include "gtest/gtest.h"

namespace sheaf::cli {
namespace {

const std::vector<FlagSpec> kSpecs = {
    {"set"}, {"all-pages", false}, {"output-dir", true, "o"}, {"follow", false, "f"}};

TEST(ParseArgsTest, FlagsAnywhereBothFormsAndShortAliases) {
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(
      {"--set", "a=1", "job.yaml", "--set=b=2", "-o", "out", "-f", "--all-pages"}, kSpecs);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->positional, std::vector<std::string>{"job.yaml"});
  EXPECT_EQ(parsed->All("set"), (std::vector<std::string>{"a=1", "b=2"}));
  EXPECT_EQ(parsed->Last("output-dir"), "out");
  EXPECT_TRUE(parsed->Has("follow"));
  EXPECT_TRUE(parsed->Has("all-pages"));
  EXPECT_FALSE(parsed->Has("missing"));
  EXPECT_EQ(parsed->Last("missing", "dflt"), "dflt");
  EXPECT_TRUE(parsed->All("missing").empty());
}

TEST(ParseArgsTest, DoubleDashEndsFlagsAndADashAloneIsPositional) {
  absl::StatusOr<ParsedArgs> parsed = ParseArgs({"-", "--", "--set", "-o"}, kSpecs);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->positional, (std::vector<std::string>{"-", "--set", "-o"}));
}

TEST(ParseArgsTest, Errors) {
  EXPECT_EQ(ParseArgs({"--nope"}, kSpecs).status().message(), "unknown flag --nope");
  EXPECT_EQ(ParseArgs({"-x"}, kSpecs).status().message(), "unknown flag -x");
  EXPECT_EQ(ParseArgs({"--set"}, kSpecs).status().message(), "--set needs a value");
  EXPECT_EQ(ParseArgs({"--all-pages=yes"}, kSpecs).status().message(),
            "--all-pages takes no value");
}

TEST(ParseIntFlagTest, Range) {
  EXPECT_EQ(*ParseIntFlag("limit", "12", 1, 100), 12);
  EXPECT_FALSE(ParseIntFlag("limit", "0", 1, 100).ok());
  EXPECT_FALSE(ParseIntFlag("limit", "12x", 1, 100).ok());
  EXPECT_EQ(ParseIntFlag("limit", "x", 1, 100).status().message(),
            "--limit: must be an integer in [1, 100], got 'x'");
}

TEST(ParseBytesTest, PlainAndBinarySuffixes) {
  EXPECT_EQ(*ParseBytes("memory", "1234"), 1234);
  EXPECT_EQ(*ParseBytes("memory", "16G"), 16LL << 30);
  EXPECT_EQ(*ParseBytes("memory", "16GiB"), 16LL << 30);
  EXPECT_EQ(*ParseBytes("memory", "512m"), 512LL << 20);
  EXPECT_EQ(*ParseBytes("memory", "2KiB"), 2048);
  EXPECT_EQ(*ParseBytes("memory", "1T"), 1LL << 40);
  for (const char* bad : {"", "G", "-1", "1.5G", "12Q", "99999999999T"}) {
    EXPECT_FALSE(ParseBytes("memory", bad).ok()) << bad;
  }
}

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
