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

TEST(LoraOptions, PatternsMatchLikePeft) {
  LoraOptions o;
  o.rank = 4;
  o.alpha = 8;
  // First match wins, in order; a pattern matches the whole name or a suffix
  // starting after a dot (PEFT: re.match(rf"(.*\.)?({p})$", name)).
  o.rank_pattern = {{"layers.1.self_attn.q_proj", 2}, {"q_proj", 6}, {"lm_head", 3}};
  o.alpha_pattern = {{"mlp\\.(up|down)_proj", 32.0f}};
  EXPECT_EQ(o.RankFor("model.layers.1.self_attn.q_proj"), 2);
  EXPECT_EQ(o.RankFor("model.layers.11.self_attn.q_proj"), 6);  // "layers.1." needs the dot
  EXPECT_EQ(o.RankFor("model.layers.0.self_attn.q_proj"), 6);
  EXPECT_EQ(o.RankFor("model.layers.0.self_attn.k_proj"), 4);
  EXPECT_EQ(o.RankFor("lm_head"), 3);
  EXPECT_EQ(o.AlphaFor("model.layers.2.mlp.up_proj"), 32.0f);
  EXPECT_EQ(o.AlphaFor("model.layers.2.mlp.gate_proj"), 8.0f);
  // "proj" is not a dot-separated suffix of "q_proj": no match.
  o.rank_pattern = {{"proj", 7}};
  EXPECT_EQ(o.RankFor("model.layers.0.self_attn.q_proj"), 4);
  EXPECT_FLOAT_EQ(o.ScaleFor("model.layers.2.mlp.up_proj"), 32.0f / 4.0f);
  o.rslora = true;
  o.rank_pattern = {{"up_proj", 16}};
  EXPECT_FLOAT_EQ(o.ScaleFor("model.layers.2.mlp.up_proj"), 32.0f / 4.0f);  // 32 / sqrt(16)
}

TEST(LoraOptions, BadPatternsAreErrorsNamingThePattern) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.rank_pattern = {{"q_proj(", 2}};
  absl::Status s = o.Validate(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("adapter.rank_pattern[\"q_proj(\"]"), std::string::npos)
      << s;
  o.rank_pattern = {{"q_proj", 0}};
  EXPECT_NE(std::string(o.Validate(c).message()).find("rank must be >= 1"), std::string::npos);
  o.rank_pattern = {};
  o.alpha_pattern = {{"[", 1.0f}};
  EXPECT_NE(std::string(o.Validate(c).message()).find("adapter.alpha_pattern"), std::string::npos);
  o.alpha_pattern = {};
  o.num_experts = 0;
  EXPECT_NE(std::string(o.Validate(c).message()).find("adapter.num_experts"), std::string::npos);
}

// Fuzz finding (tools/fuzz.sh peft_config): target_modules ".**\\.1..."
// kept std::regex backtracking for longer than the fuzzer's 10 s limit, and
// "\\888...8" (a backreference) overflowed a signed integer in libstdc++.
// Patterns that can take exponential time are refused before compiling,
// naming the pattern; the forms PEFT configs use still match.
TEST(LoraOptions, PatternsThatCanTakeExponentialTimeAreRefused) {
  const ModelConfig c = SmallConfig();
  for (const char* bad : {".**\\.1\\.self_attn", "q_proj+*", "(a+)*q_proj", "((ab)*c)+",
                          "(x{2,})+", "(?:a|b*){2,5}", "q\\1", "self_attn\\888888888888888888888",
                          "q{1001}", "q{2,99999999999999999999}"}) {
    LoraOptions o;
    o.rank_pattern = {{bad, 2}};
    absl::Status s = o.Validate(c);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(std::string(s.message()).find("not a supported regular expression"), std::string::npos)
        << bad << ": " << s;
    EXPECT_NE(std::string(s.message()).find(bad), std::string::npos) << s;
  }
  LoraOptions o;
  o.rank_pattern = {{std::string(1025, 'a'), 2}};
  EXPECT_NE(std::string(o.Validate(c).message()).find("longer than 1024"), std::string::npos);
  // Accepted, and matching as PEFT's patterns do.
  o.rank = 4;
  o.rank_pattern = {{"(.*\\.)?layers\\.[0-1]\\..*?q_proj", 2}, {"mlp\\.(up|down)_proj", 3},
                    {"layers\\.\\d+\\.self_attn\\.v_proj{1}", 5}, {"[*+]", 9}, {"x{1000}", 9}};
  EXPECT_TRUE(o.Validate(c).ok()) << o.Validate(c);
  EXPECT_EQ(o.RankFor("model.layers.1.self_attn.q_proj"), 2);
  EXPECT_EQ(o.RankFor("model.layers.0.mlp.down_proj"), 3);
  EXPECT_EQ(o.RankFor("model.layers.0.self_attn.v_proj"), 5);
  EXPECT_EQ(o.RankFor("model.layers.0.self_attn.k_proj"), 4);
}

TEST(LoraAdapter, RankAndAlphaPerModule) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.rank = 4;
  o.alpha = 8;
  o.targets = {"q_proj", "up_proj", "lm_head"};
  o.rank_pattern = {{"layers.2.self_attn.q_proj", 2}, {"lm_head", 1}};
  o.alpha_pattern = {{"up_proj", 2.0f}};
  auto a = LoraAdapter::Create(c, o);
  ASSERT_TRUE(a.ok()) << a.status();
  const LoraModule* q0 = (*a)->module(0, Proj::kQ);
  const LoraModule* q2 = (*a)->module(2, Proj::kQ);
  const LoraModule* up1 = (*a)->module(1, Proj::kUp);
  EXPECT_EQ(q0->a.shape, (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(q2->a.shape, (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(q2->b.shape, (std::vector<int64_t>{8, 2}));
  EXPECT_EQ(q2->lora_rank, 2);
  EXPECT_EQ(q2->name, "model.layers.2.self_attn.q_proj");
  EXPECT_FLOAT_EQ(q0->scale, 2.0f);
  EXPECT_FLOAT_EQ(q2->scale, 4.0f);   // 8 / 2
  EXPECT_FLOAT_EQ(up1->scale, 0.5f);  // 2 / 4
  EXPECT_EQ((*a)->lm_head()->a.shape, (std::vector<int64_t>{1, 16}));
  EXPECT_FLOAT_EQ((*a)->lm_head()->scale, 8.0f);
  EXPECT_FALSE((*a)->uniform());
  EXPECT_EQ((*a)->max_rank(), 4);
  o.rank_pattern = {};
  o.alpha_pattern = {};
  auto plain = LoraAdapter::Create(c, o);
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE((*plain)->uniform());
  for (LoraModule* m : (*plain)->all_modules()) {
    EXPECT_EQ(m->lora_rank, 4);
    EXPECT_EQ(m->scale, (*plain)->scale());
  }
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(LoraAdapter, PatternsRoundTripThroughPeft) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.rank = 3;
  o.alpha = 6;
  o.targets = {"q_proj", "v_proj", "down_proj"};
  o.rank_pattern = {{"v_proj", 5}, {"layers.0.mlp.down_proj", 1}};
  o.alpha_pattern = {{"down_proj", 1.5f}};
  auto a = LoraAdapter::Create(c, o);
  ASSERT_TRUE(a.ok()) << a.status();
  for (LoraModule* m : (*a)->all_modules()) {
    for (int64_t i = 0; i < m->b.numel(); ++i) m->b.data[i] = 0.02f * static_cast<float>(i - m->id);
  }
  const std::string dir = ::testing::TempDir() + "/peft_patterns";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE((*a)->SavePeft(dir, "x").ok());
  auto cfg = Json::Parse(ReadText(dir + "/adapter_config.json"));
  ASSERT_TRUE(cfg.ok());
  const Json* rp = cfg->Find("rank_pattern");
  ASSERT_NE(rp, nullptr);
  ASSERT_EQ(rp->items().size(), 2u);
  EXPECT_EQ(rp->items()[0].first, "v_proj");  // order kept: first match wins
  EXPECT_EQ(rp->items()[0].second.as_int64(), 5);
  EXPECT_DOUBLE_EQ(cfg->Find("alpha_pattern")->Find("down_proj")->as_double(), 1.5);

  auto back = LoraAdapter::LoadPeft(dir, c);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->options().rank_pattern, o.rank_pattern);
  EXPECT_EQ((*back)->options().alpha_pattern, o.alpha_pattern);
  std::vector<LoraModule*> ma = (*a)->all_modules(), mb = (*back)->all_modules();
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    EXPECT_EQ(ma[i]->a.shape, mb[i]->a.shape) << ma[i]->name;
    EXPECT_EQ(ma[i]->scale, mb[i]->scale) << ma[i]->name;
  }
  EXPECT_EQ((*back)->module(0, Proj::kDown)->a.shape, (std::vector<int64_t>{1, 24}));
  EXPECT_FLOAT_EQ((*back)->module(0, Proj::kDown)->scale, 1.5f);
  EXPECT_EQ((*back)->module(2, Proj::kV)->b.shape, (std::vector<int64_t>{4, 5}));
  ASSERT_EQ((*back)->params().size(), (*a)->params().size());
  for (int64_t i = 0; i < (*a)->params().size(); ++i) {
    ASSERT_EQ((*back)->params().data()[i], (*a)->params().data()[i]) << i;
  }
}

// A config written the way PEFT writes it (patterns as {} when unused, or
// with entries), with tensors of the pattern's rank: loads. Before patterns
// were read, the second case failed with a bare shape error.
TEST(LoraAdapter, LoadsPeftWrittenPatterns) {
  const ModelConfig c = SmallConfig();
  const std::string dir = ::testing::TempDir() + "/peft_written";
  for (const bool with_pattern : {false, true}) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const int r_q1 = with_pattern ? 6 : 2;
    SafetensorsWriter w;
    std::vector<float> zeros(16 * 6, 0.0f);
    std::vector<std::vector<int64_t>> shapes;  // outlive Write
    shapes.reserve(6);
    for (int l = 0; l < 3; ++l) {
      const int64_t r = l == 1 ? r_q1 : 2;
      const int64_t out = l == 2 ? 8 : 16;
      shapes.push_back({r, 16});
      w.Add(LoraAdapter::PeftKey(l, Proj::kQ, false), shapes.back(), zeros.data());
      shapes.push_back({out, r});
      w.Add(LoraAdapter::PeftKey(l, Proj::kQ, true), shapes.back(), zeros.data());
    }
    ASSERT_TRUE(w.Write(dir + "/adapter_model.safetensors", {{"format", "pt"}}).ok());
    std::ofstream(dir + "/adapter_config.json")
        << "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q_proj\"],"
        << " \"rank_pattern\": "
        << (with_pattern ? "{\"model.layers.1.self_attn.q_proj\": 6}" : "{}")
        << ", \"alpha_pattern\": " << (with_pattern ? "{\"layers.1.self_attn.q_proj\": 3}" : "{}")
        << "}\n";
    auto a = LoraAdapter::LoadPeft(dir, c);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ((*a)->module(1, Proj::kQ)->lora_rank, r_q1);
    EXPECT_FLOAT_EQ((*a)->module(1, Proj::kQ)->scale, with_pattern ? 0.5f : 2.0f);
    EXPECT_FLOAT_EQ((*a)->module(0, Proj::kQ)->scale, 2.0f);
    EXPECT_EQ((*a)->uniform(), !with_pattern);
  }
  // A pattern of the wrong type names the field.
  std::ofstream(dir + "/adapter_config.json")
      << "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q_proj\"],"
      << " \"rank_pattern\": {\"q_proj\": \"six\"}}\n";
  auto bad = LoraAdapter::LoadPeft(dir, c);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("rank_pattern[\"q_proj\"]"), std::string::npos)
      << bad.status();
}

TEST(LoraAdapter, PlainAdapterConfigHasNoPatternKeys) {
  const ModelConfig c = SmallConfig();
  auto a = LoraAdapter::Create(c, LoraOptions{});
  ASSERT_TRUE(a.ok());
  const std::string dir = ::testing::TempDir() + "/peft_plain";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE((*a)->SavePeft(dir, "x").ok());
  auto cfg = Json::Parse(ReadText(dir + "/adapter_config.json"));
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(cfg->Find("rank_pattern"), nullptr);
  EXPECT_EQ(cfg->Find("alpha_pattern"), nullptr);
}

TEST(LoraAdapter, BankHoldsKExpertsConcatenated) {
  const ModelConfig c = SmallConfig();
  LoraOptions o;
  o.rank = 2;
  o.alpha = 4;
  o.num_experts = 3;
  o.targets = {"k_proj", "down_proj"};
  auto a = LoraAdapter::Create(c, o);
  ASSERT_TRUE(a.ok()) << a.status();
  const LoraModule* k2 = (*a)->module(2, Proj::kK);
  EXPECT_EQ(k2->a.shape, (std::vector<int64_t>{6, 16}));  // [K*R, in]
  EXPECT_EQ(k2->b.shape, (std::vector<int64_t>{4, 6}));   // [out, K*R]
  EXPECT_EQ(k2->num_experts, 3);
  EXPECT_EQ(k2->lora_rank, 2);
  EXPECT_FLOAT_EQ(k2->scale, 2.0f);  // alpha / R of one expert
  EXPECT_EQ((*a)->max_rank(), 6);
  // Every expert is initialised (no all-zero A block), B is zero.
  const LoraModule* d0 = (*a)->module(0, Proj::kDown);
  const float bound = 1.0f / std::sqrt(24.0f);
  for (int k = 0; k < 3; ++k) {
    double norm = 0;
    for (int64_t i = k * 2 * 24; i < (k + 1) * 2 * 24; ++i) {
      EXPECT_LE(std::abs(d0->a.data[i]), bound);
      norm += std::abs(d0->a.data[i]);
    }
    EXPECT_GT(norm, 0.1) << "expert " << k;
  }
  for (int64_t i = 0; i < d0->b.numel(); ++i) EXPECT_EQ(d0->b.data[i], 0.0f);
  EXPECT_EQ((*a)->SavePeft(::testing::TempDir() + "/bank", "x").code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace sheaf
