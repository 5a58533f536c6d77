// CPU loops of the optimizer (AdamW update, sum of squares, gradient
// scaling), moved from core/optimizer.cc unchanged. Compiled with
// -fno-math-errno -ffp-contract=off (ops/cpu/BUILD says why), apart from the
// other kernels whose flags must not change.
#ifndef SHEAF_OPS_CPU_OPTIMIZER_OPS_H_
#define SHEAF_OPS_CPU_OPTIMIZER_OPS_H_

#include <cstdint>
#include <span>

namespace sheaf::ops {

// One AdamW update of n independent elements (formula in core/backend.h,
// AdamWStepArgs); bitwise identical for any thread count.
void AdamWUpdate(float* __restrict p, const float* __restrict g, float* __restrict m,
                 float* __restrict v, int64_t n, float decay, float beta1,
                 float one_minus_beta1, float beta2, float one_minus_beta2, float step_size,
                 float inv_sqrt_bc2, float eps);

// Σ x² over n floats in double, in an order fixed by n alone.
double SumSquares(const float* x, int64_t n);
// partial[c] = SumSquares(chunks[c]), chunks in parallel.
void SumSquaresChunks(std::span<const std::span<const float>> chunks, double* partial);

// x *= scale over n values.
void Scale(float* __restrict x, int64_t n, float scale);

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_OPTIMIZER_OPS_H_
