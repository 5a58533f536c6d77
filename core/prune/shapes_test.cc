#include "core/prune/shapes.h"

#include "gtest/gtest.h"

namespace sheaf::prune {
namespace {

ModelConfig Llama(int L, int C, int I, int nh, int nkv, int V) {
  ModelConfig c;
  c.hidden_size = C;
  c.num_layers = L;
  c.head_dim = C / nh;
  c.vocab_size = V;
  c.layers.assign(static_cast<size_t>(L), LayerShape{nh, nkv, I});
  return c;
}

// The paper's interval: the first 4 and the last 2 layers stay intact.
PruneLayout PaperLayout(int L) {
  absl::StatusOr<PruneLayout> l = ResolveLayout({4, -2}, {4, -2}, L);
  EXPECT_TRUE(l.ok()) << l.status();
  return *l;
}

int64_t PrunedParams(const ModelConfig& c, double p) {
  absl::StatusOr<ModelConfig> pruned = PrunedConfig(c, p, PaperLayout(c.num_layers));
  EXPECT_TRUE(pruned.ok()) << pruned.status();
  return pruned->NumParams();
}

// LoRAM's parameter counts (its tables), recomputed from the rounding rules
// with the interval [4, L-2). Exact integers: any rounding slip shows.
TEST(PruneShapesTest, Llama2_13B_Mha) {
  const ModelConfig c = Llama(40, 5120, 13824, 40, 40, 32000);
  EXPECT_EQ(c.NumParams(), 13015864320);
  EXPECT_EQ(PrunedParams(c, 0.65), 6005662720);
  EXPECT_NEAR(static_cast<double>(c.NumParams()) / 6005662720.0, 2.17, 0.005);
  // MHA rounding: n_h' = floor(40 * 0.35) = 14, I' = 13824 - ceil(8985.6) = 4838.
  const LayerShape s = PrunedLayerShape(c.layers[4], 0.65, true, true);
  EXPECT_EQ(s.num_heads, 14);
  EXPECT_EQ(s.num_kv_heads, 14);
  EXPECT_EQ(s.intermediate, 4838);
}

TEST(PruneShapesTest, Llama2_70B_FourRatios) {
  const ModelConfig c = Llama(80, 8192, 28672, 64, 8, 32000);
  EXPECT_EQ(PrunedParams(c, 0.65), 28099436544);
  EXPECT_EQ(PrunedParams(c, 0.75), 21488738304);
  EXPECT_EQ(PrunedParams(c, 0.85), 16272924672);
  EXPECT_EQ(PrunedParams(c, 0.95), 9662226432);
  // GQA: whole KV groups with their 8 query heads.
  const LayerShape s = PrunedLayerShape(c.layers[10], 0.85, true, true);
  EXPECT_EQ(s.num_kv_heads, 8 - 6);
  EXPECT_EQ(s.num_heads, 16);
  // QLoRAM counts an NF4 parameter as a quarter.
  absl::StatusOr<ModelConfig> q = PrunedConfig(c, 0.85, PaperLayout(80));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(EquivalentParams(*q, 4), 4068231168);
  EXPECT_NEAR(static_cast<double>(c.NumParams()) / 4068231168.0, 16.95, 0.005);
}

TEST(PruneShapesTest, Llama31_70B) {
  const ModelConfig c = Llama(80, 8192, 28672, 64, 8, 128256);
  EXPECT_EQ(PrunedParams(c, 0.85), 17849982976);
  absl::StatusOr<ModelConfig> q = PrunedConfig(c, 0.85, PaperLayout(80));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(EquivalentParams(*q, 4), 4462495744);
  EXPECT_NEAR(static_cast<double>(c.NumParams()) / 4462495744.0, 15.81, 0.005);
}

TEST(PruneShapesTest, IntervalsAndDefaults) {
  absl::StatusOr<std::vector<bool>> d = ResolveRange(LayerRange{}, 5, "mlp_layers");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, (std::vector<bool>{false, true, true, true, false}));
  absl::StatusOr<std::vector<bool>> all = ResolveRange({0, 5}, 5, "x");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, std::vector<bool>(5, true));
  absl::StatusOr<std::vector<bool>> none = ResolveRange({2, 2}, 5, "x");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, std::vector<bool>(5, false));
  absl::StatusOr<std::vector<bool>> bad = ResolveRange({3, 1}, 5, "attn_layers");
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("attn_layers"), std::string::npos);
  EXPECT_FALSE(ResolveRange({0, 6}, 5, "x").ok());
  EXPECT_FALSE(ResolveRange({-6, 5}, 5, "x").ok());
  // Layers outside the intervals keep their shapes; mlp and attn separately.
  const ModelConfig c = Llama(4, 64, 128, 4, 2, 300);
  absl::StatusOr<PruneLayout> layout = ResolveLayout({1, 3}, {2, 4}, 4);
  ASSERT_TRUE(layout.ok());
  absl::StatusOr<ModelConfig> p = PrunedConfig(c, 0.5, *layout);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->layers[0].intermediate, 128);
  EXPECT_EQ(p->layers[1].intermediate, 64);
  EXPECT_EQ(p->layers[1].num_kv_heads, 2);
  EXPECT_EQ(p->layers[2].num_kv_heads, 1);
  EXPECT_EQ(p->layers[2].num_heads, 2);
  EXPECT_EQ(p->layers[3].intermediate, 128);
  EXPECT_EQ(p->layers[3].num_kv_heads, 1);
}

TEST(PruneShapesTest, RatioErrors) {
  const ModelConfig c = Llama(3, 64, 128, 4, 4, 300);
  absl::StatusOr<PruneLayout> layout = ResolveLayout({}, {}, 3);
  ASSERT_TRUE(layout.ok());
  EXPECT_FALSE(PrunedConfig(c, 1.0, *layout).ok());
  EXPECT_FALSE(PrunedConfig(c, -0.1, *layout).ok());
  // floor(4 * 0.01) = 0 heads would remain at p = 0.99.
  absl::StatusOr<ModelConfig> empty = PrunedConfig(c, 0.99, *layout);
  EXPECT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("layer 1"), std::string::npos);
}

}  // namespace
}  // namespace sheaf::prune
