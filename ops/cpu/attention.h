// Causal grouped-query attention whose saved state is linear in T: forward
// keeps only two fp32 statistics per (batch, head, query row) — the row's
// maximum score and the reciprocal of its softmax denominator, which together
// are its log-sum-exp — and backward recomputes the probabilities block by
// block from q, k and them (the flash-attention scheme). The [B, NH, T, T]
// probabilities of ops::AttentionForward (ops.h, kept as the reference) are
// never stored.
//
// Shapes as in ops.h: q [B,T,NH*HD], k and v [B,T,KVH*HD], query head h
// reads kv head h / (NH/KVH); out [B,T,NH*HD] = softmax(q kᵀ/sqrt(HD) +
// causal mask) v. stats [2, B, NH, T]: stats[0] the row maxima, stats[1] the
// reciprocal row sums.
//
// Tiling: query rows go in blocks of AttentionQueryBlock(T) = 64 rows; a
// block of rows [r0, r1) needs keys [0, r1) only. Per thread the kernels
// hold one block of scores (and in backward one of score gradients): 64 x T
// floats (1 MiB at T = 4096), freed when the call returns. The blocks are
// those of the reference kernel, and every GEMM and every float operation is
// the same as there, so (with the portable exp) outputs and gradients are bitwise those of
// ops::AttentionForward / ops::AttentionBackward (backward recomputes the
// scores with the forward's GEMM call and the probabilities with its float
// operations).
//
// Deterministic and independent of the thread count: forward runs one task
// per (batch, head), backward one per (batch, kv head) with the query heads
// of a group one after another, so dK/dV accumulate in head order.
// Backward ADDS into dq, dk, dv.
#ifndef SHEAF_OPS_CPU_ATTENTION_H_
#define SHEAF_OPS_CPU_ATTENTION_H_

#include <cstdint>

#include "ops/cpu/cpu_features.h"

namespace sheaf::ops {

// Floats of saved state: 2 · B · NH · T.
int64_t TiledAttentionSavedFloats(int B, int T, int NH);

// Rows per query block for a sequence of T (64; see attention.cc).
int AttentionQueryBlock(int T);

// isa: kPortable computes the softmax exponentials with std::exp (bitwise
// the reference kernel); kAvx512 with ExpAvx512 (vec_avx512.h, within 4 ulp
// per exponential), and must only be passed where CpuHasAvx512(). Forward
// and backward of one pass must use the same isa.
void TiledAttentionForward(float* out, float* stats, const float* q, const float* k,
                           const float* v, int B, int T, int NH, int KVH, int HD,
                           KernelIsa isa = ActiveKernelIsa());
void TiledAttentionBackward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                            const float* k, const float* v, const float* stats, int B, int T,
                            int NH, int KVH, int HD, KernelIsa isa = ActiveKernelIsa());

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_ATTENTION_H_
