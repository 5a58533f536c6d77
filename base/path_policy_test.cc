#include "base/path_policy.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/coordinator.pb.h"
#include "proto/job_spec.pb.h"
#include "proto/path_walk_test.pb.h"

namespace sheaf {
namespace {

namespace fs = std::filesystem;

class PathPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string pattern = absl::StrCat(base ? base : "/tmp", "/paths.XXXXXX");
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    base_ = fs::canonical(pattern);
    for (const char* d : {"models/tiny", "data/corpus", "out/alice",
                          "out/bob/job-1", "elsewhere"}) {
      fs::create_directories(base_ / d);
    }
    std::ofstream(base_ / "data/corpus/a.txt") << "hello";
    std::ofstream(base_ / "elsewhere/secret") << "secret";
    fs::create_symlink(base_ / "elsewhere", base_ / "data/escape");
    fs::create_symlink(base_ / "data/corpus", base_ / "data/inside");
    auto policy = PathPolicy::Create({(base_ / "models").string(),
                                      (base_ / "data").string(),
                                      (base_ / "out").string()});
    ASSERT_TRUE(policy.ok()) << policy.status();
    policy_ = *std::move(policy);
  }

  proto::JobSpec Spec() {
    proto::JobSpec spec;
    spec.set_base_model("tiny");
    spec.mutable_data()->add_train("corpus/a.txt");
    spec.mutable_data()->add_val("inside");
    spec.set_output_dir("run-1");
    return spec;
  }

  fs::path base_;
  std::unique_ptr<PathPolicy> policy_;
};

TEST_F(PathPolicyTest, RelativePathsResolveUnderTheirRoots) {
  proto::JobSpec spec = Spec();
  spec.mutable_data()->set_tokenizer("tiny/tokenizer.json");
  ASSERT_TRUE(policy_->ResolveSpecPaths(&spec, "alice", "job-9").ok());
  EXPECT_EQ(spec.base_model(), (base_ / "models/tiny").string());
  EXPECT_EQ(spec.data().train(0), (base_ / "data/corpus/a.txt").string());
  // A symlink that stays inside the root is fine (and followed).
  EXPECT_EQ(spec.data().val(0), (base_ / "data/corpus").string());
  EXPECT_EQ(spec.data().tokenizer(),
            (base_ / "models/tiny/tokenizer.json").string());
  EXPECT_EQ(spec.output_dir(), (base_ / "out/alice/run-1").string());
}

TEST_F(PathPolicyTest, AbsolutePathsInsideAreFineAndEmptyOutputGetsDefault) {
  proto::JobSpec spec = Spec();
  spec.set_base_model((base_ / "models/tiny").string());
  spec.clear_output_dir();
  ASSERT_TRUE(policy_->ResolveSpecPaths(&spec, "alice", "job-9").ok());
  EXPECT_EQ(spec.output_dir(), (base_ / "out/alice/job-9").string());
  // "byte" is not a path.
  spec.mutable_data()->set_tokenizer("byte");
  EXPECT_TRUE(policy_->ResolveSpecPaths(&spec, "alice", "job-9").ok());
}

TEST_F(PathPolicyTest, EscapesAreRejectedNamingFieldAndPath) {
  struct Case {
    std::function<void(proto::JobSpec*)> edit;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](proto::JobSpec* s) { s->mutable_data()->set_train(0, "../../etc/passwd"); },
       "data.train[0]: path '../../etc/passwd' is outside the data root"},
      {[](proto::JobSpec* s) { s->set_base_model("/etc"); },
       "base_model: path '/etc' is outside the model root"},
      {[](proto::JobSpec* s) { s->mutable_data()->set_val(0, "escape/secret"); },
       "data.val[0]: path 'escape/secret' is outside the data root"},
      {[this](proto::JobSpec* s) {
         s->mutable_data()->set_train(0, (base_ / "data/escape").string());
       },
       "data.train[0]: path"},
      {[](proto::JobSpec* s) { s->set_output_dir("../bob/job-1"); },
       "output_dir: path '../bob/job-1' is outside the output root of tenant"},
      {[this](proto::JobSpec* s) {
         s->set_output_dir((base_ / "out/bob").string());
       },
       "output_dir: path"},
      {[](proto::JobSpec* s) { s->set_base_model("tiny/../../data"); },
       "base_model: path 'tiny/../../data' is outside the model root"},
      {[](proto::JobSpec* s) { s->set_base_model("missing/../../../x"); },
       "is outside the model root"},
      {[](proto::JobSpec* s) { s->mutable_data()->set_tokenizer("/etc/passwd"); },
       "data.tokenizer: path '/etc/passwd' is outside"},
      {[](proto::JobSpec* s) { s->set_base_model(std::string("a\0b", 3)); },
       "base_model: path holds a NUL byte"},
  };
  for (const Case& c : cases) {
    proto::JobSpec spec = Spec();
    c.edit(&spec);
    absl::Status status = policy_->ResolveSpecPaths(&spec, "alice", "job-9");
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << c.expected;
    EXPECT_NE(status.message().find(c.expected), std::string::npos)
        << status << "\n wanted: " << c.expected;
  }
}

TEST_F(PathPolicyTest, EveryOffenderIsReported) {
  proto::JobSpec spec = Spec();
  spec.set_base_model("/etc");
  spec.mutable_data()->set_train(0, "../x");
  spec.set_output_dir("/tmp");
  absl::Status status = policy_->ResolveSpecPaths(&spec, "alice", "job-9");
  EXPECT_NE(status.message().find("base_model"), std::string::npos);
  EXPECT_NE(status.message().find("data.train[0]"), std::string::npos);
  EXPECT_NE(status.message().find("output_dir"), std::string::npos);
}

TEST_F(PathPolicyTest, PrefixOfARootNameIsNotInside) {
  fs::create_directories(base_ / "data2");
  auto resolved = PathPolicy::ResolveInside(base_ / "data", "data root",
                                            "data.train[0]", "../data2/x");
  EXPECT_TRUE(absl::IsInvalidArgument(resolved.status()));
  resolved = PathPolicy::ResolveInside(base_ / "data", "data root",
                                       "data.train[0]", "corpus/../corpus/");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(*resolved, base_ / "data/corpus");
}

TEST_F(PathPolicyTest, RootsMustExist) {
  auto policy = PathPolicy::Create({(base_ / "nope").string(),
                                    (base_ / "data").string(),
                                    (base_ / "out").string()});
  EXPECT_TRUE(absl::IsInvalidArgument(policy.status()));
  EXPECT_NE(policy.status().message().find("model root"), std::string::npos);
  policy = PathPolicy::Create({(base_ / "models").string(),
                               (base_ / "data/corpus/a.txt").string(),
                               (base_ / "out").string()});
  EXPECT_NE(policy.status().message().find("not a directory"),
            std::string::npos);
}

// ---- The walker, on messages no code here names a field of.

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

std::vector<std::string> Names(const google::protobuf::Message& message) {
  std::vector<std::string> names;
  ForEachPathField(message, [&](const PathField& field) {
    names.push_back(absl::StrCat(field.name, "=", *field.value));
  });
  return names;
}

proto::testing::PathWalkTestSpec NestedSpec() {
  proto::testing::PathWalkTestSpec spec;
  spec.set_model("tiny");
  spec.mutable_foo()->mutable_bar()->set_corpus("corpus/a.txt");
  spec.mutable_foo()->mutable_bar()->set_language("de");
  spec.mutable_foo()->add_extra()->add_shards("corpus");
  spec.mutable_embeddings()->set_table("none");
  (*spec.mutable_by_language())["fr"].set_corpus("corpus/a.txt");
  spec.set_out("run");
  return spec;
}

TEST(PathWalkTest, FindsEveryAnnotatedFieldWhereverItIsNested) {
  // Declaration order; unset submessages (foo.extra[0].bar, the unset
  // oneof member `other`) hold no path; `language` is not annotated.
  EXPECT_THAT(Names(NestedSpec()),
              ElementsAre("model=tiny", "foo.bar.corpus=corpus/a.txt",
                          "foo.extra[0].corpus=", "foo.extra[0].shards[0]=corpus",
                          "embeddings.table=none",
                          "by_language[fr].corpus=corpus/a.txt", "out=run"));
}

TEST(PathWalkTest, JobSpecPathsAreTheAnnotatedOnes) {
  proto::JobSpec spec;
  spec.set_base_model("m");
  spec.set_output_dir("o");
  spec.mutable_data()->add_train("t0");
  spec.mutable_data()->add_train("t1");
  spec.mutable_data()->add_val("v");
  spec.mutable_data()->set_tokenizer("byte");
  spec.set_name("not a path");
  spec.mutable_lora();
  EXPECT_THAT(Names(spec),
              ElementsAre("base_model=m", "output_dir=o", "data.train[0]=t0",
                          "data.train[1]=t1", "data.val[0]=v",
                          "data.tokenizer=byte"));
}

TEST(PathWalkTest, NotPathsAndEmptyValuesNameNoFile) {
  std::vector<std::string> files;
  ForEachPathField(NestedSpec(), [&](const PathField& field) {
    if (NamesAFile(field)) files.push_back(field.name);
  });
  EXPECT_THAT(files, ElementsAre("model", "foo.bar.corpus",
                                 "foo.extra[0].shards[0]",
                                 "by_language[fr].corpus", "out"));
}

TEST(PathWalkTest, AnnotationsAreChecked) {
  EXPECT_TRUE(CheckPathAnnotations(proto::JobSpec::descriptor()).ok());
  EXPECT_TRUE(CheckPathAnnotations(proto::Lease::descriptor()).ok());
  EXPECT_TRUE(
      CheckPathAnnotations(proto::testing::PathWalkTestSpec::descriptor()).ok());
  EXPECT_THAT(
      CheckPathAnnotations(proto::testing::BadNested::descriptor()).message(),
      HasSubstr("BadNoRoot.p: the path option has no root"));
  EXPECT_THAT(
      CheckPathAnnotations(proto::testing::BadNotString::descriptor())
          .message(),
      HasSubstr("BadNotString.p: the path option needs a string field"));
}

TEST_F(PathPolicyTest, NestedPathsResolveByTheirAnnotationAlone) {
  proto::testing::PathWalkTestSpec spec = NestedSpec();
  ASSERT_TRUE(policy_->ResolveSpecPaths(&spec, "alice", "job-9").ok());
  EXPECT_EQ(spec.model(), (base_ / "models/tiny").string());
  EXPECT_EQ(spec.foo().bar().corpus(), (base_ / "data/corpus/a.txt").string());
  EXPECT_EQ(spec.foo().extra(0).shards(0), (base_ / "data/corpus").string());
  EXPECT_EQ(spec.by_language().at("fr").corpus(),
            (base_ / "data/corpus/a.txt").string());
  EXPECT_EQ(spec.embeddings().table(), "none");  // Not a path.
  EXPECT_EQ(spec.out(), (base_ / "out/alice/run").string());
  EXPECT_EQ(spec.foo().bar().language(), "de");  // Not annotated.

  spec = NestedSpec();
  spec.clear_out();
  ASSERT_TRUE(policy_->ResolveSpecPaths(&spec, "alice", "job-9").ok());
  EXPECT_EQ(spec.out(), (base_ / "out/alice/job-9").string());
}

TEST_F(PathPolicyTest, NestedEscapesAreRejectedNamingTheFieldPath) {
  struct Case {
    std::function<void(proto::testing::PathWalkTestSpec*)> edit;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](auto* s) { s->mutable_foo()->mutable_bar()->set_corpus("../elsewhere/secret"); },
       "foo.bar.corpus: path '../elsewhere/secret' is outside the data root"},
      {[](auto* s) { s->mutable_foo()->mutable_extra(0)->set_shards(0, "escape/secret"); },
       "foo.extra[0].shards[0]: path 'escape/secret' is outside the data root"},
      {[](auto* s) { (*s->mutable_by_language())["fr"].set_corpus("/etc/passwd"); },
       "by_language[fr].corpus: path '/etc/passwd' is outside the data root"},
      {[](auto* s) { s->mutable_embeddings()->set_table("/etc/passwd"); },
       "embeddings.table: path '/etc/passwd' is outside the model root and "
       "the data root"},
      {[](auto* s) { s->mutable_other()->set_corpus("../../x"); },
       "other.corpus: path '../../x' is outside the data root"},
      {[](auto* s) { s->set_out("../bob/job-1"); },
       "out: path '../bob/job-1' is outside the output root of tenant"},
  };
  for (const Case& c : cases) {
    proto::testing::PathWalkTestSpec spec = NestedSpec();
    c.edit(&spec);
    absl::Status status = policy_->ResolveSpecPaths(&spec, "alice", "job-9");
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << c.expected;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.expected));
    // Only the offender is reported.
    EXPECT_THAT(std::string(status.message()), Not(HasSubstr(";")));
  }
}

}  // namespace
}  // namespace sheaf
