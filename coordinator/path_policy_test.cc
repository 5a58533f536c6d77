#include "coordinator/path_policy.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sheaf::coordinator {
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

}  // namespace
}  // namespace sheaf::coordinator
