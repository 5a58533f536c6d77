// The `langadapt:` section: defaults and every check naming its field.
#include <string>
#include <vector>

#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

using ::testing::HasSubstr;

constexpr char kMinimal[] = R"(
base_model: models/tiny-multi
output_dir: runs/x
langadapt:
  languages:
    - {name: nl, train: [data/nl/train], val: [data/nl/val]}
    - {name: pl, train: [data/pl/train], val: [data/pl/val]}
  supported:
    - {name: en, val: [data/en/val]}
  steps_per_language: 30
)";

proto::JobSpec Parse(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(yaml, overrides);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : proto::JobSpec();
}

std::string Problems(const std::vector<std::string>& overrides) {
  absl::Status s = ValidateJobSpec(Parse(kMinimal, overrides));
  return s.ok() ? "" : std::string(s.message());
}

// kMinimal with `from` replaced by `to` (overrides cannot index lists).
std::string ProblemsOfEdited(const std::string& from, const std::string& to) {
  std::string yaml = kMinimal;
  const size_t at = yaml.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at == std::string::npos) return "";
  yaml.replace(at, from.size(), to);
  absl::Status s = ValidateJobSpec(Parse(yaml));
  return s.ok() ? "" : std::string(s.message());
}

TEST(LangAdaptKindTest, DefaultsAreLayraMergeAndTheTotalStepCount) {
  proto::JobSpec spec = Parse(kMinimal);
  ApplyDefaults(&spec);
  const proto::LangAdaptJob& la = spec.langadapt();
  EXPECT_EQ(la.method(), proto::LangAdaptJob::METHOD_LAYRA);
  EXPECT_EQ(la.between(), proto::LangAdaptJob::BETWEEN_MERGE);
  EXPECT_EQ(la.seq_len(), 256);
  EXPECT_EQ(la.adapter().rank(), 8);
  EXPECT_EQ(la.adapter().targets_size(), 7);
  EXPECT_DOUBLE_EQ(spec.optimizer().lr(), 2e-4);
  EXPECT_EQ(spec.train().max_steps(), 60);  // 2 languages x 30 steps
  EXPECT_FALSE(spec.has_data());
  EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
  // Idempotent: a second pass (the recipe's, after the CLI's) changes nothing.
  proto::JobSpec twice = spec;
  ApplyDefaults(&twice);
  EXPECT_EQ(twice.SerializeAsString(), spec.SerializeAsString());
}

TEST(LangAdaptKindTest, TokenBudgetBecomesSteps) {
  // 10000 tokens / (4 sequences x 64 tokens) = 39.06 -> 40 steps a language.
  proto::JobSpec spec =
      Parse(kMinimal, {"langadapt.steps_per_language=0", "langadapt.tokens_per_language=10000",
                       "langadapt.seq_len=64", "train.batch_size=4"});
  ApplyDefaults(&spec);
  EXPECT_EQ(spec.train().max_steps(), 80);
  EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
}

TEST(LangAdaptKindTest, CptDefaultsNoAdapterAndASmallerLr) {
  proto::JobSpec spec = Parse(kMinimal, {"langadapt.method=cpt"});
  ApplyDefaults(&spec);
  EXPECT_FALSE(spec.langadapt().has_adapter());
  EXPECT_DOUBLE_EQ(spec.optimizer().lr(), 1e-4);
  proto::JobSpec layer = Parse(kMinimal, {"langadapt.method=layer_cpt"});
  ApplyDefaults(&layer);
  EXPECT_DOUBLE_EQ(layer.langadapt().layer_fraction(), 0.5);
  EXPECT_TRUE(ValidateJobSpec(layer).ok()) << ValidateJobSpec(layer);
}

TEST(LangAdaptKindTest, EveryProblemNamesItsField) {
  struct Case {
    std::vector<std::string> overrides;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{"base_model="}, "base_model: must be set for a langadapt job"},
      {{"langadapt.languages=[]"}, "langadapt.languages: must list at least one language"},
      {{"langadapt.steps_per_language=0"}, "langadapt.steps_per_language: exactly one of"},
      {{"langadapt.tokens_per_language=100"}, "langadapt.steps_per_language: exactly one of"},
      {{"langadapt.method=lora", "langadapt.first_layers=2"},
       "langadapt.first_layers: method lora trains every layer"},
      {{"langadapt.method=cpt", "langadapt.layers=[1]"}, "langadapt.layers: method cpt trains every"},
      {{"langadapt.layers=[0,7]", "langadapt.last_layers=1"},
       "langadapt.layers: give either an explicit list"},
      {{"langadapt.layers=[0,0]"}, "langadapt.layers[1]: layer 0 is listed twice"},
      {{"langadapt.layers=[-1]"}, "langadapt.layers[0]: must be >= 0, got -1"},
      {{"langadapt.first_layers=0", "langadapt.last_layers=0"},
       "langadapt.first_layers: first_layers and last_layers are both 0"},
      {{"langadapt.first_layers=-2"}, "langadapt.first_layers: must be >= 0, got -2"},
      {{"langadapt.method=layer_cpt", "langadapt.layer_fraction=1.5"},
       "langadapt.layer_fraction: must be in (0, 1], got 1.5"},
      {{"langadapt.layer_fraction=0.5"}, "langadapt.layer_fraction: is for method layer_cpt only"},
      {{"langadapt.adapter.layers=[1]"}, "langadapt.adapter.layers: must stay empty"},
      {{"langadapt.adapter.rank=0"}, "langadapt.adapter.rank: must be >= 1, got 0"},
      {{"langadapt.method=cpt", "langadapt.adapter.rank=4"}, "langadapt.adapter: is for methods layra"},
      {{"langadapt.method=cpt", "langadapt.between=stack"}, "langadapt.between: stack keeps adapters"},
      {{"langadapt.seq_len=1"}, "langadapt.seq_len: must be >= 2, got 1"},
      {{"train.max_steps=10"}, "train.max_steps: is the whole langadapt job's step count"},
      {{"train.epochs=1"}, "train.epochs: a langadapt job's budget"},
      {{"schedule.warmup_steps=31"}, "schedule.warmup_steps: must be <= the steps of one language (30)"},
      {{"langadapt.instruction_residual.lambda=0.5"},
       "langadapt.instruction_residual.instruct: must name the instruction-tuned model"},
      {{"data.train=[x]"}, "data: a langadapt job reads no data section"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(Problems(c.overrides), HasSubstr(c.expected))
        << "overrides: " << testing::PrintToString(c.overrides);
  }
  struct Edit {
    std::string from, to, expected;
  };
  const std::vector<Edit> edits = {
      {"name: pl", "name: nl", "langadapt.languages[1].name: language nl is listed twice"},
      {"name: en", "name: \"e n\"", "langadapt.supported[0].name: must be a non-empty label"},
      {"val: [data/nl/val]", "val: []", "langadapt.languages[0].val: must name the held-out text"},
      {"train: [data/pl/train], ", "", "langadapt.languages[1].train: must name the training"},
      {"{name: en, ", "{name: en, train: [data/en], ",
       "langadapt.supported[0].train: a supported language"},
  };
  for (const Edit& e : edits) {
    EXPECT_THAT(ProblemsOfEdited(e.from, e.to), HasSubstr(e.expected)) << e.from << " -> " << e.to;
  }
  EXPECT_EQ(Problems({}), "");
  EXPECT_EQ(Problems({"langadapt.between=stack", "langadapt.layers=[0,3]"}), "");
}

TEST(LangAdaptKindTest, RoundTripsThroughYaml) {
  proto::JobSpec spec = Parse(kMinimal, {"langadapt.method=layer_cpt", "langadapt.first_layers=1",
                                         "langadapt.last_layers=2"});
  ApplyDefaults(&spec);
  absl::StatusOr<proto::JobSpec> again = ParseJobSpecYaml(JobSpecToYaml(spec));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->SerializeAsString(), spec.SerializeAsString());
}

}  // namespace
}  // namespace sheaf
