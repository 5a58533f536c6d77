#include "base/bearer_token.h"

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

// Both `sheaf --token-file` (cli/connection.cc) and `sheaf-worker
// --token-file` (worker/main.cc) read their file through ReadTokenFile; these
// are the files each of them must accept. Before the readers were merged the
// worker took the whole file, so a comment line became part of its token.
TEST(ParseTokenFileTest, FirstWordOfTheFirstLineThatIsNotACommentOrBlank) {
  EXPECT_EQ(*ParseTokenFile("tok\n", "f"), "tok");
  EXPECT_EQ(*ParseTokenFile("tok", "f"), "tok");
  EXPECT_EQ(*ParseTokenFile("# worker token for rack 3\n\n  tok  \n", "f"), "tok");
  EXPECT_EQ(*ParseTokenFile("  # indented comment\ntok\r\n", "f"), "tok");
  EXPECT_EQ(*ParseTokenFile("tok @worker\n", "f"), "tok");  // a tokens-file line
  EXPECT_EQ(*ParseTokenFile("tok\tten\nother\n", "f"), "tok");
  EXPECT_EQ(*ParseTokenFile("tok#notacomment\n", "f"), "tok#notacomment");
}

TEST(ParseTokenFileTest, NoToken) {
  for (const char* text : {"", "\n\n", "# only a comment\n", " \t\r\n"}) {
    absl::StatusOr<std::string> t = ParseTokenFile(text, "/etc/w.token");
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_EQ(t.status().message(), "token file /etc/w.token holds no token");
  }
}

TEST(ReadTokenFileTest, ReadsTheFileAndNamesItInErrors) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/token";
  std::ofstream(path) << "# for sheaf and sheaf-worker alike\nsecret-1 alice\n";
  EXPECT_EQ(*ReadTokenFile(path), "secret-1");
  absl::StatusOr<std::string> missing = ReadTokenFile(path + ".nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StartsWith(missing.status().message(),
                               "token file " + path + ".nope: cannot be read ("))
      << missing.status();
}

}  // namespace
}  // namespace sheaf
