// The tiled attention (attention.h) against the reference kernel that keeps
// the [B, NH, T, T] probabilities (ops.h AttentionForward/Backward) and
// against naive double-precision loops (forward and backward written out
// from the formulas, independently of both kernels). Finite differences of
// the tiled kernel run through the backend in ops_test (AttentionTest).
#include "ops/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "ops/cpu/ops.h"

namespace sheaf::ops {
namespace {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

Vec RandomVec(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Vec v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ||a - b|| / max(||b||, 1e-12).
double RelErr(const Vec& a, const DVec& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-12);
}

struct Shape {
  int B, T, NH, KVH, HD;
};
std::string Name(const Shape& s) {
  return "B" + std::to_string(s.B) + "T" + std::to_string(s.T) + "NH" + std::to_string(s.NH) +
         "KVH" + std::to_string(s.KVH) + "HD" + std::to_string(s.HD);
}

struct Inputs {
  Vec q, k, v, dout;
};
Inputs MakeInputs(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  const size_t nq = size_t{1} * s.B * s.T * s.NH * s.HD, nkv = size_t{1} * s.B * s.T * s.KVH * s.HD;
  Inputs in;
  // Scores of order several units: peaked softmax rows, a real test of the
  // max subtraction.
  in.q = RandomVec(rng, nq, -2.0f, 2.0f);
  in.k = RandomVec(rng, nkv, -2.0f, 2.0f);
  in.v = RandomVec(rng, nkv);
  in.dout = RandomVec(rng, nq);
  return in;
}

struct Outputs {
  Vec out, dq, dk, dv, saved;
};

// The gradients start from a non-zero value, so that accumulation (ADD, not
// overwrite) is checked too.
constexpr float kGradInit = 0.25f;

Outputs RunTiled(const Shape& s, const Inputs& in, KernelIsa isa = KernelIsa::kPortable) {
  Outputs o;
  o.out.assign(in.q.size(), std::nanf(""));
  o.saved.assign(static_cast<size_t>(TiledAttentionSavedFloats(s.B, s.T, s.NH)), std::nanf(""));
  o.dq.assign(in.q.size(), kGradInit);
  o.dk.assign(in.k.size(), kGradInit);
  o.dv.assign(in.v.size(), kGradInit);
  TiledAttentionForward(o.out.data(), o.saved.data(), in.q.data(), in.k.data(), in.v.data(), s.B,
                        s.T, s.NH, s.KVH, s.HD, isa);
  TiledAttentionBackward(o.dq.data(), o.dk.data(), o.dv.data(), in.dout.data(), in.q.data(),
                         in.k.data(), in.v.data(), o.saved.data(), s.B, s.T, s.NH, s.KVH, s.HD,
                         isa);
  return o;
}

Outputs RunReference(const Shape& s, const Inputs& in) {
  Outputs o;
  o.out.assign(in.q.size(), std::nanf(""));
  o.saved.assign(size_t{1} * s.B * s.NH * s.T * s.T, std::nanf(""));
  o.dq.assign(in.q.size(), kGradInit);
  o.dk.assign(in.k.size(), kGradInit);
  o.dv.assign(in.v.size(), kGradInit);
  AttentionForward(o.out.data(), o.saved.data(), in.q.data(), in.k.data(), in.v.data(), s.B, s.T,
                   s.NH, s.KVH, s.HD);
  AttentionBackward(o.dq.data(), o.dk.data(), o.dv.data(), in.dout.data(), in.q.data(),
                    in.k.data(), in.v.data(), o.saved.data(), s.B, s.T, s.NH, s.KVH, s.HD);
  return o;
}

// Naive causal GQA forward and backward in double, straight from the
// formulas: P = softmax(q kᵀ/√HD, causal), O = P v;
// dP = dO vᵀ, dS = P ∘ (dP − rowsum(dP ∘ P)), dq = dS k/√HD, dk = dSᵀ q/√HD,
// dv = Pᵀ dO. Also returns each row's log-sum-exp of the scaled scores.
struct Naive {
  DVec out, dq, dk, dv, lse;
};
Naive RunNaive(const Shape& s, const Inputs& in) {
  const int B = s.B, T = s.T, NH = s.NH, KVH = s.KVH, HD = s.HD, group = NH / KVH;
  const double scale = 1.0 / std::sqrt(static_cast<double>(HD));
  Naive n;
  n.out.assign(in.q.size(), 0.0);
  n.dq.assign(in.q.size(), kGradInit);
  n.dk.assign(in.k.size(), kGradInit);
  n.dv.assign(in.v.size(), kGradInit);
  n.lse.assign(size_t{1} * B * NH * T, 0.0);
  auto qi = [&](int b, int t, int h, int e) { return ((size_t{1} * b * T + t) * NH + h) * HD + e; };
  auto ki = [&](int b, int t, int g, int e) { return ((size_t{1} * b * T + t) * KVH + g) * HD + e; };
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      const int g = h / group;
      for (int t = 0; t < T; ++t) {
        DVec p(t + 1);
        double mx = -1e300;
        for (int u = 0; u <= t; ++u) {
          double d = 0.0;
          for (int e = 0; e < HD; ++e) d += double{in.q[qi(b, t, h, e)]} * in.k[ki(b, u, g, e)];
          p[u] = d * scale;
          mx = std::max(mx, p[u]);
        }
        double sum = 0.0;
        for (double& x : p) sum += (x = std::exp(x - mx));
        n.lse[(size_t{1} * b * NH + h) * T + t] = mx + std::log(sum);
        for (double& x : p) x /= sum;
        DVec dp(t + 1, 0.0);
        double rowsum = 0.0;
        for (int u = 0; u <= t; ++u) {
          for (int e = 0; e < HD; ++e) {
            n.out[qi(b, t, h, e)] += p[u] * in.v[ki(b, u, g, e)];
            dp[u] += double{in.dout[qi(b, t, h, e)]} * in.v[ki(b, u, g, e)];
            n.dv[ki(b, u, g, e)] += p[u] * in.dout[qi(b, t, h, e)];
          }
          rowsum += dp[u] * p[u];
        }
        for (int u = 0; u <= t; ++u) {
          const double ds = p[u] * (dp[u] - rowsum) * scale;
          for (int e = 0; e < HD; ++e) {
            n.dq[qi(b, t, h, e)] += ds * in.k[ki(b, u, g, e)];
            n.dk[ki(b, u, g, e)] += ds * in.q[qi(b, t, h, e)];
          }
        }
      }
    }
  }
  return n;
}

// Shapes: T = 1; T below, at, one past and well past the 64-row block, not
// multiples of it; MHA, GQA (4 query heads per KV head) and MQA (one KV head).
const Shape kShapes[] = {
    {2, 1, 4, 2, 8},   {1, 1, 4, 1, 16},  {2, 5, 2, 2, 4},    {1, 63, 4, 1, 8},
    {2, 64, 4, 2, 8},  {1, 65, 8, 2, 8},  {2, 150, 4, 2, 16}, {1, 200, 4, 1, 32},
    {1, 129, 2, 2, 32}};

class TiledAttentionTest : public ::testing::TestWithParam<Shape> {};

// The tiled kernel performs the reference kernel's GEMMs and float
// operations in the same order (attention.h), so its outputs and gradients
// are the same bits; a difference means the two diverged (a block, a GEMM
// argument or an expression changed), which would also move today's losses.
TEST_P(TiledAttentionTest, BitwiseEqualToTheReferenceKernel) {
  const Shape s = GetParam();
  const Inputs in = MakeInputs(s, 7);
  const Outputs tiled = RunTiled(s, in), ref = RunReference(s, in);
  EXPECT_EQ(tiled.out, ref.out);
  EXPECT_EQ(tiled.dq, ref.dq);
  EXPECT_EQ(tiled.dk, ref.dk);
  EXPECT_EQ(tiled.dv, ref.dv);
}

// Against double loops. Bound 1e-5 normwise: fp32 GEMMs over at most T·HD
// = 6400 terms of O(1) values and an fp32 softmax give relative errors of a
// few 1e-7 (sqrt(n) growth of the unit round-off ~6e-8); 1e-5 leaves a
// margin of ~30 while a wrong index or a missing term is O(1).
// The AVX-512 exponentials (within 4 ulp each, vec_avx512.h) move P by a
// few 1e-7 relative, and the outputs and gradients by as much: bound 2e-6
// normwise against the reference kernel (a wrong exp is off by >= 1e-4).
TEST_P(TiledAttentionTest, VectorExpStaysCloseToTheReferenceKernel) {
  if (!CpuHasAvx512()) GTEST_SKIP() << "no AVX-512 on this processor";
  const Shape s = GetParam();
  const Inputs in = MakeInputs(s, 7);
  const Outputs tiled = RunTiled(s, in, KernelIsa::kAvx512), ref = RunReference(s, in);
  auto d = [](const Vec& v) { return DVec(v.begin(), v.end()); };
  EXPECT_LT(RelErr(tiled.out, d(ref.out)), 2e-6);
  EXPECT_LT(RelErr(tiled.dq, d(ref.dq)), 2e-6);
  EXPECT_LT(RelErr(tiled.dk, d(ref.dk)), 2e-6);
  EXPECT_LT(RelErr(tiled.dv, d(ref.dv)), 2e-6);
}

TEST_P(TiledAttentionTest, MatchesNaiveDoubleForwardAndBackward) {
  for (KernelIsa isa : {KernelIsa::kPortable, KernelIsa::kAvx512}) {
  if (isa == KernelIsa::kAvx512 && !CpuHasAvx512()) continue;
  SCOPED_TRACE(isa == KernelIsa::kAvx512 ? "avx512 exp" : "portable exp");
  const Shape s = GetParam();
  const Inputs in = MakeInputs(s, 8);
  const Outputs tiled = RunTiled(s, in, isa);
  const Naive naive = RunNaive(s, in);
  EXPECT_LT(RelErr(tiled.out, naive.out), 1e-5);
  EXPECT_LT(RelErr(tiled.dq, naive.dq), 1e-5);
  EXPECT_LT(RelErr(tiled.dk, naive.dk), 1e-5);
  EXPECT_LT(RelErr(tiled.dv, naive.dv), 1e-5);
  // The saved statistics are the row's max m and 1/Σexp(s − m):
  // m − log(inv_sum) is the row's log-sum-exp (absolute error: the values
  // are O(1..10); 1e-5 is ~100 ulps at 10).
  const size_t rows = naive.lse.size();
  ASSERT_EQ(tiled.saved.size(), 2 * rows);
  for (size_t i = 0; i < rows; ++i) {
    const double lse = double{tiled.saved[i]} - std::log(double{tiled.saved[rows + i]});
    ASSERT_NEAR(lse, naive.lse[i], 1e-5) << "row " << i;
  }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, TiledAttentionTest, ::testing::ValuesIn(kShapes),
                         [](const auto& info) { return Name(info.param); });

// A longer sequence (17 full blocks and a partial one, 2 query heads on one
// KV head): still the reference's bits.
TEST(TiledAttentionLongTest, LongSequenceEqualsTheReference) {
  const Shape s{1, 1100, 2, 1, 8};
  const Inputs in = MakeInputs(s, 9);
  const Outputs tiled = RunTiled(s, in), ref = RunReference(s, in);
  EXPECT_EQ(tiled.out, ref.out);
  EXPECT_EQ(tiled.dq, ref.dq);
  EXPECT_EQ(tiled.dk, ref.dk);
  EXPECT_EQ(tiled.dv, ref.dv);
}

TEST(TiledAttentionLongTest, BlockSizesAndSavedStateAreLinearInT) {
  EXPECT_EQ(AttentionQueryBlock(1), 64);
  EXPECT_EQ(AttentionQueryBlock(1024), 64);
  EXPECT_EQ(AttentionQueryBlock(4096), 64);
  EXPECT_EQ(TiledAttentionSavedFloats(8, 4096, 32), int64_t{2} * 8 * 32 * 4096);
}

// Causality: the outputs of rows <= t do not depend on keys and values at
// positions > t; the gradient of k and v at positions > t gets nothing from
// rows <= t. Perturbing k/v past position t leaves rows [0, t] bitwise
// unchanged (the masked columns are exact zeros), and with dout zero on rows
// > t the gradients of k/v past t stay at their initial value.
TEST(TiledAttentionEdgeTest, CausalMaskIsExact) {
  const Shape s{1, 130, 4, 2, 8};
  const int t_cut = 64;  // the last row of the first block is 63
  const Inputs in = MakeInputs(s, 10);
  Inputs changed = in;
  const int kv_row = s.KVH * s.HD, q_row = s.NH * s.HD;
  for (size_t i = size_t{1} * (t_cut + 1) * kv_row; i < changed.k.size(); ++i) {
    changed.k[i] += 3.0f;
    changed.v[i] -= 5.0f;
  }
  for (size_t i = size_t{1} * (t_cut + 1) * q_row; i < changed.dout.size(); ++i) {
    changed.dout[i] = 0.0f;
  }
  const Outputs a = RunTiled(s, in), b = RunTiled(s, changed);
  for (size_t i = 0; i < size_t{1} * (t_cut + 1) * q_row; ++i) {
    ASSERT_EQ(a.out[i], b.out[i]) << "out element " << i;
  }
  for (size_t i = size_t{1} * (t_cut + 1) * kv_row; i < b.dk.size(); ++i) {
    ASSERT_EQ(b.dk[i], kGradInit) << "dk element " << i;
    ASSERT_EQ(b.dv[i], kGradInit) << "dv element " << i;
  }
}

// T = 1: the only key is the row itself, so out = v (each query head of a
// group copies its KV head) and dq, dk get exactly zero (softmax of one
// element is constant), dv gets the sum of its heads' dout.
TEST(TiledAttentionEdgeTest, SingleTokenCopiesValue) {
  const Shape s{3, 1, 6, 2, 8};
  const Inputs in = MakeInputs(s, 11);
  const Outputs o = RunTiled(s, in);
  const int group = s.NH / s.KVH;
  for (int b = 0; b < s.B; ++b) {
    for (int h = 0; h < s.NH; ++h) {
      for (int e = 0; e < s.HD; ++e) {
        const size_t oi = (size_t{1} * b * s.NH + h) * s.HD + e;
        const size_t vi = (size_t{1} * b * s.KVH + h / group) * s.HD + e;
        ASSERT_EQ(o.out[oi], in.v[vi]);
        ASSERT_EQ(o.dq[oi], kGradInit);
      }
    }
  }
  for (float x : o.dk) ASSERT_EQ(x, kGradInit);
}

// Thread count: the same bits with 1 and 3 threads on a shape above the
// parallel threshold (B·KVH = 4 tasks in backward, 16 in forward).
TEST(TiledAttentionEdgeTest, ThreadCountDoesNotChangeBits) {
  const Shape s{2, 300, 8, 2, 16};
  const Inputs in = MakeInputs(s, 12);
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const Outputs one = RunTiled(s, in, ActiveKernelIsa());
  omp_set_num_threads(3);
  const Outputs three = RunTiled(s, in, ActiveKernelIsa());
  omp_set_num_threads(saved_threads);
  EXPECT_EQ(one.out, three.out);
  EXPECT_EQ(one.saved, three.saved);
  EXPECT_EQ(one.dq, three.dq);
  EXPECT_EQ(one.dk, three.dk);
  EXPECT_EQ(one.dv, three.dv);
}

}  // namespace
}  // namespace sheaf::ops
