// The AVX-512 elementwise kernels (vec_avx512.h) against double-precision
// references, with the bounds stated per test. Skipped without AVX-512.
#include "ops/cpu/vec_avx512.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "ops/cpu/cpu_features.h"

namespace sheaf::ops {
namespace {

using Vec = std::vector<float>;

#define SKIP_WITHOUT_AVX512() \
  if (!CpuHasAvx512()) GTEST_SKIP() << "no AVX-512 on this processor"

// 4 ulp of a float relative to its value: 4 · 2^-23. The kernel's error:
// the Cody-Waite reduction is exact to ~1e-10, the degree-7 polynomial's
// truncation < 1e-8 relative, and ~8 fp32 roundings in Horner's scheme plus
// scalef (exact) stay within ~2 ulp; 4 ulp leaves room, a wrong coefficient
// or reduction step gives errors of 1e-4 and more.
constexpr double kExpRelTol = 4.0 / (1 << 23);

TEST(ExpAvx512Test, WithinFourUlpOverTheRange) {
  SKIP_WITHOUT_AVX512();
  Vec x;
  for (double v = -87.0; v <= 88.0; v += 1.0 / 512) x.push_back(static_cast<float>(v));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> small(-1.0f, 1.0f);
  for (int i = 0; i < 10000; ++i) x.push_back(small(rng));
  Vec out(x.size());
  ExpAvx512(out.data(), x.data(), static_cast<int64_t>(x.size()));
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double exact = std::exp(static_cast<double>(x[i]));
    const double rel = std::fabs(out[i] - exact) / exact;
    worst = std::max(worst, rel);
    ASSERT_LE(rel, kExpRelTol) << "x = " << x[i] << ": " << out[i] << " vs " << exact;
  }
  RecordProperty("worst_rel_error", std::to_string(worst));
}

TEST(ExpAvx512Test, SpecialValues) {
  SKIP_WITHOUT_AVX512();
  const float inf = std::numeric_limits<float>::infinity();
  const Vec x = {0.0f, -inf, -200.0f, -104.0f, 100.0f, inf, 1.0f};
  Vec out(x.size());
  ExpAvx512(out.data(), x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_GE(out[3], 0.0f);
  EXPECT_LT(out[3], 1e-38f);
  EXPECT_EQ(out[4], inf);
  EXPECT_EQ(out[5], inf);
  EXPECT_NEAR(out[6], 2.718281828, 2.718281828 * kExpRelTol);
}

// Every length from 1 to 40 (masked tails), out aliasing x as attention
// calls it; the sum against the double sum of the exact exponentials:
// each term within kExpRelTol, plus fp32 summation of n positive terms
// (n · 2^-24 relative).
TEST(ExpAvx512Test, ShiftedExpAndSumInPlaceForEveryTail) {
  SKIP_WITHOUT_AVX512();
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> dist(-6.0f, 2.0f);
  for (int n = 1; n <= 40; ++n) {
    Vec x(n + 3, 123.0f);  // guard values past n must stay untouched
    for (int i = 0; i < n; ++i) x[i] = dist(rng);
    const Vec orig = x;
    const float shift = 1.5f;
    const float sum = ExpShiftSumAvx512(x.data(), x.data(), n, shift);
    double exact_sum = 0.0;
    for (int i = 0; i < n; ++i) {
      const double e = std::exp(static_cast<double>(orig[i]) - shift);
      exact_sum += e;
      ASSERT_NEAR(x[i], e, e * (kExpRelTol + 1e-7)) << "n " << n << " i " << i;
    }
    for (int i = n; i < n + 3; ++i) ASSERT_EQ(x[i], 123.0f);
    EXPECT_NEAR(sum, exact_sum, exact_sum * (kExpRelTol + n * std::ldexp(1.0, -24)));
  }
}

// SwiGLU against double formulas. Per element: the sigmoid carries the exp
// error (4 ulp) and ~4 more roundings; the products 2-4 roundings: bound
// 1e-6 relative to the magnitude of the terms (|g·up| and friends; a
// relative bound on the result alone would fail where terms cancel near
// g ≈ −1.28 in dsilu).
TEST(SwiGluAvx512Test, ForwardAndBackwardMatchDouble) {
  SKIP_WITHOUT_AVX512();
  const int64_t n = 16 * 50 + 7;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-8.0f, 8.0f);
  Vec g(n), u(n), dh(n), h(n), dg(n, 0.5f), du(n, -0.25f);
  for (int64_t i = 0; i < n; ++i) {
    g[i] = dist(rng);
    u[i] = dist(rng);
    dh[i] = dist(rng) / 8;
  }
  g[0] = 0.0f;
  g[1] = -100.0f;  // sigmoid 0 (e^100 = inf in the kernel: 1/inf = 0)
  g[2] = 100.0f;
  SwiGluForwardAvx512(h.data(), g.data(), u.data(), n);
  SwiGluBackwardAvx512(dg.data(), du.data(), dh.data(), g.data(), u.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double gi = g[i], ui = u[i], di = dh[i];
    const double s = 1.0 / (1.0 + std::exp(-gi));
    const double h_ref = gi * s * ui;
    const double dsilu = s * (1.0 + gi * (1.0 - s));
    const double dg_ref = 0.5 + di * ui * dsilu, du_ref = -0.25 + di * gi * s;
    const double mag_h = std::fabs(gi * ui);
    const double mag_dg = 0.5 + std::fabs(di * ui) * (1.0 + std::fabs(gi));
    const double mag_du = 0.25 + std::fabs(di * gi);
    ASSERT_NEAR(h[i], h_ref, 1e-6 * mag_h + 1e-30) << "g " << gi;
    ASSERT_NEAR(dg[i], dg_ref, 1e-6 * mag_dg) << "g " << gi;
    ASSERT_NEAR(du[i], du_ref, 1e-6 * mag_du) << "g " << gi;
  }
}

}  // namespace
}  // namespace sheaf::ops
