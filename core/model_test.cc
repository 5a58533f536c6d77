// Whole-model checks: finite-difference gradients (adapter and all-weights),
// GQA / tied / bias / per-layer-shape variants, frozen weights get no grads,
// LoRA merge equivalence.
#include "core/model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <functional>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

struct Variant {
  const char* name;
  int heads0, kv0, inter0;
  int heads1, kv1, inter1;
  bool tied, bias;
  // Llama attention_bias + mlp_bias (o_proj and MLP biases) and llama3 RoPE
  // scaling.
  bool llama_bias = false;
};

ModelConfig MakeConfig(const Variant& v) {
  ModelConfig c;
  c.hidden_size = 8;
  c.num_layers = 2;
  c.head_dim = 4;
  c.vocab_size = 11;
  c.max_position_embeddings = 16;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 100.0f;
  c.tie_word_embeddings = v.tied;
  c.attention_bias = v.bias;
  if (v.llama_bias) {
    c.o_proj_bias = c.mlp_bias = true;
    // original 8 with HD 4, theta 100: one frequency is scaled, the other
    // is in the smoothed band.
    c.rope_scaling.type = RopeScaling::Type::kRopeScalingLlama3;
    c.rope_scaling.factor = 4;
    c.rope_scaling.original_max_position_embeddings = 8;
  }
  c.layers = {{v.heads0, v.kv0, v.inter0}, {v.heads1, v.kv1, v.inter1}};
  return c;
}

const Variant kVariants[] = {
    {"mha_untied", 2, 2, 12, 2, 2, 12, false, false},
    {"gqa_tied_bias", 4, 2, 12, 4, 2, 12, true, true},
    {"mqa_untied_bias_perlayer", 4, 1, 12, 2, 1, 6, false, true},
    {"llama_o_mlp_bias_rope_llama3", 4, 2, 12, 2, 1, 6, false, true, true},
};

constexpr int kB = 2, kT = 5;

struct Batch {
  std::vector<int32_t> tokens, targets;
};

Batch MakeBatch(int V, uint32_t seed) {
  std::mt19937 rng(seed);
  Batch b;
  for (int i = 0; i < kB * kT; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng() % V));
    b.targets.push_back(static_cast<int32_t>(rng() % V));
  }
  b.targets[3] = kIgnoreIndex;  // ignored rows take part in nothing
  return b;
}

void Randomise(const Tensor& t, std::mt19937& rng, float std) {
  std::normal_distribution<float> n(0.0f, std);
  for (int64_t i = 0; i < t.numel(); ++i) t.data[i] = n(rng);
}

// Summed loss (double) at the current weights.
double LossSum(Model& m, const Batch& b, LoraAdapter* a) {
  auto s = m.Forward(b.tokens.data(), b.targets.data(), kB, kT, a, /*training=*/true);
  EXPECT_TRUE(s.ok()) << s.status();
  return s->loss_sum;
}

// Normwise relative error between the analytic gradient and central
// differences over (a sample of) the elements of `value`.
//
// Tolerance: the forward runs in fp32, so each loss carries round-off of
// roughly 1e-7 · |L| · depth ≈ 1e-5 for |L| ≈ 25; divided by 2·eps = 4e-3 that
// is ≈ 3e-3 absolute per element, against gradient norms of 1 to 60. The
// O(eps²) truncation term matters with weights of std 0.5 (sharp losses):
// measured, the error grows 4x from eps 5e-3 to 1e-2, so eps = 2e-3 keeps it
// under 1e-2. A normwise bound of 2e-2 leaves margin for both and still
// catches any wrong term (a missing or mis-scaled term gives errors >= 0.1).
double GradError(Model& m, const Batch& b, LoraAdapter* a, const Tensor& value,
                 const Tensor& grad, int max_samples, std::mt19937& rng) {
  const float eps = 2e-3f;
  double num = 0, den = 0;
  const int64_t n = value.numel();
  std::vector<int64_t> idx;
  if (n <= max_samples) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
  } else {
    for (int i = 0; i < max_samples; ++i) idx.push_back(static_cast<int64_t>(rng() % n));
  }
  for (int64_t i : idx) {
    const float orig = value.data[i];
    value.data[i] = orig + eps;
    const double lp = LossSum(m, b, a);
    value.data[i] = orig - eps;
    const double lm = LossSum(m, b, a);
    value.data[i] = orig;
    const double fd = (lp - lm) / (2.0 * eps);
    num += (fd - grad.data[i]) * (fd - grad.data[i]);
    den += fd * fd;
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-6);
}

void ComputeGrads(Model& m, const Batch& b, LoraAdapter* a) {
  m.ZeroGrads();
  if (a) a->grads().Zero();
  ASSERT_TRUE(m.Forward(b.tokens.data(), b.targets.data(), kB, kT, a, true).ok());
  ASSERT_TRUE(m.Backward(1.0f).ok());  // gradient of the summed loss
}

class ModelVariantTest : public ::testing::TestWithParam<Variant> {};

TEST_P(ModelVariantTest, AdapterGradientsMatchFiniteDifferences) {
  const ModelConfig c = MakeConfig(GetParam());
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok()) << m.status();
  (*m)->InitRandom(1, 0.5f);
  LoraOptions lo;
  lo.rank = 2;
  lo.alpha = 4;
  lo.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"};
  auto a = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(a.ok()) << a.status();
  std::mt19937 rng(7);
  for (LoraModule* mod : (*a)->all_modules()) Randomise(mod->b, rng, 0.5f);  // B = 0 hides dA
  const Batch b = MakeBatch(c.vocab_size, 3);
  ComputeGrads(**m, b, a->get());
  EXPECT_EQ((*m)->grads_arena().size(), 0) << "frozen base must have no gradient buffer";
  for (LoraModule* mod : (*a)->all_modules()) {
    EXPECT_LT(GradError(**m, b, a->get(), mod->a, mod->da, 24, rng), 2e-2) << "A of module " << mod->id;
    EXPECT_LT(GradError(**m, b, a->get(), mod->b, mod->db, 24, rng), 2e-2) << "B of module " << mod->id;
  }
}

TEST_P(ModelVariantTest, AllWeightGradientsMatchFiniteDifferences) {
  const ModelConfig c = MakeConfig(GetParam());
  auto m = Model::Create(c, EverythingTrainable);
  ASSERT_TRUE(m.ok()) << m.status();
  (*m)->InitRandom(2, 0.5f);
  std::mt19937 rng(9);
  // Norm weights of 1 and zero biases are a special point; move off it.
  for (Param* p : (*m)->weights().all()) {
    if (p->name.find("norm") != std::string::npos || p->name.ends_with(".bias")) {
      for (int64_t i = 0; i < p->value.numel(); ++i) p->value.data[i] += 0.3f * static_cast<float>(static_cast<int>(rng() % 7) - 3) / 3.0f;
    }
  }
  EXPECT_EQ((*m)->frozen_arena().size(), 0);
  const Batch b = MakeBatch(c.vocab_size, 4);
  ComputeGrads(**m, b, nullptr);
  for (Param* p : (*m)->weights().all()) {
    ASSERT_TRUE(p->trainable()) << p->name;
    EXPECT_LT(GradError(**m, b, nullptr, p->value, p->grad, 24, rng), 2e-2) << p->name;
  }
}

TEST_P(ModelVariantTest, MergedAdapterGivesSameLogitsAndUnmergeRestores) {
  const ModelConfig c = MakeConfig(GetParam());
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(3, 0.5f);
  LoraOptions lo;
  lo.rank = 3;
  lo.alpha = 6;
  lo.rslora = true;
  lo.layers = {1};
  if (!c.tie_word_embeddings) lo.targets.push_back("lm_head");
  auto a = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(a.ok());
  std::mt19937 rng(5);
  for (LoraModule* mod : (*a)->all_modules()) Randomise(mod->b, rng, 0.5f);
  const Batch b = MakeBatch(c.vocab_size, 6);
  const std::vector<float> w_before((*m)->frozen_arena().data(),
                                    (*m)->frozen_arena().data() + (*m)->frozen_arena().size());
  ASSERT_TRUE((*m)->Forward(b.tokens.data(), nullptr, kB, kT, a->get(), false).ok());
  const int64_t n = int64_t{kB} * kT * c.vocab_size;
  std::vector<float> with_adapter((*m)->logits(), (*m)->logits() + n);
  ASSERT_TRUE((*m)->Forward(b.tokens.data(), nullptr, kB, kT, nullptr, false).ok());
  std::vector<float> base((*m)->logits(), (*m)->logits() + n);
  ASSERT_TRUE((*m)->MergeAdapter(**a).ok());
  ASSERT_TRUE((*m)->Forward(b.tokens.data(), nullptr, kB, kT, nullptr, false).ok());
  double max_diff = 0, max_change = 0;
  for (int64_t i = 0; i < n; ++i) {
    max_diff = std::max(max_diff, std::fabs(double{(*m)->logits()[i]} - with_adapter[i]));
    max_change = std::max(max_change, std::fabs(double{with_adapter[i]} - base[i]));
  }
  // fp32 sums of a few dozen terms of size ~1 differ by ~1e-6 in order.
  EXPECT_LT(max_diff, 1e-4);
  EXPECT_GT(max_change, 1e-2) << "the adapter must change the logits for this test to mean anything";
  ASSERT_TRUE((*m)->UnmergeAdapter(**a).ok());
  double max_w = 0;
  for (size_t i = 0; i < w_before.size(); ++i) {
    max_w = std::max(max_w, std::fabs(double{(*m)->frozen_arena().data()[i]} - w_before[i]));
  }
  EXPECT_LT(max_w, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Variants, ModelVariantTest, ::testing::ValuesIn(kVariants),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Model, DropoutGradientsMatchFiniteDifferencesWithFixedMask) {
  const ModelConfig c = MakeConfig(kVariants[1]);
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(4, 0.5f);
  LoraOptions lo;
  lo.rank = 2;
  lo.dropout = 0.3f;
  auto a = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(a.ok());
  (*a)->set_dropout_seed(1234);
  std::mt19937 rng(8);
  for (LoraModule* mod : (*a)->all_modules()) Randomise(mod->b, rng, 0.5f);
  const Batch b = MakeBatch(c.vocab_size, 10);
  ComputeGrads(**m, b, a->get());
  for (LoraModule* mod : (*a)->all_modules()) {
    EXPECT_LT(GradError(**m, b, a->get(), mod->a, mod->da, 16, rng), 2e-2) << mod->id;
  }
  // Eval (no dropout) differs from a training forward (dropout on).
  auto eval = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, a->get(), false);
  auto train = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, a->get(), true);
  ASSERT_TRUE(eval.ok() && train.ok());
  EXPECT_NE(eval->loss_sum, train->loss_sum);
}

TEST(Model, PerTensorTrainability) {
  const ModelConfig c = MakeConfig(kVariants[0]);
  auto m = Model::Create(c, [](const std::string& n) { return n == "model.norm.weight"; });
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(1, 0.5f);
  int trainable = 0;
  for (Param* p : (*m)->weights().all()) trainable += p->trainable();
  EXPECT_EQ(trainable, 1);
  EXPECT_LE((*m)->grads_arena().size(), 16 + c.hidden_size);
  const Batch b = MakeBatch(c.vocab_size, 2);
  ComputeGrads(**m, b, nullptr);
  std::mt19937 rng(1);
  EXPECT_LT(GradError(**m, b, nullptr, (*m)->weights().norm.value, (*m)->weights().norm.grad, 8, rng), 2e-2);
}

TEST(Model, LossIsMeanOverValidTargetsAndUniformAtZeroWeights) {
  ModelConfig c = MakeConfig(kVariants[0]);
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  // All-zero weights except norms: logits are all zero, so every valid token
  // costs exactly log(V).
  (*m)->InitRandom(1, 0.0f);
  Batch b = MakeBatch(c.vocab_size, 1);
  auto s = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, nullptr, false);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->tokens, kB * kT - 1);
  EXPECT_NEAR(s->mean(), std::log(11.0), 1e-5);
}

TEST(Model, RejectsBadTokensAndBackwardWithoutForward) {
  const ModelConfig c = MakeConfig(kVariants[0]);
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->Backward(1.0f).code(), absl::StatusCode::kFailedPrecondition);
  Batch b = MakeBatch(c.vocab_size, 1);
  b.tokens[4] = 11;
  auto s = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, nullptr, true);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.status().message()).find("outside the vocabulary"), std::string::npos);
}

TEST(Model, MergingLmHeadLoraIntoTiedEmbeddingsIsRefused) {
  const ModelConfig c = MakeConfig(kVariants[1]);
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  LoraOptions lo;
  lo.targets = {"lm_head"};
  auto a = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*m)->MergeAdapter(**a).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace sheaf

namespace sheaf {
namespace {

// Activation plans are keyed on the adapter object, not its address: a new
// adapter (other targets, rank, dropout) allocated where a destroyed one
// lived must get a fresh plan.
TEST(Model, NewAdapterAtAReusedAddressGetsItsOwnPlan) {
  const ModelConfig c = MakeConfig(kVariants[1]);
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(4, 0.5f);
  const Batch b = MakeBatch(c.vocab_size, 12);
  {
    LoraOptions small;
    small.rank = 1;
    small.targets = {"q_proj"};
    auto a = LoraAdapter::Create(c, small);
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE((*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, a->get(), true).ok());
  }
  LoraOptions big;
  big.rank = 8;
  big.dropout = 0.5f;
  for (int i = 0; i < 4; ++i) {  // whichever lands on the old address
    auto a = LoraAdapter::Create(c, big);
    ASSERT_TRUE(a.ok());
    std::mt19937 rng(i);
    for (LoraModule* mod : (*a)->all_modules()) Randomise(mod->b, rng, 0.3f);
    auto got = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, a->get(), true);
    ASSERT_TRUE(got.ok());
    ASSERT_TRUE((*m)->Backward(1.0f).ok());
    auto fresh = Model::Create(c, NothingTrainable);
    ASSERT_TRUE(fresh.ok());
    (*fresh)->InitRandom(4, 0.5f);
    auto want = (*fresh)->Forward(b.tokens.data(), b.targets.data(), kB, kT, a->get(), true);
    ASSERT_TRUE(want.ok());
    EXPECT_EQ(got->loss_sum, want->loss_sum);
  }
}

}  // namespace
}  // namespace sheaf

namespace sheaf {
namespace {

// Frozen weights stored as bf16 (ModelOptions::frozen_dtype) against the
// same weights widened to fp32. The bf16 values are exactly representable in
// fp32 and the CPU backend widens W tile by tile before GEMMs on the same
// values, so only the summation order can differ: forward tiles split y's
// columns (each logit is still one dot product over `in`, but OpenBLAS picks
// its micro-kernel and thread split by the GEMM's width, which measured
// changes the last bits); backward dx = dy·W sums over W's rows, which the
// tiles split (lm_head has V = 2100 rows > one tile of 1024 rows at C = 64).
// fp32 reassociation error is ~ sqrt(K)·2^-24 ≈ 3e-6 relative at K = 2100,
// so the loss is compared at 1e-6 relative (a summed loss over 10 rows
// averages the per-logit errors) and gradients normwise at 1e-5. A wrong
// conversion (e.g. truncating the fp32 instead of widening bf16 exactly, or
// a misplaced tile) is off by 1e-3 or more.
ModelConfig Bf16Config() {
  ModelConfig c;
  c.hidden_size = 64;
  c.num_layers = 2;
  c.head_dim = 16;
  c.vocab_size = 2100;
  c.max_position_embeddings = 16;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 100.0f;
  c.tie_word_embeddings = false;
  c.attention_bias = true;
  c.layers = {{4, 2, 96}, {4, 2, 96}};
  return c;
}

// Save with a shard limit: shards and an index above it (transformers'
// layout), one file below; both load back to the same weights bit for bit.
TEST(Model, SaveShardsAboveTheLimitAndLoadsBack) {
  const ModelConfig c = Bf16Config();
  auto src = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(src.ok()) << src.status();
  (*src)->InitRandom(5, 0.3f);
  int64_t total = 0, largest = 0;
  for (Param* p : (*src)->weights().all()) {
    total += p->value.numel() * 4;
    largest = std::max<int64_t>(largest, p->value.numel() * 4);
  }
  const std::string dir = ::testing::TempDir() + "/sharded_model";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE((*src)->Save(dir, SafetensorsDtype::kDtypeF32, total / 3).ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/model.safetensors"));
  ASSERT_TRUE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
  int shards = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("model-", 0) == 0) {
      ++shards;
      EXPECT_LE(static_cast<int64_t>(std::filesystem::file_size(e.path())),
                std::max(total / 3, largest) + 64 * 1024) << name;  // + the header
    }
  }
  EXPECT_GE(shards, 3);
  std::ifstream index_file(dir + "/model.safetensors.index.json");
  const std::string index((std::istreambuf_iterator<char>(index_file)), std::istreambuf_iterator<char>());
  EXPECT_NE(index.find(absl::StrCat("\"total_size\": ", total)), std::string::npos) << index;
  EXPECT_NE(index.find(absl::StrFormat("model-00001-of-%05d.safetensors", shards)), std::string::npos);
  auto back = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(back.ok());
  ASSERT_TRUE((*back)->LoadWeights(dir).ok());
  for (size_t i = 0; i < (*src)->weights().all().size(); ++i) {
    const Param* a = (*src)->weights().all()[i];
    const Param* b = (*back)->weights().all()[i];
    ASSERT_EQ(a->value.numel(), b->value.numel()) << a->name;
    EXPECT_EQ(std::memcmp(a->value.data, b->value.data, a->value.numel() * 4), 0) << a->name;
  }
  // Saving again under a limit it fits: one file, and the stale index goes.
  ASSERT_TRUE((*src)->Save(dir, SafetensorsDtype::kDtypeF32, total * 2).ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    EXPECT_NE(e.path().filename().string().rfind("model-", 0), 0u) << "stale shard " << e.path();
  }
  auto again = Model::Create(c, NothingTrainable);
  ASSERT_TRUE((*again)->LoadWeights(dir).ok());
  EXPECT_FALSE((*src)->Save(dir, SafetensorsDtype::kDtypeF32, 0).ok());
}

TEST(Model, Bf16FrozenWeightsGiveTheLossOfTheWidenedWeightsInHalfTheMemory) {
  const ModelConfig c = Bf16Config();
  ModelOptions bf16;
  bf16.frozen_dtype = DType::kDTypeBF16;
  // A bf16 model initialised and saved: the file holds BF16 tensors.
  const std::string dir = ::testing::TempDir() + "/bf16_model";
  {
    auto src = Model::Create(c, NothingTrainable, bf16);
    ASSERT_TRUE(src.ok()) << src.status();
    (*src)->InitRandom(5, 0.3f);
    ASSERT_TRUE((*src)->Save(dir).ok());
  }
  auto m16 = Model::Create(c, NothingTrainable, bf16);
  auto m32 = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m16.ok() && m32.ok());
  ASSERT_TRUE((*m16)->LoadWeights(dir).ok());
  ASSERT_TRUE((*m32)->LoadWeights(dir).ok());  // widened on load (exact)
  EXPECT_EQ((*m16)->weights().layers[0].q.value.dtype, DType::kDTypeBF16);
  EXPECT_EQ((*m16)->weights().layers[0].input_norm.value.dtype, DType::kDTypeF32);
  EXPECT_EQ((*m16)->weights().layers[0].q_bias.value.dtype, DType::kDTypeF32);

  // Memory: every matrix halves; norms and biases (f32 in both) and the
  // 64-byte slot padding are the only extra.
  int64_t small_bytes = 0;
  for (Param* p : (*m32)->weights().all()) {
    if (p->value.ndim() == 1) small_bytes += p->value.numel() * 4 + 64;
  }
  const int64_t b32 = (*m32)->frozen_arena().bytes(), b16 = (*m16)->frozen_arena().bytes();
  EXPECT_LE(b16, (b32 + small_bytes) / 2 + 64 * static_cast<int64_t>((*m32)->weights().all().size()));
  EXPECT_GE(b16, b32 / 2);

  LoraOptions lo;
  lo.rank = 4;
  lo.targets.push_back("lm_head");
  auto a16 = LoraAdapter::Create(c, lo);
  auto a32 = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(a16.ok() && a32.ok());
  std::mt19937 rng(9);
  for (LoraModule* mod : (*a16)->all_modules()) Randomise(mod->b, rng, 0.1f);
  std::memcpy((*a32)->params().data(), (*a16)->params().data(), (*a16)->params().bytes());
  std::mt19937 trng(2);
  std::vector<int32_t> tokens(kB * kT), targets(kB * kT);
  for (int i = 0; i < kB * kT; ++i) {
    tokens[i] = static_cast<int32_t>(trng() % c.vocab_size);
    targets[i] = static_cast<int32_t>(trng() % c.vocab_size);
  }
  auto l16 = (*m16)->Forward(tokens.data(), targets.data(), kB, kT, a16->get(), true);
  auto l32 = (*m32)->Forward(tokens.data(), targets.data(), kB, kT, a32->get(), true);
  ASSERT_TRUE(l16.ok() && l32.ok());
  EXPECT_NEAR(l16->loss_sum, l32->loss_sum, 1e-6 * std::abs(l32->loss_sum));
  ASSERT_TRUE((*m16)->Backward(1.0f).ok());
  ASSERT_TRUE((*m32)->Backward(1.0f).ok());
  double diff = 0, norm = 0;
  const float* g16 = (*a16)->grads().data();
  const float* g32 = (*a32)->grads().data();
  for (int64_t i = 0; i < (*a16)->grads().size(); ++i) {
    diff += (double{g16[i]} - g32[i]) * (double{g16[i]} - g32[i]);
    norm += double{g32[i]} * g32[i];
  }
  ASSERT_GT(norm, 0);
  EXPECT_LT(std::sqrt(diff / norm), 1e-5);
  std::printf("bf16 vs widened f32: loss %.17g vs %.17g, grad rel err %.3g\n", l16->loss_sum,
              l32->loss_sum, std::sqrt(diff / norm));
}

// The selected-rows head over a bf16 lm_head (its J rows widened by the
// backend) gives the loss and adapter gradients of the widened f32 model.
// Tolerance: the widening is exact, so the only difference is the GEMM
// blocking of bf16 tiles vs one f32 GEMM in the trunk (as the LM-head test
// above): 1e-6 relative on the loss, 1e-5 normwise on the gradients.
TEST(Model, Bf16SelectedRowsHeadMatchesTheWidenedWeights) {
  const ModelConfig c = Bf16Config();
  ModelOptions bf16;
  bf16.frozen_dtype = DType::kDTypeBF16;
  const std::string dir = ::testing::TempDir() + "/bf16_head_model";
  {
    auto src = Model::Create(c, NothingTrainable, bf16);
    ASSERT_TRUE(src.ok()) << src.status();
    (*src)->InitRandom(6, 0.3f);
    ASSERT_TRUE((*src)->Save(dir).ok());
  }
  auto m16 = Model::Create(c, NothingTrainable, bf16);
  auto m32 = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m16.ok() && m32.ok());
  ASSERT_TRUE((*m16)->LoadWeights(dir).ok());
  ASSERT_TRUE((*m32)->LoadWeights(dir).ok());
  ASSERT_EQ((*m16)->weights().lm_head.value.dtype, DType::kDTypeBF16);
  LoraOptions lo;
  lo.rank = 4;
  auto a16 = LoraAdapter::Create(c, lo);
  auto a32 = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(a16.ok() && a32.ok());
  std::mt19937 rng(19);
  for (LoraModule* mod : (*a16)->all_modules()) Randomise(mod->b, rng, 0.1f);
  std::memcpy((*a32)->params().data(), (*a16)->params().data(), (*a16)->params().bytes());
  std::vector<int32_t> tokens(kB * kT);
  for (int i = 0; i < kB * kT; ++i) tokens[i] = static_cast<int32_t>(rng() % c.vocab_size);
  const LossHead head = LossHead::SelectedRows({kT - 1, 2 * kT - 1}, {2011, 37}, {1, 0});
  auto p16 = AdapterPlan::ForAdapter(a16->get(), c.num_layers);
  auto p32 = AdapterPlan::ForAdapter(a32->get(), c.num_layers);
  ASSERT_TRUE(p16.ok() && p32.ok());
  auto l16 = (*m16)->Forward(tokens.data(), nullptr, kB, kT, *p16, true, head);
  auto l32 = (*m32)->Forward(tokens.data(), nullptr, kB, kT, *p32, true, head);
  ASSERT_TRUE(l16.ok() && l32.ok()) << l16.status() << l32.status();
  EXPECT_NEAR(l16->loss_sum, l32->loss_sum, 1e-6 * std::abs(l32->loss_sum));
  ASSERT_TRUE((*m16)->Backward(1.0f).ok());
  ASSERT_TRUE((*m32)->Backward(1.0f).ok());
  double diff = 0, norm = 0;
  const float* g16 = (*a16)->grads().data();
  const float* g32 = (*a32)->grads().data();
  for (int64_t i = 0; i < (*a16)->grads().size(); ++i) {
    diff += (double{g16[i]} - g32[i]) * (double{g16[i]} - g32[i]);
    norm += double{g32[i]} * g32[i];
  }
  ASSERT_GT(norm, 0);
  EXPECT_LT(std::sqrt(diff / norm), 1e-5);
}

TEST(Model, FrozenDtypeErrorsAreClear) {
  const ModelConfig c = Bf16Config();
  ModelOptions nf4;  // NF4 is accepted (core/model_nf4_test.cc)
  nf4.frozen_dtype = DType::kDTypeNF4;
  EXPECT_TRUE(Model::Create(c, NothingTrainable, nf4).ok());
  ModelOptions f16;
  f16.frozen_dtype = DType::kDTypeF16;
  auto bad = Model::Create(c, NothingTrainable, f16);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.status().message()).find("frozen_dtype f16"), std::string::npos);

  // An F32 file is never narrowed into bf16 storage.
  const std::string dir = ::testing::TempDir() + "/f32_model";
  auto m32 = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m32.ok());
  (*m32)->InitRandom(1, 0.1f);
  ASSERT_TRUE((*m32)->Save(dir).ok());
  ModelOptions bf16;
  bf16.frozen_dtype = DType::kDTypeBF16;
  auto m16 = Model::Create(c, NothingTrainable, bf16);
  ASSERT_TRUE(m16.ok());
  const absl::Status s = (*m16)->LoadWeights(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("model.embed_tokens.weight"), std::string::npos) << s;

  // Merging needs fp32 weights.
  (*m16)->InitRandom(1, 0.1f);
  auto a = LoraAdapter::Create(c, LoraOptions{});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*m16)->MergeAdapter(**a).code(), absl::StatusCode::kFailedPrecondition);
}

// ---------------------------------------------------------------------------
// Adapter plans and loss heads

// GradError over any loss: central differences of `loss` against `grad`.
// Same eps and the same reasoning for the 2e-2 normwise bound as GradError.
double PlanGradError(const std::function<double()>& loss, const Tensor& value, const Tensor& grad,
                     int max_samples, std::mt19937& rng) {
  const float eps = 2e-3f;
  double num = 0, den = 0;
  const int64_t n = value.numel();
  std::vector<int64_t> idx;
  if (n <= max_samples) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
  } else {
    for (int i = 0; i < max_samples; ++i) idx.push_back(static_cast<int64_t>(rng() % n));
  }
  for (int64_t i : idx) {
    const float orig = value.data[i];
    value.data[i] = orig + eps;
    const double lp = loss();
    value.data[i] = orig - eps;
    const double lm = loss();
    value.data[i] = orig;
    const double fd = (lp - lm) / (2.0 * eps);
    num += (fd - grad.data[i]) * (fd - grad.data[i]);
    den += fd * fd;
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-6);
}

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// The K = 1 plan of an adapter, built by hand, gives exactly the losses and
// gradients of the adapter path (which is itself bit-identical to the code
// before plans existed: checked once against a dump of the old binary, see
// the change's note), with and without dropout, on every variant.
TEST_P(ModelVariantTest, PlanOfOneAdapterIsBitIdenticalToTheAdapterPath) {
  const ModelConfig c = MakeConfig(GetParam());
  for (const float dropout : {0.0f, 0.3f}) {
    auto m = Model::Create(c, NothingTrainable);
    ASSERT_TRUE(m.ok());
    (*m)->InitRandom(2, 0.5f);
    LoraOptions lo;
    lo.rank = 2;
    lo.dropout = dropout;
    lo.targets = {"q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"};
    auto a = LoraAdapter::Create(c, lo);
    ASSERT_TRUE(a.ok());
    std::mt19937 rng(3);
    for (LoraModule* mod : (*a)->all_modules()) Randomise(mod->b, rng, 0.5f);
    (*a)->set_dropout_seed(99);
    (*a)->set_dropout_row_offset(20);
    const Batch b = MakeBatch(c.vocab_size, 4);
    (*a)->grads().Zero();
    auto old_loss = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, a->get(), true);
    ASSERT_TRUE(old_loss.ok());
    ASSERT_TRUE((*m)->Backward(0.125f).ok());
    const std::vector<float> old_grads((*a)->grads().data(),
                                       (*a)->grads().data() + (*a)->grads().size());
    AdapterPlan plan(c.num_layers);
    plan.set_dropout(99, 20);
    ASSERT_TRUE(plan.AddAdapter(**a).ok());
    (*a)->grads().Zero();
    auto new_loss = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, plan, true);
    ASSERT_TRUE(new_loss.ok()) << new_loss.status();
    ASSERT_TRUE((*m)->Backward(0.125f).ok());
    EXPECT_EQ(old_loss->loss_sum, new_loss->loss_sum);
    for (size_t i = 0; i < old_grads.size(); ++i) {
      ASSERT_EQ(FloatBits(old_grads[i]), FloatBits((*a)->grads().data()[i])) << i;
    }
  }
}

struct MixCase {
  const char* name;
  AdapterMixing mixing;
  float dropout;
  bool per_row = false;  // one gate row per token (P = 1) instead of per sample (P = T)
};

class GatedPlanTest : public ::testing::TestWithParam<MixCase> {};

// A bank of 2 experts on every projection and lm_head, one gate row per
// sample, the gate trainable: finite differences through the whole model for
// A_cat, B_cat and every gate entry.
TEST_P(GatedPlanTest, GradientsOfABankAndItsGateMatchFiniteDifferences) {
  const MixCase& mc = GetParam();
  const ModelConfig c = MakeConfig(kVariants[1]);  // GQA, tied, bias
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(5, 0.5f);
  LoraOptions lo;
  lo.rank = 2;
  lo.alpha = 4;
  lo.num_experts = 2;
  lo.dropout = mc.dropout;
  lo.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "lm_head"};
  auto bank = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(bank.ok());
  std::mt19937 rng(11);
  for (LoraModule* mod : (*bank)->all_modules()) Randomise(mod->b, rng, 0.5f);
  const int groups = mc.per_row ? kB * kT : kB;
  std::vector<float> gate(groups * 2), dgate(groups * 2, 0.0f);
  std::uniform_real_distribution<float> u(0.2f, 0.9f);
  for (float& g : gate) g = u(rng);
  (*bank)->set_dropout_seed(7);
  AdapterPlan plan(c.num_layers);
  ASSERT_TRUE(plan.AddBank(**bank, AdapterGate{Tensor{gate.data(), {groups, 2}},
                                               Tensor{dgate.data(), {groups, 2}},
                                               mc.per_row ? 1 : kT, mc.mixing})
                  .ok());
  const Batch b = MakeBatch(c.vocab_size, 6);
  auto loss = [&]() {
    auto s = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, plan, true);
    EXPECT_TRUE(s.ok()) << s.status();
    return s->loss_sum;
  };
  (*bank)->grads().Zero();
  loss();
  ASSERT_TRUE((*m)->Backward(1.0f).ok());
  const Tensor gate_t{gate.data(), {groups, 2}}, dgate_t{dgate.data(), {groups, 2}};
  double gate_norm = 0;
  for (float g : dgate) gate_norm += std::abs(g);
  EXPECT_GT(gate_norm, 1e-3) << "the gate gradient must reach the plan's dgate";
  EXPECT_LT(PlanGradError(loss, gate_t, dgate_t, 2 * groups, rng), 2e-2) << "gate";
  for (LoraModule* mod : (*bank)->all_modules()) {
    EXPECT_LT(PlanGradError(loss, mod->a, mod->da, 12, rng), 2e-2) << "A_cat " << mod->name;
    EXPECT_LT(PlanGradError(loss, mod->b, mod->db, 12, rng), 2e-2) << "B_cat " << mod->name;
  }
  if (mc.dropout > 0) {
    // Dropout is applied: an eval forward differs from the training one.
    auto eval = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, plan, false);
    ASSERT_TRUE(eval.ok());
    EXPECT_NE(eval->loss_sum, loss());
  }
}

const MixCase kMixCases[] = {
    {"outputs", AdapterMixing::kAdapterMixingOutputs, 0.0f},
    {"weights", AdapterMixing::kAdapterMixingWeights, 0.0f},
    {"outputs_dropout", AdapterMixing::kAdapterMixingOutputs, 0.3f},
    {"weights_dropout", AdapterMixing::kAdapterMixingWeights, 0.3f},
    {"outputs_per_token", AdapterMixing::kAdapterMixingOutputs, 0.0f, true},
    {"weights_per_token_dropout", AdapterMixing::kAdapterMixingWeights, 0.3f, true},
};
INSTANTIATE_TEST_SUITE_P(Forms, GatedPlanTest, ::testing::ValuesIn(kMixCases),
                         [](const auto& info) { return std::string(info.param.name); });

// A frozen adapter stacked under a trainable one equals the model with the
// frozen adapter merged in (with the same coefficient), for the loss and
// the trainable adapter's gradients; the frozen adapter gets no gradient.
//
// Tolerance: merging rounds W + c·s·B·A to fp32 (relative 6e-8 per element)
// and sums in another order than the unmerged path; through two layers and
// the head this moves a loss of ~25 by ~1e-6 relative and gradients by ~1e-5
// normwise. Bounds of 1e-5 (loss, relative) and 1e-4 (gradients, normwise)
// hold with margin, while dropping the frozen entry changes the loss by
// > 1e-2 relative (checked).
TEST(Model, StackedFrozenAdapterEqualsMergingIt) {
  const ModelConfig c = MakeConfig(kVariants[0]);  // untied: lm_head can merge
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(6, 0.5f);
  LoraOptions lo;
  lo.rank = 2;
  lo.targets = {"q_proj", "v_proj", "down_proj", "lm_head"};
  auto earlier = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(earlier.ok());
  lo.targets = {"v_proj", "up_proj"};
  lo.rank = 3;
  lo.seed = 8;
  lo.rank_pattern = {{"layers.1.mlp.up_proj", 1}};
  auto current = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(current.ok());
  std::mt19937 rng(12);
  for (LoraModule* mod : (*earlier)->all_modules()) Randomise(mod->b, rng, 0.5f);
  for (LoraModule* mod : (*current)->all_modules()) Randomise(mod->b, rng, 0.5f);
  const float coefficient = 0.7f;
  const Batch b = MakeBatch(c.vocab_size, 13);

  AdapterPlan stacked(c.num_layers);
  ASSERT_TRUE(stacked.AddFrozenAdapter(**earlier, coefficient).ok());
  ASSERT_TRUE(stacked.AddAdapter(**current).ok());
  (*earlier)->grads().Zero();
  (*current)->grads().Zero();
  auto l_stacked = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, stacked, true);
  ASSERT_TRUE(l_stacked.ok()) << l_stacked.status();
  ASSERT_TRUE((*m)->Backward(1.0f).ok());
  const std::vector<float> g_stacked((*current)->grads().data(),
                                     (*current)->grads().data() + (*current)->grads().size());
  for (int64_t i = 0; i < (*earlier)->grads().size(); ++i) {
    ASSERT_EQ((*earlier)->grads().data()[i], 0.0f) << "frozen adapter got a gradient";
  }

  auto alone = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, current->get(), false);
  ASSERT_TRUE(alone.ok());
  EXPECT_GT(std::abs(alone->loss_sum - l_stacked->loss_sum), 1e-2 * std::abs(l_stacked->loss_sum));

  const std::vector<float> before((*m)->frozen_arena().data(),
                                  (*m)->frozen_arena().data() + (*m)->frozen_arena().size());
  ASSERT_TRUE((*m)->ApplyAdapter(**earlier, coefficient).ok());
  (*current)->grads().Zero();
  auto l_merged = (*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, current->get(), true);
  ASSERT_TRUE(l_merged.ok());
  ASSERT_TRUE((*m)->Backward(1.0f).ok());
  EXPECT_NEAR(l_merged->loss_sum, l_stacked->loss_sum, 1e-5 * std::abs(l_stacked->loss_sum));
  double num = 0, den = 0;
  for (size_t i = 0; i < g_stacked.size(); ++i) {
    const double d = g_stacked[i] - (*current)->grads().data()[i];
    num += d * d;
    den += static_cast<double>(g_stacked[i]) * g_stacked[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-4);
  // Applying the opposite coefficient restores the base (to fp32 round-off
  // of the O(1) weights: 1e-6 absolute).
  ASSERT_TRUE((*m)->ApplyAdapter(**earlier, -coefficient).ok());
  for (size_t i = 0; i < before.size(); ++i) {
    ASSERT_NEAR((*m)->frozen_arena().data()[i], before[i], 1e-6) << i;
  }
}

ModelConfig WideVocabConfig() {
  Variant v = kVariants[0];
  ModelConfig c = MakeConfig(v);
  c.vocab_size = 300;
  return c;
}

// The selected-rows head's loss and logits are the full LM logits restricted
// to those rows and columns, fed to the same cross-entropy; its activations
// hold no [B*T, V] tensor.
//
// Tolerance: the selected logits come from a GEMM of another shape than the
// full one ([M, C] x [C, J] vs [N, C] x [C, V]), so a logit may differ by a
// few ulps (C = 8 products of O(1) values: < 1e-6); the summed loss of 3
// rows then by < 1e-5.
// With a LoRA on lm_head (and dropout, drawn for the same global rows) the
// selected rows and columns of that LoRA are used, and nothing else.
TEST(Model, SelectedRowsHeadIsTheFullCrossEntropyRestrictedToItsColumns) {
  for (const int setup : {0, 1, 2}) {
    const bool tied = setup == 1;
    const bool head_lora = setup == 2;
    ModelConfig c = WideVocabConfig();
    c.tie_word_embeddings = tied;
    auto m = Model::Create(c, NothingTrainable);
    ASSERT_TRUE(m.ok());
    (*m)->InitRandom(9, 0.5f);
    LoraOptions lo;
    lo.rank = 2;
    if (head_lora) {
      lo.targets.push_back("lm_head");
      lo.dropout = 0.2f;
    }
    auto a = LoraAdapter::Create(c, lo);
    ASSERT_TRUE(a.ok());
    (*a)->set_dropout_seed(31);
    (*a)->set_dropout_row_offset(50);
    std::mt19937 rng(1);
    for (LoraModule* mod : (*a)->all_modules()) Randomise(mod->b, rng, 0.5f);
    const Batch b = MakeBatch(c.vocab_size, 14);
    const int N = kB * kT, V = c.vocab_size;
    // training = true: dropout on, no Backward (no targets).
    auto full = (*m)->Forward(b.tokens.data(), nullptr, kB, kT, a->get(), true);
    ASSERT_TRUE(full.ok());
    const int64_t lm_bytes = (*m)->activation_bytes();
    const std::vector<float> logits((*m)->logits(), (*m)->logits() + int64_t{N} * V);
    const std::vector<int32_t> rows = {kT - 1, 2 * kT - 1, 3, kT - 1};  // a row twice
    const std::vector<int32_t> cols = {17, 250, 4};
    const std::vector<int32_t> targets = {0, 1, 2, 1};
    std::vector<float> restricted;
    for (int32_t r : rows) {
      for (int32_t col : cols) restricted.push_back(logits[static_cast<size_t>(r) * V + col]);
    }
    LossStats want;
    (*m)->backend()->CrossEntropy(nullptr, &want.loss_sum, &want.tokens, restricted.data(),
                                  targets.data(), 4, 3, kIgnoreIndex, 0.0f);
    auto plan = AdapterPlan::ForAdapter(a->get(), c.num_layers);
    ASSERT_TRUE(plan.ok());
    auto got = (*m)->Forward(b.tokens.data(), nullptr, kB, kT, *plan, true,
                             LossHead::SelectedRows(rows, cols, targets));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->tokens, 4);
    EXPECT_NEAR(got->loss_sum, want.loss_sum, 1e-5);
    EXPECT_GT(want.loss_sum, 0.5);
    for (size_t i = 0; i < restricted.size(); ++i) {
      EXPECT_NEAR((*m)->selected_logits()[i], restricted[i], 1e-6) << i;
    }
    EXPECT_EQ((*m)->logits(), nullptr);
    // No [N, V] logits nor their gradient: 2 N V floats fewer, less the
    // head's own small buffers (M x J logits and gradient, gathered rows:
    // ~150 floats plus slot alignment, under 1 KiB; with an lm_head LoRA
    // also its gathered B rows, gate rows and d h[rows]: under 2 KiB).
    const int64_t extra = head_lora ? 2048 : 1024;
    EXPECT_LE((*m)->activation_bytes() + 2 * int64_t{N} * V * 4, lm_bytes + extra);
    EXPECT_GT((*m)->activation_bytes() + 2 * int64_t{N} * V * 4, lm_bytes - extra);
  }
}

// Backward through the selected-rows head: finite differences for a gated
// bank (weights mixing, RecLoRA's yes/no setting: one row per sample, two
// columns), its gate, and with all weights trainable for lm_head and a layer
// weight (dW of the head only on the selected columns).
TEST(Model, SelectedRowsHeadGradientsMatchFiniteDifferences) {
  const ModelConfig c = MakeConfig(kVariants[2]);  // MQA, untied, bias, per-layer shapes
  const std::vector<int32_t> rows = {kT - 1, 2 * kT - 1};
  const std::vector<int32_t> cols = {3, 8};  // "yes", "no"
  const std::vector<int32_t> targets = {0, 1};
  const LossHead head = LossHead::SelectedRows(rows, cols, targets);
  const Batch b = MakeBatch(c.vocab_size, 15);
  {
    auto m = Model::Create(c, NothingTrainable);
    ASSERT_TRUE(m.ok());
    (*m)->InitRandom(10, 0.5f);
    LoraOptions lo;
    lo.rank = 2;
    lo.num_experts = 3;
    lo.dropout = 0.2f;
    lo.targets = {"q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"};
    auto bank = LoraAdapter::Create(c, lo);
    ASSERT_TRUE(bank.ok());
    std::mt19937 rng(16);
    for (LoraModule* mod : (*bank)->all_modules()) Randomise(mod->b, rng, 0.5f);
    std::vector<float> gate = {0.5f, 0.3f, 0.2f, 0.1f, 0.6f, 0.3f}, dgate(6, 0.0f);
    AdapterPlan plan(c.num_layers);
    ASSERT_TRUE(plan.AddBank(**bank, AdapterGate{Tensor{gate.data(), {kB, 3}},
                                                 Tensor{dgate.data(), {kB, 3}}, kT,
                                                 AdapterMixing::kAdapterMixingWeights})
                    .ok());
    auto loss = [&]() {
      auto s = (*m)->Forward(b.tokens.data(), nullptr, kB, kT, plan, true, head);
      EXPECT_TRUE(s.ok()) << s.status();
      return s->loss_sum;
    };
    (*bank)->grads().Zero();
    loss();
    ASSERT_TRUE((*m)->Backward(1.0f).ok());
    EXPECT_LT(PlanGradError(loss, Tensor{gate.data(), {kB, 3}}, Tensor{dgate.data(), {kB, 3}}, 6,
                            rng),
              2e-2)
        << "gate";
    for (LoraModule* mod : (*bank)->all_modules()) {
      EXPECT_LT(PlanGradError(loss, mod->a, mod->da, 10, rng), 2e-2) << mod->name;
      EXPECT_LT(PlanGradError(loss, mod->b, mod->db, 10, rng), 2e-2) << mod->name;
    }
  }
  {
    auto m = Model::Create(c, EverythingTrainable);
    ASSERT_TRUE(m.ok());
    (*m)->InitRandom(10, 0.5f);
    const AdapterPlan none(c.num_layers);
    auto loss = [&]() {
      auto s = (*m)->Forward(b.tokens.data(), nullptr, kB, kT, none, true, head);
      EXPECT_TRUE(s.ok()) << s.status();
      return s->loss_sum;
    };
    (*m)->ZeroGrads();
    loss();
    ASSERT_TRUE((*m)->Backward(1.0f).ok());
    std::mt19937 rng(17);
    const Param& lm = (*m)->weights().lm_head;
    const int C = c.hidden_size;
    for (int v = 0; v < c.vocab_size; ++v) {
      const bool selected = v == cols[0] || v == cols[1];
      double moved = 0;
      for (int k = 0; k < C; ++k) moved += std::abs(lm.grad.data[int64_t{v} * C + k]);
      if (selected) {
        EXPECT_GT(moved, 1e-4) << v;
      } else {
        EXPECT_EQ(moved, 0.0) << v;
      }
    }
    EXPECT_LT(PlanGradError(loss, lm.value, lm.grad, 40, rng), 2e-2) << "lm_head";
    const Param& down = (*m)->weights().layers[1].down;
    EXPECT_LT(PlanGradError(loss, down.value, down.grad, 24, rng), 2e-2) << "layer 1 down";
    const Param& embed = (*m)->weights().embed;
    EXPECT_LT(PlanGradError(loss, embed.value, embed.grad, 24, rng), 2e-2) << "embedding";
  }
}

TEST(Model, RejectsPlansAndHeadsThatDoNotFit) {
  const ModelConfig c = MakeConfig(kVariants[0]);
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(1, 0.5f);
  const Batch b = MakeBatch(c.vocab_size, 2);
  const AdapterPlan wrong_layers(c.num_layers + 1);
  EXPECT_EQ((*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, wrong_layers, true)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  const AdapterPlan none(c.num_layers);
  auto bad_row = (*m)->Forward(b.tokens.data(), nullptr, kB, kT, none, true,
                               LossHead::SelectedRows({kB * kT}, {1, 2}, {0}));
  EXPECT_NE(std::string(bad_row.status().message()).find("row 10 is outside"), std::string::npos)
      << bad_row.status();
  auto bad_target = (*m)->Forward(b.tokens.data(), nullptr, kB, kT, none, true,
                                  LossHead::SelectedRows({0}, {1, 2}, {2}));
  EXPECT_NE(std::string(bad_target.status().message()).find("target 2"), std::string::npos);
  auto bad_col = (*m)->Forward(b.tokens.data(), nullptr, kB, kT, none, true,
                               LossHead::SelectedRows({0}, {1, c.vocab_size}, {0}));
  EXPECT_NE(std::string(bad_col.status().message()).find("column 11"), std::string::npos);
  EXPECT_EQ((*m)->Forward(b.tokens.data(), b.targets.data(), kB, kT, none, true,
                          LossHead::SelectedRows({0}, {1}, {0}))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // A bank cannot be merged without its gate.
  LoraOptions lo;
  lo.targets = {"q_proj"};
  lo.num_experts = 2;
  auto bank = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(bank.ok());
  EXPECT_EQ((*m)->ApplyAdapter(**bank, 1.0f).code(), absl::StatusCode::kFailedPrecondition);
}

// The activation plan follows the adapter plan's layout and the head: a
// plan with a new layout (here a bank after a plain adapter, then back)
// re-plans, and results equal those of a fresh model.
TEST(Model, ActivationsFollowThePlanLayoutAndTheHead) {
  const ModelConfig c = MakeConfig(kVariants[1]);
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(4, 0.5f);
  LoraOptions lo;
  lo.rank = 2;
  auto plain = LoraAdapter::Create(c, lo);
  lo.num_experts = 3;
  lo.dropout = 0.2f;
  auto bank = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(plain.ok() && bank.ok());
  std::mt19937 rng(2);
  for (LoraModule* mod : (*plain)->all_modules()) Randomise(mod->b, rng, 0.5f);
  for (LoraModule* mod : (*bank)->all_modules()) Randomise(mod->b, rng, 0.5f);
  std::vector<float> gate(kB * 3, 0.4f);
  AdapterPlan bank_plan(c.num_layers);
  ASSERT_TRUE(bank_plan.AddBank(**bank, AdapterGate{Tensor{gate.data(), {kB, 3}}, Tensor{}, kT,
                                                    AdapterMixing::kAdapterMixingOutputs})
                  .ok());
  auto plain_plan = AdapterPlan::ForAdapter(plain->get(), c.num_layers);
  ASSERT_TRUE(plain_plan.ok());
  const Batch b = MakeBatch(c.vocab_size, 3);
  const LossHead sel = LossHead::SelectedRows({1, 7}, {2, 5, 9}, {2, 0});
  auto fresh_loss = [&](const AdapterPlan& p, const LossHead& h) {
    auto f = Model::Create(c, NothingTrainable);
    EXPECT_TRUE(f.ok());
    (*f)->InitRandom(4, 0.5f);
    auto s = (*f)->Forward(b.tokens.data(), h.kind == LossHead::Kind::kLossHeadLm ? b.targets.data()
                                                                                 : nullptr,
                           kB, kT, p, true, h);
    EXPECT_TRUE(s.ok()) << s.status();
    return s->loss_sum;
  };
  for (int round = 0; round < 2; ++round) {
    for (const AdapterPlan* p : {&*plain_plan, &bank_plan}) {
      for (const LossHead& h : {LossHead::Lm(), sel}) {
        auto s = (*m)->Forward(b.tokens.data(),
                               h.kind == LossHead::Kind::kLossHeadLm ? b.targets.data() : nullptr,
                               kB, kT, *p, true, h);
        ASSERT_TRUE(s.ok()) << s.status();
        ASSERT_TRUE((*m)->Backward(1.0f).ok());
        EXPECT_EQ(s->loss_sum, fresh_loss(*p, h));
      }
    }
  }
}

// Per-module alpha reaches the model: an alpha_pattern doubling q_proj's
// alpha gives exactly the losses and gradients of doubling q_proj's B
// instead (scaling by 2 is exact in binary floating point, so the two
// orders of the same products round identically).
TEST(Model, AlphaPatternScalesItsModulesInTheModel) {
  const ModelConfig c = MakeConfig(kVariants[2]);
  auto m = Model::Create(c, NothingTrainable);
  ASSERT_TRUE(m.ok());
  (*m)->InitRandom(3, 0.5f);
  LoraOptions lo;
  lo.rank = 2;
  lo.alpha = 3;
  auto plain = LoraAdapter::Create(c, lo);
  lo.alpha_pattern = {{"q_proj", 6.0f}};
  auto patterned = LoraAdapter::Create(c, lo);
  ASSERT_TRUE(plain.ok() && patterned.ok());
  std::mt19937 rng(4);
  for (LoraModule* mod : (*patterned)->all_modules()) Randomise(mod->b, rng, 0.5f);
  std::memcpy((*plain)->params().data(), (*patterned)->params().data(),
              (*patterned)->params().bytes());
  for (int l = 0; l < c.num_layers; ++l) {
    const Tensor& b = (*plain)->module(l, Proj::kQ)->b;
    for (int64_t i = 0; i < b.numel(); ++i) b.data[i] *= 2.0f;
  }
  const Batch batch = MakeBatch(c.vocab_size, 21);
  (*plain)->grads().Zero();
  (*patterned)->grads().Zero();
  auto lp = (*m)->Forward(batch.tokens.data(), batch.targets.data(), kB, kT, plain->get(), true);
  ASSERT_TRUE(lp.ok());
  ASSERT_TRUE((*m)->Backward(1.0f).ok());
  auto lq =
      (*m)->Forward(batch.tokens.data(), batch.targets.data(), kB, kT, patterned->get(), true);
  ASSERT_TRUE(lq.ok());
  ASSERT_TRUE((*m)->Backward(1.0f).ok());
  EXPECT_EQ(lp->loss_sum, lq->loss_sum);
  // dA is the same; dB of q_proj is half (B doubled, scale halved).
  for (int l = 0; l < c.num_layers; ++l) {
    const LoraModule* p = (*plain)->module(l, Proj::kQ);
    const LoraModule* q = (*patterned)->module(l, Proj::kQ);
    for (int64_t i = 0; i < p->da.numel(); ++i) ASSERT_EQ(p->da.data[i], q->da.data[i]);
    for (int64_t i = 0; i < p->db.numel(); ++i) ASSERT_EQ(p->db.data[i] * 2.0f, q->db.data[i]);
  }
}

}  // namespace
}  // namespace sheaf
