#include "core/spec/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "core/spec/job_kind.h"
#include "core/spec/yaml.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The smallest valid specs of each kind.
constexpr char kLora[] = R"(
base_model: models/tiny-en
output_dir: runs/x
data: {train: [data/x]}
train: {max_steps: 100}
lora:
)";

constexpr char kPretrain[] = R"(
output_dir: runs/x
data: {train: [data/x]}
train: {max_steps: 100}
pretrain:
  model:
    hidden_size: 256
    intermediate_size: 688
    num_hidden_layers: 4
    num_attention_heads: 8
    vocab_size: 258
)";

constexpr char kPretrainContinued[] = R"(
base_model: models/tiny-en
output_dir: runs/x
data: {train: [data/x]}
train: {max_steps: 100}
pretrain:
)";

proto::JobSpec Parse(const std::string& yaml,
                     const std::vector<std::string>& overrides = {}) {
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(yaml, overrides);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : proto::JobSpec();
}

TEST(ApplyDefaultsTest, LoraDefaults) {
  proto::JobSpec spec = Parse(kLora);
  ApplyDefaults(&spec);
  EXPECT_EQ(spec.seed(), 0u);
  EXPECT_EQ(spec.data().format(), proto::DataSpec::FORMAT_TEXT);
  EXPECT_EQ(spec.data().seq_len(), 256);
  EXPECT_DOUBLE_EQ(spec.data().val_fraction(), 0.05);
  // The default is "auto" (issue 10): the model directory's tokenizer file,
  // bytes for a byte-vocabulary model without one (jobs:build_test).
  EXPECT_EQ(spec.data().tokenizer(), "auto");
  EXPECT_DOUBLE_EQ(spec.optimizer().lr(), 2e-4);
  EXPECT_DOUBLE_EQ(spec.optimizer().beta1(), 0.9);
  EXPECT_DOUBLE_EQ(spec.optimizer().beta2(), 0.999);
  EXPECT_DOUBLE_EQ(spec.optimizer().eps(), 1e-8);
  EXPECT_DOUBLE_EQ(spec.optimizer().weight_decay(), 0);
  EXPECT_EQ(spec.schedule().warmup_steps(), 0);
  EXPECT_DOUBLE_EQ(spec.schedule().min_lr_ratio(), 0.1);
  EXPECT_EQ(spec.train().batch_size(), 8);
  EXPECT_EQ(spec.train().grad_accum(), 1);
  EXPECT_DOUBLE_EQ(spec.train().grad_clip(), 1.0);
  EXPECT_EQ(spec.train().eval_every(), 100);
  EXPECT_EQ(spec.train().eval_batches(), 0);
  EXPECT_EQ(spec.train().checkpoint_every(), 100);
  EXPECT_EQ(spec.train().keep_checkpoints(), 3);
  EXPECT_EQ(spec.train().log_every(), 10);
  EXPECT_EQ(spec.train().threads(), 0);
  const proto::AdapterSpec& adapter = spec.lora().adapter();
  EXPECT_THAT(adapter.targets(),
              ElementsAre("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                          "up_proj", "down_proj"));
  EXPECT_TRUE(adapter.layers().empty());
  EXPECT_EQ(adapter.rank(), 8);
  EXPECT_DOUBLE_EQ(adapter.alpha(), 16);
  EXPECT_DOUBLE_EQ(adapter.dropout(), 0);
  EXPECT_FALSE(adapter.rslora());
}

TEST(ApplyDefaultsTest, PretrainDefaults) {
  proto::JobSpec spec = Parse(kPretrain);
  ApplyDefaults(&spec);
  EXPECT_DOUBLE_EQ(spec.optimizer().lr(), 1e-3);
  const proto::ModelShape& model = spec.pretrain().model();
  EXPECT_EQ(model.num_key_value_heads(), 8);
  EXPECT_EQ(model.head_dim(), 32);
  EXPECT_EQ(model.max_position_embeddings(), 256);
  EXPECT_DOUBLE_EQ(model.rope_theta(), 10000);
  EXPECT_DOUBLE_EQ(model.rms_norm_eps(), 1e-5);
  EXPECT_FALSE(model.tie_word_embeddings());
  EXPECT_TRUE(model.has_tie_word_embeddings());
  EXPECT_DOUBLE_EQ(model.init_std(), 0.02);
}

TEST(ApplyDefaultsTest, ContinuedPretrainingGetsNoShape) {
  proto::JobSpec spec = Parse("base_model: m\npretrain:\n");
  ApplyDefaults(&spec);
  EXPECT_FALSE(spec.pretrain().has_model());
}

TEST(ApplyDefaultsTest, KeepsExplicitValuesEvenZero) {
  proto::JobSpec spec =
      Parse(kLora, {"train.grad_clip=0", "train.eval_every=0",
                    "schedule.min_lr_ratio=0", "optimizer.lr=0.5",
                    "lora.adapter.rank=2", "lora.adapter.targets=[lm_head]"});
  ApplyDefaults(&spec);
  EXPECT_DOUBLE_EQ(spec.train().grad_clip(), 0);
  EXPECT_EQ(spec.train().eval_every(), 0);
  EXPECT_DOUBLE_EQ(spec.schedule().min_lr_ratio(), 0);
  EXPECT_DOUBLE_EQ(spec.optimizer().lr(), 0.5);
  EXPECT_EQ(spec.lora().adapter().rank(), 2);
  EXPECT_THAT(spec.lora().adapter().targets(), ElementsAre("lm_head"));
}

TEST(ApplyDefaultsTest, DataDependentDefaults) {
  proto::JobSpec spec =
      Parse(kLora, {"data.train=[d/a.jsonl]", "data.val=[d/v]"});
  ApplyDefaults(&spec);
  EXPECT_EQ(spec.data().format(), proto::DataSpec::FORMAT_JSONL);
  EXPECT_DOUBLE_EQ(spec.data().val_fraction(), 0);
}

TEST(ApplyDefaultsTest, Idempotent) {
  for (const char* yaml : {kLora, kPretrain}) {
    proto::JobSpec once = Parse(yaml);
    ApplyDefaults(&once);
    proto::JobSpec twice = once;
    ApplyDefaults(&twice);
    EXPECT_TRUE(MessageDifferencer::Equals(once, twice)) << yaml;
  }
}

TEST(ValidateJobSpecTest, MinimalSpecsAreValidBeforeAndAfterDefaults) {
  for (const char* yaml : {kLora, kPretrain}) {
    proto::JobSpec spec = Parse(yaml);
    EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
    ApplyDefaults(&spec);
    EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
  }
  // Continued pretraining: the shape comes from the model.
  EXPECT_TRUE(ValidateJobSpec(Parse(kPretrainContinued)).ok());
}

struct BadCase {
  const char* base;
  std::vector<std::string> overrides;
  const char* expected;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.expected; }

class ValidateErrorTest : public testing::TestWithParam<BadCase> {};

TEST_P(ValidateErrorTest, NamesTheKey) {
  const BadCase& c = GetParam();
  const absl::Status status = ValidateJobSpec(Parse(c.base, c.overrides));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr(c.expected));
}

INSTANTIATE_TEST_SUITE_P(
    Lora, ValidateErrorTest,
    testing::Values(
        BadCase{kLora,
                {"optimizer.lr=-0.001"},
                "optimizer.lr: must be > 0, got -0.001"},
        BadCase{kLora,
                {"optimizer.beta1=1"},
                "optimizer.beta1: must be in [0, 1), got 1"},
        BadCase{kLora,
                {"optimizer.beta2=-0.5"},
                "optimizer.beta2: must be in [0, 1), got -0.5"},
        BadCase{
            kLora, {"optimizer.eps=0"}, "optimizer.eps: must be > 0, got 0"},
        BadCase{kLora,
                {"optimizer.weight_decay=-1"},
                "optimizer.weight_decay: must be >= 0, got -1"},
        BadCase{kLora,
                {"schedule.warmup_steps=-1"},
                "schedule.warmup_steps: must be >= 0, got -1"},
        BadCase{
            kLora,
            {"schedule.warmup_steps=500"},
            "schedule.warmup_steps: must be <= train.max_steps (100), got 500"},
        BadCase{kLora,
                {"schedule.min_lr_ratio=1.5"},
                "schedule.min_lr_ratio: must be in [0, 1], got 1.5"},
        BadCase{kLora, {"data.seq_len=1"}, "data.seq_len: must be >= 2, got 1"},
        BadCase{kLora,
                {"data.val_fraction=1"},
                "data.val_fraction: must be in [0, 1), got 1"},
        BadCase{kLora,
                {"data.val=[v]", "data.val_fraction=0.1"},
                "data.val_fraction: must be 0 when data.val is given, got 0.1"},
        BadCase{kLora,
                {"data.train=[]"},
                "data.train: must list at least one file or directory"},
        BadCase{
            kLora, {"data.train=[a, '']"}, "data.train[1]: must not be empty"},
        BadCase{kLora, {"data.val=['']"}, "data.val[0]: must not be empty"},
        BadCase{kLora,
                {"data.format=chat", "data.chat_template=jinja"},
                "data.chat_template: unknown value \"jinja\" (auto, llama3 "
                "or chatml)"},
        BadCase{kLora,
                {"data.chat_template=llama3"},
                "data.chat_template: is read only with data.format: chat "
                "(remove it)"},
        BadCase{kLora, {"output_dir="}, "output_dir: must be set"},
        BadCase{
            kLora, {"base_model="}, "base_model: must be set for a lora job"},
        BadCase{kLora,
                {"train.batch_size=0"},
                "train.batch_size: must be >= 1, got 0"},
        BadCase{kLora,
                {"train.grad_accum=0"},
                "train.grad_accum: must be >= 1, got 0"},
        BadCase{kLora,
                {"train.max_steps=0"},
                "train.max_steps: train.max_steps or train.epochs must be > 0"},
        BadCase{kLora,
                {"train.max_steps=-5"},
                "train.max_steps: must be >= 0, got -5"},
        BadCase{
            kLora, {"train.epochs=-1"}, "train.epochs: must be >= 0, got -1"},
        BadCase{kLora,
                {"train.grad_clip=-1"},
                "train.grad_clip: must be >= 0, got -1"},
        BadCase{kLora,
                {"train.eval_every=-1"},
                "train.eval_every: must be >= 0, got -1"},
        BadCase{kLora,
                {"train.eval_batches=-1"},
                "train.eval_batches: must be >= 0, got -1"},
        BadCase{kLora,
                {"train.checkpoint_every=-1"},
                "train.checkpoint_every: must be >= 0, got -1"},
        BadCase{kLora,
                {"train.keep_checkpoints=-1"},
                "train.keep_checkpoints: must be >= 0, got -1"},
        BadCase{
            kLora, {"train.threads=-2"}, "train.threads: must be >= 0, got -2"},
        BadCase{kLora,
                {"train.log_every=0"},
                "train.log_every: must be >= 1, got 0"},
        BadCase{kLora,
                {"train.compute=fp16"},
                "train.compute: \"fp16\" is not f32 or bf16"},
        BadCase{kLora,
                {"lora.adapter.rank=0"},
                "lora.adapter.rank: must be >= 1, got 0"},
        BadCase{kLora,
                {"lora.adapter.alpha=0"},
                "lora.adapter.alpha: must be > 0, got 0"},
        BadCase{kLora,
                {"lora.adapter.dropout=1"},
                "lora.adapter.dropout: must be in [0, 1), got 1"},
        BadCase{kLora,
                {"lora.adapter.targets=[q_proj,qproj]"},
                "lora.adapter.targets[1]: unknown module \"qproj\" (did you "
                "mean q_proj?)"},
        BadCase{
            kLora,
            {"lora.adapter.targets=[attn]"},
            "lora.adapter.targets[0]: unknown module \"attn\" (expected one of "
            "q_proj, "
            "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head)"},
        BadCase{kLora,
                {"lora.adapter.targets=[v_proj,up_proj,v_proj]"},
                "lora.adapter.targets[2]: v_proj is listed twice"},
        BadCase{kLora,
                {"lora.adapter.layers=[0,-1]"},
                "lora.adapter.layers[1]: must be >= 0, got -1"},
        BadCase{kLora,
                {"lora.adapter.layers=[1,2,1]"},
                "lora.adapter.layers[2]: layer 1 is listed twice"}));

INSTANTIATE_TEST_SUITE_P(
    Pretrain, ValidateErrorTest,
    testing::Values(
        BadCase{kPretrainContinued,
                {"base_model="},
                "pretrain.model: must be given to train from scratch"},
        BadCase{kPretrain,
                {"base_model=models/m"},
                "pretrain.model: must not be given when base_model is set"},
        BadCase{kPretrain,
                {"pretrain.model.hidden_size=0"},
                "pretrain.model.hidden_size: must be >= 1, got 0"},
        BadCase{kPretrain,
                {"pretrain.model.intermediate_size=0"},
                "pretrain.model.intermediate_size: must be >= 1, got 0"},
        BadCase{kPretrain,
                {"pretrain.model.num_hidden_layers=0"},
                "pretrain.model.num_hidden_layers: must be >= 1, got 0"},
        BadCase{kPretrain,
                {"pretrain.model.num_attention_heads=0"},
                "pretrain.model.num_attention_heads: must be >= 1, got 0"},
        BadCase{kPretrain,
                {"pretrain.model.num_key_value_heads=3"},
                "pretrain.model.num_key_value_heads: must divide "
                "num_attention_heads (8), got 3"},
        BadCase{kPretrain,
                {"pretrain.model.num_key_value_heads=0"},
                "pretrain.model.num_key_value_heads: must be >= 1, got 0"},
        BadCase{kPretrain,
                {"pretrain.model.hidden_size=250"},
                "pretrain.model.hidden_size: must be a multiple of "
                "num_attention_heads (8) "
                "when head_dim is not given, got 250"},
        BadCase{kPretrain,
                {"pretrain.model.head_dim=31"},
                "pretrain.model.head_dim: must be even (RoPE rotates pairs), "
                "got 31"},
        BadCase{kPretrain,
                {"pretrain.model.vocab_size=257"},
                "pretrain.model.vocab_size: must be >= 258 for the byte "
                "tokenizer (256 bytes, BOS, EOS), got 257"},
        BadCase{kPretrain,
                {"pretrain.model.max_position_embeddings=128"},
                "pretrain.model.max_position_embeddings: must be >= "
                "data.seq_len (256), got 128"},
        BadCase{kPretrain,
                {"pretrain.model.rope_theta=0"},
                "pretrain.model.rope_theta: must be > 0, got 0"},
        BadCase{kPretrain,
                {"pretrain.model.rms_norm_eps=-1"},
                "pretrain.model.rms_norm_eps: must be > 0, got -1"},
        BadCase{kPretrain,
                {"pretrain.model.init_std=0"},
                "pretrain.model.init_std: must be > 0, got 0"}));

// Upper bounds (core/spec/limits.h): every numeric field has one, so that
// no spec makes a world allocate without limit (issue 9, item 1: batch_size
// 2000000000 aborted worlds with std::bad_alloc).
INSTANTIATE_TEST_SUITE_P(
    Bounds, ValidateErrorTest,
    testing::Values(
        BadCase{kLora,
                {"train.batch_size=2000000000"},
                "train.batch_size: must be <= 65536, got 2000000000"},
        BadCase{kLora,
                {"train.grad_accum=2000000000"},
                "train.grad_accum: must be <= 65536, got 2000000000"},
        BadCase{kLora,
                {"train.threads=100000"},
                "train.threads: must be <= 1024, got 100000"},
        BadCase{kLora,
                {"lora.adapter.rank=1000000"},
                "lora.adapter.rank: must be <= 4096, got 1000000"},
        BadCase{kLora,
                {"lora.adapter.layers=[5000]"},
                "lora.adapter.layers[0]: must be <= 4095, got 5000"},
        BadCase{kLora,
                {"lora.adapter.alpha=1e300"},
                "lora.adapter.alpha: must be <= 1e+06, got 1e+300"},
        BadCase{kLora,
                {"data.seq_len=1000000"},
                "data.seq_len: must be <= 131072, got 1000000"},
        BadCase{kLora,
                {"train.max_steps=10000000000"},
                "train.max_steps: must be <= 1000000000, got 10000000000"},
        BadCase{kLora,
                {"train.epochs=2000000000"},
                "train.epochs: must be <= 1000000, got 2000000000"},
        BadCase{kLora,
                {"train.eval_every=2000000000"},
                "train.eval_every: must be <= 1000000000"},
        BadCase{kLora,
                {"train.eval_batches=2000000000"},
                "train.eval_batches: must be <= 1000000"},
        BadCase{kLora,
                {"train.checkpoint_every=2000000000"},
                "train.checkpoint_every: must be <= 1000000000"},
        BadCase{kLora,
                {"train.keep_checkpoints=2000000000"},
                "train.keep_checkpoints: must be <= 10000"},
        BadCase{kLora,
                {"train.log_every=2000000000"},
                "train.log_every: must be <= 1000000000"},
        BadCase{kLora,
                {"train.max_steps=2000000000", "schedule.warmup_steps=1500000000"},
                "schedule.warmup_steps: must be <= 1000000000"},
        BadCase{kLora,
                {"train.grad_clip=1e300"},
                "train.grad_clip: must be <= 1e+06"},
        BadCase{kLora, {"optimizer.lr=100"}, "optimizer.lr: must be <= 10"},
        BadCase{kLora, {"optimizer.eps=2"}, "optimizer.eps: must be <= 1"},
        BadCase{kLora,
                {"optimizer.weight_decay=1e9"},
                "optimizer.weight_decay: must be <= 10"},
        BadCase{kLora,
                {"data.val_fraction=0"},
                "data.val_fraction: must be > 0 when data.val is empty"},
        BadCase{kPretrain,
                {"pretrain.model.hidden_size=16777216"},
                "pretrain.model.hidden_size: must be <= 65536, got 16777216"},
        BadCase{kPretrain,
                {"pretrain.model.intermediate_size=16777216"},
                "pretrain.model.intermediate_size: must be <= 262144"},
        BadCase{kPretrain,
                {"pretrain.model.num_hidden_layers=4096"},
                "pretrain.model.num_hidden_layers: must be <= 1024"},
        BadCase{kPretrain,
                {"pretrain.model.num_attention_heads=4096",
                 "pretrain.model.hidden_size=8192"},
                "pretrain.model.num_attention_heads: must be <= 1024"},
        BadCase{kPretrain,
                {"pretrain.model.vocab_size=16777216"},
                "pretrain.model.vocab_size: must be <= 4194304"},
        BadCase{kPretrain,
                {"pretrain.model.head_dim=8192"},
                "pretrain.model.head_dim: must be <= 4096"},
        BadCase{kPretrain,
                {"pretrain.model.max_position_embeddings=2000000000"},
                "pretrain.model.max_position_embeddings: must be <= 1048576"},
        BadCase{kPretrain,
                {"pretrain.model.rope_theta=1e300"},
                "pretrain.model.rope_theta: must be <= 1e+12"},
        BadCase{kPretrain,
                {"pretrain.model.init_std=5"},
                "pretrain.model.init_std: must be <= 1"}));

TEST(ValidateJobSpecTest, InfinityIsOutOfRange) {
  proto::JobSpec spec = Parse(kLora);
  spec.mutable_optimizer()->set_lr(INFINITY);
  spec.mutable_lora()->mutable_adapter()->set_alpha(INFINITY);
  const std::string message(ValidateJobSpec(spec).message());
  EXPECT_THAT(message, HasSubstr("optimizer.lr: must be <= 10, got inf"));
  EXPECT_THAT(message, HasSubstr("lora.adapter.alpha: must be <= 1e+06"));
}

TEST(ValidateJobSpecTest, ValFractionZeroIsFineWithValFiles) {
  EXPECT_TRUE(
      ValidateJobSpec(Parse(kLora, {"data.val=[v]", "data.val_fraction=0"}))
          .ok());
}

TEST(ValidateJobSpecTest, BoundsThemselvesAreAccepted) {
  EXPECT_TRUE(ValidateJobSpec(Parse(kLora, {"train.batch_size=65536",
                                            "train.grad_accum=65536",
                                            "train.threads=1024",
                                            "lora.adapter.rank=4096",
                                            "data.seq_len=131072"}))
                  .ok());
}

TEST(ValidateJobSpecTest, NoKind) {
  proto::JobSpec spec = Parse(kLora);
  spec.clear_lora();
  EXPECT_THAT(ValidateJobSpec(spec).message(), HasSubstr("no job kind given"));
}

TEST(ValidateJobSpecTest, UnknownEnumNumber) {
  proto::JobSpec spec = Parse(kLora);
  spec.mutable_data()->set_format(static_cast<proto::DataSpec::Format>(99));
  EXPECT_THAT(ValidateJobSpec(spec).message(),
              HasSubstr("data.format: unknown value 99"));
}

TEST(ValidateJobSpecTest, ReportsEveryProblem) {
  const absl::Status status = ValidateJobSpec(
      Parse(kLora, {"optimizer.lr=0", "lora.adapter.rank=0", "output_dir="}));
  EXPECT_THAT(status.message(), HasSubstr("optimizer.lr: must be > 0"));
  EXPECT_THAT(status.message(), HasSubstr("lora.adapter.rank: must be >= 1"));
  EXPECT_THAT(status.message(), HasSubstr("output_dir: must be set"));
}

TEST(ValidateJobSpecTest, NanIsOutOfRange) {
  proto::JobSpec spec = Parse(kLora);
  spec.mutable_optimizer()->set_lr(std::nan(""));
  EXPECT_THAT(ValidateJobSpec(spec).message(),
              HasSubstr("optimizer.lr: must be > 0"));
}

// ---- The kind registry.

TEST(JobKindRegistryTest, EveryKindOfTheProtoIsRegistered) {
  std::vector<std::string> members = JobKindNames();
  std::sort(members.begin(), members.end());
  EXPECT_EQ(JobKindRegistry::Global().Names(), members);
  for (const std::string& name : members) {
    const JobKind* kind = JobKindRegistry::Global().Find(name);
    ASSERT_NE(kind, nullptr) << name;
    EXPECT_TRUE(kind->validate) << name;
  }
  EXPECT_EQ(JobKindRegistry::Global().KindOf(Parse(kLora))->name, "lora");
  EXPECT_EQ(JobKindRegistry::Global().KindOf(proto::JobSpec()), nullptr);
}

TEST(JobKindRegistryTest, RefusesNonMembersAndDuplicates) {
  JobKindRegistry kinds;
  EXPECT_TRUE(kinds.Register({.name = "lora"}).ok());
  EXPECT_EQ(kinds.Register({.name = "lora"}).code(),
            absl::StatusCode::kAlreadyExists);
  // Not a member of the kind oneof (every kind DESIGN.md names is one now).
  EXPECT_EQ(kinds.Register({.name = "frobnicate"}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kinds.Register({.name = "data"}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(JobKindRegistryTest, ValidateAndDefaultsComeFromTheKind) {
  JobKindRegistry kinds;
  int defaults_calls = 0;
  ASSERT_TRUE(kinds
                  .Register({.name = "lora",
                             .apply_defaults =
                                 [&](proto::JobSpec* spec) {
                                   ++defaults_calls;
                                   spec->mutable_optimizer()->set_lr(0.25);
                                 },
                             .validate =
                                 [](const proto::JobSpec& spec,
                                    const proto::JobSpec& given,
                                    Problems& problems) {
                                   problems.Add("lora", "refused by the kind");
                                 }})
                  .ok());
  proto::JobSpec spec = Parse(kLora);
  ApplyDefaults(&spec, kinds);
  EXPECT_EQ(defaults_calls, 1);
  EXPECT_DOUBLE_EQ(spec.optimizer().lr(), 0.25);
  // This registry's lora has none of the real one's adapter defaults.
  EXPECT_TRUE(spec.lora().adapter().targets().empty());
  EXPECT_THAT(ValidateJobSpec(Parse(kLora), kinds).message(),
              HasSubstr("lora: refused by the kind"));
  // A member of the oneof that this build does not register.
  EXPECT_THAT(ValidateJobSpec(Parse(kPretrain), kinds).message(),
              HasSubstr("pretrain: job kind pretrain is not available in this "
                        "build"));
}

// The top-level data section is required only by kinds that read it.
constexpr char kNoData[] = R"(
output_dir: runs/x
train: {max_steps: 100}
pretrain:
  model: {hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
          num_attention_heads: 2, vocab_size: 300}
)";

TEST(JobKindRegistryTest, DataIsRequiredOnlyByKindsThatReadIt) {
  // The real pretrain reads data.
  EXPECT_THAT(ValidateJobSpec(Parse(kNoData)).message(),
              HasSubstr("data.train: must list at least one file or "
                        "directory"));
  JobKindRegistry kinds;
  ASSERT_TRUE(kinds.Register({.name = "pretrain", .uses_data = false}).ok());
  proto::JobSpec spec = Parse(kNoData);
  EXPECT_TRUE(ValidateJobSpec(spec, kinds).ok()) << ValidateJobSpec(spec, kinds);
  ApplyDefaults(&spec, kinds);
  EXPECT_FALSE(spec.has_data());
  EXPECT_EQ(spec.train().batch_size(), 8);  // Shared defaults still apply.
  EXPECT_THAT(
      ValidateJobSpec(Parse(kNoData, {"data.train=[x]"}), kinds).message(),
      HasSubstr("data: a pretrain job reads no data section (remove it)"));
}

class CheckSpecPathsTest : public testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    root_ = std::filesystem::path(tmp != nullptr ? tmp : "/tmp") / "spec_paths";
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_ / "model");
    std::filesystem::create_directories(root_ / "data");
    Touch(root_ / "data" / "a.txt");
    Touch(root_ / "tokenizer.json");
  }

  static void Touch(const std::filesystem::path& path) {
    std::FILE* file = std::fopen(path.c_str(), "w");
    ASSERT_NE(file, nullptr);
    std::fclose(file);
  }

  proto::JobSpec Spec() const {
    proto::JobSpec spec = Parse(kLora);
    spec.set_base_model((root_ / "model").string());
    spec.mutable_data()->clear_train();
    spec.mutable_data()->add_train((root_ / "data").string());
    spec.mutable_data()->add_val((root_ / "data" / "a.txt").string());
    return spec;
  }

  std::filesystem::path root_;
};

TEST_F(CheckSpecPathsTest, ExistingPaths) {
  proto::JobSpec spec = Spec();
  EXPECT_TRUE(CheckSpecPaths(spec).ok()) << CheckSpecPaths(spec);
  spec.mutable_data()->set_tokenizer((root_ / "tokenizer.json").string());
  EXPECT_TRUE(CheckSpecPaths(spec).ok()) << CheckSpecPaths(spec);
}

TEST_F(CheckSpecPathsTest, MissingPathsNameKeyAndPath) {
  proto::JobSpec spec = Spec();
  const std::string missing = (root_ / "nope").string();
  spec.mutable_data()->add_train(missing);
  spec.mutable_data()->set_tokenizer(missing);
  spec.set_base_model((root_ / "model2").string());
  const absl::Status status = CheckSpecPaths(spec);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(
      status.message(),
      HasSubstr("data.train[1]: no such file or directory: " + missing));
  EXPECT_THAT(status.message(),
              HasSubstr("data.tokenizer: no such file: " + missing));
  EXPECT_THAT(status.message(), HasSubstr("base_model: no such directory: " +
                                          (root_ / "model2").string()));
}

TEST_F(CheckSpecPathsTest, WrongKindOfPath) {
  proto::JobSpec spec = Spec();
  spec.set_base_model((root_ / "tokenizer.json").string());
  spec.mutable_data()->set_tokenizer((root_ / "model").string());
  const absl::Status status = CheckSpecPaths(spec);
  EXPECT_THAT(status.message(), HasSubstr("base_model: not a directory: "));
  EXPECT_THAT(status.message(),
              HasSubstr("data.tokenizer: is a directory, not a file: "));
}

}  // namespace
}  // namespace sheaf
