#include "base/flags.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sheaf {
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

// The daemons' form (sheaf-coordinator, sheaf-worker).
absl::Status ParseDaemon(std::vector<std::string> args, std::map<std::string, std::string>* values,
                         ParsedFlags* parsed) {
  std::vector<char*> argv = {const_cast<char*>("prog")};
  for (std::string& a : args) argv.push_back(a.data());
  return ParseLongFlags(static_cast<int>(argv.size()), argv.data(), values, {"once"}, parsed);
}

TEST(ParseLongFlagsTest, ValuesSwitchesAndDefaults) {
  std::map<std::string, std::string> v = {{"listen", "0.0.0.0:7070"}, {"db", ""}, {"ttl", "30s"}};
  ParsedFlags p;
  ASSERT_TRUE(ParseDaemon({"--db", "x.db", "--ttl=5s", "--once"}, &v, &p).ok());
  EXPECT_EQ(v["db"], "x.db");
  EXPECT_EQ(v["ttl"], "5s");
  EXPECT_EQ(v["listen"], "0.0.0.0:7070");
  EXPECT_TRUE(p.switches_set.count("once"));
  EXPECT_FALSE(p.help);
  ASSERT_TRUE(ParseDaemon({"-h"}, &v, &p).ok());
  EXPECT_TRUE(p.help);
  // The last value given wins, as it did before the parsers were merged.
  ASSERT_TRUE(ParseDaemon({"--db", "a", "--db=b"}, &v, &p).ok());
  EXPECT_EQ(v["db"], "b");
}

TEST(ParseLongFlagsTest, ErrorsNameTheFlag) {
  std::map<std::string, std::string> v = {{"db", ""}};
  ParsedFlags p;
  EXPECT_EQ(ParseDaemon({"--dbb", "x"}, &v, &p).message(), "unknown flag --dbb");
  EXPECT_EQ(ParseDaemon({"--db"}, &v, &p).message(), "--db needs a value");
  EXPECT_EQ(ParseDaemon({"stray"}, &v, &p).message(), "unexpected argument stray");
  EXPECT_EQ(ParseDaemon({"--once=yes"}, &v, &p).message(), "--once takes no value");
}

TEST(ParseIntFlagTest, Range) {
  EXPECT_EQ(*ParseIntFlag("limit", "12", 1, 100), 12);
  EXPECT_FALSE(ParseIntFlag("limit", "0", 1, 100).ok());
  EXPECT_FALSE(ParseIntFlag("limit", "12x", 1, 100).ok());
  EXPECT_EQ(ParseIntFlag("limit", "x", 1, 100).status().message(),
            "--limit: must be an integer in [1, 100], got 'x'");
  // `sheaf eval --max-seqs abc` used to be read as 0 (all sequences).
  EXPECT_EQ(ParseIntFlag("max-seqs", "abc", 0, INT64_MAX).status().message(),
            "--max-seqs: must be an integer in [0, 9223372036854775807], got 'abc'");
  EXPECT_FALSE(ParseIntFlag("max-seqs", "1.5", 0, 100).ok());
  EXPECT_FALSE(ParseIntFlag("max-seqs", "", 0, 100).ok());
  EXPECT_EQ(*ParseIntFlag("n", "-3", -5, 5), -3);
}

TEST(ParseByteSizeTest, PlainAndBinarySuffixes) {
  EXPECT_EQ(*ParseByteSize("memory", "1234"), 1234);
  EXPECT_EQ(*ParseByteSize("memory", "16G"), 16LL << 30);
  EXPECT_EQ(*ParseByteSize("memory", "16GiB"), 16LL << 30);
  EXPECT_EQ(*ParseByteSize("memory", "512m"), 512LL << 20);
  EXPECT_EQ(*ParseByteSize("memory", "2KiB"), 2048);
  EXPECT_EQ(*ParseByteSize("memory", "1T"), 1LL << 40);
  for (const char* bad : {"", "G", "-1", "1.5G", "12Q", "99999999999T"}) {
    EXPECT_FALSE(ParseByteSize("memory", bad).ok()) << bad;
  }
}

// The grammar the worker's --memory-bytes had (K/M/G/T, any case) is a
// subset of this one and keeps its values; the ambiguous decimal forms and
// signs are refused by both commands now.
TEST(ParseByteSizeTest, OneGrammarForTheWorkerAndTheCli) {
  EXPECT_EQ(*ParseByteSize("memory-bytes", "30G"), 30LL << 30);  // deploy/k8s/worker.yaml
  EXPECT_EQ(*ParseByteSize("memory-bytes", "4096M"), 4096LL << 20);  // the sbatch script
  EXPECT_EQ(*ParseByteSize("memory-bytes", "7k"), 7 << 10);
  EXPECT_EQ(*ParseByteSize("memory-bytes", "0"), 0);
  EXPECT_EQ(*ParseByteSize("memory-bytes", " 2g "), 2LL << 30);
  EXPECT_EQ(*ParseByteSize("memory-bytes", "8388607T"), 8388607LL << 40);  // largest in T
  for (const char* bad : {"16GB", "16kB", "+5", "1e9", "0x10", "8388608T", "G16", "1 G"}) {
    EXPECT_FALSE(ParseByteSize("memory-bytes", bad).ok()) << bad;
  }
  EXPECT_EQ(ParseByteSize("memory-bytes", "lots").status().message(),
            "--memory-bytes: not a byte size (e.g. 17179869184, 16G, 512MiB): 'lots'");
}

}  // namespace
}  // namespace sheaf
