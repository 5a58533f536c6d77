// compute: bf16 GEMM (gemm_bf16.h) and the dispatching
// LinearForwardBf16Compute / LinearBackwardBf16Compute against a naive
// double-precision reference:
//  - exact on bf16-representable inputs whose sums are exact in fp32 (small
//    integers): any order of exact additions gives the exact result, so the
//    AVX512_BF16 kernel must equal the reference bit for bit (a dropped pair,
//    a wrong half of a pair or a lost K block would not);
//  - on random fp32 inputs, against the reference computed on the inputs
//    rounded to bf16, within the K-term fp32 summation bound
//    (K + 2)·2^-24·Σ|a||w| (the products of bf16 values are exact in fp32);
//  - the weight from bf16 bits or from fp32 (rounded on packing) alike.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/cpu/ops.h"

namespace sheaf::ops {
namespace {

using Vec = std::vector<float>;

uint16_t Bits(float f) {
  float r;
  RoundToBf16(&r, &f, 1);
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return static_cast<uint16_t>(u >> 16);
}
float Rounded(float f) {
  float r;
  RoundToBf16(&r, &f, 1);
  return r;
}

TEST(RoundToBf16Test, NearestEven) {
  EXPECT_EQ(Rounded(1.0f + std::ldexp(1.0f, -8)), 1.0f);  // tie, even below
  EXPECT_EQ(Rounded(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));  // tie, even above
  EXPECT_EQ(Rounded(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 1.0f + std::ldexp(1.0f, -7));
  EXPECT_EQ(Rounded(-3.0f), -3.0f);
  EXPECT_TRUE(std::isnan(Rounded(std::nanf(""))));
}

struct Shape {
  int M, N, K;
  bool trans_w;
  float beta;
};

std::vector<Shape> Shapes() {
  return {{1, 1, 1, true, 0.0f},     {12, 32, 2, true, 0.0f},   {13, 37, 513, true, 1.0f},
          {13, 37, 513, false, 0.0f}, {145, 64, 256, true, 0.0f}, {60, 100, 1025, false, 1.0f},
          {7, 3100, 9, true, 0.0f},   {200, 17, 3, false, 1.0f}};
}

struct Problem {
  Vec a, w, c;  // a [M,K]; w [N,K] (trans_w) or [K,N]; c [M,N]
};

Problem Make(const Shape& s, bool integers, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> small(-4, 4);
  std::uniform_real_distribution<float> real(-1.0f, 1.0f);
  auto draw = [&] { return integers ? static_cast<float>(small(rng)) : real(rng); };
  Problem p;
  p.a.resize(size_t{1} * s.M * s.K);
  p.w.resize(size_t{1} * s.N * s.K);
  p.c.resize(size_t{1} * s.M * s.N);
  for (float& x : p.a) x = draw();
  for (float& x : p.w) x = draw();
  for (float& x : p.c) x = s.beta == 0.0f ? std::nanf("") : draw();
  return p;
}

// Reference on the bf16-rounded inputs, and the summation bound.
void Reference(const Shape& s, const Problem& p, std::vector<double>* exact,
               std::vector<double>* mag) {
  exact->assign(size_t{1} * s.M * s.N, 0.0);
  mag->assign(exact->size(), 0.0);
  for (int i = 0; i < s.M; ++i) {
    for (int j = 0; j < s.N; ++j) {
      double e = 0, m = 0;
      for (int k = 0; k < s.K; ++k) {
        const double av = Rounded(p.a[size_t{1} * i * s.K + k]);
        const double wv = Rounded(s.trans_w ? p.w[size_t{1} * j * s.K + k] : p.w[size_t{1} * k * s.N + j]);
        e += av * wv;
        m += std::fabs(av * wv);
      }
      const size_t ci = size_t{1} * i * s.N + j;
      if (s.beta != 0.0f) {
        e += p.c[ci];
        m += std::fabs(p.c[ci]);
      }
      (*exact)[ci] = e;
      (*mag)[ci] = m;
    }
  }
}

std::string Name(const Shape& s) {
  return std::to_string(s.M) + "x" + std::to_string(s.N) + "x" + std::to_string(s.K) +
         (s.trans_w ? " Wt" : " W") + " beta " + std::to_string(s.beta);
}

void Check(const Shape& s, const Vec& out, const std::vector<double>& exact,
           const std::vector<double>& mag, bool must_be_exact, const std::string& what) {
  const double u = std::ldexp(1.0, -24);
  int bad = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const double bound = must_be_exact ? 0.0 : (s.K + 2) * u * mag[i] + 1e-30;
    if (!(std::fabs(out[i] - exact[i]) <= bound) && ++bad <= 5) {
      ADD_FAILURE() << what << ": element " << i << " = " << out[i] << ", reference " << exact[i]
                    << ", bound " << bound;
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

// Both kernels: vdpbf16ps, and AMX tiles where the processor has them.
TEST(GemmBf16Avx512Test, ExactOnRepresentableInputsAndBoundedOtherwise) {
  if (!CpuHasAvx512Bf16()) GTEST_SKIP() << "no AVX512_BF16 on this processor";
  if (!CpuHasAmxBf16()) std::printf("no AMX-BF16 here: only the vdpbf16ps kernel is checked\n");
  uint32_t seed = 1;
  for (const Shape& s : Shapes()) {
    for (bool integers : {true, false}) {
      const Problem p = Make(s, integers, seed++);
      std::vector<double> exact, mag;
      Reference(s, p, &exact, &mag);
      std::vector<uint16_t> w16(p.w.size());
      for (size_t i = 0; i < w16.size(); ++i) w16[i] = Bits(p.w[i]);
      const int ldw = s.trans_w ? s.K : s.N;
      for (bool amx : {false, true}) {
        if (amx && !CpuHasAmxBf16()) continue;
        for (bool from_bits : {true, false}) {
          Vec out = p.c;
          (amx ? GemmBf16Amx : GemmBf16Avx512)(s.trans_w, s.M, s.N, s.K, 1.0f, p.a.data(), s.K,
                                               from_bits ? w16.data() : nullptr,
                                               from_bits ? nullptr : p.w.data(), ldw, s.beta,
                                               out.data(), s.N);
          Check(s, out, exact, mag, integers,
                Name(s) + (amx ? " amx" : " vdpbf16ps") + (integers ? " integers" : " random") +
                    (from_bits ? " w bf16" : " w f32"));
        }
      }
    }
  }
}

// The dispatching linear ops (AVX512_BF16 or the portable rounding path):
// forward y = x Wᵀ + bias and backward dx += dy W.
TEST(LinearBf16ComputeTest, ForwardAndBackwardMatchTheRoundedReference) {
  const int n = 37, in = 70, out = 45;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> real(-1.0f, 1.0f);
  Vec x(size_t{1} * n * in), w(size_t{1} * out * in), bias(out), dy(size_t{1} * n * out),
      dx0(size_t{1} * n * in);
  for (Vec* v : {&x, &w, &bias, &dy, &dx0}) {
    for (float& f : *v) f = real(rng);
  }
  std::vector<uint16_t> w16(w.size());
  for (size_t i = 0; i < w.size(); ++i) w16[i] = Bits(w[i]);
  const double u = std::ldexp(1.0, -24);
  for (bool from_bits : {true, false}) {
    Vec y(size_t{1} * n * out), dx = dx0, dbias(out, 0.0f);
    LinearForwardBf16Compute(y.data(), x.data(), from_bits ? w16.data() : nullptr,
                             from_bits ? nullptr : w.data(), bias.data(), n, in, out);
    LinearBackwardBf16Compute(dx.data(), dbias.data(), dy.data(), from_bits ? w16.data() : nullptr,
                              from_bits ? nullptr : w.data(), n, in, out);
    for (int i = 0; i < n; ++i) {
      for (int o = 0; o < out; ++o) {
        double e = bias[o], m = std::fabs(bias[o]);
        for (int k = 0; k < in; ++k) {
          const double p = double{Rounded(x[size_t{1} * i * in + k])} * Rounded(w[size_t{1} * o * in + k]);
          e += p;
          m += std::fabs(p);
        }
        ASSERT_NEAR(y[size_t{1} * i * out + o], e, (in + 2) * u * m) << i << "," << o;
      }
      for (int k = 0; k < in; ++k) {
        double e = dx0[size_t{1} * i * in + k], m = std::fabs(e);
        for (int o = 0; o < out; ++o) {
          const double p = double{Rounded(dy[size_t{1} * i * out + o])} * Rounded(w[size_t{1} * o * in + k]);
          e += p;
          m += std::fabs(p);
        }
        ASSERT_NEAR(dx[size_t{1} * i * in + k], e, (out + 2) * u * m) << i << "," << k;
      }
    }
    for (int o = 0; o < out; ++o) {  // dbias sums the unrounded dy
      double e = 0;
      for (int i = 0; i < n; ++i) e += dy[size_t{1} * i * out + o];
      ASSERT_NEAR(dbias[o], e, 1e-5) << o;
    }
  }
  // bf16 is not fp32: the rounded product differs from the fp32 one.
  Vec y32(size_t{1} * n * out), y16(size_t{1} * n * out);
  LinearForward(y32.data(), x.data(), w.data(), nullptr, n, in, out);
  LinearForwardBf16Compute(y16.data(), x.data(), nullptr, w.data(), nullptr, n, in, out);
  double diff = 0;
  for (size_t i = 0; i < y32.size(); ++i) diff = std::max(diff, double{std::fabs(y32[i] - y16[i])});
  EXPECT_GT(diff, 1e-4);
  std::printf("bf16 dot products: %s; max |y_bf16 - y_fp32| = %.3g\n",
              !Bf16DotActive() ? "portable" : CpuHasAmxBf16() ? "AMX" : "AVX512_BF16", diff);
}

}  // namespace
}  // namespace sheaf::ops
