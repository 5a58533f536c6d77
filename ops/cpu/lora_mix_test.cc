// Mixture LoRA: naive-loop forward references for both mixing forms,
// finite-difference gradients for every input (x, A_cat, B_cat, gate), bit
// identity with ops::LoraForward/LoraBackward for the plain case, the ADD
// convention, and independence from the thread count.
#include "ops/cpu/lora_mix.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "ops/cpu/ops.h"

namespace sheaf::ops {
namespace {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

Vec Random(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> u(lo, hi);
  Vec v(n);
  for (float& x : v) x = u(rng);
  return v;
}

DVec ToDouble(const Vec& v) { return DVec(v.begin(), v.end()); }

// One problem instance with its own storage.
struct Problem {
  int n, in, out, R, K, P;  // P = rows per gate group
  bool gated;
  LoraMixing mixing;
  float scale = 0.75f;
  Vec x, a, b, gate, y0, c;  // c: weights of the test loss L = Σ c ⊙ y

  int groups() const { return gated ? (n + P - 1) / P : 1; }
  LoraMixArgs Args() const {
    LoraMixArgs args;
    args.n = n;
    args.in = in;
    args.out = out;
    args.lora_rank = R;
    args.num_experts = K;
    args.scale = scale;
    args.a_cat = a.data();
    args.b_cat = b.data();
    args.gate = gated ? gate.data() : nullptr;
    args.rows_per_group = P;
    args.mixing = mixing;
    return args;
  }
};

Problem MakeProblem(int n, int in, int out, int R, int K, int P, bool gated, LoraMixing mixing,
                    uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p;
  p.n = n;
  p.in = in;
  p.out = out;
  p.R = R;
  p.K = K;
  p.P = P;
  p.gated = gated;
  p.mixing = mixing;
  p.x = Random(static_cast<size_t>(n) * in, rng);
  p.a = Random(static_cast<size_t>(K) * R * in, rng);
  p.b = Random(static_cast<size_t>(out) * K * R, rng);
  // Gates of either sign and away from 0, so every term is exercised.
  p.gate = Random(static_cast<size_t>(p.groups()) * K, rng, -1.2f, 1.5f);
  p.y0 = Random(static_cast<size_t>(n) * out, rng);
  p.c = Random(static_cast<size_t>(n) * out, rng);
  return p;
}

// Naive reference in double, written from the definitions (not from the
// operator's factorisation): outputs form sums the experts' outputs; weights
// form builds A_u = Σ g_k A_k and B_u = Σ g_k B_k per row and applies them.
DVec ReferenceForward(const Problem& p, const DVec& x, const DVec& a, const DVec& b,
                      const DVec& gate) {
  const int KR = p.K * p.R;
  DVec y = ToDouble(p.y0);
  for (int i = 0; i < p.n; ++i) {
    auto g = [&](int k) { return p.gated ? gate[static_cast<size_t>(i / p.P) * p.K + k] : 1.0; };
    auto A = [&](int k, int r, int c) { return a[(static_cast<size_t>(k) * p.R + r) * p.in + c]; };
    auto B = [&](int k, int o, int r) { return b[static_cast<size_t>(o) * KR + k * p.R + r]; };
    for (int o = 0; o < p.out; ++o) {
      double sum = 0.0;
      if (p.mixing == LoraMixing::kLoraMixingOutputs) {
        for (int k = 0; k < p.K; ++k) {
          for (int r = 0; r < p.R; ++r) {
            double xa = 0.0;
            for (int c = 0; c < p.in; ++c) xa += x[static_cast<size_t>(i) * p.in + c] * A(k, r, c);
            sum += g(k) * B(k, o, r) * xa;
          }
        }
      } else {
        for (int r = 0; r < p.R; ++r) {
          double bu = 0.0;
          for (int k = 0; k < p.K; ++k) bu += g(k) * B(k, o, r);
          double xau = 0.0;
          for (int c = 0; c < p.in; ++c) {
            double au = 0.0;
            for (int k = 0; k < p.K; ++k) au += g(k) * A(k, r, c);
            xau += x[static_cast<size_t>(i) * p.in + c] * au;
          }
          sum += bu * xau;
        }
      }
      y[static_cast<size_t>(i) * p.out + o] += p.scale * sum;
    }
  }
  return y;
}

double ReferenceLoss(const Problem& p, const DVec& x, const DVec& a, const DVec& b,
                     const DVec& gate) {
  const DVec y = ReferenceForward(p, x, a, b, gate);
  double l = 0.0;
  for (size_t i = 0; i < y.size(); ++i) l += p.c[i] * y[i];
  return l;
}

struct Grads {
  Vec dx, da, db, dgate;
};

// The operator's gradients of L = Σ c ⊙ y (dy = c), each buffer pre-filled
// with `fill` to check that backward adds.
Grads OperatorGrads(const Problem& p, float fill) {
  const LoraMixArgs args = p.Args();
  Vec y = p.y0, xa(static_cast<size_t>(p.n) * p.K * p.R);
  Vec scratch(static_cast<size_t>(LoraMixScratchFloats(args)));
  LoraMixForward(y.data(), xa.data(), scratch.data(), p.x.data(), args);
  Grads g{Vec(p.x.size(), fill), Vec(p.a.size(), fill), Vec(p.b.size(), fill),
          Vec(p.gate.size(), fill)};
  // Backward must not rely on scratch surviving from forward.
  std::fill(scratch.begin(), scratch.end(), 1e30f);
  LoraMixBackward(g.dx.data(), g.da.data(), g.db.data(), p.gated ? g.dgate.data() : nullptr,
                  scratch.data(), p.c.data(), p.x.data(), xa.data(), args);
  for (Vec* v : {&g.dx, &g.da, &g.db, &g.dgate}) {
    for (float& e : *v) e -= fill;
  }
  return g;
}

// Normwise relative error of `analytic` against central differences of the
// double reference with respect to every element of input `which` (0 x,
// 1 a, 2 b, 3 gate).
//
// Why this tolerance: L is linear in x, A_cat and B_cat and at most quadratic
// in the gate (weights form: g_j g_k), so central differences have no
// truncation error at all, and in double their round-off is ~1e-16 · |L| /
// eps ≈ 1e-12. What remains is the fp32 round-off of the analytic gradient:
// sums of at most ~50 products of O(1) terms, relative error well under 1e-5.
// A bound of 1e-4 is 10x that and still 1000x below what a missing or
// mis-scaled term gives (>= 0.1).
double FdError(const Problem& p, int which, const Vec& analytic) {
  DVec in[4] = {ToDouble(p.x), ToDouble(p.a), ToDouble(p.b), ToDouble(p.gate)};
  const double eps = 1e-3;
  double num = 0.0, den = 0.0;
  DVec& v = in[which];
  EXPECT_EQ(v.size(), analytic.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double orig = v[i];
    v[i] = orig + eps;
    const double lp = ReferenceLoss(p, in[0], in[1], in[2], in[3]);
    v[i] = orig - eps;
    const double lm = ReferenceLoss(p, in[0], in[1], in[2], in[3]);
    v[i] = orig;
    const double fd = (lp - lm) / (2.0 * eps);
    num += (fd - analytic[i]) * (fd - analytic[i]);
    den += fd * fd;
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-12);
}

struct Case {
  int K, P;
  bool gated;
  LoraMixing mixing;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return std::string(c.mixing == LoraMixing::kLoraMixingOutputs ? "outputs" : "weights") + "_K" +
         std::to_string(c.K) + (c.gated ? "_P" + std::to_string(c.P) : "_nogate");
}

class LoraMixCaseTest : public ::testing::TestWithParam<Case> {};

TEST_P(LoraMixCaseTest, ForwardMatchesNaiveReference) {
  const Case& c = GetParam();
  // n = 7 with P = 3 leaves a partial last group.
  const Problem p = MakeProblem(7, 5, 4, 2, c.K, c.P, c.gated, c.mixing, 11);
  const LoraMixArgs args = p.Args();
  Vec y = p.y0, xa(static_cast<size_t>(p.n) * p.K * p.R);
  Vec scratch(static_cast<size_t>(LoraMixScratchFloats(args)));
  LoraMixForward(y.data(), xa.data(), scratch.data(), p.x.data(), args);
  const DVec ref = ReferenceForward(p, ToDouble(p.x), ToDouble(p.a), ToDouble(p.b),
                                    ToDouble(p.gate));
  // fp32 against double over sums of <= 3*2*5 products of O(1) values (and
  // gate products up to 1.5^2): absolute error well below 1e-5; 1e-4 bounds
  // it with margin, while a wrong term moves y by O(0.1).
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], ref[i], 1e-4) << i;
  // xa is x a_catᵀ whatever the form.
  for (int i = 0; i < p.n; ++i) {
    for (int j = 0; j < p.K * p.R; ++j) {
      double s = 0.0;
      for (int k = 0; k < p.in; ++k) {
        s += static_cast<double>(p.x[static_cast<size_t>(i) * p.in + k]) *
             p.a[static_cast<size_t>(j) * p.in + k];
      }
      EXPECT_NEAR(xa[static_cast<size_t>(i) * p.K * p.R + j], s, 1e-5);
    }
  }
}

TEST_P(LoraMixCaseTest, GradientsOfEveryInputMatchFiniteDifferences) {
  const Case& c = GetParam();
  const Problem p = MakeProblem(7, 5, 4, 2, c.K, c.P, c.gated, c.mixing, 23);
  const Grads g = OperatorGrads(p, /*fill=*/0.5f);
  EXPECT_LT(FdError(p, 0, g.dx), 1e-4) << "dx";
  EXPECT_LT(FdError(p, 1, g.da), 1e-4) << "da_cat";
  EXPECT_LT(FdError(p, 2, g.db), 1e-4) << "db_cat";
  if (c.gated) {
    EXPECT_LT(FdError(p, 3, g.dgate), 1e-4) << "dgate";
  }
}

TEST_P(LoraMixCaseTest, NullGradientsAreSkippedAndDoNotChangeTheOthers) {
  const Case& c = GetParam();
  const Problem p = MakeProblem(7, 5, 4, 2, c.K, c.P, c.gated, c.mixing, 5);
  const Grads all = OperatorGrads(p, 0.0f);
  const LoraMixArgs args = p.Args();
  Vec y = p.y0, xa(static_cast<size_t>(p.n) * p.K * p.R);
  Vec scratch(static_cast<size_t>(LoraMixScratchFloats(args)));
  LoraMixForward(y.data(), xa.data(), scratch.data(), p.x.data(), args);
  // Each gradient alone equals its value when all are requested, bit for bit.
  for (int only = 0; only < 4; ++only) {
    if (only == 3 && !c.gated) continue;
    Grads g{Vec(p.x.size()), Vec(p.a.size()), Vec(p.b.size()), Vec(p.gate.size())};
    LoraMixBackward(only == 0 ? g.dx.data() : nullptr, only == 1 ? g.da.data() : nullptr,
                    only == 2 ? g.db.data() : nullptr, only == 3 ? g.dgate.data() : nullptr,
                    scratch.data(), p.c.data(), p.x.data(), xa.data(), args);
    const Vec& got = only == 0 ? g.dx : only == 1 ? g.da : only == 2 ? g.db : g.dgate;
    const Vec& want = only == 0 ? all.dx : only == 1 ? all.da : only == 2 ? all.db : all.dgate;
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << only << " " << i;
  }
}

const Case kCases[] = {
    // No gate: K = 1 (plain LoRA) and K = 2, 3 (outputs form is a rank-K*R
    // LoRA; the weights form sums the experts' factors).
    {1, 1, false, LoraMixing::kLoraMixingOutputs},
    {2, 1, false, LoraMixing::kLoraMixingOutputs},
    {3, 1, false, LoraMixing::kLoraMixingWeights},
    {2, 1, false, LoraMixing::kLoraMixingWeights},
    // Gated, one gate row per row (P = 1), per 3 rows (partial last group)
    // and one group for all rows (P = n).
    {1, 1, true, LoraMixing::kLoraMixingOutputs},
    {2, 1, true, LoraMixing::kLoraMixingOutputs},
    {3, 3, true, LoraMixing::kLoraMixingOutputs},
    {2, 7, true, LoraMixing::kLoraMixingOutputs},
    {1, 3, true, LoraMixing::kLoraMixingWeights},
    {2, 1, true, LoraMixing::kLoraMixingWeights},
    {3, 3, true, LoraMixing::kLoraMixingWeights},
    {3, 7, true, LoraMixing::kLoraMixingWeights},
};
INSTANTIATE_TEST_SUITE_P(Cases, LoraMixCaseTest, ::testing::ValuesIn(kCases), CaseName);

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// K = 1 without a gate must be today's LoRA exactly (both forms), and the
// outputs form with K = 3 and no gate exactly a LoRA of rank 3R.
TEST(LoraMix, PlainCasesAreBitIdenticalToLoraForwardAndBackward) {
  struct Plain {
    int K;
    LoraMixing mixing;
  };
  for (const Plain& c : {Plain{1, LoraMixing::kLoraMixingOutputs},
                         Plain{1, LoraMixing::kLoraMixingWeights},
                         Plain{3, LoraMixing::kLoraMixingOutputs}}) {
    // Sizes large enough for OpenBLAS to block and thread its kernels.
    const Problem p = MakeProblem(96, 72, 80, 8, c.K, 1, false, c.mixing, 7);
    const int KR = p.K * p.R;
    const LoraMixArgs args = p.Args();
    ASSERT_TRUE(args.is_plain());
    Vec y1 = p.y0, xa1(static_cast<size_t>(p.n) * KR);
    Vec y2 = p.y0, xa2(xa1.size());
    Vec scratch(static_cast<size_t>(LoraMixScratchFloats(args)));
    LoraMixForward(y1.data(), xa1.data(), scratch.data(), p.x.data(), args);
    LoraForward(y2.data(), xa2.data(), p.x.data(), p.a.data(), p.b.data(), p.scale, p.n, p.in,
                p.out, KR);
    for (size_t i = 0; i < y1.size(); ++i) ASSERT_EQ(Bits(y1[i]), Bits(y2[i])) << i;
    for (size_t i = 0; i < xa1.size(); ++i) ASSERT_EQ(Bits(xa1[i]), Bits(xa2[i])) << i;

    std::mt19937 rng(3);
    const Vec fill_x = Random(p.x.size(), rng), fill_a = Random(p.a.size(), rng),
              fill_b = Random(p.b.size(), rng);
    Vec dx1 = fill_x, da1 = fill_a, db1 = fill_b, dx2 = fill_x, da2 = fill_a, db2 = fill_b;
    Vec dyb(static_cast<size_t>(p.n) * KR);
    LoraMixBackward(dx1.data(), da1.data(), db1.data(), nullptr, scratch.data(), p.c.data(),
                    p.x.data(), xa1.data(), args);
    LoraBackward(dx2.data(), da2.data(), db2.data(), dyb.data(), p.c.data(), p.x.data(),
                 xa2.data(), p.a.data(), p.b.data(), p.scale, p.n, p.in, p.out, KR);
    for (size_t i = 0; i < dx1.size(); ++i) ASSERT_EQ(Bits(dx1[i]), Bits(dx2[i])) << i;
    for (size_t i = 0; i < da1.size(); ++i) ASSERT_EQ(Bits(da1[i]), Bits(da2[i])) << i;
    for (size_t i = 0; i < db1.size(); ++i) ASSERT_EQ(Bits(db1[i]), Bits(db2[i])) << i;
  }
}

// A gate of ones gives the ungated result: the outputs form exactly (the
// same GEMMs on xa times 1.0f), the weights form to round-off (its ungated
// path is the general one too, so it is exact as well).
TEST(LoraMix, GateOfOnesEqualsNoGate) {
  for (LoraMixing mixing : {LoraMixing::kLoraMixingOutputs, LoraMixing::kLoraMixingWeights}) {
    Problem p = MakeProblem(9, 6, 5, 3, 2, 4, true, mixing, 17);
    std::fill(p.gate.begin(), p.gate.end(), 1.0f);
    Problem q = p;
    q.gated = false;
    const Grads gp = OperatorGrads(p, 0.0f), gq = OperatorGrads(q, 0.0f);
    for (size_t i = 0; i < gp.dx.size(); ++i) EXPECT_NEAR(gp.dx[i], gq.dx[i], 1e-6) << i;
    for (size_t i = 0; i < gp.da.size(); ++i) EXPECT_NEAR(gp.da[i], gq.da[i], 1e-6) << i;
    for (size_t i = 0; i < gp.db.size(); ++i) EXPECT_NEAR(gp.db[i], gq.db[i], 1e-6) << i;
  }
}

// The two forms differ once K > 1 (cross terms): guards against one form
// silently computing the other.
TEST(LoraMix, FormsDifferWithSeveralExperts) {
  const Problem po = MakeProblem(4, 5, 3, 2, 2, 1, true, LoraMixing::kLoraMixingOutputs, 29);
  Problem pw = po;
  pw.mixing = LoraMixing::kLoraMixingWeights;
  const DVec yo = ReferenceForward(po, ToDouble(po.x), ToDouble(po.a), ToDouble(po.b),
                                   ToDouble(po.gate));
  const DVec yw = ReferenceForward(pw, ToDouble(pw.x), ToDouble(pw.a), ToDouble(pw.b),
                                   ToDouble(pw.gate));
  double diff = 0.0;
  for (size_t i = 0; i < yo.size(); ++i) diff = std::max(diff, std::abs(yo[i] - yw[i]));
  EXPECT_GT(diff, 0.05);
}

// Results do not depend on the thread count (sizes above the parallel
// threshold: n*K*R = 4096*8).
TEST(LoraMix, ThreadCountDoesNotChangeResults) {
  for (LoraMixing mixing : {LoraMixing::kLoraMixingOutputs, LoraMixing::kLoraMixingWeights}) {
    for (int P : {1, 64, 4096}) {
      const Problem p = MakeProblem(4096, 16, 12, 4, 2, P, true, mixing, 31);
      SetNumThreads(1);
      const Grads g1 = OperatorGrads(p, 0.0f);
      SetNumThreads(2);
      const Grads g2 = OperatorGrads(p, 0.0f);
      SetNumThreads(0);
      for (size_t i = 0; i < g1.dgate.size(); ++i) {
        ASSERT_EQ(Bits(g1.dgate[i]), Bits(g2.dgate[i])) << P << " " << i;
      }
      for (size_t i = 0; i < g1.dx.size(); ++i) ASSERT_EQ(Bits(g1.dx[i]), Bits(g2.dx[i])) << i;
    }
  }
}

TEST(LoraMix, ScratchSizes) {
  LoraMixArgs a;
  a.n = 10;
  a.lora_rank = 3;
  a.num_experts = 2;
  EXPECT_EQ(LoraMixScratchFloats(a), 60);  // plain: dy b_cat
  const float g[2] = {1, 1};
  a.gate = g;
  a.rows_per_group = 10;
  EXPECT_EQ(a.num_groups(), 1);
  EXPECT_EQ(LoraMixScratchFloats(a), 120);
  a.mixing = LoraMixing::kLoraMixingWeights;
  EXPECT_EQ(LoraMixScratchFloats(a), 180);
  a.rows_per_group = 3;
  EXPECT_EQ(a.num_groups(), 4);
}

}  // namespace
}  // namespace sheaf::ops
