// bf16 x bf16 GEMM with fp32 accumulation (compute: bf16 on the frozen
// path). Inputs are fp32 activations, rounded to bf16 (round to nearest
// even) as they are packed, and a frozen weight held in bf16 (used as is) or
// fp32 (rounded the same way):
//
//   C[M,N] = alpha · bf16(A)[M,K] · op(bf16(W)) + beta · C,  beta ∈ {0, 1}
//   trans_w: W stored [N, K] (forward x·Wᵀ); else W stored [K, N] (dX = dy·W)
//
// GemmBf16Avx512 runs AVX512_BF16 dot products (vdpbf16ps: two bf16
// products, exact in fp32, added to an fp32 accumulator per instruction) in
// a 12 x 32 register tile, as gemm_avx512 does for fp32; call it only when
// CpuHasAvx512Bf16(). Compiled in its own library with -mavx512bf16 (the
// rest of the build stays x86-64-v2). vdpbf16ps treats bf16 denormals as
// zero and flushes denormal results (it ignores MXCSR): values below 1e-38
// are outside what the frozen path computes with.
//
// Deterministic and independent of the thread count: each element of C is
// produced by one thread adding its K products in a fixed order.
#ifndef SHEAF_OPS_CPU_GEMM_BF16_H_
#define SHEAF_OPS_CPU_GEMM_BF16_H_

#include <stdint.h>

namespace sheaf::ops {

// w_bf16: the weight's raw bf16 bits, or null and w_f32 given.
void GemmBf16Avx512(bool trans_w, int M, int N, int K, float alpha, const float* a, int lda,
                    const uint16_t* w_bf16, const float* w_f32, int ldw, float beta, float* c,
                    int ldc);

// The same product on AMX tiles (tdpbf16ps: per element, the bf16 pairs'
// exact products added in order into fp32, as vdpbf16ps does, in 32 x 32
// blocks of C). Call only when CpuHasAmxBf16() (the process then holds the
// kernel's permission for the tile state).
void GemmBf16Amx(bool trans_w, int M, int N, int K, float alpha, const float* a, int lda,
                 const uint16_t* w_bf16, const float* w_f32, int ldw, float beta, float* c,
                 int ldc);

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_GEMM_BF16_H_
