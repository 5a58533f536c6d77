// Fused projections (ModelOptions::fuse_projections): the same model, adapter
// and batch with fusion on and off give the same loss and gradients within
// fp32 reassociation, for groups that fuse (LoRA of different ranks on q, k
// and v, so the fused GEMM's segments do not line up with its tiles) and for
// groups that must fall back (dropout, biases, a trainable base weight);
// and a fused step is deterministic (same bits twice: resume stays bit for
// bit for a fixed kernel choice).
//
// Tolerance: the fused path changes the order of fp32 sums only (dX adds
// the products of q, k, v and the LoRA term in one K loop instead of four
// accumulations; g = scale·dy·B is scaled before A instead of after).
// Relative error of a K-term fp32 sum is ~sqrt(K)·2^-24 per GEMM, ~1e-6
// after a few layers: the summed loss is compared at 1e-6 relative, the
// gradients normwise at 2e-5 (a wrong segment, a lost LoRA term or a
// missing accumulation is off by 1e-2 or more).
#include <cmath>
#include <cstring>
#include <random>

#include "core/model.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

ModelConfig FusedConfig(bool bias) {
  ModelConfig c;
  c.hidden_size = 64;
  c.num_layers = 2;
  c.head_dim = 16;
  c.vocab_size = 200;
  c.max_position_embeddings = 32;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 100.0f;
  c.tie_word_embeddings = false;
  c.attention_bias = bias;
  c.layers = {{4, 2, 100}, {4, 1, 72}};  // GQA then MQA; I not a multiple of 32
  return c;
}

struct StepResult {
  double loss = 0;
  std::vector<float> adapter_grads, base_grads;
};

StepResult Step(const ModelConfig& c, bool fuse, const LoraOptions& lo, const TrainablePredicate& tr,
         int steps = 1) {
  ModelOptions o;
  o.fuse_projections = fuse;
  auto m = Model::Create(c, tr, o);
  EXPECT_TRUE(m.ok()) << m.status();
  (*m)->InitRandom(11, 0.2f);
  auto a = LoraAdapter::Create(c, lo);
  EXPECT_TRUE(a.ok()) << a.status();
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  for (LoraModule* mod : (*a)->all_modules()) {
    for (int64_t i = 0; i < mod->b.numel(); ++i) mod->b.data[i] = normal(rng);
  }
  constexpr int B = 3, T = 19;
  std::mt19937 trng(2);
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (int i = 0; i < B * T; ++i) {
    tokens[i] = static_cast<int32_t>(trng() % c.vocab_size);
    targets[i] = static_cast<int32_t>(trng() % c.vocab_size);
  }
  StepResult r;
  for (int s = 0; s < steps; ++s) {
    auto l = (*m)->Forward(tokens.data(), targets.data(), B, T, a->get(), true);
    EXPECT_TRUE(l.ok()) << l.status();
    r.loss += l->loss_sum;
    EXPECT_TRUE((*m)->Backward(1.0f / static_cast<float>(l->tokens)).ok());
  }
  const float* g = (*a)->grads().data();
  r.adapter_grads.assign(g, g + (*a)->grads().size());
  const float* bg = static_cast<const float*>((*m)->grads_arena().data());
  if (bg != nullptr) r.base_grads.assign(bg, bg + (*m)->grads_arena().size());
  return r;
}

double RelErr(const std::vector<float>& x, const std::vector<float>& ref) {
  EXPECT_EQ(x.size(), ref.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < x.size() && i < ref.size(); ++i) {
    diff += (double{x[i]} - ref[i]) * (double{x[i]} - ref[i]);
    norm += double{ref[i]} * ref[i];
  }
  EXPECT_GT(norm, 0);
  return std::sqrt(diff / norm);
}

void ExpectSame(const StepResult& fused, const StepResult& plain, const char* what) {
  EXPECT_NEAR(fused.loss, plain.loss, 1e-6 * std::abs(plain.loss)) << what;
  EXPECT_LT(RelErr(fused.adapter_grads, plain.adapter_grads), 2e-5) << what;
  if (!plain.base_grads.empty()) {
    EXPECT_LT(RelErr(fused.base_grads, plain.base_grads), 2e-5) << what;
  }
  std::printf("%s: loss %.17g fused vs %.17g, adapter grad rel err %.3g\n", what, fused.loss,
              plain.loss, RelErr(fused.adapter_grads, plain.adapter_grads));
}

LoraOptions Ranks() {
  LoraOptions lo;
  lo.rank = 4;
  lo.rank_pattern = {{"k_proj", 3}, {"v_proj", 5}, {"up_proj", 7}};
  return lo;
}

TEST(FusedProjections, SameLossAndGradsAsPerProjection) {
  const ModelConfig c = FusedConfig(false);
  ExpectSame(Step(c, true, Ranks(), NothingTrainable), Step(c, false, Ranks(), NothingTrainable),
             "lora on every projection");
}

TEST(FusedProjections, PartialTargetsFuseBaseWithTheAdaptersPresent) {
  const ModelConfig c = FusedConfig(false);
  LoraOptions lo;
  lo.rank = 6;
  lo.targets = {"q_proj", "v_proj", "gate_proj"};  // k, up, o, down: base only
  ExpectSame(Step(c, true, lo, NothingTrainable), Step(c, false, lo, NothingTrainable),
             "lora on q, v, gate");
}

TEST(FusedProjections, FallbacksGiveTheSameResults) {
  {
    const ModelConfig c = FusedConfig(true);  // q/k/v biases: that group runs one by one
    ExpectSame(Step(c, true, Ranks(), NothingTrainable), Step(c, false, Ranks(), NothingTrainable),
               "attention bias");
  }
  {
    const ModelConfig c = FusedConfig(false);
    LoraOptions lo = Ranks();
    lo.dropout = 0.1f;  // dropout: every group one by one
    ExpectSame(Step(c, true, lo, NothingTrainable), Step(c, false, lo, NothingTrainable),
               "dropout");
  }
  {
    const ModelConfig c = FusedConfig(false);
    auto up_trainable = [](const std::string& n) { return n.find("up_proj") != std::string::npos; };
    ExpectSame(Step(c, true, Ranks(), up_trainable), Step(c, false, Ranks(), up_trainable),
               "trainable up_proj");
  }
}

// Two steps (gradients accumulate), twice: identical bits.
TEST(FusedProjections, Deterministic) {
  const ModelConfig c = FusedConfig(false);
  const StepResult a = Step(c, true, Ranks(), NothingTrainable, 2);
  const StepResult b = Step(c, true, Ranks(), NothingTrainable, 2);
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.adapter_grads, b.adapter_grads);
}

}  // namespace
}  // namespace sheaf
