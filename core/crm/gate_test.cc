// The RecLoRA mixture through the real model: gates (core/crm/gate.h) feeding
// a meta-LoRA bank through AdapterPlan and the platform's mixture operator.
#include "core/crm/gate.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "base/rng.h"
#include "core/model.h"
#include "gtest/gtest.h"

namespace sheaf::crm {
namespace {

constexpr int kB = 4, kT = 6, kD = 7;  // samples, tokens per sample, gate input width

ModelConfig TinyConfig() {
  ModelConfig c;
  c.hidden_size = 16;
  c.num_layers = 2;
  c.head_dim = 4;
  c.vocab_size = 32;
  c.layers = {{4, 2, 24}, {4, 2, 24}};
  return c;
}

struct Fixture {
  ModelConfig config = TinyConfig();
  std::unique_ptr<Model> model;
  std::vector<int32_t> tokens;
  std::vector<float> gate_in;  // (kB, kD): stands for the CRM's output
  LossHead head;

  Fixture() {
    // Unfused projections: a bank entry is never fusable, so plain LoRA is
    // compared on the same (unfused) kernels; fused against unfused is
    // model_fused_test's business.
    ModelOptions unfused;
    unfused.fuse_projections = false;
    auto m = Model::Create(config, NothingTrainable, unfused);
    EXPECT_TRUE(m.ok()) << m.status();
    model = std::move(*m);
    model->InitRandom(3, 0.3f);
    uint64_t s = 17;
    for (int i = 0; i < kB * kT; ++i) tokens.push_back(static_cast<int32_t>(SplitMix64Next(s) % 32));
    for (int i = 0; i < kB * kD; ++i) {
      gate_in.push_back(static_cast<float>(SplitMix64Next(s) % 1000) / 250.0f - 2.0f);
    }
    // The answer row of each sample, two vocabulary columns ("no", "yes").
    std::vector<int32_t> rows, targets;
    for (int b = 0; b < kB; ++b) {
      rows.push_back(b * kT + kT - 1);
      targets.push_back(b % 2);
    }
    head = LossHead::SelectedRows(rows, {5, 9}, targets);
  }
};

LoraOptions BankOptions(int experts) {
  LoraOptions o;
  o.rank = 2;
  o.alpha = 4;
  o.targets = {"q_proj", "v_proj"};
  o.num_experts = experts;
  o.seed = 5;
  return o;
}

void RandomizeB(LoraAdapter& a, uint64_t seed, float amp) {
  uint64_t s = seed;
  for (LoraModule* m : a.all_modules()) {
    for (int64_t i = 0; i < m->b.numel(); ++i) {
      m->b.data[i] = amp * (static_cast<float>(SplitMix64Next(s) % 2001) / 1000.0f - 1.0f);
    }
  }
}

std::unique_ptr<GateBank> MakeGates(int experts, int num_gates, float dropout = 0.0f) {
  GateOptions go;
  go.in_dim = kD;
  go.hidden = 6;
  go.num_experts = experts;
  go.dropout = dropout;
  auto g = GateBank::Create(go, num_gates);
  EXPECT_TRUE(g.ok()) << g.status();
  (*g)->InitRandom(8);
  return std::move(*g);
}

TEST(Gate, WeightsArePositiveAndSumToOne) {
  Fixture f;
  auto gates = MakeGates(8, 3);
  ASSERT_TRUE(gates->Forward(f.gate_in.data(), kB, false, 0).ok());
  for (int g = 0; g < 3; ++g) {
    Tensor w = gates->weights(g);
    ASSERT_EQ(w.shape, (std::vector<int64_t>{kB, 8}));
    for (int b = 0; b < kB; ++b) {
      double sum = 0;
      for (int k = 0; k < 8; ++k) {
        EXPECT_GT(w.data[b * 8 + k], 0.0f);
        sum += w.data[b * 8 + k];
      }
      EXPECT_NEAR(sum, 1.0, 1e-6);  // 8 fp32 terms, each rounded once
    }
  }
}

// A fresh bank (B = 0) leaves the base model's logits untouched, bit for
// bit, in both mixing forms (every added term is an exact zero).
TEST(Gate, FreshBankGivesBaseLogits) {
  Fixture f;
  ASSERT_TRUE(f.model->Forward(f.tokens.data(), nullptr, kB, kT, AdapterPlan(2), false).ok());
  const int V = f.config.vocab_size;
  std::vector<float> base(f.model->logits(), f.model->logits() + kB * kT * V);
  for (AdapterMixing mix : {AdapterMixing::kAdapterMixingWeights, AdapterMixing::kAdapterMixingOutputs}) {
    auto bank = LoraAdapter::Create(f.config, BankOptions(4));
    ASSERT_TRUE(bank.ok());
    auto gates = MakeGates(4, 4);
    ASSERT_TRUE(gates->Forward(f.gate_in.data(), kB, false, 0).ok());
    AdapterPlan plan(2);
    ASSERT_TRUE(gates->Attach(plan, **bank, kT, mix).ok());
    ASSERT_TRUE(f.model->Forward(f.tokens.data(), nullptr, kB, kT, plan, false).ok());
    EXPECT_EQ(std::memcmp(base.data(), f.model->logits(), base.size() * sizeof(float)), 0);
  }
}

// N = 1: the gate's softmax is exactly 1, and the gated bank gives plain
// LoRA's loss and adapter gradients bit for bit, in both forms.
TEST(Gate, OneExpertIsPlainLoraBitIdentical) {
  Fixture f;
  auto plain = LoraAdapter::Create(f.config, BankOptions(1));
  ASSERT_TRUE(plain.ok());
  RandomizeB(**plain, 1, 0.5f);
  auto ref = f.model->Forward(f.tokens.data(), nullptr, kB, kT,
                              *AdapterPlan::ForAdapter(plain->get(), 2), true, f.head);
  ASSERT_TRUE(ref.ok()) << ref.status();
  (*plain)->grads().Zero();
  ASSERT_TRUE(f.model->Backward(1.0f).ok());
  for (AdapterMixing mix : {AdapterMixing::kAdapterMixingWeights, AdapterMixing::kAdapterMixingOutputs}) {
    auto bank = LoraAdapter::Create(f.config, BankOptions(1));
    ASSERT_TRUE(bank.ok());
    ASSERT_EQ((*bank)->params().bytes(), (*plain)->params().bytes());
    std::memcpy((*bank)->params().data(), (*plain)->params().data(), (*plain)->params().bytes());
    auto gates = MakeGates(1, 4, 0.1f);
    ASSERT_TRUE(gates->Forward(f.gate_in.data(), kB, true, 3).ok());
    for (int b = 0; b < kB; ++b) ASSERT_EQ(gates->weights(0).data[b], 1.0f);
    AdapterPlan plan(2);
    ASSERT_TRUE(gates->Attach(plan, **bank, kT, mix).ok());
    auto got = f.model->Forward(f.tokens.data(), nullptr, kB, kT, plan, true, f.head);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->loss_sum, ref->loss_sum);
    (*bank)->grads().Zero();
    ASSERT_TRUE(f.model->Backward(1.0f).ok());
    EXPECT_EQ(std::memcmp((*bank)->grads().data(), (*plain)->grads().data(),
                          (*plain)->grads().bytes()), 0);
  }
}

// Weights mixing equals building (Σ w B)(Σ w A) per sample and running that
// plain adapter on the sample alone; outputs mixing equals the N experts as
// frozen plain adapters with coefficients w_k. Tolerance: the two sides sum
// the same O(1) products in different orders (the explicit side in double,
// then rounded): a few fp32 ulps of logits of size ~1, so 2e-5 (1 + |x|).
TEST(Gate, MixingEqualsAnExplicitPerSampleConstruction) {
  Fixture f;
  const int N = 3, V = f.config.vocab_size;
  for (AdapterMixing mix : {AdapterMixing::kAdapterMixingWeights, AdapterMixing::kAdapterMixingOutputs}) {
    auto bank = LoraAdapter::Create(f.config, BankOptions(N));
    ASSERT_TRUE(bank.ok());
    RandomizeB(**bank, 2, 0.5f);
    auto gates = MakeGates(N, 4);
    ASSERT_TRUE(gates->Forward(f.gate_in.data(), kB, false, 0).ok());
    AdapterPlan plan(2);
    ASSERT_TRUE(gates->Attach(plan, **bank, kT, mix).ok());
    ASSERT_TRUE(f.model->Forward(f.tokens.data(), nullptr, kB, kT, plan, false).ok());
    std::vector<float> mixed(f.model->logits(), f.model->logits() + kB * kT * V);
    double max_diff = 0;
    for (int b = 0; b < kB; ++b) {
      std::vector<std::vector<float>> row(4);
      for (int g = 0; g < 4; ++g) {
        row[g].assign(gates->weights(g).data + b * N, gates->weights(g).data + (b + 1) * N);
      }
      AdapterPlan single(2);
      std::vector<std::unique_ptr<LoraAdapter>> keep;
      if (mix == AdapterMixing::kAdapterMixingWeights) {
        auto u = MixBank(f.config, **bank, row);
        ASSERT_TRUE(u.ok()) << u.status();
        keep.push_back(std::move(*u));
        ASSERT_TRUE(single.AddFrozenAdapter(*keep.back()).ok());
      } else {
        // Expert k alone, applied with coefficient w_k at each module: one
        // adapter per expert per module keeps the per-module weights.
        for (int k = 0; k < N; ++k) {
          for (int g = 0; g < 4; ++g) {
            std::vector<std::vector<float>> onehot(4, std::vector<float>(N, 0.0f));
            onehot[g][k] = 1.0f;
            auto e = MixBank(f.config, **bank, onehot);
            ASSERT_TRUE(e.ok());
            keep.push_back(std::move(*e));
            ASSERT_TRUE(single.AddFrozenAdapter(*keep.back(), row[g][k]).ok());
          }
        }
      }
      ASSERT_TRUE(f.model->Forward(f.tokens.data() + b * kT, nullptr, 1, kT, single, false).ok());
      for (int i = 0; i < kT * V; ++i) {
        const float want = f.model->logits()[i], got = mixed[b * kT * V + i];
        max_diff = std::max(max_diff, static_cast<double>(std::fabs(want - got)));
        ASSERT_NEAR(got, want, 2e-5 * (1 + std::fabs(want))) << "sample " << b << " i " << i;
      }
    }
    // The mixture really moved the logits (else the check would be empty).
    ASSERT_TRUE(f.model->Forward(f.tokens.data(), nullptr, kB, kT, AdapterPlan(2), false).ok());
    double moved = 0;
    for (int i = 0; i < kB * kT * V; ++i) moved = std::max(moved, static_cast<double>(std::fabs(f.model->logits()[i] - mixed[i])));
    EXPECT_GT(moved, 1e-2);
  }
}

// Central differences through the gate networks (LayerNorm, both linears,
// relu, dropout with a fixed mask, softmax/T) and the model, for both mixing
// forms, on the selected-rows (yes/no) loss. Tolerance: the loss is O(1) in
// fp32, h = 1e-2 gives ~1e-5 of rounding noise and O(h^2 · f''') ~1e-5 of
// truncation; 2e-4 absolute + 3% relative keeps wrong terms (O(|grad|))
// visible. Only elements with |grad| > 1e-4 are counted as "checked".
TEST(Gate, FiniteDifferencesThroughTheGate) {
  Fixture f;
  const int N = 3;
  for (AdapterMixing mix : {AdapterMixing::kAdapterMixingWeights, AdapterMixing::kAdapterMixingOutputs}) {
    auto bank = LoraAdapter::Create(f.config, BankOptions(N));
    ASSERT_TRUE(bank.ok());
    RandomizeB(**bank, 4, 1.0f);
    auto gates = MakeGates(N, 4, 0.1f);
    auto loss = [&](bool backward) -> double {
      EXPECT_TRUE(gates->Forward(f.gate_in.data(), kB, true, 77).ok());
      AdapterPlan plan(2);
      EXPECT_TRUE(gates->Attach(plan, **bank, kT, mix).ok());
      auto st = f.model->Forward(f.tokens.data(), nullptr, kB, kT, plan, true, f.head);
      EXPECT_TRUE(st.ok()) << st.status();
      if (backward) {
        gates->grads().Zero();
        (*bank)->grads().Zero();
        EXPECT_TRUE(f.model->Backward(1.0f).ok());
        gates->Backward();
      }
      return st->loss_sum;
    };
    loss(true);
    std::vector<float> grad(gates->grads().data(), gates->grads().data() + gates->grads().size());
    int checked = 0;
    const float h = 1e-2f;
    for (const ParamRef& r : gates->ParamRefs()) {
      const int64_t off = r.value - gates->params().data();
      for (int64_t i = 0; i < r.size; i += std::max<int64_t>(1, r.size / 7)) {
        const float saved = r.value[i];
        r.value[i] = saved + h;
        const double lp = loss(false);
        r.value[i] = saved - h;
        const double lm = loss(false);
        r.value[i] = saved;
        const double num = (lp - lm) / (2.0 * h), ana = grad[static_cast<size_t>(off + i)];
        EXPECT_NEAR(num, ana, 2e-4 + 0.03 * std::fabs(ana)) << r.name << "[" << i << "]";
        checked += std::fabs(ana) > 1e-4;
      }
    }
    EXPECT_GT(checked, 40) << "too few elements with a visible gradient";
    std::printf("mixing %d: %d gate elements checked\n", static_cast<int>(mix), checked);
  }
}

}  // namespace
}  // namespace sheaf::crm
