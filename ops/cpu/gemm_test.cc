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

// Grouped GEMMs (fused projections): segment widths that do and do not line
// up with the 32-column panels and 256-deep K blocks (8, 37, 256, 3), against
// the exact product with the bound of Check; each split GEMM runs on the
// AVX-512 kernel directly and through the dispatcher.
struct Split {
  int M;
  std::vector<int> sizes;  // n_s (SplitN) or k_s (SplitK)
  int other;               // K (SplitN) or N (SplitK)
  float alpha, beta;
};

std::vector<Split> Splits() {
  return {{60, {64, 32, 32, 4, 3, 3}, 64, 1.0f, 0.0f},
          {13, {8, 37, 256, 3}, 300, -0.5f, 1.0f},
          {145, {256, 128, 128, 8, 8, 8}, 257, 1.0f, 0.0f},
          {7, {1}, 5, 2.0f, 0.5f}};
}

void RunSplitN(const Split& t, bool direct, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const int K = t.other;
  int N = 0;
  for (int n : t.sizes) N += n;
  Vec a(size_t{1} * t.M * K), bcat(size_t{1} * N * K), c0(size_t{1} * t.M * N);
  for (float& x : a) x = dist(rng);
  for (float& x : bcat) x = dist(rng);
  for (float& x : c0) x = t.beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : dist(rng);
  // Separate B_s and C_s buffers (contiguous each), as the model's weights.
  std::vector<Vec> bs, cs;
  std::vector<GemmSegment> bseg, cseg;
  int begin = 0;
  for (int n : t.sizes) {
    bs.emplace_back(bcat.begin() + int64_t{begin} * K, bcat.begin() + int64_t{begin + n} * K);
    Vec c(size_t{1} * t.M * n);
    for (int i = 0; i < t.M; ++i) {
      for (int j = 0; j < n; ++j) c[size_t{1} * i * n + j] = c0[size_t{1} * i * N + begin + j];
    }
    cs.push_back(c);
    begin += n;
  }
  begin = 0;
  for (size_t s = 0; s < t.sizes.size(); ++s) {
    bseg.push_back({bs[s].data(), K, begin});
    cseg.push_back({cs[s].data(), t.sizes[s], begin});
    begin += t.sizes[s];
  }
  if (direct) {
    GemmAvx512SplitN(t.M, N, K, t.alpha, a.data(), K, bseg.data(), cseg.data(),
                     static_cast<int>(bseg.size()), t.beta);
  } else {
    GemmSplitN(t.M, N, K, t.alpha, a.data(), K, bseg.data(), cseg.data(),
               static_cast<int>(bseg.size()), t.beta);
  }
  Vec out(c0.size());
  begin = 0;
  for (size_t s = 0; s < t.sizes.size(); ++s) {
    const int n = t.sizes[s];
    for (int i = 0; i < t.M; ++i) {
      for (int j = 0; j < n; ++j) out[size_t{1} * i * N + begin + j] = cs[s][size_t{1} * i * n + j];
    }
    begin += n;
  }
  const Case whole{t.M, N, K, false, true, t.alpha, t.beta, 0};
  Problem in{a, bcat, c0, K, K, N};
  Check(whole, in, out, std::string(direct ? "GemmAvx512SplitN " : "GemmSplitN ") + Name(whole));
}

void RunSplitK(const Split& t, bool direct, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const int N = t.other;
  int K = 0;
  for (int k : t.sizes) K += k;
  Vec acat(size_t{1} * t.M * K), bcat(size_t{1} * K * N), c(size_t{1} * t.M * N);
  for (float& x : acat) x = dist(rng);
  for (float& x : bcat) x = dist(rng);
  for (float& x : c) x = t.beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : dist(rng);
  std::vector<Vec> as, bs;
  std::vector<GemmSegment> aseg, bseg;
  int begin = 0;
  for (int k : t.sizes) {
    Vec a(size_t{1} * t.M * k);
    for (int i = 0; i < t.M; ++i) {
      for (int p = 0; p < k; ++p) a[size_t{1} * i * k + p] = acat[size_t{1} * i * K + begin + p];
    }
    as.push_back(a);
    bs.emplace_back(bcat.begin() + int64_t{begin} * N, bcat.begin() + int64_t{begin + k} * N);
    begin += k;
  }
  begin = 0;
  for (size_t s = 0; s < t.sizes.size(); ++s) {
    aseg.push_back({as[s].data(), t.sizes[s], begin});
    bseg.push_back({bs[s].data(), N, begin});
    begin += t.sizes[s];
  }
  Vec out = c;
  if (direct) {
    GemmAvx512SplitK(t.M, N, K, t.alpha, aseg.data(), bseg.data(), static_cast<int>(aseg.size()),
                     t.beta, out.data(), N);
  } else {
    GemmSplitK(t.M, N, K, t.alpha, aseg.data(), bseg.data(), static_cast<int>(aseg.size()),
               t.beta, out.data(), N);
  }
  const Case whole{t.M, N, K, false, false, t.alpha, t.beta, 0};
  Problem in{acat, bcat, c, K, N, N};
  Check(whole, in, out, std::string(direct ? "GemmAvx512SplitK " : "GemmSplitK ") + Name(whole));
}

TEST(GemmSplitTest, SplitNAndSplitKMatchTheExactProduct) {
  uint32_t seed = 500;
  for (const Split& t : Splits()) {
    for (bool direct : {false, true}) {
      if (direct && !CpuHasAvx512()) continue;
      RunSplitN(t, direct, seed++);
      RunSplitK(t, direct, seed++);
    }
  }
  if (!CpuHasAvx512()) GTEST_SKIP() << "no AVX-512: only the portable split GEMMs were checked";
}

// Each element of a SplitN product is the one GemmAvx512 computes for its
// own block (the same K order): fusing q/k/v changes no bit of their
// products.
TEST(GemmSplitTest, SplitNEqualsSeparateGemmsBitForBit) {
  if (!CpuHasAvx512()) GTEST_SKIP() << "no AVX-512 on this processor";
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const int M = 100, K = 300;
  const std::vector<int> sizes = {64, 32, 32};
  Vec a(size_t{1} * M * K);
  for (float& x : a) x = dist(rng);
  std::vector<Vec> bs, fused, alone;
  std::vector<GemmSegment> bseg, cseg;
  int begin = 0;
  for (int n : sizes) {
    Vec b(size_t{1} * n * K);
    for (float& x : b) x = dist(rng);
    bs.push_back(b);
    fused.emplace_back(size_t{1} * M * n);
    alone.emplace_back(size_t{1} * M * n);
  }
  for (size_t s = 0; s < sizes.size(); ++s) {
    bseg.push_back({bs[s].data(), K, begin});
    cseg.push_back({fused[s].data(), sizes[s], begin});
    GemmAvx512(false, true, M, sizes[s], K, 1.0f, a.data(), K, bs[s].data(), K, 0.0f,
               alone[s].data(), sizes[s]);
    begin += sizes[s];
  }
  GemmAvx512SplitN(M, begin, K, 1.0f, a.data(), K, bseg.data(), cseg.data(), 3, 0.0f);
  for (size_t s = 0; s < sizes.size(); ++s) EXPECT_EQ(fused[s], alone[s]) << "segment " << s;
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
