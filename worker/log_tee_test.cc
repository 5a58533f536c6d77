#include "worker/log_tee.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace sheaf::worker {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

TEST(StderrTeeTest, CopiesEverythingWrittenBeforeStopAndAppends) {
  const std::string path = TempPath("tee.log");
  std::remove(path.c_str());
  {
    auto tee = StderrTee::Start(path);
    ASSERT_TRUE(tee.ok()) << tee.status();
    std::fprintf(stderr, "line one\n");
    // Raw writes from another thread, and unflushed stdio output.
    std::thread t([] {
      for (int i = 0; i < 200; ++i) {
        const std::string line = "thread line " + std::to_string(i) + "\n";
        ASSERT_EQ(::write(2, line.data(), line.size()), static_cast<ssize_t>(line.size()));
      }
    });
    t.join();
    std::fprintf(stderr, "no newline yet");
    ASSERT_TRUE((*tee)->Stop().ok());
    ASSERT_TRUE((*tee)->Stop().ok());  // idempotent
  }
  std::fprintf(stderr, "\nafter the tee\n");
  std::string log = ReadFile(path);
  EXPECT_EQ(log.find("line one\n"), 0u);
  EXPECT_NE(log.find("thread line 0\n"), std::string::npos);
  EXPECT_NE(log.find("thread line 199\n"), std::string::npos);
  EXPECT_NE(log.find("no newline yet"), std::string::npos);
  EXPECT_EQ(log.find("after the tee"), std::string::npos);

  // A second session appends.
  auto tee = StderrTee::Start(path);
  ASSERT_TRUE(tee.ok());
  std::fprintf(stderr, "second session\n");
  ASSERT_TRUE((*tee)->Stop().ok());
  log = ReadFile(path);
  EXPECT_EQ(log.find("line one\n"), 0u);
  EXPECT_NE(log.find("second session\n"), std::string::npos);
}

TEST(StderrTeeTest, OneAtATimeAndErrorsNameTheFile) {
  auto tee = StderrTee::Start(TempPath("one.log"));
  ASSERT_TRUE(tee.ok());
  auto second = StderrTee::Start(TempPath("two.log"));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*tee)->Stop().ok());

  auto bad = StderrTee::Start("/nonexistent-dir/x/train.log");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("/nonexistent-dir/x/train.log"), std::string::npos);
  // A failed start leaves stderr alone and another tee possible.
  auto again = StderrTee::Start(TempPath("three.log"));
  EXPECT_TRUE(again.ok()) << again.status();
}

}  // namespace
}  // namespace sheaf::worker
