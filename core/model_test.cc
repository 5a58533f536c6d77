// Whole-model checks: finite-difference gradients (adapter and all-weights),
// GQA / tied / bias / per-layer-shape variants, frozen weights get no grads,
// LoRA merge equivalence.
#include "core/model.h"

#include <cmath>
#include <cstring>
#include <random>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

struct Variant {
  const char* name;
  int heads0, kv0, inter0;
  int heads1, kv1, inter1;
  bool tied, bias;
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
  c.layers = {{v.heads0, v.kv0, v.inter0}, {v.heads1, v.kv1, v.inter1}};
  return c;
}

const Variant kVariants[] = {
    {"mha_untied", 2, 2, 12, 2, 2, 12, false, false},
    {"gqa_tied_bias", 4, 2, 12, 4, 2, 12, true, true},
    {"mqa_untied_bias_perlayer", 4, 1, 12, 2, 1, 6, false, true},
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

TEST(Model, FrozenDtypeErrorsAreClear) {
  const ModelConfig c = Bf16Config();
  ModelOptions nf4;
  nf4.frozen_dtype = DType::kDTypeNF4;
  EXPECT_EQ(Model::Create(c, NothingTrainable, nf4).status().code(),
            absl::StatusCode::kUnimplemented);
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

}  // namespace
}  // namespace sheaf
