#include "core/spec/memory_estimate.h"

#include "core/spec/validate.h"
#include "core/spec/yaml.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

using ::testing::HasSubstr;

// models/tiny-en/config.json.
ModelConfig TinyEn() {
  ModelConfig m;
  m.hidden_size = 256;
  m.num_layers = 4;
  m.head_dim = 32;
  m.vocab_size = 258;
  m.tie_word_embeddings = true;
  m.layers.assign(4, LayerShape{.num_heads = 8, .num_kv_heads = 4, .intermediate = 688});
  return m;
}

proto::JobSpec Spec(const std::vector<std::string>& overrides) {
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(
      "base_model: m\noutput_dir: o\ndata: {train: [d]}\ntrain: {max_steps: 10}\nlora:\n",
      overrides);
  EXPECT_TRUE(spec.ok()) << spec.status();
  ApplyDefaults(&*spec);
  return *spec;
}

// The reference figures are counted by hand from the layer shapes (below),
// not by the code under test.
TEST(MemoryEstimateTest, TinyLoraCountsByHand) {
  const MemoryEstimate e = *EstimateJobMemory(Spec({}), TinyEn());
  // Per layer: 2 norms 2*256, q 256*256, k+v 2*128*256, o 256*256, MLP
  // 3*688*256 = 725504; embedding (tied) 258*256, final norm 256.
  EXPECT_EQ(e.frozen_bytes, 4 * (258 * 256 + 256 + 4 * 725504));
  EXPECT_EQ(e.gathered_bytes, 4 * 2 * 725504);
  // Rank 8 on 7 targets: q,o 8*(256+256), k,v 8*(256+128), gate,up,down
  // 8*(256+688), per layer 36992, 4 layers; 4 values (param, grad, m, v).
  EXPECT_EQ(e.trainable_bytes, 4 * 4 * 4 * 36992);
  // Per token: logits 2*258, embedding 256; per layer 6*256 + 2*256 +
  // 2*128 + 3*688 + 8*256 (probabilities over T = 256) = 6416; LoRA 7*8*4.
  EXPECT_EQ(e.activation_bytes_per_sequence,
            4 * 256 * (2 * 258 + 256 + 4 * 6416 + 7 * 8 * 4));
  EXPECT_EQ(e.batch_size, 8);
  // One rank: everything, 8 sequences, margin and runtime.
  const double one = (e.frozen_bytes + e.gathered_bytes + e.trainable_bytes +
                      8.0 * e.activation_bytes_per_sequence) * kWorkspaceMargin +
                     kRuntimeBytes;
  EXPECT_NEAR(e.PerRank(1), one, 1);
  // Two ranks: half the frozen weights and half the sequences.
  const double two = (e.frozen_bytes / 2.0 + e.gathered_bytes + e.trainable_bytes +
                      4.0 * e.activation_bytes_per_sequence) * kWorkspaceMargin +
                     kRuntimeBytes;
  EXPECT_NEAR(e.PerRank(2), two, 1);
  EXPECT_LT(e.PerRank(2), e.PerRank(1));
  EXPECT_THAT(e.Describe(2), HasSubstr("at 2 ranks"));
  EXPECT_THAT(e.Describe(2), HasSubstr("activations for 4 sequences"));
}

TEST(MemoryEstimateTest, LayersAndLmHeadTargets) {
  const MemoryEstimate e = *EstimateJobMemory(
      Spec({"lora.adapter.targets=[q_proj,lm_head]", "lora.adapter.layers=[1]",
            "lora.adapter.rank=2"}),
      TinyEn());
  // q_proj on layer 1 only: 2*(256+256); lm_head 2*(256+258).
  EXPECT_EQ(e.trainable_bytes, 16 * (2 * 512 + 2 * 514));
}

TEST(MemoryEstimateTest, AttackBatchSizeIsFarAboveAnyRank) {
  // The largest values the bounds let through still produce a finite
  // estimate, and one no rank has.
  const MemoryEstimate e = *EstimateJobMemory(
      Spec({"train.batch_size=65536", "data.seq_len=131072"}), TinyEn());
  EXPECT_GT(e.PerRank(1024), kMaxRankMemoryBytes);
  EXPECT_GT(e.PerRank(1), 0);
}

TEST(MemoryEstimateTest, PretrainTrainsEveryWeightReplicated) {
  absl::StatusOr<proto::JobSpec> spec = ParseJobSpecYaml(
      "output_dir: o\ndata: {train: [d]}\ntrain: {max_steps: 10}\npretrain:\n"
      "  model: {hidden_size: 256, intermediate_size: 688, num_hidden_layers: 4,\n"
      "          num_attention_heads: 8, num_key_value_heads: 4, vocab_size: 258,\n"
      "          tie_word_embeddings: true}\n",
      {});
  ASSERT_TRUE(spec.ok()) << spec.status();
  ApplyDefaults(&*spec);
  const ModelConfig m = ModelConfigFromShape(spec->pretrain().model());
  EXPECT_EQ(m.head_dim, 32);
  const MemoryEstimate e = *EstimateJobMemory(*spec, m);
  EXPECT_EQ(e.frozen_bytes, 0);
  EXPECT_EQ(e.trainable_bytes, 16 * (258 * 256 + 256 + 4 * 725504));
}

TEST(MemoryEstimateTest, FormatBytes) {
  EXPECT_EQ(FormatBytes(12), "12 bytes");
  EXPECT_EQ(FormatBytes(3 << 20), "3.0 MiB");
  EXPECT_EQ(FormatBytes(int64_t{3} << 39), "1.5 TiB");
}

}  // namespace
}  // namespace sheaf
