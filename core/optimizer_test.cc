#include "core/optimizer.h"

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numbers>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sheaf {
namespace {

// A parameter with its own storage, for tests.
struct OwnedParam {
  std::string name;
  std::vector<float> value;
  std::vector<float> grad;
  bool weight_decay = true;
};

std::vector<ParamRef> Refs(std::vector<OwnedParam>& owned) {
  std::vector<ParamRef> refs;
  for (OwnedParam& p : owned) {
    refs.push_back({p.name, p.value.data(), p.grad.data(),
                    static_cast<int64_t>(p.value.size()), p.weight_decay});
  }
  return refs;
}

// Deterministic, sign-varying values away from zero: |x| in [0.1, 1.1].
float Pattern(int64_t i, int64_t t, double phase) {
  const double s = std::sin(0.7 * static_cast<double>(i) + 1.3 * t + phase);
  return static_cast<float>((s >= 0 ? 0.1 : -0.1) + s);
}

// Naive AdamW in double, written straight from the paper / torch docs, as an
// independent reference for the float implementation.
struct ReferenceAdamW {
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, wd = 0;
  std::vector<double> p, m, v;
  bool decay = true;
  int64_t t = 0;

  void Step(const std::vector<float>& g) {
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      if (decay) p[i] -= lr * wd * p[i];
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * static_cast<double>(g[i]) * g[i];
      const double m_hat = m[i] / (1 - std::pow(beta1, t));
      const double v_hat = v[i] / (1 - std::pow(beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

void CheckAgainstReference(float weight_decay) {
  AdamWOptions options;
  options.lr = 1e-2f;
  options.beta1 = 0.9f;
  options.beta2 = 0.999f;
  options.eps = 1e-8f;
  options.weight_decay = weight_decay;
  // Param sizes cover the vector body and a scalar tail; "bias" opts out of
  // decay.
  std::vector<OwnedParam> owned = {{"w", {}, {}, true},
                                   {"bias", {}, {}, false}};
  owned[0].value.resize(37);
  owned[1].value.resize(5);
  std::vector<ReferenceAdamW> ref;
  for (size_t k = 0; k < owned.size(); ++k) {
    OwnedParam& p = owned[k];
    p.grad.resize(p.value.size());
    for (size_t i = 0; i < p.value.size(); ++i) {
      p.value[i] = Pattern(static_cast<int64_t>(i), 0, 2.0 + k);
    }
    ReferenceAdamW r;
    r.lr = options.lr;
    r.beta1 = options.beta1;
    r.beta2 = options.beta2;
    r.eps = options.eps;
    r.wd = options.weight_decay;
    r.p.assign(p.value.begin(), p.value.end());
    r.m.assign(p.value.size(), 0.0);
    r.v.assign(p.value.size(), 0.0);
    r.decay = p.weight_decay;
    ref.push_back(r);
  }
  absl::StatusOr<AdamW> opt = AdamW::Create(Refs(owned), options);
  ASSERT_TRUE(opt.ok()) << opt.status();

  for (int64_t t = 1; t <= 5; ++t) {
    for (size_t k = 0; k < owned.size(); ++k) {
      for (size_t i = 0; i < owned[k].grad.size(); ++i) {
        owned[k].grad[i] = Pattern(static_cast<int64_t>(i), t, 0.5 * k);
      }
      ref[k].Step(owned[k].grad);
    }
    opt->Step();
  }
  EXPECT_EQ(opt->step_count(), 5);

  // Tolerances. float rounds each operation to 2^-24 ≈ 6e-8 relative. A
  // parameter (|p| >= 0.1) takes two roundings per step (decay multiply,
  // update subtract) plus a few ulp of the much smaller update: over 5 steps
  // at most ~10 · 6e-8 = 6e-7 of |p|, so 1e-6 relative holds in the worst
  // case, while a wrong formula (no bias correction, decay folded into the
  // gradient, decay scaled without lr) moves p by >= 1e-5 relative at
  // lr = 1e-2. v is a sum of positive terms, so it is also held to a relative
  // bound; m can cancel across sign changes, so it gets an absolute bound
  // scaled to |g| <= 1.1.
  for (size_t k = 0; k < owned.size(); ++k) {
    std::span<float> m = opt->m(static_cast<int>(k));
    std::span<float> v = opt->v(static_cast<int>(k));
    for (size_t i = 0; i < owned[k].value.size(); ++i) {
      const double p_ref = ref[k].p[i];
      EXPECT_NEAR(owned[k].value[i], p_ref, 1e-6 * std::abs(p_ref))
          << owned[k].name << "[" << i << "] wd=" << weight_decay;
      EXPECT_NEAR(m[i], ref[k].m[i], 1e-6) << owned[k].name << "[" << i << "]";
      EXPECT_NEAR(v[i], ref[k].v[i], 1e-6 * ref[k].v[i])
          << owned[k].name << "[" << i << "]";
    }
  }
}

TEST(AdamW, MatchesDoubleReferenceWithoutWeightDecay) {
  CheckAgainstReference(0.0f);
}

TEST(AdamW, MatchesDoubleReferenceWithWeightDecay) {
  CheckAgainstReference(0.1f);
}

TEST(AdamW, FirstStepIsLrTimesSignOfGrad) {
  // At t = 1 bias correction gives m̂ = g and v̂ = g², so the update is
  // lr · g / (|g| + eps) ≈ lr · sign(g) whatever the magnitude of g.
  std::vector<OwnedParam> owned = {{"w",
                                    std::vector<float>(6, 0.0f),
                                    {0.5f, -0.25f, 3.0f, -7.0f, 0.125f, -1.0f},
                                    true}};
  AdamWOptions options;
  options.lr = 1e-3f;
  options.weight_decay = 0.0f;
  absl::StatusOr<AdamW> opt = AdamW::Create(Refs(owned), options);
  ASSERT_TRUE(opt.ok()) << opt.status();
  opt->Step();
  for (size_t i = 0; i < owned[0].grad.size(); ++i) {
    const double expected = owned[0].grad[i] > 0 ? -1e-3 : 1e-3;
    // p starts at 0, so p is exactly the update. eps/|g| <= 1e-7 plus a few
    // float roundings (~6e-8 each) stay well inside 1e-6 relative.
    EXPECT_NEAR(owned[0].value[i], expected, 1e-6 * 1e-3) << i;
  }
}

TEST(AdamW, ZeroGradWithDecayShrinksByOneMinusLrWd) {
  std::vector<OwnedParam> owned = {
      {"decayed", {1.0f, -2.0f, 0.5f}, {0.0f, 0.0f, 0.0f}, true},
      {"not_decayed", {1.0f, -2.0f, 0.5f}, {0.0f, 0.0f, 0.0f}, false}};
  AdamWOptions options;
  options.weight_decay = 0.1f;
  absl::StatusOr<AdamW> opt = AdamW::Create(Refs(owned), options);
  ASSERT_TRUE(opt.ok()) << opt.status();
  const float lr = 0.01f;
  opt->Step(lr);
  const std::vector<float> before = {1.0f, -2.0f, 0.5f};
  for (size_t i = 0; i < before.size(); ++i) {
    // With g = 0 the Adam term is 0 / (0 + eps) = 0 exactly, so only the
    // decay multiply remains: one float rounding, hence FLOAT_EQ.
    EXPECT_FLOAT_EQ(owned[0].value[i], before[i] * (1.0f - lr * 0.1f)) << i;
    EXPECT_EQ(owned[1].value[i], before[i]) << i;
  }
}

TEST(AdamW, BitwiseIdenticalForAnyThreadCount) {
  // Large enough to take the parallel path, with an odd size so that thread
  // chunks end in different places.
  constexpr int64_t kSize = (int64_t{1} << 17) + 13;
  auto run = [&](int threads) {
    std::vector<OwnedParam> owned = {
        {"w", std::vector<float>(kSize), std::vector<float>(kSize), true}};
    for (int64_t i = 0; i < kSize; ++i) {
      owned[0].value[static_cast<size_t>(i)] = Pattern(i, 0, 1.0);
    }
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    AdamWOptions options;
    options.weight_decay = 0.05f;
    absl::StatusOr<AdamW> opt = AdamW::Create(Refs(owned), options);
    EXPECT_TRUE(opt.ok()) << opt.status();
    std::vector<ParamRef> refs = Refs(owned);
    float norm = 0.0f;
    for (int64_t t = 1; t <= 3; ++t) {
      for (int64_t i = 0; i < kSize; ++i) {
        owned[0].grad[static_cast<size_t>(i)] = Pattern(i, t, 0.0);
      }
      norm = ClipGradNorm(refs, 1.0f);
      opt->Step();
    }
    omp_set_num_threads(saved);
    std::vector<float> out = owned[0].value;
    out.insert(out.end(), opt->state().begin(), opt->state().end());
    out.push_back(norm);
    return out;
  };
  const std::vector<float> one = run(1);
  for (int threads : {2, 3, 8}) {
    const std::vector<float> many = run(threads);
    ASSERT_EQ(one.size(), many.size());
    EXPECT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)),
              0)
        << threads << " threads";
  }
}

TEST(AdamW, RestoreContinuesIdentically) {
  auto make = [](std::vector<OwnedParam>& owned) {
    owned = {{"a", {0.5f, -0.5f, 1.5f}, {0.f, 0.f, 0.f}, true},
             {"b", {2.0f, -1.0f}, {0.f, 0.f}, false}};
  };
  auto set_grads = [](std::vector<OwnedParam>& owned, int64_t t) {
    for (OwnedParam& p : owned) {
      for (size_t i = 0; i < p.grad.size(); ++i) {
        p.grad[i] = Pattern(static_cast<int64_t>(i), t, p.name == "a" ? 0 : 1);
      }
    }
  };
  std::vector<OwnedParam> straight, resumed;
  make(straight);
  absl::StatusOr<AdamW> a = AdamW::Create(Refs(straight), AdamWOptions());
  ASSERT_TRUE(a.ok()) << a.status();
  for (int64_t t = 1; t <= 2; ++t) {
    set_grads(straight, t);
    a->Step();
  }
  // Resume in a fresh optimizer from a copy of the state after 2 steps.
  make(resumed);
  for (size_t k = 0; k < resumed.size(); ++k) {
    resumed[k].value = straight[k].value;
  }
  absl::StatusOr<AdamW> b = AdamW::Create(Refs(resumed), AdamWOptions());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->StateLayout(), "a 3\nb 2\n");
  EXPECT_EQ(b->StateLayout(), a->StateLayout());
  ASSERT_TRUE(b->Restore(a->step_count(), a->state()).ok());
  for (int64_t t = 3; t <= 4; ++t) {
    set_grads(straight, t);
    set_grads(resumed, t);
    a->Step();
    b->Step();
  }
  EXPECT_EQ(b->step_count(), 4);
  for (size_t k = 0; k < straight.size(); ++k) {
    EXPECT_EQ(straight[k].value, resumed[k].value) << straight[k].name;
  }
  EXPECT_TRUE(std::equal(a->state().begin(), a->state().end(),
                         b->state().begin(), b->state().end()));

  std::vector<float> wrong(a->state().size() + 1);
  EXPECT_EQ(b->Restore(1, wrong).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b->Restore(-1, a->state()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AdamW, CreateRejectsBadInput) {
  std::vector<float> x(4), g(4);
  AdamWOptions bad_beta;
  bad_beta.beta2 = 1.0f;
  absl::StatusOr<AdamW> s1 =
      AdamW::Create({{"w", x.data(), g.data(), 4, true}}, bad_beta);
  EXPECT_EQ(s1.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s1.status().message().find("beta2"), std::string::npos);

  absl::StatusOr<AdamW> s2 = AdamW::Create(
      {{"w", x.data(), g.data(), 4, true}, {"w", x.data(), g.data(), 4, true}},
      AdamWOptions());
  EXPECT_EQ(s2.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s2.status().message().find("'w'"), std::string::npos);

  absl::StatusOr<AdamW> s3 =
      AdamW::Create({{"w", x.data(), nullptr, 4, true}}, AdamWOptions());
  EXPECT_EQ(s3.status().code(), absl::StatusCode::kInvalidArgument);

  AdamWOptions nan_lr;
  nan_lr.lr = std::nanf("");
  EXPECT_FALSE(AdamW::Create({}, nan_lr).ok());
}

TEST(ClipGradNorm, NormMatchesHandComputation) {
  // ||(3, 4)|| = 5 and ||(12)|| = 12 → global sqrt(9 + 16 + 144) = 13.
  std::vector<OwnedParam> owned = {{"a", {0.f, 0.f}, {3.f, 4.f}, true},
                                   {"b", {0.f}, {12.f}, true}};
  std::vector<ParamRef> refs = Refs(owned);
  EXPECT_EQ(ClipGradNorm(refs, 0.0f), 13.0f);  // exact in double
  // Disabled and above the norm: the grads are untouched.
  EXPECT_EQ(owned[0].grad, (std::vector<float>{3.f, 4.f}));
  EXPECT_EQ(ClipGradNorm(refs, 20.0f), 13.0f);
  EXPECT_EQ(owned[1].grad, (std::vector<float>{12.f}));
}

TEST(ClipGradNorm, ScalesAllParamsByTheSameFactor) {
  std::vector<OwnedParam> owned = {{"a", {0.f, 0.f}, {3.f, 4.f}, true},
                                   {"b", {0.f}, {12.f}, true}};
  std::vector<ParamRef> refs = Refs(owned);
  EXPECT_EQ(ClipGradNorm(refs, 1.0f), 13.0f);  // returns the pre-clip norm
  const float scale = static_cast<float>(1.0 / (13.0 + 1e-6));
  // Each grad is one float multiply by the same rounded factor.
  EXPECT_EQ(owned[0].grad[0], 3.f * scale);
  EXPECT_EQ(owned[0].grad[1], 4.f * scale);
  EXPECT_EQ(owned[1].grad[0], 12.f * scale);
  // The clipped norm is max_norm up to the 1e-6 guard and float rounding.
  EXPECT_NEAR(ClipGradNorm(refs, 0.0f), 1.0f, 1e-6);
}

TEST(ClipGradNorm, NonFiniteNormLeavesGradsAlone) {
  std::vector<OwnedParam> owned = {
      {"a", {0.f, 0.f}, {std::nanf(""), 1.f}, true}};
  std::vector<ParamRef> refs = Refs(owned);
  EXPECT_TRUE(std::isnan(ClipGradNorm(refs, 1.0f)));
  EXPECT_EQ(owned[0].grad[1], 1.f);
}

TEST(LrSchedule, WarmupThenCosine) {
  const LrSchedule s{
      .peak = 3e-4f, .warmup_steps = 10, .total_steps = 110, .min_ratio = 0.1f};
  ASSERT_TRUE(s.Validate().ok());
  const double peak = 3e-4f;
  const double floor = peak * 0.1f;
  // Each value is computed in double and rounded once to float: FLOAT_EQ.
  EXPECT_FLOAT_EQ(s.At(0), peak / 10);  // (0 + 1) / warmup
  EXPECT_FLOAT_EQ(s.At(4), peak * 5 / 10);
  EXPECT_FLOAT_EQ(s.At(9), peak);   // last warmup step reaches peak
  EXPECT_FLOAT_EQ(s.At(10), peak);  // cosine starts at peak
  EXPECT_FLOAT_EQ(s.At(60), (peak + floor) / 2);  // cosine midpoint
  EXPECT_FLOAT_EQ(s.At(35), floor + (peak - floor) * 0.5 *
                                        (1 + std::cos(std::numbers::pi / 4)));
  EXPECT_FLOAT_EQ(s.At(110), floor);   // end
  EXPECT_FLOAT_EQ(s.At(1000), floor);  // constant after the end
  EXPECT_FLOAT_EQ(s.At(-5), s.At(0));
  // Monotone non-increasing after warmup.
  for (int64_t step = 10; step < 120; ++step) {
    EXPECT_LE(s.At(step + 1), s.At(step)) << step;
  }
}

TEST(LrSchedule, NoWarmup) {
  const LrSchedule s{
      .peak = 1.0f, .warmup_steps = 0, .total_steps = 4, .min_ratio = 0.0f};
  EXPECT_FLOAT_EQ(s.At(0), 1.0f);
  EXPECT_FLOAT_EQ(s.At(2), 0.5f);
  EXPECT_FLOAT_EQ(s.At(4), 0.0f);
}

TEST(LrSchedule, ValidateNamesTheField) {
  LrSchedule s{
      .peak = 1.0f, .warmup_steps = 0, .total_steps = 4, .min_ratio = 2.0f};
  absl::Status status = s.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("min_ratio"), std::string::npos);
}

}  // namespace
}  // namespace sheaf
