// Frozen NF4 weights (ModelOptions::frozen_dtype = nf4, QLoRAM) against the
// same model with the dequantised weights in fp32: quantise-on-load, the
// bytes a model holds against the NF4 file of the same weights, the loss and
// every adapter gradient (forward and the dX path through NF4 projections),
// and the frozen arena's size.
#include <cmath>
#include <cstring>
#include <random>

#include "core/model.h"
#include "core/quant/nf4.h"
#include "core/quant/nf4_file.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

// Shapes chosen so that the NF4 kernels' tiles and blocks do not line up
// with rows: in = 1100 (down_proj) is not a multiple of 64, so blocks cross
// rows, and its tile of max(16, 65536 / 1100) = 59 rows splits C = 64; the
// gate/up rows (1100) split into a 1024-row tile and a remainder.
ModelConfig Nf4Config() {
  ModelConfig c;
  c.hidden_size = 64;
  c.num_layers = 2;
  c.head_dim = 16;
  c.vocab_size = 300;
  c.max_position_embeddings = 16;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 100.0f;
  c.tie_word_embeddings = false;
  c.attention_bias = true;
  c.layers = {{4, 2, 1100}, {4, 1, 96}};
  return c;
}

bool IsProjection(const Param& p) {
  return p.value.ndim() == 2 && p.name.rfind("model.layers.", 0) == 0;
}

std::vector<float> Floats(const Param& p) {
  std::vector<float> out(static_cast<size_t>(p.value.numel()));
  if (p.value.dtype == DType::kDTypeNF4) {
    quant::DequantizeNf4(static_cast<const uint8_t*>(p.value.raw()), 0, p.value.numel(), out.data());
  } else {
    std::memcpy(out.data(), p.value.data, out.size() * 4);
  }
  return out;
}

class Nf4Model : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = Nf4Config();
    f32_dir_ = ::testing::TempDir() + "/nf4_src_f32";
    auto src = Model::Create(c_, NothingTrainable);
    ASSERT_TRUE(src.ok()) << src.status();
    (*src)->InitRandom(5, 0.3f);
    ASSERT_TRUE((*src)->Save(f32_dir_).ok());
    src_ = std::move(*src);
    ModelOptions o;
    o.frozen_dtype = DType::kDTypeNF4;
    auto m4 = Model::Create(c_, NothingTrainable, o);
    ASSERT_TRUE(m4.ok()) << m4.status();
    m4_ = std::move(*m4);
    ASSERT_TRUE(m4_->LoadWeights(f32_dir_).ok());
  }
  ModelConfig c_;
  std::string f32_dir_;
  std::unique_ptr<Model> src_, m4_;
};

TEST_F(Nf4Model, ProjectionsAreNf4AndTheRestStaysF32) {
  for (Param* p : m4_->weights().all()) {
    EXPECT_EQ(p->value.dtype, IsProjection(*p) ? DType::kDTypeNF4 : DType::kDTypeF32) << p->name;
  }
}

// Each dequantised weight lies within half the widest gap between adjacent
// codes (−0.6961928 − (−1)) of its block's absmax, plus the double-quant error
// of that absmax (≤ s/254 with s ≤ the tensor's largest absmax): a weight
// read from the wrong element, block or nibble is off by far more.
TEST_F(Nf4Model, QuantisedOnLoadWithinTheCodeSpacing) {
  const std::vector<Param*> src = src_->weights().all(), q = m4_->weights().all();
  ASSERT_EQ(src.size(), q.size());
  for (size_t t = 0; t < src.size(); ++t) {
    if (!IsProjection(*q[t])) continue;
    const std::vector<float> x = Floats(*src[t]), y = Floats(*q[t]);
    float tensor_max = 0;
    for (float v : x) tensor_max = std::max(tensor_max, std::fabs(v));
    double worst = 0;
    for (size_t b = 0; b * 64 < x.size(); ++b) {
      float a = 0;
      for (size_t i = b * 64; i < std::min(x.size(), b * 64 + 64); ++i) a = std::max(a, std::fabs(x[i]));
      const double bound = 0.5 * (1.0 - 0.6961928) * a + tensor_max / 254.0 + 1e-7;
      for (size_t i = b * 64; i < std::min(x.size(), b * 64 + 64); ++i) {
        ASSERT_LE(std::fabs(double{y[i]} - x[i]), bound) << q[t]->name << " element " << i;
        worst = std::max(worst, std::fabs(double{y[i]} - x[i]) / tensor_max);
      }
    }
    EXPECT_GT(worst, 0) << q[t]->name << ": NF4 cannot be exact on random weights";
  }
}

// What trains is the stored artifact: the model's bytes equal the NF4 file
// written from the same f32 weights and read back.
TEST_F(Nf4Model, HoldsExactlyWhatTheNf4FileReadsBack) {
  std::vector<quant::Nf4Tensor> tensors;
  for (Param* p : src_->weights().all()) {
    if (IsProjection(*p)) tensors.push_back(quant::QuantizeTensor(p->name, p->value.shape, p->value.data));
  }
  const std::string path = ::testing::TempDir() + "/nf4_model.nf4.safetensors";
  ASSERT_TRUE(quant::WriteNf4File(path, tensors).ok());
  auto back = quant::ReadNf4File(path);
  ASSERT_TRUE(back.ok()) << back.status();
  size_t i = 0;
  for (Param* p : m4_->weights().all()) {
    if (!IsProjection(*p)) continue;
    ASSERT_LT(i, back->size());
    const quant::Nf4Tensor& t = (*back)[i++];
    ASSERT_EQ(t.name, p->name);
    ASSERT_EQ(static_cast<int64_t>(t.data.size()), p->value.nbytes());
    EXPECT_EQ(std::memcmp(t.data.data(), p->value.raw(), t.data.size()), 0) << p->name;
  }
  EXPECT_EQ(i, back->size());
}

// Frozen memory: the projections take 36 bytes per 64 weights (4 bits + one
// fp32 scale per block: 4.5 / 32 of f32, "1/8 + scales"); embeddings,
// lm_head, norms and biases are f32 as before; 64-byte slot padding aside.
TEST_F(Nf4Model, FrozenArenaHoldsProjectionsAtAnEighthPlusScales) {
  int64_t proj_f32 = 0, rest = 0, proj_elems = 0;
  for (Param* p : src_->weights().all()) {
    if (IsProjection(*p)) {
      proj_f32 += p->value.numel() * 4;
      proj_elems += p->value.numel();
    } else {
      rest += p->value.numel() * 4;
    }
  }
  const int64_t slots = static_cast<int64_t>(src_->weights().all().size());
  const int64_t b32 = src_->frozen_arena().bytes(), b4 = m4_->frozen_arena().bytes();
  const int64_t nf4_ideal = proj_f32 / 8 + (proj_elems + 63) / 64 * 4;
  EXPECT_GE(b4, rest + proj_f32 / 8);
  EXPECT_LE(b4, rest + nf4_ideal + 64 * slots * 2);  // per-tensor last-block padding + alignment
  EXPECT_LE(b32, rest + proj_f32 + 64 * slots);
  const double proj_ratio = static_cast<double>(b4 - rest) / static_cast<double>(proj_f32);
  EXPECT_NEAR(proj_ratio, 4.5 / 32, 0.01);
  std::printf("frozen bytes: f32 %lld, nf4 %lld (projections %.4f of f32, 4.5/32 = 0.1406)\n",
              static_cast<long long>(b32), static_cast<long long>(b4), proj_ratio);
}

// Loss and adapter gradients of the NF4 model against an f32 model loaded
// from the NF4 model's Save() (the dequantised values, written as F32:
// exactly the floats the NF4 kernels multiply with). So only the summation
// order can differ: the NF4 kernels run one GEMM per row tile of W (forward
// splits y's columns, dX = dY·W sums over W's rows in tile chunks), the f32
// path one GEMM per layer. fp32 reassociation error is ~ sqrt(K)·2^-24 ≈
// 2e-6 relative at K = 1100: the summed loss is compared at 1e-6 relative,
// the gradients (LoRA on every projection and lm_head, so dA of q,k,v,
// gate, up and every layer below the last depend on the NF4 dX) normwise
// at 1e-5. A dequantisation off by one element, block or nibble is off by
// 1e-2 or more.
TEST_F(Nf4Model, LossAndGradsEqualTheDequantisedF32Model) {
  const std::string deq_dir = ::testing::TempDir() + "/nf4_dequantised";
  ASSERT_TRUE(m4_->Save(deq_dir).ok());
  auto m32 = Model::Create(c_, NothingTrainable);
  ASSERT_TRUE(m32.ok());
  ASSERT_TRUE((*m32)->LoadWeights(deq_dir).ok());
  {  // Save wrote the dequantised values exactly.
    const std::vector<Param*> a = m4_->weights().all(), b = (*m32)->weights().all();
    for (size_t t = 0; t < a.size(); ++t) ASSERT_EQ(Floats(*a[t]), Floats(*b[t])) << a[t]->name;
  }
  LoraOptions lo;
  lo.rank = 4;
  lo.targets.push_back("lm_head");
  auto a4 = LoraAdapter::Create(c_, lo);
  auto a32 = LoraAdapter::Create(c_, lo);
  ASSERT_TRUE(a4.ok() && a32.ok());
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  for (LoraModule* mod : (*a4)->all_modules()) {
    for (int64_t i = 0; i < mod->b.numel(); ++i) mod->b.data[i] = normal(rng);
  }
  std::memcpy((*a32)->params().data(), (*a4)->params().data(), (*a4)->params().bytes());
  constexpr int B = 2, T = 6;
  std::mt19937 trng(2);
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (int i = 0; i < B * T; ++i) {
    tokens[i] = static_cast<int32_t>(trng() % c_.vocab_size);
    targets[i] = static_cast<int32_t>(trng() % c_.vocab_size);
  }
  auto l4 = m4_->Forward(tokens.data(), targets.data(), B, T, a4->get(), true);
  auto l32 = (*m32)->Forward(tokens.data(), targets.data(), B, T, a32->get(), true);
  ASSERT_TRUE(l4.ok() && l32.ok());
  EXPECT_NEAR(l4->loss_sum, l32->loss_sum, 1e-6 * std::abs(l32->loss_sum));
  ASSERT_TRUE(m4_->Backward(1.0f).ok());
  ASSERT_TRUE((*m32)->Backward(1.0f).ok());
  double diff = 0, norm = 0;
  const float* g4 = (*a4)->grads().data();
  const float* g32 = (*a32)->grads().data();
  for (int64_t i = 0; i < (*a4)->grads().size(); ++i) {
    diff += (double{g4[i]} - g32[i]) * (double{g4[i]} - g32[i]);
    norm += double{g32[i]} * g32[i];
  }
  ASSERT_GT(norm, 0);
  EXPECT_LT(std::sqrt(diff / norm), 1e-5);
  // And NF4 is not a no-op: the original f32 weights give another loss.
  auto lsrc = src_->Forward(tokens.data(), targets.data(), B, T, a32->get(), false);
  ASSERT_TRUE(lsrc.ok());
  EXPECT_GT(std::abs(lsrc->loss_sum - l4->loss_sum), 1e-4 * std::abs(lsrc->loss_sum));
  std::printf("nf4 vs dequantised f32: loss %.17g vs %.17g (original f32 %.9g), grad rel err %.3g\n",
              l4->loss_sum, l32->loss_sum, lsrc->loss_sum, std::sqrt(diff / norm));
}

TEST_F(Nf4Model, MergingIntoNf4IsRefused) {
  auto a = LoraAdapter::Create(c_, LoraOptions{});
  ASSERT_TRUE(a.ok());
  const absl::Status s = m4_->MergeAdapter(**a);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(s.message()).find("nf4"), std::string::npos) << s;
}

// InitRandom draws the same normals as for f32 and quantises them.
TEST_F(Nf4Model, InitRandomQuantisesTheF32Draws) {
  ModelOptions o;
  o.frozen_dtype = DType::kDTypeNF4;
  auto r4 = Model::Create(c_, NothingTrainable, o);
  ASSERT_TRUE(r4.ok());
  (*r4)->InitRandom(5, 0.3f);
  const std::vector<Param*> a = (*r4)->weights().all(), b = m4_->weights().all();
  for (size_t t = 0; t < a.size(); ++t) {
    ASSERT_EQ(a[t]->value.nbytes(), b[t]->value.nbytes());
    EXPECT_EQ(std::memcmp(a[t]->value.raw(), b[t]->value.raw(), static_cast<size_t>(a[t]->value.nbytes())), 0)
        << a[t]->name;
  }
}

}  // namespace
}  // namespace sheaf
