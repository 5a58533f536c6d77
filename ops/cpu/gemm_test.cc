// The AVX-512 GEMM (gemm_avx512.h) and the dispatching ops::Gemm against a
// naive double-precision GEMM on awkward shapes: every transpose
// combination, M / N / K around the 12 x 32 tile and the 256-deep K block,
// leading dimensions larger than the matrices (sub-blocks), alpha and beta
// (beta = 0 must ignore NaNs in C), and the same bits for any thread count.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gemm_avx512.h"
#include "ops/cpu/ops.h"

namespace sheaf::ops {
namespace {

using Vec = std::vector<float>;

struct Case {
  int M, N, K;
  bool ta, tb;
  float alpha, beta;
  int pad;  // extra columns in every leading dimension
};

struct Problem {
  Vec a, b, c;
  int lda, ldb, ldc;
};

Problem Make(const Case& t, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Problem p;
  const int a_rows = t.ta ? t.K : t.M, a_cols = t.ta ? t.M : t.K;
  const int b_rows = t.tb ? t.N : t.K, b_cols = t.tb ? t.K : t.N;
  p.lda = a_cols + t.pad;
  p.ldb = b_cols + t.pad;
  p.ldc = t.N + t.pad;
  p.a.resize(size_t{1} * a_rows * p.lda);
  p.b.resize(size_t{1} * b_rows * p.ldb);
  p.c.resize(size_t{1} * t.M * p.ldc);
  for (float& x : p.a) x = dist(rng);
  for (float& x : p.b) x = dist(rng);
  for (float& x : p.c) x = t.beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : dist(rng);
  return p;
}

// Checks c against the exact product elementwise with the classical
// forward-error bound of a K-term fp32 dot product, plus the alpha and beta
// roundings: |ĉ − c| <= (K + 2) u (|alpha| Σ|a||b| + |beta||c0|),
// u = 2^-24. Any summation order satisfies it; a wrong element, a lost
// K block or a misapplied beta does not. Padding columns must be untouched.
void Check(const Case& t, const Problem& in, const Vec& out, const std::string& what) {
  const double u = std::ldexp(1.0, -24);
  int bad = 0;
  for (int i = 0; i < t.M; ++i) {
    for (int j = 0; j < in.ldc; ++j) {
      const size_t ci = size_t{1} * i * in.ldc + j;
      if (j >= t.N) {
        ASSERT_TRUE(std::isnan(out[ci]) ? std::isnan(in.c[ci]) : out[ci] == in.c[ci])
            << what << ": padding written at " << i << "," << j;
        continue;
      }
      double exact = 0.0, mag = 0.0;
      for (int p = 0; p < t.K; ++p) {
        const double av = t.ta ? in.a[size_t{1} * p * in.lda + i] : in.a[size_t{1} * i * in.lda + p];
        const double bv = t.tb ? in.b[size_t{1} * j * in.ldb + p] : in.b[size_t{1} * p * in.ldb + j];
        exact += av * bv;
        mag += std::fabs(av * bv);
      }
      exact *= t.alpha;
      mag *= std::fabs(t.alpha);
      if (t.beta != 0.0f) {
        exact += double{t.beta} * in.c[ci];
        mag += std::fabs(double{t.beta} * in.c[ci]);
      }
      const double bound = (t.K + 2) * u * mag + 1e-30;
      if (!(std::fabs(out[ci] - exact) <= bound) && ++bad <= 5) {
        ADD_FAILURE() << what << ": C[" << i << "," << j << "] = " << out[ci] << ", exact "
                      << exact << ", bound " << bound;
      }
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  const int dims[][3] = {{1, 16, 1},   {12, 32, 256}, {13, 33, 257}, {11, 31, 7},
                         {145, 47, 300}, {300, 96, 513}, {2, 3100, 5}, {200, 17, 1}};
  for (const auto& d : dims) {
    for (int tr = 0; tr < 4; ++tr) {
      cases.push_back({d[0], d[1], d[2], (tr & 1) != 0, (tr & 2) != 0, 1.0f, 0.0f, 0});
    }
  }
  cases.push_back({37, 70, 290, false, true, -0.75f, 1.0f, 5});
  cases.push_back({37, 70, 290, true, false, 0.5f, -2.0f, 3});
  cases.push_back({150, 64, 40, true, true, 2.0f, 0.25f, 1});
  cases.push_back({29, 530, 600, false, false, 1.0f, 1.0f, 0});
  return cases;
}

std::string Name(const Case& t) {
  return std::to_string(t.M) + "x" + std::to_string(t.N) + "x" + std::to_string(t.K) +
         (t.ta ? " Aᵀ" : "") + (t.tb ? " Bᵀ" : "") + " alpha " + std::to_string(t.alpha) +
         " beta " + std::to_string(t.beta) + " pad " + std::to_string(t.pad);
}

TEST(GemmAvx512Test, MatchesExactProductOnAwkwardShapes) {
  if (!CpuHasAvx512()) GTEST_SKIP() << "no AVX-512 on this processor";
  uint32_t seed = 1;
  for (const Case& t : Cases()) {
    const Problem in = Make(t, seed++);
    Vec out = in.c;
    GemmAvx512(t.ta, t.tb, t.M, t.N, t.K, t.alpha, in.a.data(), in.lda, in.b.data(), in.ldb,
               t.beta, out.data(), in.ldc);
    Check(t, in, out, Name(t));
  }
}

// The dispatching Gemm (AVX-512 or OpenBLAS by shape and processor).
TEST(GemmDispatchTest, MatchesExactProduct) {
  uint32_t seed = 100;
  for (const Case& t : Cases()) {
    const Problem in = Make(t, seed++);
    Vec out = in.c;
    Gemm(t.ta, t.tb, t.M, t.N, t.K, t.alpha, in.a.data(), in.lda, in.b.data(), in.ldb, t.beta,
         out.data(), in.ldc);
    Check(t, in, out, "Gemm " + Name(t));
  }
}

TEST(GemmAvx512Test, SameBitsForAnyThreadCount) {
  if (!CpuHasAvx512()) GTEST_SKIP() << "no AVX-512 on this processor";
  const Case t{700, 300, 520, false, true, 1.0f, 1.0f, 0};  // 5 M blocks, 3 K blocks
  const Problem in = Make(t, 7);
  const int saved = omp_get_max_threads();
  std::vector<Vec> results;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    Vec out = in.c;
    GemmAvx512(t.ta, t.tb, t.M, t.N, t.K, t.alpha, in.a.data(), in.lda, in.b.data(), in.ldb,
               t.beta, out.data(), in.ldc);
    results.push_back(out);
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(results[0], results[1]);
  EXPECT_EQ(results[0], results[2]);
}

TEST(KernelChoiceTest, DescribesTheChoiceInOneLine) {
  const std::string d = DescribeKernels();
  EXPECT_EQ(d.find('\n'), std::string::npos);
  EXPECT_NE(d.find(ActiveKernelIsa() == KernelIsa::kAvx512 ? "kernels avx512" : "kernels portable"),
            std::string::npos)
      << d;
  if (!CpuHasAvx512()) EXPECT_EQ(ActiveKernelIsa(), KernelIsa::kPortable);
}

}  // namespace
}  // namespace sheaf::ops
