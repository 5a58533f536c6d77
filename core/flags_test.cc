#include "core/flags.h"

#include <vector>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

absl::Status Parse(std::vector<std::string> args, std::map<std::string, std::string>* values,
                   ParsedFlags* parsed) {
  std::vector<char*> argv = {const_cast<char*>("prog")};
  for (std::string& a : args) argv.push_back(a.data());
  return ParseLongFlags(static_cast<int>(argv.size()), argv.data(), values, {"once"}, parsed);
}

TEST(Flags, ValuesSwitchesAndDefaults) {
  std::map<std::string, std::string> v = {{"listen", "0.0.0.0:7070"}, {"db", ""}, {"ttl", "30s"}};
  ParsedFlags p;
  ASSERT_TRUE(Parse({"--db", "x.db", "--ttl=5s", "--once"}, &v, &p).ok());
  EXPECT_EQ(v["db"], "x.db");
  EXPECT_EQ(v["ttl"], "5s");
  EXPECT_EQ(v["listen"], "0.0.0.0:7070");
  EXPECT_TRUE(p.switches_set.count("once"));
  EXPECT_FALSE(p.help);
  ASSERT_TRUE(Parse({"-h"}, &v, &p).ok());
  EXPECT_TRUE(p.help);
}

TEST(Flags, ErrorsNameTheFlag) {
  std::map<std::string, std::string> v = {{"db", ""}};
  ParsedFlags p;
  EXPECT_EQ(Parse({"--dbb", "x"}, &v, &p).message(), "unknown flag --dbb");
  EXPECT_EQ(Parse({"--db"}, &v, &p).message(), "--db needs a value");
  EXPECT_EQ(Parse({"stray"}, &v, &p).message(), "unexpected argument stray");
}

}  // namespace
}  // namespace sheaf
