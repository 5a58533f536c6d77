// Hugging Face loading rules of the model: the expected tensor list, the
// header check before allocation (missing, mis-shaped and unread tensors),
// the sliding-window refusal, and that the new biases change the output.
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

ModelConfig BiasConfig() {
  ModelConfig c;
  c.hidden_size = 8;
  c.num_layers = 2;
  c.head_dim = 4;
  c.vocab_size = 11;
  c.max_position_embeddings = 16;
  c.attention_bias = c.o_proj_bias = c.mlp_bias = true;
  c.layers = {{2, 1, 12}, {4, 2, 6}};
  return c;
}

std::string TempDir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "/" + name;
  std::filesystem::remove_all(d);
  return d;
}

TEST(ModelHf, ExpectedTensorsAreTheModelsTensors) {
  for (bool tied : {false, true}) {
    ModelConfig c = BiasConfig();
    c.tie_word_embeddings = tied;
    auto m = Model::Create(c, NothingTrainable);
    ASSERT_TRUE(m.ok()) << m.status();
    std::vector<Param*> all = (*m)->weights().all();
    std::vector<ExpectedTensor> exp = ExpectedTensors(c);
    ASSERT_EQ(all.size(), exp.size());
    for (size_t i = 0; i < all.size(); ++i) {
      EXPECT_EQ(all[i]->name, exp[i].name);
      EXPECT_EQ(all[i]->value.shape, exp[i].shape) << exp[i].name;
    }
  }
}

// Writes the model's tensors plus `extra` (name, shape) into dir.
void SaveWith(Model& m, const std::string& dir,
              const std::vector<std::pair<std::string, std::vector<int64_t>>>& extra) {
  ASSERT_TRUE(m.Save(dir).ok());
  SafetensorsWriter w;
  for (Param* p : m.weights().all()) w.Add(p->name, p->value.shape, p->value.data);
  std::vector<std::vector<float>> bufs;
  for (const auto& [name, shape] : extra) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    bufs.emplace_back(static_cast<size_t>(n), 0.5f);
    w.Add(name, shape, bufs.back().data());
  }
  ASSERT_TRUE(w.Write(dir + "/model.safetensors", {{"format", "pt"}}).ok());
}

TEST(ModelHf, UnreadTensorsAreErrorsNamingThemWithNamedAllowances) {
  ModelConfig plain = BiasConfig();
  plain.attention_bias = plain.o_proj_bias = plain.mlp_bias = false;
  auto m = Model::Create(plain, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(1, 0.2f);
  // A file with MLP biases under a config without mlp_bias: refused.
  const std::string dir = TempDir("unread");
  SaveWith(**m, dir, {{"model.layers.1.mlp.down_proj.bias", {8}}});
  absl::Status s = CheckWeightsMatchConfig(plain, dir);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.layers.1.mlp.down_proj.bias"), std::string::npos) << s;
  EXPECT_NE(s.message().find("nothing would read"), std::string::npos) << s;
  auto m2 = Model::Create(plain, NothingTrainable);
  ASSERT_TRUE(m2.ok());
  EXPECT_FALSE((*m2)->LoadWeights(dir).ok());
  // inv_freq buffers are a named allowance.
  const std::string ok_dir = TempDir("inv_freq");
  SaveWith(**m, ok_dir, {{"model.layers.0.self_attn.rotary_emb.inv_freq", {2}}});
  EXPECT_TRUE(CheckWeightsMatchConfig(plain, ok_dir).ok());
  EXPECT_TRUE((*m2)->LoadWeights(ok_dir).ok());
}

TEST(ModelHf, ConfigShapesAreCheckedAgainstTheHeaderBeforeAllocation) {
  ModelConfig c = BiasConfig();
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(1, 0.2f);
  const std::string dir = TempDir("shapes");
  ASSERT_TRUE((*m)->Save(dir).ok());
  EXPECT_TRUE(CheckWeightsMatchConfig(c, dir).ok());
  // A config that claims a vocabulary of 2^24 (2^24 x 8 floats = 512 MiB
  // if allocated): refused from the header alone.
  ModelConfig huge = c;
  huge.vocab_size = 1 << 24;
  absl::Status s = CheckWeightsMatchConfig(huge, dir);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.embed_tokens.weight has shape [11, 8]"), std::string::npos) << s;
  // The biases the config asks for must exist.
  ModelConfig no_bias_file = c;
  no_bias_file.mlp_bias = false;
  auto m3 = Model::Create(no_bias_file, NothingTrainable);
  ASSERT_TRUE(m3.ok());
  const std::string dir3 = TempDir("nobias");
  ASSERT_TRUE((*m3)->Save(dir3).ok());
  s = CheckWeightsMatchConfig(c, dir3);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("mlp.gate_proj.bias is missing"), std::string::npos) << s;
}

TEST(ModelHf, BiasesChangeTheOutputAndSurviveSaveLoad) {
  ModelConfig c = BiasConfig();
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(3, 0.3f);
  std::vector<int32_t> tokens = {1, 4, 7, 2, 9, 3};
  auto base = (*m)->Forward(tokens.data(), tokens.data(), 1, 6, nullptr, false);
  ASSERT_TRUE(base.ok());
  // Each new bias moves the loss.
  for (int which = 0; which < 4; ++which) {
    LayerWeights& l = (*m)->weights().layers[1];
    Param* p = which == 0 ? &l.o_bias : which == 1 ? &l.gate_bias : which == 2 ? &l.up_bias : &l.down_bias;
    for (int64_t i = 0; i < p->value.numel(); ++i) p->value.data[i] = 0.7f;
    auto moved = (*m)->Forward(tokens.data(), tokens.data(), 1, 6, nullptr, false);
    ASSERT_TRUE(moved.ok());
    EXPECT_GT(std::abs(moved->loss_sum - base->loss_sum), 1e-4) << p->name;
    for (int64_t i = 0; i < p->value.numel(); ++i) p->value.data[i] = 0.0f;
  }
  (*m)->weights().layers[0].o_bias.value.data[2] = 0.25f;
  const std::string dir = TempDir("bias_roundtrip");
  ASSERT_TRUE((*m)->Save(dir).ok());
  auto cfg = LoadModelConfig(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->o_proj_bias && cfg->mlp_bias);
  auto back = Model::Create(*cfg, NothingTrainable);
  ASSERT_TRUE(back.ok());
  ASSERT_TRUE((*back)->LoadWeights(dir).ok());
  EXPECT_EQ((*back)->weights().layers[0].o_bias.value.data[2], 0.25f);
}

TEST(ModelHf, SlidingWindowIsRefusedWhereItWouldApply) {
  ModelConfig c = BiasConfig();
  c.sliding_window = 4;
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5};
  // T = 4: the window masks nothing (positions differ by at most 3).
  EXPECT_TRUE((*m)->Forward(tokens.data(), nullptr, 1, 4, nullptr, false).ok());
  auto s = (*m)->Forward(tokens.data(), nullptr, 1, 5, nullptr, false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("sliding_window 4"), std::string::npos) << s.status();
}

}  // namespace
}  // namespace sheaf
