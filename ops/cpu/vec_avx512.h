// AVX-512 variants of the exp-bound elementwise kernels, compiled with
// AVX-512 flags in their own library (:vec_avx512) and called only when
// ActiveKernelIsa() is kAvx512 (cpu_features.h). The portable loops call
// std::exp one value at a time (GCC does not vectorise it without
// -ffast-math); these evaluate 16 values per instruction.
//
// ExpAvx512: e^x by range reduction x = n·ln2 + r, |r| <= ln2/2, a degree-7
// Taylor polynomial for e^r (truncation < 1e-8 relative) and scalef by 2^n;
// relative error within 4 ulp (2.4e-7) of the exact value over
// [-87, 88] (tested against double exp); below -87.3 the result goes to
// subnormals and 0 like expf; x = -inf gives 0.
#ifndef SHEAF_OPS_CPU_VEC_AVX512_H_
#define SHEAF_OPS_CPU_VEC_AVX512_H_

#include <cstdint>

namespace sheaf::ops {

// out[i] = e^(x[i] − shift) over n values (out may alias x); returns the sum
// of the outputs (added in a fixed order for a given n).
float ExpShiftSumAvx512(float* out, const float* x, int64_t n, float shift);
// out[i] = e^x[i].
void ExpAvx512(float* out, const float* x, int64_t n);
// SwiGLU over n values as ops.h SwiGluForward / SwiGluBackward, with
// sigmoid(g) = 1 / (1 + e^−g) from ExpAvx512.
void SwiGluForwardAvx512(float* h, const float* gate, const float* up, int64_t n);
void SwiGluBackwardAvx512(float* dgate, float* dup, const float* dh, const float* gate,
                          const float* up, int64_t n);

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_VEC_AVX512_H_
