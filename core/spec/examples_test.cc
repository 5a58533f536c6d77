// Every job spec under examples/ must parse, validate and round-trip, so the
// documentation cannot drift from the proto.
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

using ::google::protobuf::util::MessageDifferencer;

// Bazel runs tests from the workspace's runfiles root; //examples:job_specs
// puts the files under examples/ there.
std::vector<std::string> ExampleFiles() {
  std::vector<std::string> files;
  std::error_code error;
  for (const auto& entry :
       std::filesystem::directory_iterator("examples", error)) {
    if (entry.path().extension() == ".yaml") {
      files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST(ExamplesTest, AllParseAndValidate) {
  const std::vector<std::string> files = ExampleFiles();
  ASSERT_GE(files.size(), 2u);
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    absl::StatusOr<proto::JobSpec> spec = ParseJobSpecFile(file);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
    // The examples document every field, so defaults have nothing to add. A
    // new field with a default fails here until the examples show it.
    proto::JobSpec resolved = *spec;
    ApplyDefaults(&resolved);
    std::string diff;
    MessageDifferencer differencer;
    differencer.ReportDifferencesToString(&diff);
    EXPECT_TRUE(differencer.Compare(*spec, resolved)) << diff;
    absl::StatusOr<proto::JobSpec> back =
        ParseJobSpecYaml(JobSpecToYaml(resolved));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(MessageDifferencer::Equals(resolved, *back));
  }
}

TEST(ExamplesTest, LoraTiny) {
  absl::StatusOr<proto::JobSpec> spec =
      ParseJobSpecFile("examples/lora_tiny.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->has_lora());
  EXPECT_EQ(spec->base_model(), "models/tiny-en");
  ASSERT_EQ(spec->data().train_size(), 1);
  EXPECT_EQ(spec->data().train(0), "data/manpages/de");
  EXPECT_GT(spec->train().max_steps(), 0);
  EXPECT_LE(spec->train().max_steps(), 1000);
}

TEST(ExamplesTest, PretrainTiny) {
  absl::StatusOr<proto::JobSpec> spec =
      ParseJobSpecFile("examples/pretrain_tiny.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(spec->has_pretrain());
  EXPECT_EQ(spec->base_model(), "");
  ASSERT_EQ(spec->data().train_size(), 1);
  EXPECT_EQ(spec->data().train(0), "data/manpages/en");
  EXPECT_EQ(spec->data().seq_len(), 256);
  const proto::ModelShape& model = spec->pretrain().model();
  EXPECT_EQ(model.hidden_size(), 256);
  EXPECT_EQ(model.num_hidden_layers(), 4);
  EXPECT_EQ(model.num_attention_heads(), 8);
  EXPECT_EQ(model.num_key_value_heads(), 4);
  EXPECT_EQ(model.head_dim(), 32);
  EXPECT_EQ(model.intermediate_size(), 688);
  EXPECT_EQ(model.vocab_size(), 258);
}

}  // namespace
}  // namespace sheaf
