// Selected-rows head: loss against a naive double reference and against the
// full-logits cross-entropy restricted to the selected columns, finite-
// difference gradients for h and W, gradients only on selected rows/columns,
// repeated indices, ignored rows, the ADD convention.
#include "ops/cpu/heads.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "ops/cpu/ops.h"

namespace sheaf::ops {
namespace {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

Vec Random(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Vec v(n);
  for (float& x : v) x = u(rng);
  return v;
}

struct HeadProblem {
  int n = 9, C = 6, V = 13;
  std::vector<int32_t> rows = {8, 2, 5, 2};  // row 2 twice
  std::vector<int32_t> cols = {4, 11, 0};
  std::vector<int32_t> targets = {1, 0, -100, 2};  // one ignored row
  Vec h, w;

  SelectedRowsHeadArgs Args() const {
    SelectedRowsHeadArgs a;
    a.n = n;
    a.C = C;
    a.V = V;
    a.num_rows = static_cast<int>(rows.size());
    a.num_cols = static_cast<int>(cols.size());
    a.rows = rows.data();
    a.cols = cols.data();
    a.targets = targets.data();
    a.ignore_index = -100;
    return a;
  }
};

HeadProblem MakeHead(uint32_t seed) {
  std::mt19937 rng(seed);
  HeadProblem p;
  p.h = Random(static_cast<size_t>(p.n) * p.C, rng);
  p.w = Random(static_cast<size_t>(p.V) * p.C, rng);
  // Larger logits than U(-1,1) products give, so the softmax is not flat.
  for (float& x : p.w) x *= 2.0f;
  return p;
}

// Σ over non-ignored selected rows of logsumexp_j(z) - z[target], in double
// from the definition.
double ReferenceLoss(const HeadProblem& p, const DVec& h, const DVec& w) {
  double loss = 0.0;
  for (size_t m = 0; m < p.rows.size(); ++m) {
    if (p.targets[m] == -100) continue;
    std::vector<double> z;
    for (int32_t col : p.cols) {
      double s = 0.0;
      for (int c = 0; c < p.C; ++c) {
        s += h[static_cast<size_t>(p.rows[m]) * p.C + c] * w[static_cast<size_t>(col) * p.C + c];
      }
      z.push_back(s);
    }
    double mx = z[0];
    for (double v : z) mx = std::max(mx, v);
    double se = 0.0;
    for (double v : z) se += std::exp(v - mx);
    loss += mx + std::log(se) - z[static_cast<size_t>(p.targets[m])];
  }
  return loss;
}

struct HeadResult {
  Vec logits;
  double loss = 0;
  int64_t count = 0;
  Vec dh, dw;
};

HeadResult RunHead(const HeadProblem& p, float grad_scale, float fill) {
  const SelectedRowsHeadArgs a = p.Args();
  HeadResult r;
  r.logits.assign(p.rows.size() * p.cols.size(), 0.0f);
  Vec dlogits(r.logits.size());
  Vec scratch(static_cast<size_t>(SelectedRowsHeadScratchFloats(a)));
  SelectedRowsHeadForward(r.logits.data(), dlogits.data(), &r.loss, &r.count, scratch.data(),
                          p.h.data(), p.w.data(), a, grad_scale);
  r.dh.assign(p.h.size(), fill);
  r.dw.assign(p.w.size(), fill);
  std::fill(scratch.begin(), scratch.end(), 1e30f);  // need not survive
  SelectedRowsHeadBackward(r.dh.data(), r.dw.data(), scratch.data(), dlogits.data(), p.h.data(),
                           p.w.data(), a);
  return r;
}

TEST(SelectedRowsHead, LossMatchesReferenceAndCountsValidRows) {
  const HeadProblem p = MakeHead(1);
  const HeadResult r = RunHead(p, 1.0f, 0.0f);
  EXPECT_EQ(r.count, 3);
  const double ref = ReferenceLoss(p, DVec(p.h.begin(), p.h.end()), DVec(p.w.begin(), p.w.end()));
  // fp32 logits (6 products of O(2) values, error ~1e-6) through logsumexp:
  // the summed loss over 3 rows is within ~1e-5 of the double reference.
  EXPECT_NEAR(r.loss, ref, 1e-4);
  EXPECT_GT(ref, 0.1);
}

// The head equals the full [N, V] logits, restricted to the selected rows and
// columns, fed to ops::CrossEntropy: the logits exactly (same products and
// the same GEMM on the same K), the loss bit for bit.
TEST(SelectedRowsHead, EqualsFullLogitsCrossEntropyRestrictedToTheColumns) {
  const HeadProblem p = MakeHead(2);
  const HeadResult r = RunHead(p, 1.0f, 0.0f);
  Vec full(static_cast<size_t>(p.n) * p.V);
  Matmul(full.data(), p.h.data(), p.w.data(), p.n, p.V, p.C, false, true);
  const size_t M = p.rows.size(), J = p.cols.size();
  Vec restricted(M * J);
  for (size_t m = 0; m < M; ++m) {
    for (size_t j = 0; j < J; ++j) {
      restricted[m * J + j] = full[static_cast<size_t>(p.rows[m]) * p.V + p.cols[j]];
      // Different GEMM shapes may block the 6-term dot product differently:
      // allow a few ulps of O(1) values.
      EXPECT_NEAR(r.logits[m * J + j], restricted[m * J + j], 1e-6) << m << " " << j;
    }
  }
  double loss = 0;
  int64_t count = 0;
  CrossEntropy(nullptr, &loss, &count, r.logits.data(), p.targets.data(), static_cast<int>(M),
               static_cast<int>(J), -100, 0.0f);
  EXPECT_EQ(loss, r.loss);
  EXPECT_EQ(count, r.count);
  double loss_full = 0;
  int64_t count_full = 0;
  CrossEntropy(nullptr, &loss_full, &count_full, restricted.data(), p.targets.data(),
               static_cast<int>(M), static_cast<int>(J), -100, 0.0f);
  EXPECT_NEAR(loss_full, r.loss, 1e-5);
  EXPECT_EQ(count_full, r.count);
}

// Normwise relative error of the analytic gradient against central
// differences of the double reference over every element.
//
// Tolerance: L is smooth with third derivatives O(1) (logits O(1) and
// |w|, |h| <= 2), so the central-difference truncation error at eps = 1e-4
// is ~1e-8 and double round-off ~1e-16/1e-4 = 1e-12; the analytic gradient
// carries fp32 round-off ~1e-6 relative. 1e-4 leaves 100x margin and is far
// below what a wrong or missing term gives (>= 0.1).
double FdError(const HeadProblem& p, bool wrt_w, const Vec& analytic, float grad_scale) {
  DVec h(p.h.begin(), p.h.end()), w(p.w.begin(), p.w.end());
  DVec& v = wrt_w ? w : h;
  const double eps = 1e-4;
  double num = 0, den = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const double orig = v[i];
    v[i] = orig + eps;
    const double lp = ReferenceLoss(p, h, w);
    v[i] = orig - eps;
    const double lm = ReferenceLoss(p, h, w);
    v[i] = orig;
    const double fd = grad_scale * (lp - lm) / (2 * eps);
    num += (fd - analytic[i]) * (fd - analytic[i]);
    den += fd * fd;
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-12);
}

TEST(SelectedRowsHead, GradientsMatchFiniteDifferences) {
  const HeadProblem p = MakeHead(3);
  const float grad_scale = 0.25f;
  const float fill = 0.5f;
  HeadResult r = RunHead(p, grad_scale, fill);
  for (float& x : r.dh) x -= fill;  // backward adds
  for (float& x : r.dw) x -= fill;
  EXPECT_LT(FdError(p, false, r.dh, grad_scale), 1e-4) << "dh";
  EXPECT_LT(FdError(p, true, r.dw, grad_scale), 1e-4) << "dw";
}

TEST(SelectedRowsHead, OnlySelectedRowsAndColumnsGetGradients) {
  const HeadProblem p = MakeHead(4);
  const float fill = 0.5f;
  const HeadResult r = RunHead(p, 1.0f, fill);
  for (int i = 0; i < p.n; ++i) {
    const bool selected = std::find(p.rows.begin(), p.rows.end(), i) != p.rows.end();
    // Row 5 is selected only with an ignored target: untouched as well.
    const bool live = selected && i != 5;
    double moved = 0;
    for (int c = 0; c < p.C; ++c) {
      moved += std::abs(r.dh[static_cast<size_t>(i) * p.C + c] - fill);
    }
    if (live) {
      EXPECT_GT(moved, 1e-3) << "row " << i;
    } else {
      EXPECT_EQ(moved, 0.0) << "row " << i;
    }
  }
  for (int v = 0; v < p.V; ++v) {
    const bool selected = std::find(p.cols.begin(), p.cols.end(), v) != p.cols.end();
    double moved = 0;
    for (int c = 0; c < p.C; ++c) {
      moved += std::abs(r.dw[static_cast<size_t>(v) * p.C + c] - fill);
    }
    if (selected) {
      EXPECT_GT(moved, 1e-3) << "col " << v;
    } else {
      EXPECT_EQ(moved, 0.0) << "col " << v;
    }
  }
}

TEST(SelectedRowsHead, NullGradientsAreSkipped) {
  const HeadProblem p = MakeHead(5);
  const HeadResult all = RunHead(p, 1.0f, 0.0f);
  const SelectedRowsHeadArgs a = p.Args();
  Vec logits(p.rows.size() * p.cols.size()), dlogits(logits.size());
  Vec scratch(static_cast<size_t>(SelectedRowsHeadScratchFloats(a)));
  double loss = 0;
  int64_t count = 0;
  SelectedRowsHeadForward(logits.data(), dlogits.data(), &loss, &count, scratch.data(),
                          p.h.data(), p.w.data(), a, 1.0f);
  Vec dh(p.h.size()), dw(p.w.size());
  SelectedRowsHeadBackward(dh.data(), nullptr, scratch.data(), dlogits.data(), p.h.data(),
                           p.w.data(), a);
  SelectedRowsHeadBackward(nullptr, dw.data(), scratch.data(), dlogits.data(), p.h.data(),
                           p.w.data(), a);
  EXPECT_EQ(dh, all.dh);
  EXPECT_EQ(dw, all.dw);
}

TEST(SelectedRowsHead, YesNoClassifierOneRowPerSample) {
  // B = 3 samples of T = 4 rows; the answer is read at the last row of each
  // sample from 2 columns ("yes" = 7, "no" = 3).
  std::mt19937 rng(6);
  const int B = 3, T = 4, C = 5, V = 10;
  const Vec h = Random(static_cast<size_t>(B) * T * C, rng);
  const Vec w = Random(static_cast<size_t>(V) * C, rng);
  const std::vector<int32_t> rows = {T - 1, 2 * T - 1, 3 * T - 1};
  const std::vector<int32_t> cols = {7, 3};
  const std::vector<int32_t> targets = {0, 1, 1};
  SelectedRowsHeadArgs a;
  a.n = B * T;
  a.C = C;
  a.V = V;
  a.num_rows = B;
  a.num_cols = 2;
  a.rows = rows.data();
  a.cols = cols.data();
  a.targets = targets.data();
  Vec logits(B * 2), scratch(static_cast<size_t>(SelectedRowsHeadScratchFloats(a)));
  EXPECT_EQ(scratch.size(), static_cast<size_t>((3 + 2 + 3) * C));
  double loss = 0;
  int64_t count = 0;
  SelectedRowsHeadForward(logits.data(), nullptr, &loss, &count, scratch.data(), h.data(),
                          w.data(), a, 0.0f);
  EXPECT_EQ(count, 3);
  // Two-way softmax CE = softplus(z_other - z_target), in double.
  double expect = 0;
  for (int b = 0; b < B; ++b) {
    double z[2];
    for (int j = 0; j < 2; ++j) {
      z[j] = 0;
      for (int c = 0; c < C; ++c) {
        z[j] += static_cast<double>(h[static_cast<size_t>(rows[b]) * C + c]) *
                w[static_cast<size_t>(cols[j]) * C + c];
      }
      EXPECT_NEAR(logits[static_cast<size_t>(b) * 2 + j], z[j], 1e-6);
    }
    expect += std::log1p(std::exp(z[1 - targets[b]] - z[targets[b]]));
  }
  EXPECT_NEAR(loss, expect, 1e-5);
}

TEST(GatherScatter, RepeatedIndicesAddInOrderAndThreadCountDoesNotMatter) {
  std::mt19937 rng(7);
  const int M = 600, C = 130, rows = 5;  // M*C above the parallel threshold
  const Vec src = Random(static_cast<size_t>(M) * C, rng);
  std::vector<int32_t> idx(M);
  for (int m = 0; m < M; ++m) idx[m] = static_cast<int32_t>(rng() % rows);
  Vec serial(static_cast<size_t>(rows) * C, 0.25f), parallel = serial;
  SetNumThreads(1);
  ScatterAddRows(serial.data(), src.data(), idx.data(), M, C);
  SetNumThreads(2);
  ScatterAddRows(parallel.data(), src.data(), idx.data(), M, C);
  SetNumThreads(0);
  EXPECT_EQ(serial, parallel);
  // Against a plain loop in the same (m) order: bit-identical.
  Vec naive(static_cast<size_t>(rows) * C, 0.25f);
  for (int m = 0; m < M; ++m) {
    for (int c = 0; c < C; ++c) {
      naive[static_cast<size_t>(idx[m]) * C + c] += src[static_cast<size_t>(m) * C + c];
    }
  }
  EXPECT_EQ(serial, naive);
  Vec gathered(static_cast<size_t>(M) * C);
  GatherRows(gathered.data(), src.data(), idx.data(), M, C);
  for (int m = 0; m < M; ++m) {
    for (int c = 0; c < C; ++c) {
      ASSERT_EQ(gathered[static_cast<size_t>(m) * C + c], src[static_cast<size_t>(idx[m]) * C + c]);
    }
  }
}

}  // namespace
}  // namespace sheaf::ops
