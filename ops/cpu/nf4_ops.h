// Linear layers over a frozen NF4 weight (core/dtype.h layout; QLoRAM's
// quantised base), in fp32 tile by tile: a tile of W's rows is dequantised
// into a per-thread buffer and multiplied, so no dequantised copy of a whole
// layer is ever kept. Results equal dequantise-then-linear (the same tile
// GEMMs as the bf16 path).
#ifndef SHEAF_OPS_CPU_NF4_OPS_H_
#define SHEAF_OPS_CPU_NF4_OPS_H_

#include <cstdint>

namespace sheaf::ops {

// y[n, out] = x[n, in] wᵀ + bias (bias may be null); w NF4 [out, in].
void LinearForwardNf4(float* y, const float* x, const uint8_t* w_nf4, const float* bias, int n,
                      int in, int out);
// dx += dy w (dx may be null); dbias += Σ_rows dy (if dbias). No dw: NF4
// weights are frozen.
void LinearBackwardNf4(float* dx, float* dbias, const float* dy, const uint8_t* w_nf4, int n,
                       int in, int out);

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_NF4_OPS_H_
