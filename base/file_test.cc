#include "base/file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class FileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TEST_TMPDIR");
    dir_ = fs::path(base != nullptr ? base : "/tmp") /
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  // Written and read back with the standard library, independently of the
  // code under test.
  void Put(const std::string& name, const std::string& contents) const {
    std::ofstream(Path(name), std::ios::binary) << contents;
  }
  std::string Get(const std::string& name) const {
    std::ifstream in(Path(name), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  // Names in the directory, to prove no temporary file is left behind.
  std::vector<std::string> Names() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

TEST_F(FileTest, ReadsWholeFilesOfAnySize) {
  Put("empty", "");
  EXPECT_EQ(*ReadFileToString(Path("empty")), "");
  // Larger than the 64 KiB read buffer, with every byte value and NULs.
  std::string big;
  for (int i = 0; i < 300000; ++i) big.push_back(static_cast<char>(i * 7 % 256));
  Put("big", big);
  absl::StatusOr<std::string> got = ReadFileToString(Path("big"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, big);
}

TEST_F(FileTest, ReadErrorsNameTheFile) {
  absl::StatusOr<std::string> missing = ReadFileToString(Path("nope"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(),
            "cannot open " + Path("nope") + ": No such file or directory");
  absl::StatusOr<std::string> dir = ReadFileToString(dir_.string());
  EXPECT_FALSE(dir.ok());
  EXPECT_THAT(dir.status().message(), HasSubstr("cannot read " + dir_.string()));
  EXPECT_THAT(dir.status().message(), HasSubstr("Is a directory"));
}

TEST_F(FileTest, ReadsFilesWithoutASizeToTheEnd) {
  // /proc files report size 0; the read must not stop (or fail) there.
  absl::StatusOr<std::string> self = ReadFileToString("/proc/self/status");
  ASSERT_TRUE(self.ok()) << self.status();
  EXPECT_THAT(*self, HasSubstr("Pid:"));
  // sysfs files report a size of 4096 and hold less: not a truncation.
  const std::string sysfs = "/sys/kernel/mm/transparent_hugepage/enabled";
  if (fs::exists(sysfs)) {
    absl::StatusOr<std::string> thp = ReadFileToString(sysfs);
    ASSERT_TRUE(thp.ok()) << thp.status();
    EXPECT_THAT(*thp, HasSubstr("never"));
  }
}

TEST_F(FileTest, WriteAtomicallyCreatesAndReplacesLeavingNoTemporary) {
  ASSERT_TRUE(WriteFileAtomically(Path("f"), "first").ok());
  EXPECT_EQ(Get("f"), "first");
  ASSERT_TRUE(WriteFileAtomically(Path("f"), std::string("sec\0ond", 7)).ok());
  EXPECT_EQ(Get("f"), std::string("sec\0ond", 7));
  EXPECT_EQ(Names(), std::vector<std::string>{"f"});
}

TEST_F(FileTest, WriteIntoAMissingDirectoryFailsNamingTheTemporary) {
  const std::string path = Path("no/such/dir/f");
  absl::Status s = WriteFileAtomically(path, "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("cannot create " + TemporaryPathFor(path)));
}

TEST_F(FileTest, FailedRenameKeepsTheOldFileAndRemovesTheTemporary) {
  // rename(2) of a file onto a non-empty directory fails.
  fs::create_directories(dir_ / "target" / "child");
  absl::Status s = WriteFileAtomically(Path("target"), "x");
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("cannot rename " + TemporaryPathFor(Path("target")) +
                                     " to " + Path("target")));
  EXPECT_TRUE(fs::is_directory(dir_ / "target" / "child"));
  EXPECT_EQ(Names(), std::vector<std::string>{"target"});
}

TEST_F(FileTest, WriterWithHeaderWrittenLast) {
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> w = AtomicFileWriter::Create(Path("t"));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->temporary_path(), Path("t") + ".tmp." + std::to_string(::getpid()));
  ASSERT_TRUE((*w)->Append("....body").ok());
  ASSERT_TRUE((*w)->WriteAt(0, "HEAD", 4).ok());
  // Nothing is visible under the final name before Commit.
  EXPECT_FALSE(fs::exists(Path("t")));
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(Get("t"), "HEADbody");
  EXPECT_EQ((*w)->Commit().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*w)->Append("x").code(), absl::StatusCode::kFailedPrecondition);
  w->reset();
  EXPECT_EQ(Names(), std::vector<std::string>{"t"});
}

TEST_F(FileTest, AbandonedWriterRemovesItsTemporaryAndKeepsTheOldFile) {
  Put("keep", "old");
  {
    absl::StatusOr<std::unique_ptr<AtomicFileWriter>> w = AtomicFileWriter::Create(Path("keep"));
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append("new, half written").ok());
    EXPECT_EQ(Names(), (std::vector<std::string>{"keep", (*w)->temporary_path().substr(
                                                             dir_.string().size() + 1)}));
  }
  EXPECT_EQ(Get("keep"), "old");
  EXPECT_EQ(Names(), std::vector<std::string>{"keep"});
}

TEST_F(FileTest, WriteErrorsCarryTheReason) {
  // /dev/full fails every write with ENOSPC.
  const int fd = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  absl::Status s = WriteAllToFd(fd, "abc", 3, "/dev/full");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "cannot write /dev/full: No space left on device");
  EXPECT_EQ(WriteFully(fd, "abc", 3), ENOSPC);
  EXPECT_EQ(PwriteFully(fd, "abc", 3, 0), ENOSPC);
  ::close(fd);
}

TEST_F(FileTest, PwriteFullyWritesAtTheOffset) {
  Put("p", "0123456789");
  const int fd = ::open(Path("p").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(PwriteFully(fd, "ab", 2, 4), 0);
  EXPECT_EQ(WriteFully(fd, "XY", 2), 0);  // pwrite leaves the file offset at 0
  ::close(fd);
  EXPECT_EQ(Get("p"), "XY23ab6789");
}

}  // namespace
}  // namespace sheaf
