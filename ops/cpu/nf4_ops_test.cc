#include "ops/cpu/nf4_ops.h"

#include <cmath>
#include <random>
#include <vector>

#include "core/backend.h"
#include "core/quant/nf4.h"
#include "gtest/gtest.h"
#include "ops/cpu/ops.h"

namespace sheaf::ops {
namespace {

std::vector<float> Normal(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

// The dequantising linear equals dequantise-then-linear: the same tile
// GEMMs over the same fp32 values. The reference dequantises the whole
// weight and runs the f32 kernel, whose GEMM blocks the sum differently from
// the tiled one, so the two agree to fp32 reassociation: 1e-5 relative to
// Σ|x||w| over the in = 200 terms.
TEST(Nf4OpsTest, DequantizingMatmulEqualsDequantizeThenMatmul) {
  const int n = 5, in = 200, out = 700;  // several tiles of rows; blocks straddle rows
  const std::vector<float> wf = Normal(int64_t{out} * in, 1), x = Normal(int64_t{n} * in, 2),
                           bias = Normal(out, 3), dy = Normal(int64_t{n} * out, 4);
  std::vector<uint8_t> w(static_cast<size_t>(DTypeBytes(DType::kDTypeNF4, int64_t{out} * in)));
  quant::QuantizeNf4(wf.data(), int64_t{out} * in, w.data());
  std::vector<float> wd(wf.size());
  quant::DequantizeNf4(w.data(), 0, int64_t{out} * in, wd.data());

  std::vector<float> y(n * out), y_ref(n * out);
  LinearForwardNf4(y.data(), x.data(), w.data(), bias.data(), n, in, out);
  LinearForward(y_ref.data(), x.data(), wd.data(), bias.data(), n, in, out);
  for (int i = 0; i < n; ++i) {
    for (int o = 0; o < out; ++o) {
      double mag = std::fabs(bias[o]);
      for (int k = 0; k < in; ++k) mag += std::fabs(x[i * in + k] * wd[o * in + k]);
      ASSERT_NEAR(y[i * out + o], y_ref[i * out + o], 1e-5 * mag) << i << "," << o;
    }
  }
  std::vector<float> dx(n * in, 0.5f), dx_ref(n * in, 0.5f), db(out, 0.0f), db_ref(out, 0.0f);
  LinearBackwardNf4(dx.data(), db.data(), dy.data(), w.data(), n, in, out);
  LinearBackward(dx_ref.data(), nullptr, db_ref.data(), dy.data(), x.data(), wd.data(), n, in, out);
  for (int i = 0; i < n * in; ++i) ASSERT_NEAR(dx[i], dx_ref[i], 1e-4) << i;  // |Σ| over 700 terms ~ 30
  for (int o = 0; o < out; ++o) ASSERT_NEAR(db[o], db_ref[o], 1e-5) << o;

  // Through the backend interface (the dispatch the model uses).
  Backend* cpu = FindBackend("cpu");
  ASSERT_NE(cpu, nullptr);
  EXPECT_TRUE(cpu->Supports(BackendOp::kBackendOpLinear, {DType::kDTypeF32, DType::kDTypeNF4}));
  EXPECT_FALSE(cpu->Supports(BackendOp::kBackendOpEmbedding, {DType::kDTypeNF4}));
  const Tensor wt{reinterpret_cast<float*>(w.data()), {out, in}, DType::kDTypeNF4};
  std::vector<float> y_b(n * out);
  cpu->LinearForward(y_b.data(), x.data(), wt, bias.data(), n);
  EXPECT_EQ(y_b, y);
}

}  // namespace
}  // namespace sheaf::ops
