#include "core/lora.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/json.h"
#include "core/safetensors.h"
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

TEST(LoraOptions, ScaleAndValidation) {
  LoraOptions o;
  o.rank = 4;
  o.alpha = 8;
  EXPECT_FLOAT_EQ(o.scale(), 2.0f);
  o.rslora = true;
  EXPECT_FLOAT_EQ(o.scale(), 4.0f);  // 8 / sqrt(4)
  const ModelConfig c = SmallConfig();
  o.targets = {"q_proj", "qkv_proj"};
  EXPECT_NE(std::string(o.Validate(c).message()).find("unknown module \"qkv_proj\""), std::string::npos);
  o.targets = {"q_proj"};
  o.layers = {0, 3};
  EXPECT_NE(std::string(o.Validate(c).message()).find("adapter.layers"), std::string::npos);
  o.layers = {};
  o.rank = 0;
  EXPECT_NE(std::string(o.Validate(c).message()).find("adapter.rank"), std::string::npos);
}

TEST(LoraAdapter, ShapesFollowPerLayerConfigAndInitIsPeft) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.rank = 3;
  o.layers = {0, 2};
  auto a = LoraAdapter::Create(c, o);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)->module(1, Proj::kQ), nullptr);
  const LoraModule* q2 = (*a)->module(2, Proj::kQ);
  ASSERT_NE(q2, nullptr);
  EXPECT_EQ(q2->a.shape, (std::vector<int64_t>{3, 16}));
  EXPECT_EQ(q2->b.shape, (std::vector<int64_t>{8, 3}));  // 2 heads * 4
  const LoraModule* down2 = (*a)->module(2, Proj::kDown);
  EXPECT_EQ(down2->a.shape, (std::vector<int64_t>{3, 10}));
  EXPECT_EQ(down2->b.shape, (std::vector<int64_t>{16, 3}));
  // A ~ U(-1/sqrt(in), 1/sqrt(in)) and not constant; B == 0.
  const float bound = 1.0f / std::sqrt(10.0f);
  float lo = 1, hi = -1;
  for (int64_t i = 0; i < down2->a.numel(); ++i) {
    lo = std::min(lo, down2->a.data[i]);
    hi = std::max(hi, down2->a.data[i]);
  }
  EXPECT_GE(lo, -bound);
  EXPECT_LE(hi, bound);
  EXPECT_LT(lo, hi);
  for (int64_t i = 0; i < down2->b.numel(); ++i) EXPECT_EQ(down2->b.data[i], 0.0f);
  int64_t expect = 0;
  for (int l : {0, 2}) {
    for (int p = 0; p < kNumProj; ++p) {
      expect += 3 * (ProjIn(c, l, static_cast<Proj>(p)) + ProjOut(c, l, static_cast<Proj>(p)));
    }
  }
  EXPECT_EQ((*a)->num_params(), expect);
}

TEST(LoraAdapter, PeftExportHasPeftKeysShapesAndConfig) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.rank = 2;
  o.alpha = 5;
  o.rslora = true;
  o.targets = {"q_proj", "v_proj", "down_proj", "lm_head"};
  o.layers = {1};
  auto a = LoraAdapter::Create(c, o);
  ASSERT_TRUE(a.ok());
  for (LoraModule* m : (*a)->all_modules()) {
    for (int64_t i = 0; i < m->b.numel(); ++i) m->b.data[i] = 0.01f * static_cast<float>(i + m->id);
  }
  const std::string dir = ::testing::TempDir() + "/peft_adapter";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE((*a)->SavePeft(dir, "models/tiny").ok());

  auto st = SafetensorsFile::Open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  std::map<std::string, std::vector<int64_t>> keys;
  for (const auto& t : (*st)->tensors()) keys[t.name] = t.shape;
  const std::map<std::string, std::vector<int64_t>> expected = {
      {"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight", {2, 16}},
      {"base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight", {16, 2}},
      {"base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight", {2, 16}},
      {"base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight", {8, 2}},
      {"base_model.model.model.layers.1.mlp.down_proj.lora_A.weight", {2, 24}},
      {"base_model.model.model.layers.1.mlp.down_proj.lora_B.weight", {16, 2}},
      {"base_model.model.lm_head.lora_A.weight", {2, 16}},
      {"base_model.model.lm_head.lora_B.weight", {20, 2}},
  };
  EXPECT_EQ(keys, expected);

  std::ifstream in(dir + "/adapter_config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  auto cfg = Json::Parse(ss.str());
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->Find("peft_type")->as_string(), "LORA");
  EXPECT_EQ(cfg->Find("task_type")->as_string(), "CAUSAL_LM");
  EXPECT_EQ(cfg->Find("r")->as_int64(), 2);
  EXPECT_DOUBLE_EQ(cfg->Find("lora_alpha")->as_double(), 5.0);
  EXPECT_TRUE(cfg->Find("use_rslora")->as_bool());
  EXPECT_EQ(cfg->Find("base_model_name_or_path")->as_string(), "models/tiny");
  ASSERT_EQ(cfg->Find("target_modules")->size(), 4u);
  ASSERT_EQ(cfg->Find("layers_to_transform")->size(), 1u);
  EXPECT_EQ((*cfg->Find("layers_to_transform"))[0].as_int64(), 1);

  auto back = LoraAdapter::LoadPeft(dir, c);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_FLOAT_EQ((*back)->scale(), (*a)->scale());
  ASSERT_EQ((*back)->params().size(), (*a)->params().size());
  for (int64_t i = 0; i < (*a)->params().size(); ++i) {
    ASSERT_EQ((*back)->params().data()[i], (*a)->params().data()[i]) << i;
  }
}

TEST(LoraAdapter, LoadPeftRejectsMismatchedModel) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.layers = {2};
  auto a = LoraAdapter::Create(c, o);
  ASSERT_TRUE(a.ok());
  const std::string dir = ::testing::TempDir() + "/peft_mismatch";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE((*a)->SavePeft(dir, "x").ok());
  ModelConfig other = c;
  other.layers[2].intermediate = 12;  // a different (e.g. pruned) model
  auto back = LoraAdapter::LoadPeft(dir, other);
  ASSERT_FALSE(back.ok());
  EXPECT_NE(std::string(back.status().message()).find("layers.2.mlp"), std::string::npos)
      << back.status();
  EXPECT_EQ(LoraAdapter::LoadPeft(dir + "/nope", c).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sheaf
