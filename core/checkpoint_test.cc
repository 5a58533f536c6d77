#include "core/checkpoint.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

// A fresh directory per test under Bazel's TEST_TMPDIR.
std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/" + name;
  std::filesystem::remove_all(dir);
  EXPECT_EQ(::mkdir(dir.c_str(), 0755), 0) << dir;
  return dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

bool Exists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

// Recomputes the trailer after a test edits a file, so that the reader's
// structural checks (not the checksum) are what reject it.
void Reseal(std::string* file) {
  const size_t length = file->size() - 16;
  const uint32_t crc = Crc32c(std::string_view(*file).substr(0, length));
  std::memcpy(file->data() + length + 8, &crc, 4);
}

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  // RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(""), 0u);
}

TEST(Crc32c, ExtendEqualsWholeAtEverySplit) {
  std::string data(100, '\0');
  for (size_t i = 0; i < data.size(); ++i) {
    data[i] = static_cast<char>(i * 37 + 5);
  }
  const uint32_t whole = Crc32c(data);
  for (size_t split = 0; split <= data.size(); ++split) {
    const uint32_t head = Crc32c(std::string_view(data).substr(0, split));
    EXPECT_EQ(Crc32cExtend(head, data.data() + split, data.size() - split),
              whole)
        << split;
  }
}

// A writer with one of each kind of entry, plus a tensor larger than the
// write buffer.
struct Sample {
  std::vector<float> a = {1.f, -2.f, 3.5f, 0.f, 1e-30f, -1e30f};  // [2, 3]
  std::vector<float> big;                                         // [300000]
  float scalar = 42.f;                                            // []
  std::string blob = std::string("\0\x01\xFFtail", 7);
  CheckpointWriter writer;

  Sample() {
    big.resize(300000);
    for (size_t i = 0; i < big.size(); ++i) {
      big[i] = static_cast<float>(i) * 0.5f;
    }
    EXPECT_TRUE(writer.AddTensor("lora.a", {2, 3}, a.data()).ok());
    EXPECT_TRUE(writer.AddBytes("blob", blob).ok());
    EXPECT_TRUE(writer.AddTensor("scalar", {}, &scalar).ok());
    EXPECT_TRUE(writer.AddTensor("empty", {0, 4}, nullptr).ok());
    EXPECT_TRUE(writer.AddBytes("nothing", "").ok());
    EXPECT_TRUE(
        writer.AddTensor("big", {static_cast<int64_t>(big.size())}, big.data())
            .ok());
  }
};

TEST(Checkpoint, RoundTrip) {
  const std::string path = FreshDir("round_trip") + "/x.sheafckpt";
  Sample sample;
  ASSERT_TRUE(sample.writer.Write(path).ok());
  EXPECT_EQ(ReadFile(path).size(), sample.writer.FileSize());

  absl::StatusOr<Checkpoint> read = Checkpoint::Read(path);
  ASSERT_TRUE(read.ok()) << read.status();
  // Moving must not invalidate anything.
  Checkpoint ckpt = *std::move(read);
  EXPECT_EQ(ckpt.Names(),
            (std::vector<std::string>{"lora.a", "blob", "scalar", "empty",
                                      "nothing", "big"}));
  EXPECT_TRUE(ckpt.Has("blob"));
  EXPECT_FALSE(ckpt.Has("lora"));

  absl::StatusOr<std::span<const float>> a = ckpt.Tensor("lora.a", {2, 3});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(
      std::equal(a->begin(), a->end(), sample.a.begin(), sample.a.end()));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % 8, 0u);
  absl::StatusOr<std::span<const float>> big =
      ckpt.Tensor("big", {static_cast<int64_t>(sample.big.size())});
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_TRUE(std::equal(big->begin(), big->end(), sample.big.begin(),
                         sample.big.end()));
  absl::StatusOr<std::span<const float>> scalar = ckpt.Tensor("scalar", {});
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  ASSERT_EQ(scalar->size(), 1u);
  EXPECT_EQ((*scalar)[0], 42.f);
  absl::StatusOr<std::span<const float>> empty = ckpt.Tensor("empty", {0, 4});
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());
  EXPECT_EQ(*ckpt.TensorShape("lora.a"), (std::vector<int64_t>{2, 3}));

  absl::StatusOr<std::string_view> blob = ckpt.Bytes("blob");
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(*blob, sample.blob);
  EXPECT_EQ(*ckpt.Bytes("nothing"), "");
}

TEST(Checkpoint, AccessorErrorsNameTheEntry) {
  const std::string path = FreshDir("accessor_errors") + "/x.sheafckpt";
  Sample sample;
  ASSERT_TRUE(sample.writer.Write(path).ok());
  absl::StatusOr<Checkpoint> ckpt = Checkpoint::Read(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();

  absl::Status wrong_shape = ckpt->Tensor("lora.a", {3, 2}).status();
  EXPECT_EQ(wrong_shape.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_shape.message()),
              HasSubstr("'lora.a' has shape [2, 3], expected [3, 2]"));
  EXPECT_EQ(ckpt->Tensor("missing", {1}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(ckpt->Tensor("missing", {1}).status().message()),
              HasSubstr("'missing'"));
  EXPECT_EQ(ckpt->Tensor("blob", {7}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ckpt->Bytes("lora.a").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ckpt->Bytes("missing").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(CheckpointWriter, RejectsBadEntries) {
  CheckpointWriter w;
  const float x[2] = {1, 2};
  EXPECT_TRUE(w.AddTensor("x", {2}, x).ok());
  EXPECT_EQ(w.AddTensor("x", {2}, x).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.AddBytes("x", "b").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.AddBytes("", "b").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.AddTensor("neg", {2, -1}, x).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.AddTensor("null", {2}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.AddTensor("huge", {INT64_MAX, 2}, x).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Checkpoint, ByteLayoutMatchesHeaderComment) {
  const std::string path = FreshDir("layout") + "/x.sheafckpt";
  CheckpointWriter w;
  ASSERT_TRUE(w.AddBytes("ab", "xy").ok());
  ASSERT_TRUE(w.Write(path).ok());
  const std::string f = ReadFile(path);
  // 16 header + (4 + 2 name + 4 kind + 4 ndim + 8 shape + 8 length = 30,
  // ending at 46, padded to 48) + 2 data = 50, + 16 trailer.
  ASSERT_EQ(f.size(), 66u);
  std::string expected("SHEAFCKP", 8);
  expected += std::string("\x01\0\0\0", 4) + std::string("\x01\0\0\0", 4);
  expected += std::string("\x02\0\0\0", 4) + "ab";
  expected += std::string("\x01\0\0\0", 4) + std::string("\x01\0\0\0", 4);
  expected += std::string("\x02\0\0\0\0\0\0\0", 8);  // shape[0]
  expected += std::string("\x02\0\0\0\0\0\0\0", 8);  // byte length
  expected += std::string(2, '\0') + "xy";
  expected += std::string("\x32\0\0\0\0\0\0\0", 8);  // 50 bytes before trailer
  EXPECT_EQ(f.substr(0, 58), expected);
  const uint32_t crc = Crc32c(std::string_view(f).substr(0, 50));
  EXPECT_EQ(std::memcmp(f.data() + 58, &crc, 4), 0);
  EXPECT_EQ(f.substr(62), "CKPT");
}

TEST(Checkpoint, TruncatedAtEveryLengthIsDataLoss) {
  const std::string dir = FreshDir("truncated");
  CheckpointWriter w;
  const float x[3] = {1, 2, 3};
  ASSERT_TRUE(w.AddTensor("x", {3}, x).ok());
  ASSERT_TRUE(w.AddBytes("meta", "hello").ok());
  ASSERT_TRUE(w.Write(dir + "/full").ok());
  const std::string full = ReadFile(dir + "/full");
  for (size_t len = 0; len < full.size(); ++len) {
    WriteFile(dir + "/cut", full.substr(0, len));
    const absl::Status s = Checkpoint::Read(dir + "/cut").status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << len << ": " << s;
  }
}

TEST(Checkpoint, FlippedByteIsChecksumMismatch) {
  const std::string dir = FreshDir("flipped");
  CheckpointWriter w;
  const float x[3] = {1, 2, 3};
  ASSERT_TRUE(w.AddTensor("x", {3}, x).ok());
  ASSERT_TRUE(w.Write(dir + "/full").ok());
  const std::string full = ReadFile(dir + "/full");

  // One bit of the tensor data (the last 12 bytes before the trailer).
  std::string bad = full;
  bad[full.size() - 16 - 5] ^= 0x01;
  WriteFile(dir + "/bad", bad);
  const absl::Status s = Checkpoint::Read(dir + "/bad").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("checksum mismatch in " + dir + "/bad"));

  // Whatever byte is hit, the file is rejected (magic, version, trailer or
  // checksum, depending on where).
  for (size_t i = 0; i < full.size(); ++i) {
    bad = full;
    bad[i] ^= 0xFF;
    WriteFile(dir + "/bad", bad);
    EXPECT_FALSE(Checkpoint::Read(dir + "/bad").ok()) << i;
  }
}

TEST(Checkpoint, WrongMagicFutureVersionMissingFile) {
  const std::string dir = FreshDir("header");
  CheckpointWriter w;
  ASSERT_TRUE(w.AddBytes("b", "x").ok());
  ASSERT_TRUE(w.Write(dir + "/full").ok());
  const std::string full = ReadFile(dir + "/full");

  std::string wrong = full;
  wrong.replace(0, 8, "GGUF\x03\0\0\0");
  WriteFile(dir + "/wrong", wrong);
  absl::Status s = Checkpoint::Read(dir + "/wrong").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("not a sheaf checkpoint"));

  std::string future = full;
  future[8] = 2;
  Reseal(&future);
  WriteFile(dir + "/future", future);
  s = Checkpoint::Read(dir + "/future").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("format version 2"));
  // A future version may change the trailer; it must still say "version".
  future.resize(future.size() - 16);
  WriteFile(dir + "/future", future);
  EXPECT_EQ(Checkpoint::Read(dir + "/future").status().code(),
            absl::StatusCode::kFailedPrecondition);

  EXPECT_EQ(Checkpoint::Read(dir + "/absent").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(Checkpoint, StructuralErrorsBehindAValidChecksum) {
  const std::string dir = FreshDir("structural");
  CheckpointWriter w;
  ASSERT_TRUE(w.AddBytes("ab", "xy").ok());
  ASSERT_TRUE(w.Write(dir + "/full").ok());
  const std::string full = ReadFile(dir + "/full");

  std::string more = full;
  more[12] = 2;  // entry count 2, but only one entry present
  Reseal(&more);
  WriteFile(dir + "/f", more);
  absl::Status s = Checkpoint::Read(dir + "/f").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("runs past the end"));

  std::string kind = full;
  kind[22] = 7;  // kind field of the entry
  Reseal(&kind);
  WriteFile(dir + "/f", kind);
  s = Checkpoint::Read(dir + "/f").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("unknown kind 7"));

  std::string length = full;
  length[38] = 3;  // byte length 3 contradicts shape [2]
  Reseal(&length);
  WriteFile(dir + "/f", length);
  s = Checkpoint::Read(dir + "/f").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("inconsistent with shape"));
}

// --- CheckpointDir -----------------------------------------------------------

CheckpointWriter WriterWithStep(int64_t step) {
  CheckpointWriter w;
  const float x[2] = {static_cast<float>(step), 1.f};
  EXPECT_TRUE(w.AddTensor("x", {2}, x).ok());
  EXPECT_TRUE(w.AddBytes("step", std::to_string(step)).ok());
  return w;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

void Corrupt(const std::string& path) {
  std::string f = ReadFile(path);
  f[f.size() / 2] ^= 0x40;
  WriteFile(path, f);
}

TEST(CheckpointDir, PathForStepIsZeroPadded) {
  CheckpointDir d("/tmp/run/", 3);
  EXPECT_EQ(d.PathForStep(42), "/tmp/run/ckpt-000000042.sheafckpt");
  EXPECT_EQ(d.PathForStep(1234567890), "/tmp/run/ckpt-1234567890.sheafckpt");
}

TEST(CheckpointDir, KeepsTheNewestAndIgnoresUnrelatedFiles) {
  const std::string dir = FreshDir("keep_last");
  WriteFile(dir + "/notes.txt", "mine");
  WriteFile(dir + "/ckpt-7.sheafckpt", "not canonical, not ours");
  WriteFile(dir + "/ckpt-000000001.sheafckpt.bak", "a user's backup");
  CheckpointDir d(dir, 2);
  for (int64_t step = 1; step <= 5; ++step) {
    ASSERT_TRUE(d.Save(step, WriterWithStep(step)).ok()) << step;
  }
  EXPECT_EQ(ListDir(dir),
            (std::vector<std::string>{
                "ckpt-000000001.sheafckpt.bak", "ckpt-000000004.sheafckpt",
                "ckpt-000000005.sheafckpt", "ckpt-7.sheafckpt", "notes.txt"}));
}

TEST(CheckpointDir, NeverDeletesTheFileJustWritten) {
  const std::string dir = FreshDir("just_written");
  CheckpointDir d(dir, 1);
  ASSERT_TRUE(d.Save(10, WriterWithStep(10)).ok());
  ASSERT_TRUE(d.Save(5, WriterWithStep(5)).ok());
  EXPECT_TRUE(Exists(d.PathForStep(10)));  // newer, valid: one of keep_last
  EXPECT_TRUE(Exists(d.PathForStep(5)));   // just written
}

TEST(CheckpointDir, CorruptCheckpointsDoNotCountAsKept) {
  const std::string dir = FreshDir("prune_corrupt");
  CheckpointDir d(dir, 3);
  for (int64_t step = 1; step <= 3; ++step) {
    ASSERT_TRUE(d.Save(step, WriterWithStep(step)).ok());
  }
  Corrupt(d.PathForStep(2));
  ASSERT_TRUE(d.Save(4, WriterWithStep(4)).ok());
  EXPECT_TRUE(Exists(d.PathForStep(4)));
  EXPECT_TRUE(Exists(d.PathForStep(3)));
  EXPECT_FALSE(Exists(d.PathForStep(2)));  // corrupt: deleted
  EXPECT_TRUE(Exists(d.PathForStep(1)));   // third valid one
}

TEST(CheckpointDir, SaveCreatesDirectoriesAndRejectsNegativeSteps) {
  const std::string dir = FreshDir("create") + "/a/b";
  CheckpointDir d(dir, 0);
  ASSERT_TRUE(d.Save(0, WriterWithStep(0)).ok());
  EXPECT_TRUE(Exists(d.PathForStep(0)));
  EXPECT_EQ(d.Save(-1, WriterWithStep(0)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CheckpointDir, LoadLatestFallsBackPastCorruptFiles) {
  const std::string dir = FreshDir("fallback");
  CheckpointDir d(dir, 0);
  for (int64_t step = 1; step <= 3; ++step) {
    ASSERT_TRUE(d.Save(step, WriterWithStep(step)).ok());
  }
  Corrupt(d.PathForStep(3));
  std::vector<std::string> warnings;
  auto latest = d.LoadLatest(&warnings);
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->first, 2);
  EXPECT_EQ(*(*latest)->second.Bytes("step"), "2");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("ckpt-000000003.sheafckpt"));
  EXPECT_THAT(warnings[0], HasSubstr("checksum mismatch"));

  // Truncate 2 as well: falls back to 1, with a warning for each.
  const std::string two = ReadFile(d.PathForStep(2));
  WriteFile(d.PathForStep(2), two.substr(0, two.size() - 3));
  warnings.clear();
  latest = d.LoadLatest(&warnings);
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->first, 1);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_THAT(warnings[1], HasSubstr("ckpt-000000002.sheafckpt"));
  EXPECT_THAT(warnings[1], HasSubstr("truncated"));

  // Nothing valid left: nullopt, and still every reason reported.
  Corrupt(d.PathForStep(1));
  warnings.clear();
  latest = d.LoadLatest(&warnings);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_FALSE(latest->has_value());
  EXPECT_EQ(warnings.size(), 3u);
}

TEST(CheckpointDir, LoadLatestOnMissingOrEmptyDirectory) {
  std::vector<std::string> warnings;
  CheckpointDir missing(FreshDir("missing_parent") + "/never_created", 2);
  auto latest = missing.LoadLatest(&warnings);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_FALSE(latest->has_value());
  CheckpointDir empty(FreshDir("empty"), 2);
  latest = empty.LoadLatest(nullptr);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_FALSE(latest->has_value());
  EXPECT_THAT(warnings, IsEmpty());
}

TEST(CheckpointDir, TemporaryFilesAreIgnoredAndStaleOnesRemoved) {
  const std::string dir = FreshDir("tmp_files");
  CheckpointDir d(dir, 0);
  ASSERT_TRUE(d.Save(2, WriterWithStep(2)).ok());
  // A higher step, but only a temporary file: a crashed writer (INT_MAX is
  // above any pid_max, so no such process exists), this process, and a live
  // other process (our parent).
  const std::string dead = d.PathForStep(9) + ".tmp." + std::to_string(INT_MAX);
  const std::string ours =
      d.PathForStep(8) + ".tmp." + std::to_string(::getpid());
  const std::string live =
      d.PathForStep(7) + ".tmp." + std::to_string(::getppid());
  // Even a complete checkpoint under a temporary name is not loaded.
  ASSERT_TRUE(WriterWithStep(9).Write(dead).ok());
  WriteFile(ours, "partial");
  WriteFile(live, "partial");

  std::vector<std::string> warnings;
  auto latest = d.LoadLatest(&warnings);
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->first, 2);
  EXPECT_THAT(warnings, IsEmpty());
  EXPECT_FALSE(Exists(dead));
  EXPECT_TRUE(Exists(ours));
  EXPECT_TRUE(Exists(live));
}

}  // namespace
}  // namespace sheaf
