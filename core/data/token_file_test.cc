#include "core/data/token_file.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string TestDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  const ::testing::TestInfo* info =
      ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir = fs::path(base != nullptr ? base : "/tmp") /
                 (std::string(info->test_suite_name()) + "." + info->name());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::vector<int32_t> Doc(const TokenFile& file, int64_t d) {
  std::vector<int32_t> tokens(file.doc_size(d));
  file.CopyTokens(d, 0, file.doc_size(d), tokens.data());
  return tokens;
}

absl::Status WriteDocs(const std::string& path, int32_t vocab_size,
                       const std::vector<std::vector<int32_t>>& docs) {
  absl::StatusOr<std::unique_ptr<TokenFileWriter>> writer =
      TokenFileWriter::Create(path, vocab_size, vocab_size - 2, vocab_size - 1);
  if (!writer.ok()) return writer.status();
  for (const auto& doc : docs) {
    absl::Status s = (*writer)->AddDocument(doc);
    if (!s.ok()) return s;
  }
  return (*writer)->Finish();
}

const std::vector<std::vector<int32_t>> kDocs = {
    {1, 2, 3}, {255}, {7, 7, 7, 7, 7}, {0, 250}};

TEST(TokenFileTest, RoundTripU16) {
  const std::string path = TestDir() + "/c.tok";
  ASSERT_TRUE(WriteDocs(path, 258, kDocs).ok());
  absl::StatusOr<std::unique_ptr<TokenFile>> file = TokenFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TokenFile& f = **file;
  EXPECT_EQ(f.bytes_per_token(), 2);
  EXPECT_EQ(f.vocab_size(), 258);
  EXPECT_EQ(f.bos_id(), 256);
  EXPECT_EQ(f.eos_id(), 257);
  ASSERT_EQ(f.num_docs(), 4);
  EXPECT_EQ(f.num_tokens(), 11);
  for (int64_t d = 0; d < 4; ++d) EXPECT_EQ(Doc(f, d), kDocs[d]);
  // 64 header + 11 * 2 tokens -> padded to 88, + 5 offsets * 8.
  EXPECT_EQ(fs::file_size(path), 88u + 40u);
  // A sub-range copy.
  int32_t middle[2];
  f.CopyTokens(0, 1, 2, middle);
  EXPECT_EQ(middle[0], 2);
  EXPECT_EQ(middle[1], 3);
}

TEST(TokenFileTest, RoundTripU32ForLargeVocab) {
  const std::string path = TestDir() + "/c.tok";
  const std::vector<std::vector<int32_t>> docs = {{65535, 65536, 99997}, {3}};
  ASSERT_TRUE(WriteDocs(path, 100000, docs).ok());
  absl::StatusOr<std::unique_ptr<TokenFile>> file = TokenFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->bytes_per_token(), 4);
  EXPECT_EQ(Doc(**file, 0), docs[0]);
  EXPECT_EQ(Doc(**file, 1), docs[1]);
}

TEST(TokenFileTest, TokenizeToFileFromFolder) {
  const std::string dir = TestDir();
  fs::create_directories(dir + "/corpus");
  WriteBytes(dir + "/corpus/1.txt", "Grüße\n");
  WriteBytes(dir + "/corpus/2.txt", "one\n\ntwo\n");
  ByteTokenizer tokenizer;
  DocumentSource source{dir + "/corpus", SourceFormat::kSourceFormatAuto,
                        /*split_blank_lines=*/true};
  absl::StatusOr<TokenizeStats> stats =
      TokenizeToFile({source}, tokenizer, dir + "/out.tok");
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->num_docs, 3);
  EXPECT_EQ(stats->num_tokens, 8 + 4 + 4);
  EXPECT_EQ(stats->file_bytes,
            static_cast<int64_t>(fs::file_size(dir + "/out.tok")));
  absl::StatusOr<std::unique_ptr<TokenFile>> file =
      TokenFile::Open(dir + "/out.tok");
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<std::string> want = {"Grüße\n", "one\n", "two\n"};
  for (int64_t d = 0; d < 3; ++d) {
    EXPECT_EQ(*tokenizer.Decode(Doc(**file, d)), want[d]);
  }
  // Only the final file is left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), {}), 2);
}

TEST(TokenFileTest, TokenizeErrorsLeaveNoFile) {
  const std::string dir = TestDir();
  fs::create_directories(dir + "/empty");
  ByteTokenizer tokenizer;
  for (const std::string& source : {dir + "/empty", dir + "/missing.txt"}) {
    absl::Status status =
        TokenizeToFile({{source}}, tokenizer, dir + "/out.tok").status();
    EXPECT_FALSE(status.ok());
    EXPECT_THAT(status.message(), HasSubstr(source));
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), {}), 1);  // "empty"
}

TEST(TokenFileTest, AbandonedWriterKeepsOldFile) {
  const std::string path = TestDir() + "/c.tok";
  ASSERT_TRUE(WriteDocs(path, 258, kDocs).ok());
  const std::string before = ReadBytes(path);
  {
    auto writer = TokenFileWriter::Create(path, 258, 256, 257);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->AddDocument({{1, 2}}).ok());
    EXPECT_EQ((*writer)->AddDocument({{300}}).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*writer)->AddDocument({}).code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(ReadBytes(path), before);
  EXPECT_EQ(
      std::distance(fs::directory_iterator(fs::path(path).parent_path()), {}),
      1);
}

TEST(TokenFileTest, MissingFileIsNotFound) {
  const std::string path = TestDir() + "/none.tok";
  absl::Status status = TokenFile::Open(path).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr(path));
}

TEST(TokenFileTest, TruncatedOrExtendedFileIsDataLoss) {
  const std::string dir = TestDir();
  const std::string good_path = dir + "/good.tok";
  ASSERT_TRUE(WriteDocs(good_path, 258, kDocs).ok());
  const std::string good = ReadBytes(good_path);
  const std::string path = dir + "/bad.tok";
  for (size_t size : {size_t{0}, size_t{10}, size_t{63}, size_t{64}, size_t{80},
                      good.size() - 8, good.size() - 1}) {
    WriteBytes(path, good.substr(0, size));
    absl::Status status = TokenFile::Open(path).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << size;
    EXPECT_THAT(status.message(), HasSubstr(path)) << size;
  }
  WriteBytes(path, good + "x");
  EXPECT_EQ(TokenFile::Open(path).status().code(), absl::StatusCode::kDataLoss);
}

// Each corruption must be caught by validation, never read past the map.
TEST(TokenFileTest, LyingHeaderOrContentsIsDataLoss) {
  const std::string dir = TestDir();
  ASSERT_TRUE(WriteDocs(dir + "/good.tok", 258, kDocs).ok());
  const std::string good = ReadBytes(dir + "/good.tok");
  auto patched = [&](size_t offset, const void* value, size_t size) {
    std::string bytes = good;
    std::memcpy(bytes.data() + offset, value, size);
    return bytes;
  };
  const uint32_t u32_big = 0xFFFFFFFFu, version2 = 2, width4 = 4,
                 vocab_small = 100;
  const uint64_t u64_huge = ~uint64_t{0}, tokens12 = 12, docs5 = 5, zero = 0;
  const uint16_t token_too_big = 258;
  const uint64_t offsets_offset = 88;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"magic", patched(0, "NOTATOK!", 8)},
      {"version", patched(8, &version2, 4)},
      {"width", patched(12, &width4, 4)},
      {"vocab", patched(16, &vocab_small, 4)},
      {"bos", patched(20, &u32_big, 4)},
      {"num_docs huge", patched(32, &u64_huge, 8)},
      {"num_docs lie", patched(32, &docs5, 8)},
      {"num_tokens huge", patched(40, &u64_huge, 8)},
      {"num_tokens lie", patched(40, &tokens12, 8)},
      {"offsets_offset", patched(56, &zero, 8)},
      {"token id", patched(64 + 2, &token_too_big, 2)},
      {"first offset", patched(offsets_offset, &tokens12, 8)},
      {"offsets order", patched(offsets_offset + 8, &tokens12, 8)},
  };
  const std::string path = dir + "/bad.tok";
  for (const auto& [name, bytes] : cases) {
    WriteBytes(path, bytes);
    absl::Status status = TokenFile::Open(path).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << name;
    EXPECT_THAT(status.message(), HasSubstr(path)) << name;
  }
}

}  // namespace
}  // namespace sheaf
