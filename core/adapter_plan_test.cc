#include "core/adapter_plan.h"

#include <vector>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

ModelConfig SmallConfig() {
  ModelConfig c;
  c.hidden_size = 16;
  c.num_layers = 3;
  c.head_dim = 4;
  c.vocab_size = 20;
  c.layers = {{4, 2, 24}, {4, 2, 24}, {2, 1, 10}};
  return c;
}

std::unique_ptr<LoraAdapter> MakeAdapter(const ModelConfig& c, LoraOptions o) {
  auto a = LoraAdapter::Create(c, o);
  EXPECT_TRUE(a.ok()) << a.status();
  return std::move(*a);
}

TEST(AdapterPlan, ForAdapterViewsEveryModuleAsOnePlainEntry) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.rank = 3;
  o.alpha = 6;
  o.dropout = 0.1f;
  o.targets = {"q_proj", "down_proj", "lm_head"};
  o.layers = {0, 2};
  o.alpha_pattern = {{"lm_head", 9.0f}};
  auto a = MakeAdapter(c, o);
  a->set_dropout_seed(77);
  a->set_dropout_row_offset(40);
  auto plan = AdapterPlan::ForAdapter(a.get(), c.num_layers);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->Validate(c, 10).ok()) << plan->Validate(c, 10);
  EXPECT_EQ(plan->num_entries(), 5);
  EXPECT_EQ(plan->dropout_seed(), 77u);
  EXPECT_EQ(plan->dropout_row_offset(), 40);
  EXPECT_TRUE(plan->entries(1, Proj::kQ).empty());
  EXPECT_TRUE(plan->entries(0, Proj::kK).empty());
  for (int l : {0, 2}) {
    for (Proj p : {Proj::kQ, Proj::kDown}) {
      const LoraModule* m = a->module(l, p);
      ASSERT_EQ(plan->entries(l, p).size(), 1u);
      const AdapterEntry& e = plan->entries(l, p)[0];
      EXPECT_EQ(e.a.data, m->a.data);
      EXPECT_EQ(e.b.data, m->b.data);
      EXPECT_EQ(e.da.data, m->da.data);
      EXPECT_EQ(e.db.data, m->db.data);
      EXPECT_TRUE(e.plain());
      EXPECT_TRUE(e.trainable());
      EXPECT_EQ(e.scale, m->scale);
      EXPECT_EQ(e.dropout, 0.1f);
      EXPECT_EQ(e.dropout_stream, m->id);  // today's mask streams
    }
  }
  ASSERT_EQ(plan->lm_head().size(), 1u);
  EXPECT_EQ(plan->lm_head()[0].scale, 3.0f);  // 9 / 3
  EXPECT_EQ(plan->lm_head()[0].dropout_stream, a->lm_head()->id);

  auto none = AdapterPlan::ForAdapter(nullptr, c.num_layers);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  EXPECT_TRUE(none->Validate(c).ok());
}

TEST(AdapterPlan, StackingAFrozenAdapterUnderATrainableOne) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.rank = 2;
  o.dropout = 0.2f;
  o.targets = {"q_proj", "v_proj"};
  auto earlier = MakeAdapter(c, o);
  o.targets = {"v_proj", "up_proj"};
  o.rank = 4;
  o.seed = 5;
  auto current = MakeAdapter(c, o);
  current->set_dropout_seed(9);
  AdapterPlan plan(c.num_layers);
  ASSERT_TRUE(plan.AddFrozenAdapter(*earlier, 0.5f).ok());
  plan.set_dropout(current->dropout_seed(), current->dropout_row_offset());
  ASSERT_TRUE(plan.AddAdapter(*current).ok());
  ASSERT_TRUE(plan.Validate(c, 8).ok()) << plan.Validate(c, 8);
  EXPECT_EQ(plan.dropout_seed(), 9u);
  for (int l = 0; l < c.num_layers; ++l) {
    ASSERT_EQ(plan.entries(l, Proj::kQ).size(), 1u);
    ASSERT_EQ(plan.entries(l, Proj::kV).size(), 2u);  // frozen first, then trainable
    ASSERT_EQ(plan.entries(l, Proj::kUp).size(), 1u);
    const AdapterEntry& frozen = plan.entries(l, Proj::kV)[0];
    const AdapterEntry& trainable = plan.entries(l, Proj::kV)[1];
    EXPECT_FALSE(frozen.trainable());
    EXPECT_FALSE(frozen.da);
    EXPECT_EQ(frozen.dropout, 0.0f);
    EXPECT_FLOAT_EQ(frozen.scale, 0.5f * earlier->scale());
    EXPECT_EQ(frozen.a.data, earlier->module(l, Proj::kV)->a.data);
    EXPECT_TRUE(trainable.trainable());
    EXPECT_EQ(trainable.dropout, 0.2f);
    EXPECT_EQ(trainable.lora_rank, 4);
    EXPECT_EQ(trainable.db.data, current->module(l, Proj::kV)->db.data);
    // Streams of the second adapter continue after the first's 6 modules.
    EXPECT_EQ(trainable.dropout_stream, 6 + current->module(l, Proj::kV)->id);
  }
}

TEST(AdapterPlan, BankEntriesShareOneGate) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.rank = 2;
  o.num_experts = 3;
  o.targets = {"q_proj", "o_proj"};
  auto bank = MakeAdapter(c, o);
  const int B = 4, T = 5;
  std::vector<float> g(B * 3, 1.0f / 3), dg(B * 3, 0.0f);
  AdapterGate gate{Tensor{g.data(), {B, 3}}, Tensor{dg.data(), {B, 3}}, T,
                   AdapterMixing::kAdapterMixingWeights};
  AdapterPlan plan(c.num_layers);
  ASSERT_TRUE(plan.AddBank(*bank, gate).ok());
  EXPECT_TRUE(plan.Validate(c, B * T).ok()) << plan.Validate(c, B * T);
  // 5 samples of T rows need 5 gate rows.
  absl::Status short_gate = plan.Validate(c, (B + 1) * T);
  EXPECT_EQ(short_gate.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(short_gate.message()).find("layer 0 q_proj entry 0: gate has 4 rows"),
            std::string::npos)
      << short_gate;
  for (int l = 0; l < c.num_layers; ++l) {
    for (Proj p : {Proj::kQ, Proj::kO}) {
      ASSERT_EQ(plan.entries(l, p).size(), 1u);
      const AdapterEntry& e = plan.entries(l, p)[0];
      EXPECT_EQ(e.num_experts, 3);
      EXPECT_EQ(e.kr(), 6);
      EXPECT_EQ(e.gate.data, g.data());
      EXPECT_EQ(e.dgate.data, dg.data());
      EXPECT_EQ(e.rows_per_group, T);
      EXPECT_FALSE(e.plain());
    }
  }
  // A bank without a gate, or a gate for another K, is refused.
  AdapterPlan other(c.num_layers);
  EXPECT_EQ(other.AddAdapter(*bank).code(), absl::StatusCode::kInvalidArgument);
  AdapterGate wrong = gate;
  wrong.gate = Tensor{g.data(), {6, 2}};
  wrong.dgate = Tensor{};
  EXPECT_NE(std::string(other.AddBank(*bank, wrong).message()).find("must be [groups, 3]"),
            std::string::npos);
  wrong = gate;
  wrong.rows_per_group = 0;
  EXPECT_FALSE(other.AddBank(*bank, wrong).ok());
}

TEST(AdapterPlan, ValidateNamesTheSiteOfABadEntry) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.targets = {"k_proj"};
  auto a = MakeAdapter(c, o);
  auto plan = AdapterPlan::ForAdapter(a.get(), c.num_layers);
  ASSERT_TRUE(plan.ok());
  // Layer 2's k_proj is [4, 16]; layer 0's A would be [8, 16] too but its B
  // is [8, 8]: swapping them is a shape error.
  plan->entries(2, Proj::kK)[0].b = a->module(0, Proj::kK)->b;
  absl::Status s = plan->Validate(c);
  EXPECT_NE(std::string(s.message()).find("layer 2 k_proj entry 0: B_cat is [8, 8]"),
            std::string::npos)
      << s;
  auto wrong_layers = AdapterPlan::ForAdapter(a.get(), 2);
  EXPECT_EQ(wrong_layers.status().code(), absl::StatusCode::kInvalidArgument);
  AdapterPlan p2(c.num_layers + 1);
  EXPECT_FALSE(p2.Validate(c).ok());
  plan = AdapterPlan::ForAdapter(a.get(), c.num_layers);
  plan->entries(0, Proj::kK)[0].dropout = 1.0f;
  EXPECT_NE(std::string(plan->Validate(c).message()).find("dropout 1 is not in [0, 1)"),
            std::string::npos);
}

TEST(AdapterPlan, LayoutDependsOnShapesNotOnWhichAdapter) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.targets = {"q_proj", "lm_head"};
  auto a1 = MakeAdapter(c, o);
  o.seed = 3;
  auto a2 = MakeAdapter(c, o);
  const auto l1 = AdapterPlan::ForAdapter(a1.get(), 3)->Layout();
  EXPECT_EQ(l1, AdapterPlan::ForAdapter(a1.get(), 3)->Layout());  // rebuilt: same plan
  EXPECT_EQ(l1, AdapterPlan::ForAdapter(a2.get(), 3)->Layout());
  o.dropout = 0.1f;
  auto with_dropout = MakeAdapter(c, o);
  EXPECT_NE(l1, AdapterPlan::ForAdapter(with_dropout.get(), 3)->Layout());
  o.dropout = 0.0f;
  o.rank_pattern = {{"layers.1.self_attn.q_proj", 2}};
  auto other_rank = MakeAdapter(c, o);
  EXPECT_NE(l1, AdapterPlan::ForAdapter(other_rank.get(), 3)->Layout());
  EXPECT_NE(l1, AdapterPlan(3).Layout());
  AdapterPlan stacked(3);
  ASSERT_TRUE(stacked.AddFrozenAdapter(*a1).ok());
  ASSERT_TRUE(stacked.AddAdapter(*a2).ok());
  EXPECT_NE(l1, stacked.Layout());
}

}  // namespace
}  // namespace sheaf
