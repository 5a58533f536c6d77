#include "ops/cpu/optimizer_ops.h"

#include <cmath>

namespace sheaf::ops {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMinElements = int64_t{1} << 15;

}  // namespace

// Eight independent lanes, combined in a fixed order, let the compiler
// vectorise without reassociating (which it may not do without -ffast-math)
// and keep the result independent of the machine's vector width.
double SumSquares(const float* x, int64_t n) {
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const double xj = x[i + j];
      lanes[j] += xj * xj;
    }
  }
  double tail = 0.0;
  for (; i < n; ++i) {
    const double xi = x[i];
    tail += xi * xi;
  }
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])) + tail;
}

void SumSquaresChunks(std::span<const std::span<const float>> chunks, double* partial) {
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static) if (num_chunks > 1)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const std::span<const float> chunk = chunks[static_cast<size_t>(c)];
    partial[c] = SumSquares(chunk.data(), static_cast<int64_t>(chunk.size()));
  }
}

// All scalars arrive precomputed so that the loop body is pure float
// arithmetic on independent elements.
void AdamWUpdate(float* __restrict p, const float* __restrict g, float* __restrict m,
                 float* __restrict v, int64_t n, float decay, float beta1,
                 float one_minus_beta1, float beta2, float one_minus_beta2, float step_size,
                 float inv_sqrt_bc2, float eps) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = beta1 * m[i] + one_minus_beta1 * gi;
    const float vi = beta2 * v[i] + one_minus_beta2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) * inv_sqrt_bc2 + eps;
    p[i] = p[i] * decay - step_size * mi / denom;
  }
}

void Scale(float* __restrict x, int64_t n, float scale) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

}  // namespace sheaf::ops
