// Tests for the CPU kernels: every backward against central finite
// differences of its forward, forwards against naive double-precision loops,
// accumulation semantics, and thread-count independence.
#include "ops/cpu/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sheaf::ops {
namespace {

using Vec = std::vector<float>;

Vec RandomVec(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Vec v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

double Norm(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

// ||a - b|| / max(||b||, 1e-12) over two float tensors.
double RelErr(const Vec& a, const std::vector<double>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-12);
}

double Project(const Vec& out, const Vec& r) {
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i)
    s += static_cast<double>(out[i]) * r[i];
  return s;
}

// A differentiable input: the tensor the finite differences perturb and the
// buffer the backward adds its gradient into.
struct GradParam {
  std::string name;
  Vec* value;
  Vec* grad;
};

// Central differences with eps = 1e-3 (in float). Bound on the normwise
// relative error ||g_fd - g|| / max(||g||, 1e-6): the forward is fp32, so L
// carries round-off ~1e-7 * sum|out * r|, which the difference quotient
// amplifies by 1/(2 eps) to ~1e-4 per component here; truncation adds
// O(eps^2 * f''') ~ 1e-6. Both sit one to two orders below 1e-2, while real
// bugs (a missing term, a transposed index, a factor of 2) give O(1) errors.
constexpr float kFdEps = 1e-3f;
constexpr double kFdTol = 1e-2;
// Tensors larger than this are checked on a random subset of elements.
constexpr size_t kFdMaxElements = 512;
constexpr size_t kFdSubset = 128;

// `loss` runs the forward from the current parameter values and returns
// L = sum(out * r) in double; `backward` runs the backward with dout = r,
// adding into every param's grad. Checks, for each param:
//  - accumulation: a second backward doubles the gradient (skipped when
//    `accumulates` is false, for CrossEntropy which overwrites);
//  - the gradient is not trivially zero;
//  - finite differences agree to kFdTol.
void CheckGradients(const std::function<double()>& loss,
                    const std::function<void()>& backward,
                    const std::vector<GradParam>& params,
                    bool accumulates = true) {
  for (const GradParam& p : params) {
    std::fill(p.grad->begin(), p.grad->end(), 0.0f);
  }
  loss();  // Forward at the unperturbed point fills the saved activations.
  backward();
  std::vector<Vec> first;
  for (const GradParam& p : params) first.push_back(*p.grad);

  if (accumulates) {
    backward();
    for (size_t k = 0; k < params.size(); ++k) {
      std::vector<double> doubled(first[k].begin(), first[k].end());
      for (double& x : doubled) x *= 2.0;
      EXPECT_LT(RelErr(*params[k].grad, doubled), 1e-6)
          << params[k].name << ": second backward did not accumulate";
    }
  }

  std::mt19937 rng(1234);
  for (size_t k = 0; k < params.size(); ++k) {
    const GradParam& p = params[k];
    Vec& value = *p.value;
    std::vector<size_t> idx(value.size());
    std::iota(idx.begin(), idx.end(), 0);
    if (idx.size() > kFdMaxElements) {
      std::shuffle(idx.begin(), idx.end(), rng);
      idx.resize(kFdSubset);
    }
    Vec analytic;
    std::vector<double> fd;
    for (size_t i : idx) {
      const float orig = value[i];
      const float plus = orig + kFdEps;
      const float minus = orig - kFdEps;
      value[i] = plus;
      const double loss_plus = loss();
      value[i] = minus;
      const double loss_minus = loss();
      value[i] = orig;
      // The actual float step, not 2 * eps: orig +- eps is rounded.
      fd.push_back((loss_plus - loss_minus) /
                   (static_cast<double>(plus) - static_cast<double>(minus)));
      analytic.push_back(first[k][i]);
    }
    std::vector<double> analytic_d(analytic.begin(), analytic.end());
    const double g_norm = Norm(analytic_d);
    EXPECT_GT(g_norm, 1e-3) << p.name << ": gradient is (nearly) zero";
    std::vector<double> diff(fd.size());
    for (size_t i = 0; i < fd.size(); ++i) diff[i] = fd[i] - analytic_d[i];
    const double err = Norm(diff) / std::max(g_norm, 1e-6);
    EXPECT_LT(err, kFdTol) << p.name << ": finite-difference mismatch";
  }
  loss();  // Leave saved activations consistent with the unperturbed values.
}

// ----------------------------------------------------------------------------
// Matmul

TEST(MatmulTest, AllTransposeCombosMatchNaive) {
  constexpr int M = 3, N = 4, K = 5;
  constexpr float kAlpha = 0.7f, kBeta = 0.3f;
  std::mt19937 rng(1);
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const Vec a = RandomVec(rng, M * K);  // [M,K] or [K,M] if ta
      const Vec b = RandomVec(rng, K * N);  // [K,N] or [N,K] if tb
      const Vec out0 = RandomVec(rng, M * N);
      Vec out = out0;
      Matmul(out.data(), a.data(), b.data(), M, N, K, ta, tb, kAlpha, kBeta);
      for (int i = 0; i < M; ++i) {
        for (int j = 0; j < N; ++j) {
          double s = 0.0;
          for (int l = 0; l < K; ++l) {
            const double av = ta ? a[l * M + i] : a[i * K + l];
            const double bv = tb ? b[j * K + l] : b[l * N + j];
            s += av * bv;
          }
          const double ref = kAlpha * s + kBeta * out0[i * N + j];
          EXPECT_NEAR(out[i * N + j], ref, 1e-5 * (1.0 + std::fabs(ref)))
              << "ta=" << ta << " tb=" << tb << " at " << i << "," << j;
        }
      }
    }
  }
}

TEST(MatmulTest, BetaZeroIgnoresPriorOutput) {
  constexpr int M = 2, N = 3, K = 4;
  std::mt19937 rng(2);
  const Vec a = RandomVec(rng, M * K);
  const Vec b = RandomVec(rng, K * N);
  Vec out(M * N, std::numeric_limits<float>::quiet_NaN());
  Matmul(out.data(), a.data(), b.data(), M, N, K, false, false);
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      double s = 0.0;
      for (int l = 0; l < K; ++l) s += a[i * K + l] * b[l * N + j];
      EXPECT_NEAR(out[i * N + j], s, 1e-5);
    }
  }
}

// ----------------------------------------------------------------------------
// Linear

struct LinearCase {
  bool bias;
  bool grad_x;
  bool grad_w;
};

void CheckLinear(const LinearCase& c) {
  constexpr int n = 6, in = 8, out = 5;
  std::mt19937 rng(3);
  Vec x = RandomVec(rng, n * in), w = RandomVec(rng, out * in);
  Vec bias = RandomVec(rng, out);
  const Vec r = RandomVec(rng, n * out);
  Vec dx(n * in), dw(out * in), dbias(out), y(n * out);
  // Sentinel: a frozen weight's gradient buffer must stay untouched.
  const float kSentinel = 42.0f;
  if (!c.grad_w) std::fill(dw.begin(), dw.end(), kSentinel);

  auto loss = [&] {
    LinearForward(y.data(), x.data(), w.data(), c.bias ? bias.data() : nullptr,
                  n, in, out);
    return Project(y, r);
  };
  auto backward = [&] {
    LinearBackward(c.grad_x ? dx.data() : nullptr,
                   c.grad_w ? dw.data() : nullptr,
                   c.bias ? dbias.data() : nullptr, r.data(), x.data(),
                   w.data(), n, in, out);
  };
  std::vector<GradParam> params;
  if (c.grad_x) params.push_back({"dx", &x, &dx});
  if (c.grad_w) params.push_back({"dw", &w, &dw});
  if (c.bias) params.push_back({"dbias", &bias, &dbias});
  CheckGradients(loss, backward, params);
  if (!c.grad_w) {
    for (float g : dw) ASSERT_EQ(g, kSentinel);
  }
}

TEST(LinearTest, GradientsWithBias) { CheckLinear({true, true, true}); }
TEST(LinearTest, GradientsWithoutBias) { CheckLinear({false, true, true}); }
TEST(LinearTest, FrozenWeightSkipsDw) { CheckLinear({true, true, false}); }
TEST(LinearTest, NullDxStillGivesDw) { CheckLinear({false, false, true}); }

TEST(LinearTest, ForwardMatchesNaive) {
  constexpr int n = 4, in = 6, out = 3;
  std::mt19937 rng(4);
  const Vec x = RandomVec(rng, n * in), w = RandomVec(rng, out * in);
  const Vec bias = RandomVec(rng, out);
  Vec y(n * out, std::numeric_limits<float>::quiet_NaN());
  LinearForward(y.data(), x.data(), w.data(), bias.data(), n, in, out);
  for (int i = 0; i < n; ++i) {
    for (int o = 0; o < out; ++o) {
      double s = bias[o];
      for (int j = 0; j < in; ++j) s += x[i * in + j] * w[o * in + j];
      EXPECT_NEAR(y[i * out + o], s, 1e-5);
    }
  }
}

// ----------------------------------------------------------------------------
// LoRA

constexpr int kLoraN = 6, kLoraIn = 8, kLoraOut = 5, kLoraR = 3;
constexpr float kLoraScale = 2.0f;  // alpha / r, as in PEFT

TEST(LoraTest, Gradients) {
  constexpr int n = kLoraN, in = kLoraIn, out = kLoraOut, r_ = kLoraR;
  std::mt19937 rng(5);
  Vec x = RandomVec(rng, n * in), a = RandomVec(rng, r_ * in);
  Vec b = RandomVec(rng, out * r_);
  const Vec y0 = RandomVec(rng, n * out);  // the frozen layer's output
  const Vec r = RandomVec(rng, n * out);
  Vec y, xa(n * r_), scratch(n * r_);
  Vec dx(n * in), da(r_ * in), db(out * r_);
  auto loss = [&] {
    y = y0;
    LoraForward(y.data(), xa.data(), x.data(), a.data(), b.data(), kLoraScale,
                n, in, out, r_);
    return Project(y, r);
  };
  auto backward = [&] {
    LoraBackward(dx.data(), da.data(), db.data(), scratch.data(), r.data(),
                 x.data(), xa.data(), a.data(), b.data(), kLoraScale, n, in,
                 out, r_);
  };
  CheckGradients(loss, backward,
                 {{"dx", &x, &dx}, {"da", &a, &da}, {"db", &b, &db}});
}

// PEFT initialises B to zero: then y = y0 exactly, dx = da = 0 exactly, and
// only db is non-zero (which is what lets training leave the origin).
TEST(LoraTest, ZeroInitBGivesOnlyDb) {
  constexpr int n = kLoraN, in = kLoraIn, out = kLoraOut, r_ = kLoraR;
  std::mt19937 rng(6);
  Vec x = RandomVec(rng, n * in), a = RandomVec(rng, r_ * in);
  Vec b(out * r_, 0.0f);
  const Vec y0 = RandomVec(rng, n * out);
  const Vec r = RandomVec(rng, n * out);
  Vec y, xa(n * r_), scratch(n * r_);
  Vec dx(n * in, 0.0f), da(r_ * in, 0.0f), db(out * r_);
  auto loss = [&] {
    y = y0;
    LoraForward(y.data(), xa.data(), x.data(), a.data(), b.data(), kLoraScale,
                n, in, out, r_);
    return Project(y, r);
  };
  auto backward = [&] {
    LoraBackward(dx.data(), da.data(), db.data(), scratch.data(), r.data(),
                 x.data(), xa.data(), a.data(), b.data(), kLoraScale, n, in,
                 out, r_);
  };
  CheckGradients(loss, backward, {{"db", &b, &db}});
  EXPECT_EQ(y, y0);
  for (float g : da) ASSERT_EQ(g, 0.0f);
  for (float g : dx) ASSERT_EQ(g, 0.0f);
}

TEST(LoraTest, NullDxAndDaStillGiveDb) {
  constexpr int n = kLoraN, in = kLoraIn, out = kLoraOut, r_ = kLoraR;
  std::mt19937 rng(7);
  Vec x = RandomVec(rng, n * in), a = RandomVec(rng, r_ * in);
  Vec b = RandomVec(rng, out * r_);
  const Vec r = RandomVec(rng, n * out);
  Vec y(n * out), xa(n * r_), db(out * r_);
  // The scratch must not be needed when neither dx nor da is wanted.
  auto loss = [&] {
    std::fill(y.begin(), y.end(), 0.0f);
    LoraForward(y.data(), xa.data(), x.data(), a.data(), b.data(), kLoraScale,
                n, in, out, r_);
    return Project(y, r);
  };
  auto backward = [&] {
    LoraBackward(nullptr, nullptr, db.data(), nullptr, r.data(), x.data(),
                 xa.data(), a.data(), b.data(), kLoraScale, n, in, out, r_);
  };
  CheckGradients(loss, backward, {{"db", &b, &db}});
}

// ----------------------------------------------------------------------------
// Embedding

TEST(EmbeddingTest, GradientsWithRepeatedTokens) {
  constexpr int V = 7, C = 8;
  const std::vector<int32_t> tokens = {1, 3, 1, 1, 6, 3};
  const int n = static_cast<int>(tokens.size());
  std::mt19937 rng(8);
  Vec wte = RandomVec(rng, V * C);
  const Vec r = RandomVec(rng, n * C);
  Vec out(n * C), dwte(V * C);
  auto loss = [&] {
    EmbeddingForward(out.data(), tokens.data(), wte.data(), n, C);
    return Project(out, r);
  };
  auto backward = [&] {
    EmbeddingBackward(dwte.data(), r.data(), tokens.data(), n, C);
  };
  CheckGradients(loss, backward, {{"dwte", &wte, &dwte}});
  for (int i = 0; i < n; ++i) {
    for (int c = 0; c < C; ++c) {
      ASSERT_EQ(out[i * C + c], wte[tokens[i] * C + c]);
    }
  }
}

// ----------------------------------------------------------------------------
// RMSNorm

TEST(RmsNormTest, ForwardMatchesNaive) {
  constexpr int n = 6, C = 8;
  constexpr float kEps = 1e-5f;
  std::mt19937 rng(9);
  const Vec x = RandomVec(rng, n * C), w = RandomVec(rng, C);
  Vec out(n * C), rstd(n);
  RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), n, C, kEps);
  for (int i = 0; i < n; ++i) {
    double ss = 0.0;
    for (int c = 0; c < C; ++c) ss += double{x[i * C + c]} * x[i * C + c];
    const double rs = 1.0 / std::sqrt(ss / C + kEps);
    EXPECT_NEAR(rstd[i], rs, 1e-6 * rs);
    for (int c = 0; c < C; ++c) {
      EXPECT_NEAR(out[i * C + c], x[i * C + c] * rs * w[c], 1e-5);
    }
  }
}

void CheckRmsNorm(bool grad_w) {
  constexpr int n = 6, C = 8;
  constexpr float kEps = 1e-5f;
  std::mt19937 rng(10);
  Vec x = RandomVec(rng, n * C), w = RandomVec(rng, C, 0.5f, 1.5f);
  const Vec r = RandomVec(rng, n * C);
  Vec out(n * C), rstd(n), dx(n * C), dw(C);
  auto loss = [&] {
    RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), n, C, kEps);
    return Project(out, r);
  };
  auto backward = [&] {
    RmsNormBackward(dx.data(), grad_w ? dw.data() : nullptr, r.data(), x.data(),
                    w.data(), rstd.data(), n, C);
  };
  std::vector<GradParam> params = {{"dx", &x, &dx}};
  if (grad_w) params.push_back({"dw", &w, &dw});
  CheckGradients(loss, backward, params);
}

TEST(RmsNormTest, Gradients) { CheckRmsNorm(true); }
TEST(RmsNormTest, FrozenWeightGradients) { CheckRmsNorm(false); }

// ----------------------------------------------------------------------------
// RoPE

TEST(RopeTest, ForwardMatchesNaiveHfFormula) {
  constexpr int B = 2, T = 16, H = 3, HD = 8, half = HD / 2;
  constexpr float kTheta = 10000.0f;
  std::mt19937 rng(11);
  const Vec x = RandomVec(rng, B * T * H * HD);
  Vec cos(T * half), sin(T * half), out(x.size());
  RopeTables(cos.data(), sin.data(), T, HD, kTheta);
  RopeForward(out.data(), x.data(), cos.data(), sin.data(), B, T, H, HD);
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < H; ++h) {
        const float* v = x.data() + ((b * T + t) * H + h) * HD;
        const float* o = out.data() + ((b * T + t) * H + h) * HD;
        for (int i = 0; i < half; ++i) {
          const double inv_freq = std::pow(double{kTheta}, -2.0 * i / HD);
          const double c = std::cos(t * inv_freq), s = std::sin(t * inv_freq);
          EXPECT_NEAR(o[i], v[i] * c - v[i + half] * s, 1e-5);
          EXPECT_NEAR(o[i + half], v[i + half] * c + v[i] * s, 1e-5);
        }
      }
    }
  }
  // In place (out aliases x) gives the same bits.
  Vec inplace = x;
  RopeForward(inplace.data(), inplace.data(), cos.data(), sin.data(), B, T, H,
              HD);
  EXPECT_EQ(inplace, out);
}

TEST(RopeTest, Gradients) {
  constexpr int B = 2, T = 5, H = 2, HD = 4, half = HD / 2;
  std::mt19937 rng(12);
  Vec x = RandomVec(rng, B * T * H * HD);
  const Vec r = RandomVec(rng, x.size());
  Vec cos(T * half), sin(T * half), out(x.size()), dx(x.size());
  RopeTables(cos.data(), sin.data(), T, HD, 10000.0f);
  auto loss = [&] {
    RopeForward(out.data(), x.data(), cos.data(), sin.data(), B, T, H, HD);
    return Project(out, r);
  };
  auto backward = [&] {
    RopeBackward(dx.data(), r.data(), cos.data(), sin.data(), B, T, H, HD);
  };
  CheckGradients(loss, backward, {{"dx", &x, &dx}});
}

// ----------------------------------------------------------------------------
// Attention

struct AttentionShape {
  int nh;
  int kvh;
  int t = 5;  // > 64 exercises the query-block path (blocks of 64 rows)
};

void PrintTo(const AttentionShape& s, std::ostream* os) {
  *os << "NH=" << s.nh << " KVH=" << s.kvh << " T=" << s.t;
}

class AttentionTest : public ::testing::TestWithParam<AttentionShape> {
 protected:
  static constexpr int B = 2, HD = 4;
  const int T = GetParam().t;
};

// Naive causal GQA in double: returns out [B,T,NH*HD] and probs [B,NH,T,T].
void NaiveAttention(std::vector<double>* out, std::vector<double>* probs,
                    const Vec& q, const Vec& k, const Vec& v, int B, int T,
                    int NH, int KVH, int HD) {
  out->assign(static_cast<size_t>(B) * T * NH * HD, 0.0);
  probs->assign(static_cast<size_t>(B) * NH * T * T, 0.0);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      const int kvh = h / (NH / KVH);
      for (int t = 0; t < T; ++t) {
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (int u = 0; u <= t; ++u) {
          double d = 0.0;
          for (int e = 0; e < HD; ++e) {
            d += double{q[((b * T + t) * NH + h) * HD + e]} *
                 k[((b * T + u) * KVH + kvh) * HD + e];
          }
          s[u] = d / std::sqrt(static_cast<double>(HD));
          mx = std::max(mx, s[u]);
        }
        double sum = 0.0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int u = 0; u <= t; ++u) {
          const double p = s[u] / sum;
          (*probs)[((b * NH + h) * T + t) * T + u] = p;
          for (int e = 0; e < HD; ++e) {
            (*out)[((b * T + t) * NH + h) * HD + e] +=
                p * v[((b * T + u) * KVH + kvh) * HD + e];
          }
        }
      }
    }
  }
}

TEST_P(AttentionTest, ForwardMatchesNaiveDouble) {
  const int NH = GetParam().nh, KVH = GetParam().kvh;
  std::mt19937 rng(13);
  const Vec q = RandomVec(rng, B * T * NH * HD, -2.0f, 2.0f);
  const Vec k = RandomVec(rng, B * T * KVH * HD, -2.0f, 2.0f);
  const Vec v = RandomVec(rng, B * T * KVH * HD);
  Vec out(q.size()), probs(B * NH * T * T, std::nanf(""));
  AttentionForward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T,
                   NH, KVH, HD);
  std::vector<double> ref_out, ref_probs;
  NaiveAttention(&ref_out, &ref_probs, q, k, v, B, T, NH, KVH, HD);
  EXPECT_LT(RelErr(out, ref_out), 1e-5);
  EXPECT_LT(RelErr(probs, ref_probs), 1e-5);
  for (int row = 0; row < B * NH * T; ++row) {
    const int t = row % T;
    for (int u = t + 1; u < T; ++u) ASSERT_EQ(probs[row * T + u], 0.0f);
  }
}

TEST_P(AttentionTest, Gradients) {
  const int NH = GetParam().nh, KVH = GetParam().kvh;
  std::mt19937 rng(14);
  Vec q = RandomVec(rng, B * T * NH * HD, -2.0f, 2.0f);
  Vec k = RandomVec(rng, B * T * KVH * HD, -2.0f, 2.0f);
  Vec v = RandomVec(rng, B * T * KVH * HD);
  const Vec r = RandomVec(rng, q.size());
  Vec out(q.size()), probs(B * NH * T * T);
  Vec dq(q.size()), dk(k.size()), dv(v.size());
  auto loss = [&] {
    AttentionForward(out.data(), probs.data(), q.data(), k.data(), v.data(), B,
                     T, NH, KVH, HD);
    return Project(out, r);
  };
  auto backward = [&] {
    AttentionBackward(dq.data(), dk.data(), dv.data(), r.data(), q.data(),
                      k.data(), v.data(), probs.data(), B, T, NH, KVH, HD);
  };
  CheckGradients(loss, backward,
                 {{"dq", &q, &dq}, {"dk", &k, &dk}, {"dv", &v, &dv}});
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttentionShape{2, 2},
                                           AttentionShape{4, 2},
                                           AttentionShape{4, 1},
                                           AttentionShape{4, 2, 150},
                                           AttentionShape{2, 1, 128}),
                         [](const auto& info) {
                           return "NH" + std::to_string(info.param.nh) + "KVH" +
                                  std::to_string(info.param.kvh) + "T" +
                                  std::to_string(info.param.t);
                         });

// ----------------------------------------------------------------------------
// SwiGLU and Add

TEST(SwiGluTest, Gradients) {
  constexpr int n = 40;
  std::mt19937 rng(15);
  Vec gate = RandomVec(rng, n, -4.0f, 4.0f), up = RandomVec(rng, n);
  const Vec r = RandomVec(rng, n);
  Vec h(n), dgate(n), dup(n);
  auto loss = [&] {
    SwiGluForward(h.data(), gate.data(), up.data(), n);
    return Project(h, r);
  };
  auto backward = [&] {
    SwiGluBackward(dgate.data(), dup.data(), r.data(), gate.data(), up.data(),
                   n);
  };
  CheckGradients(loss, backward,
                 {{"dgate", &gate, &dgate}, {"dup", &up, &dup}});
  for (int i = 0; i < n; ++i) {
    const double g = gate[i];
    EXPECT_NEAR(h[i], g / (1.0 + std::exp(-g)) * up[i], 1e-6);
  }
}

TEST(AddTest, InPlaceAndOutOfPlace) {
  constexpr int n = 37;
  std::mt19937 rng(16);
  const Vec a = RandomVec(rng, n), b = RandomVec(rng, n);
  Vec out(n);
  Add(out.data(), a.data(), b.data(), n);
  for (int i = 0; i < n; ++i) ASSERT_EQ(out[i], a[i] + b[i]);
  Vec acc = a;
  Add(acc.data(), acc.data(), b.data(), n);
  EXPECT_EQ(acc, out);
}

// ----------------------------------------------------------------------------
// Cross-entropy

constexpr int kIgnore = -100;

TEST(CrossEntropyTest, LossMatchesNaiveAndIgnoredRowsAreZero) {
  constexpr int N = 6, V = 7;
  const std::vector<int32_t> targets = {2, kIgnore, 0, 6, kIgnore, 3};
  std::mt19937 rng(17);
  const Vec logits = RandomVec(rng, N * V, -3.0f, 3.0f);
  Vec dlogits(N * V, 123.0f);  // garbage: must be overwritten everywhere
  double loss_sum = 1.5;       // both outputs accumulate
  int64_t n_valid = 10;
  CrossEntropy(dlogits.data(), &loss_sum, &n_valid, logits.data(),
               targets.data(), N, V, kIgnore, 1.0f);
  double ref = 0.0;
  for (int i = 0; i < N; ++i) {
    if (targets[i] == kIgnore) continue;
    double mx = -1e300, sum = 0.0;
    for (int j = 0; j < V; ++j) mx = std::max(mx, double{logits[i * V + j]});
    for (int j = 0; j < V; ++j) sum += std::exp(logits[i * V + j] - mx);
    ref += mx + std::log(sum) - logits[i * V + targets[i]];
  }
  EXPECT_EQ(n_valid, 10 + 4);
  EXPECT_NEAR(loss_sum - 1.5, ref, 1e-5 * std::fabs(ref));
  for (int i = 0; i < N; ++i) {
    double row_sum = 0.0;
    for (int j = 0; j < V; ++j) {
      if (targets[i] == kIgnore) {
        ASSERT_EQ(dlogits[i * V + j], 0.0f);
      }
      row_sum += dlogits[i * V + j];
    }
    EXPECT_NEAR(row_sum, 0.0, 1e-6);  // softmax - onehot sums to zero
  }

  // Without dlogits: same loss.
  double loss_only = 0.0;
  int64_t n_only = 0;
  CrossEntropy(nullptr, &loss_only, &n_only, logits.data(), targets.data(), N,
               V, kIgnore, 1.0f);
  EXPECT_EQ(loss_only, loss_sum - 1.5);
  EXPECT_EQ(n_only, 4);

  // grad_scale scales the gradient.
  Vec scaled(N * V);
  double unused = 0.0;
  int64_t unused_n = 0;
  CrossEntropy(scaled.data(), &unused, &unused_n, logits.data(), targets.data(),
               N, V, kIgnore, 0.25f);
  for (int i = 0; i < N * V; ++i) {
    EXPECT_NEAR(scaled[i], 0.25f * dlogits[i], 1e-7);
  }
}

TEST(CrossEntropyTest, Gradients) {
  constexpr int N = 6, V = 7;
  const std::vector<int32_t> targets = {2, kIgnore, 0, 6, kIgnore, 3};
  std::mt19937 rng(18);
  Vec logits = RandomVec(rng, N * V, -3.0f, 3.0f);
  Vec dlogits(N * V);
  // L = loss_sum; dlogits overwrites, so the accumulation check is skipped.
  auto loss = [&] {
    double s = 0.0;
    int64_t count = 0;
    CrossEntropy(nullptr, &s, &count, logits.data(), targets.data(), N, V,
                 kIgnore, 1.0f);
    return s;
  };
  auto backward = [&] {
    double s = 0.0;
    int64_t count = 0;
    CrossEntropy(dlogits.data(), &s, &count, logits.data(), targets.data(), N,
                 V, kIgnore, 1.0f);
  };
  CheckGradients(loss, backward, {{"dlogits", &logits, &dlogits}},
                 /*accumulates=*/false);
}

// ----------------------------------------------------------------------------
// Threads

TEST(ThreadsTest, SetAndGet) {
  SetNumThreads(3);
  EXPECT_EQ(NumThreads(), 3);
  SetNumThreads(0);
  EXPECT_EQ(NumThreads(), omp_get_num_procs());
}

// Sizes above the parallel threshold, so that the OpenMP paths (which the
// small gradient checks above never enter) run; every non-GEMM kernel must
// give the same bits with 1 and 4 threads. Together with the gradient checks
// on the serial path this covers races in the parallel decompositions.
TEST(ThreadsTest, ParallelMatchesSerialBitwise) {
  constexpr int B = 2, T = 32, NH = 4, KVH = 2, HD = 16;
  constexpr int n = B * T, C = 1024, V = 2048;
  std::mt19937 rng(19);
  const Vec q = RandomVec(rng, B * T * NH * HD),
            k = RandomVec(rng, B * T * KVH * HD);
  const Vec v = RandomVec(rng, k.size()), dout = RandomVec(rng, q.size());
  const Vec x = RandomVec(rng, n * C), w = RandomVec(rng, C),
            dx_out = RandomVec(rng, n * C);
  const Vec logits = RandomVec(rng, n * V, -5.0f, 5.0f);
  std::vector<int32_t> tokens(n), targets(n);
  for (int i = 0; i < n; ++i) {
    tokens[i] = i % 5;  // repeated rows in the embedding gradient
    targets[i] = i % 7 == 0 ? kIgnore : (i * 37) % V;
  }

  std::vector<double> losses;
  std::vector<int64_t> valids;
  auto run = [&](int threads) {
    SetNumThreads(threads);
    Vec out(q.size()), probs(B * NH * T * T);
    AttentionForward(out.data(), probs.data(), q.data(), k.data(), v.data(), B,
                     T, NH, KVH, HD);
    Vec dq(q.size(), 0.5f), dk(k.size(), 0.5f), dv(v.size(), 0.5f);
    AttentionBackward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(),
                      k.data(), v.data(), probs.data(), B, T, NH, KVH, HD);
    Vec norm(n * C), rstd(n), dx(n * C, 0.5f), dw(C, 0.5f);
    RmsNormForward(norm.data(), rstd.data(), x.data(), w.data(), n, C, 1e-5f);
    RmsNormBackward(dx.data(), dw.data(), dx_out.data(), x.data(), w.data(),
                    rstd.data(), n, C);
    Vec dwte(5 * C, 0.5f), emb(n * C);
    EmbeddingForward(emb.data(), tokens.data(), x.data(), n, C);
    EmbeddingBackward(dwte.data(), dx_out.data(), tokens.data(), n, C);
    Vec dbias(C, 0.5f);
    LinearBackward(nullptr, nullptr, dbias.data(), dx_out.data(), nullptr,
                   nullptr, n, 0, C);
    Vec dlogits(n * V);
    double loss = 0.0;
    int64_t valid = 0;
    CrossEntropy(dlogits.data(), &loss, &valid, logits.data(), targets.data(),
                 n, V, kIgnore, 0.01f);
    // x viewed as [B, T, C / HD heads, HD] for RoPE.
    Vec cos(T * HD / 2), sin(T * HD / 2), rope(x.size()), drope(x.size(), 0.5f);
    RopeTables(cos.data(), sin.data(), T, HD, 10000.0f);
    RopeForward(rope.data(), x.data(), cos.data(), sin.data(), B, T, C / HD,
                HD);
    RopeBackward(drope.data(), dx_out.data(), cos.data(), sin.data(), B, T,
                 C / HD, HD);
    Vec h(x.size()), dg(x.size(), 0.5f), du(x.size(), 0.5f), sum(x.size());
    SwiGluForward(h.data(), x.data(), dx_out.data(), x.size());
    SwiGluBackward(dg.data(), du.data(), x.data(), dx_out.data(), x.data(),
                   x.size());
    Add(sum.data(), x.data(), dx_out.data(), x.size());
    losses.push_back(loss);
    valids.push_back(valid);
    return std::vector<Vec>{out,   probs, dq,  dk,   dv,    norm,    rstd,
                            dx,    dw,    emb, dwte, dbias, dlogits, rope,
                            drope, h,     dg,  du,   sum};
  };
  const std::vector<Vec> serial = run(1);
  const std::vector<Vec> parallel = run(4);
  SetNumThreads(0);
  ASSERT_EQ(serial.size(), parallel.size());
  for (size_t i = 0; i < serial.size(); ++i) {
    EXPECT_EQ(serial[i], parallel[i]) << "output #" << i;
  }
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_EQ(valids[0], valids[1]);
}

}  // namespace
}  // namespace sheaf::ops
