#include "core/data/document_source.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A fresh directory per test under Bazel's scratch space.
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

void WriteFile(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<std::string> Texts(const std::vector<Document>& docs) {
  std::vector<std::string> texts;
  for (const Document& d : docs) texts.push_back(d.text);
  return texts;
}

std::vector<std::string> Origins(const std::vector<Document>& docs) {
  std::vector<std::string> origins;
  for (const Document& d : docs) origins.push_back(d.origin);
  return origins;
}

TEST(DocumentSourceTest, TextFileIsOneDocument) {
  const std::string path = TestDir() + "/a.txt";
  WriteFile(path, "first line\n\nsecond paragraph\n");
  absl::StatusOr<std::vector<Document>> docs = LoadDocuments({{path}});
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_THAT(Texts(*docs), ElementsAre("first line\n\nsecond paragraph\n"));
  EXPECT_THAT(Origins(*docs), ElementsAre(path));
}

TEST(DocumentSourceTest, SplitBlankLinesMakesParagraphs) {
  const std::string path = TestDir() + "/a.txt";
  WriteFile(path, "\none\ntwo\n \t\n\nthree\n\n\nfour");
  DocumentSource source{path, SourceFormat::kSourceFormatText, true};
  absl::StatusOr<std::vector<Document>> docs = LoadDocuments({source});
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_THAT(Texts(*docs), ElementsAre("one\ntwo\n", "three\n", "four"));
  EXPECT_THAT(Origins(*docs),
              ElementsAre(path + ":2", path + ":6", path + ":9"));
}

TEST(DocumentSourceTest, FolderIsRecursiveSortedAndSkipsHidden) {
  const std::string dir = TestDir();
  WriteFile(dir + "/b.txt", "bee");
  WriteFile(dir + "/a/z.txt", "zed");
  WriteFile(dir + "/a/c.txt", "sea");
  WriteFile(dir + "/.git/config", "hidden");
  WriteFile(dir + "/.swp", "hidden");
  WriteFile(dir + "/empty.txt", "  \n");
  absl::StatusOr<std::vector<Document>> docs = LoadDocuments({{dir}});
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_THAT(Texts(*docs), ElementsAre("sea", "zed", "bee"));
  EXPECT_THAT(Origins(*docs),
              ElementsAre(dir + "/a/c.txt", dir + "/a/z.txt", dir + "/b.txt"));
}

TEST(DocumentSourceTest, Jsonl) {
  const std::string path = TestDir() + "/d.jsonl";
  WriteFile(path,
            "{\"text\": \"h\\u00e9llo\", \"id\": 1}\n"
            "\n"
            "{\"text\": \"\"}\n"
            "{\"text\": \"p1\\n\\np2\"}\n");
  absl::StatusOr<std::vector<Document>> docs = LoadDocuments({{path}});
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_THAT(Texts(*docs), ElementsAre("h\xC3\xA9llo", "p1\n\np2"));
  EXPECT_THAT(Origins(*docs), ElementsAre(path + ":1", path + ":4"));

  DocumentSource split{path, SourceFormat::kSourceFormatJsonl, true};
  docs = LoadDocuments({split});
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_THAT(Texts(*docs), ElementsAre("h\xC3\xA9llo", "p1\n", "p2"));
  EXPECT_THAT(Origins(*docs),
              ElementsAre(path + ":1", path + ":4", path + ":4"));
}

TEST(DocumentSourceTest, JsonlErrorsNameFileAndLine) {
  const std::string dir = TestDir();
  const std::string good = "{\"text\": \"ok\"}\n";
  struct Case {
    std::string line;
    std::string why;
  };
  for (const Case& c : std::vector<Case>{
           {"{\"text\": \"unterminated}", "not valid JSON"},
           {"[1, 2]", "JSON object"},
           {"{\"body\": \"x\"}", "no \"text\" field"},
           {"{\"text\": 3}", "not a string"},
       }) {
    const std::string path = dir + "/bad.jsonl";
    WriteFile(path, good + "\n" + c.line + "\n" + good);
    absl::StatusOr<std::vector<Document>> docs = LoadDocuments({{path}});
    ASSERT_FALSE(docs.ok()) << c.line;
    EXPECT_EQ(docs.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(docs.status().message(), HasSubstr(path + ":3"));
    EXPECT_THAT(docs.status().message(), HasSubstr(c.why));
  }
}

TEST(DocumentSourceTest, MissingPathIsNotFound) {
  const std::string path = TestDir() + "/nope.txt";
  absl::Status status = LoadDocuments({{path}}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr(path));
}

TEST(DocumentSourceTest, EmptySourcesAreErrorsNamingThePath) {
  const std::string dir = TestDir();
  fs::create_directories(dir + "/empty_dir");
  WriteFile(dir + "/only_hidden/.x", "hidden");
  WriteFile(dir + "/blank.txt", " \n\n\t");
  WriteFile(dir + "/empty.jsonl", "{\"text\": \"\"}\n\n");
  for (const std::string& path : {dir + "/empty_dir", dir + "/only_hidden",
                                  dir + "/blank.txt", dir + "/empty.jsonl"}) {
    absl::Status status = LoadDocuments({{path}}).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(status.message(), HasSubstr(path));
  }
}

TEST(DocumentSourceTest, FormatMismatchAndParsing) {
  const std::string dir = TestDir();
  EXPECT_EQ(
      LoadDocuments({{dir, SourceFormat::kSourceFormatText}}).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseSourceFormat("jsonl"), SourceFormat::kSourceFormatJsonl);
  EXPECT_EQ(*ParseSourceFormat("folder"), SourceFormat::kSourceFormatFolder);
  EXPECT_FALSE(ParseSourceFormat("csv").ok());
}

TEST(DocumentSourceTest, VisitorErrorStopsIteration) {
  const std::string path = TestDir() + "/a.txt";
  WriteFile(path, "a\n\nb\n\nc\n");
  int seen = 0;
  absl::Status status = ForEachDocument(
      {path, SourceFormat::kSourceFormatAuto, true}, [&](Document) {
        return ++seen == 2 ? absl::CancelledError("stop") : absl::OkStatus();
      });
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(seen, 2);
}

}  // namespace
}  // namespace sheaf
