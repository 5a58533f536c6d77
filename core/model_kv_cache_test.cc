// Incremental decoding with a KV cache (Model::ForwardCached) against the
// full forward it replaces: for every position t, the cached logits of
// token t (prompt as one block, then one token per call) equal row t of one
// full Forward over the whole sequence, and greedy generation with the
// cache picks the same tokens as greedy generation that reruns the whole
// sequence each step.
//
// Tolerance: both paths compute the same function in fp32; they differ in
// summation order only (the cache's attention sums in double over the
// cached rows, the full path uses the tiled fp32 kernel; the GEMMs see
// n = 1 instead of n = T rows). That is ~1e-6 relative per layer; logits
// are compared at 1e-4 of their largest magnitude (a wrong RoPE position,
// a missed cached row or an off-by-one mask moves them by 1e-2 or more,
// which the test also checks by feeding a wrong position).
#include <cmath>
#include <random>
#include <set>

#include "core/model.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

ModelConfig CacheConfig(bool scaled_rope) {
  ModelConfig c;
  c.hidden_size = 64;
  c.num_layers = 2;
  c.head_dim = 16;
  c.vocab_size = 97;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 100.0f;
  c.tie_word_embeddings = false;
  c.attention_bias = true;
  c.layers = {{4, 2, 100}, {4, 1, 72}};  // GQA then MQA
  if (scaled_rope) {
    c.rope_scaling.type = RopeScaling::Type::kRopeScalingLlama3;
    c.rope_scaling.factor = 4.0f;
    c.rope_scaling.original_max_position_embeddings = 16;
  }
  return c;
}

struct Loaded {
  std::unique_ptr<Model> model;
  std::unique_ptr<LoraAdapter> adapter;
};

Loaded Make(const ModelConfig& c) {
  Loaded s;
  auto m = Model::Create(c, NothingTrainable);
  EXPECT_TRUE(m.ok()) << m.status();
  s.model = std::move(*m);
  s.model->InitRandom(5, 0.3f);
  LoraOptions lo;
  lo.rank = 4;
  lo.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "lm_head"};
  auto a = LoraAdapter::Create(c, lo);
  EXPECT_TRUE(a.ok()) << a.status();
  s.adapter = std::move(*a);
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 0.2f);
  for (LoraModule* mod : s.adapter->all_modules()) {
    for (int64_t i = 0; i < mod->b.numel(); ++i) mod->b.data[i] = normal(rng);
  }
  return s;
}

double MaxAbs(const float* x, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(static_cast<double>(x[i])));
  return m;
}

class KvCacheTest : public ::testing::TestWithParam<bool> {};  // scaled RoPE or not

TEST_P(KvCacheTest, CachedLogitsEqualTheFullForwardAtEveryPosition) {
  const ModelConfig c = CacheConfig(GetParam());
  Loaded s = Make(c);
  constexpr int L = 41, P = 7;  // the "prompt" is the first P tokens
  std::mt19937 rng(3);
  std::vector<int32_t> tokens(L);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % c.vocab_size);
  const int V = c.vocab_size;

  ASSERT_TRUE(s.model->Forward(tokens.data(), nullptr, 1, L, s.adapter.get(), false).ok());
  std::vector<float> full(s.model->logits(), s.model->logits() + int64_t{L} * V);
  const double scale = MaxAbs(full.data(), int64_t{L} * V);
  ASSERT_GT(scale, 0.1);

  auto cache = s.model->NewKvCache(L);
  ASSERT_TRUE(cache.ok()) << cache.status();
  double worst = 0;
  ASSERT_TRUE(s.model->ForwardCached(tokens.data(), P, s.adapter.get(), *cache).ok());
  for (int64_t i = 0; i < int64_t{P} * V; ++i) {
    worst = std::max(worst, std::fabs(double{s.model->logits()[i]} - full[i]));
  }
  for (int t = P; t < L; ++t) {
    ASSERT_TRUE(s.model->ForwardCached(&tokens[t], 1, s.adapter.get(), *cache).ok());
    for (int v = 0; v < V; ++v) {
      worst = std::max(worst, std::fabs(double{s.model->logits()[v]} - full[int64_t{t} * V + v]));
    }
  }
  EXPECT_EQ(cache->len, L);
  std::printf("max |cached - full| logit %.3g (largest logit %.3g)\n", worst, scale);
  EXPECT_LT(worst, 1e-4 * scale);

  // The cache is full: one more token is refused, naming the length.
  absl::Status full_err = s.model->ForwardCached(tokens.data(), 1, s.adapter.get(), *cache);
  EXPECT_EQ(full_err.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(full_err.message().find("KV cache full"), std::string::npos) << full_err;

  // Sensitivity: the last token at a wrong position (the cache rewound by
  // one, so it sits at L - 2 attending to L - 1 rows) differs visibly.
  cache->len = L - 2;
  ASSERT_TRUE(s.model->ForwardCached(&tokens[L - 1], 1, s.adapter.get(), *cache).ok());
  double moved = 0;
  for (int v = 0; v < V; ++v) {
    moved = std::max(moved, std::fabs(double{s.model->logits()[v]} - full[int64_t{L - 1} * V + v]));
  }
  EXPECT_GT(moved, 1e-2 * scale);
}

TEST_P(KvCacheTest, GreedyGenerationPicksTheSameTokensWithAndWithoutTheCache) {
  const ModelConfig c = CacheConfig(GetParam());
  Loaded s = Make(c);
  const int V = c.vocab_size;
  const std::vector<int32_t> prompt = {3, 14, 15, 92, 65};
  constexpr int kNew = 30;
  auto argmax = [&](const float* row) {
    return static_cast<int32_t>(std::max_element(row, row + V) - row);
  };
  std::vector<int32_t> plain = prompt;
  for (int i = 0; i < kNew; ++i) {
    const int T = static_cast<int>(plain.size());
    ASSERT_TRUE(s.model->Forward(plain.data(), nullptr, 1, T, s.adapter.get(), false).ok());
    plain.push_back(argmax(s.model->logits() + int64_t{T - 1} * V));
  }
  auto cache = s.model->NewKvCache(static_cast<int>(prompt.size()) + kNew);
  ASSERT_TRUE(cache.ok());
  std::vector<int32_t> cached = prompt;
  ASSERT_TRUE(s.model->ForwardCached(prompt.data(), static_cast<int>(prompt.size()),
                                     s.adapter.get(), *cache).ok());
  cached.push_back(argmax(s.model->logits() + int64_t{static_cast<int>(prompt.size()) - 1} * V));
  for (int i = 1; i < kNew; ++i) {
    ASSERT_TRUE(s.model->ForwardCached(&cached.back(), 1, s.adapter.get(), *cache).ok());
    cached.push_back(argmax(s.model->logits()));
  }
  EXPECT_EQ(cached, plain);
  // The generated tokens are not one token repeated (the check has teeth).
  std::set<int32_t> distinct(plain.begin() + static_cast<long>(prompt.size()), plain.end());
  EXPECT_GT(distinct.size(), 3u);
}

INSTANTIATE_TEST_SUITE_P(Rope, KvCacheTest, ::testing::Bool());

TEST(KvCache, BadRequestsAreRefused) {
  const ModelConfig c = CacheConfig(false);
  Loaded s = Make(c);
  EXPECT_FALSE(s.model->NewKvCache(0).ok());
  absl::StatusOr<Model::KvCache> big = s.model->NewKvCache(c.max_position_embeddings + 1);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.status().message().find("max_position_embeddings"), std::string::npos);
  auto cache = s.model->NewKvCache(8);
  ASSERT_TRUE(cache.ok());
  const int32_t bad = c.vocab_size;
  absl::Status st = s.model->ForwardCached(&bad, 1, s.adapter.get(), *cache);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("outside the vocabulary"), std::string::npos) << st;
  EXPECT_EQ(cache->len, 0);
}

}  // namespace
}  // namespace sheaf
