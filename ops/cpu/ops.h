// CPU kernels for the decoder: GEMMs through OpenBLAS, everything else as
// plain loops that the compiler vectorises, parallelised with OpenMP.
//
// Legend (as in llm.c): B batch, T time, C channels, V vocab, NH query heads,
// KVH key/value heads, HD head dim, I MLP intermediate size, R lora rank,
// N = B*T rows. All tensors are fp32, row-major, contiguous, except the
// frozen bf16 weights of the *Bf16 variants. ops/cpu/cpu_backend.h exposes
// these kernels as core's Backend; model code calls them only through it.
//
// Conventions
//  - Outputs first, inputs next, plain dimensions last.
//  - Every *Backward ADDS into its gradient outputs (d-inputs and d-weights),
//    so callers zero gradient buffers once per step and gradients of shared
//    inputs (residual stream, tied embeddings, accumulation over micro-batches)
//    compose without extra copies. A null d-weight pointer means "frozen":
//    that gradient is neither computed nor stored.
//  - Forward functions overwrite their outputs unless stated otherwise.
#ifndef SHEAF_OPS_CPU_OPS_H_
#define SHEAF_OPS_CPU_OPS_H_

#include <cstdint>

#include "ops/cpu/gemm_avx512.h"  // GemmSegment

namespace sheaf::ops {

// Threads used by OpenBLAS and by our OpenMP loops. n <= 0 means "all cores".
// The first call prints the kernel choice (cpu_features.h) to stderr.
void SetNumThreads(int n);
int NumThreads();

// Call first thing in main(). When OMP_WAIT_POLICY is unset, sets it to
// PASSIVE and re-executes the program (libgomp reads it only at start-up).
// Why: with the default (spin, then sleep) policy, threads that wait at a
// barrier spin on their core; when the machine is shared (other jobs, or
// several MPI ranks per node), a descheduled thread stalls its spinning
// peers for a whole time slice. Measured on 2 busy cores: a LoRA step with 2
// threads ran at 0.27-0.54x the 1-thread speed with spinning and about 0.9x
// with passive waiting. An explicit OMP_WAIT_POLICY is respected.
void UsePassiveOmpWaitPolicy(char** argv);

// out[M,N] = alpha * op(a) @ op(b) + beta * out, op(a) is [M,K], op(b) [K,N].
// trans_a: a is stored [K,M]; trans_b: b is stored [N,K].
void Matmul(float* out, const float* a, const float* b, int M, int N, int K,
            bool trans_a, bool trans_b, float alpha = 1.0f, float beta = 0.0f);

// Row-major C[M,N] = alpha * op(A) op(B) + beta * C with explicit leading
// dimensions (for sub-blocks of larger matrices). Degenerate shapes (M, N or
// K <= 0) are no-ops or a beta-scaling, never a BLAS error.
void Gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
          const float* a, int lda, const float* b, int ldb, float beta,
          float* c, int ldc);

// Grouped GEMMs for fused projections (segments as in gemm_avx512.h):
// SplitN: C_s[M, n_s] = alpha * A[M,K] @ B_s^T + beta * C_s over nseg
//   segments (N = sum n_s), A read once; SplitK: C[M,N] = alpha *
//   sum_s A_s[M, k_s] @ B_s[k_s, N] + beta * C (K = sum k_s). On the
//   AVX-512 path one GEMM; portable: one Gemm per segment (SplitK adds them
//   into C in segment order).
void GemmSplitN(int M, int N, int K, float alpha, const float* a, int lda,
                const GemmSegment* b_rows, const GemmSegment* c_cols, int nseg,
                float beta);
void GemmSplitK(int M, int N, int K, float alpha, const GemmSegment* a_cols,
                const GemmSegment* b_rows, int nseg, float beta, float* c, int ldc);

// y[N,OUT] = x[N,IN] @ w[OUT,IN]^T + bias[OUT] (bias may be null).
void LinearForward(float* y, const float* x, const float* w, const float* bias,
                   int n, int in, int out);
// dx += dy @ w; dw += dy^T @ x (if dw); dbias += sum_n dy (if dbias).
// dx may be null (e.g. the first layer's input needs no gradient).
void LinearBackward(float* dx, float* dw, float* dbias, const float* dy,
                    const float* x, const float* w, int n, int in, int out);

// The same with a frozen bf16 weight (w16 holds the raw bf16 bits of
// w[OUT,IN]): computed in fp32 tile by tile (a block of W's rows is widened
// to fp32, multiplied, and the next block reuses the buffer), so the weight
// is never widened whole. There is no dw: bf16 weights are frozen.
void LinearForwardBf16(float* y, const float* x, const uint16_t* w16,
                       const float* bias, int n, int in, int out);
void LinearBackwardBf16(float* dx, float* dbias, const float* dy,
                        const uint16_t* w16, int n, int in, int out);
// compute: bf16 (frozen matmuls): as LinearForward / LinearBackward without
// dw, with x (dy) and the weight rounded to bf16 (nearest even) and fp32
// accumulation. The weight is w16 (raw bf16 bits, used as is) or w32 (fp32,
// rounded). dbias sums the unrounded dy. AVX512_BF16 dot products
// (gemm_bf16.h) when Bf16DotActive(), else a portable path: the rounded
// operands in the fp32 GEMM (same products, exact; sums in another order).
bool Bf16DotActive();
void LinearForwardBf16Compute(float* y, const float* x, const uint16_t* w16,
                              const float* w32, const float* bias, int n, int in,
                              int out);
void LinearBackwardBf16Compute(float* dx, float* dbias, const float* dy,
                               const uint16_t* w16, const float* w32, int n,
                               int in, int out);
// fp32 values rounded to bf16 precision (nearest even), as fp32, over n.
void RoundToBf16(float* out, const float* in, int64_t n);
// bf16 bits -> fp32 (exact) over n values.
void WidenBf16(float* out, const uint16_t* in, int64_t n);

// LoRA on rows [0, n) of a frozen linear layer:
//   xa[N,R] = x @ a^T;  y[N,OUT] += scale * xa @ b^T
// a is [R,IN], b is [OUT,R]. xa is kept for backward. Callers that apply
// different adapters to different rows of one batch call this per row range
// with offset pointers; x is the (possibly dropout-masked) layer input.
void LoraForward(float* y, float* xa, const float* x, const float* a,
                 const float* b, float scale, int n, int in, int out, int r);
// With g = dy @ b (scratch_dyb [N,R], overwritten):
//   dx += scale * g @ a;  da += scale * g^T @ x;  db += scale * dy^T @ xa.
// dx/da/db may each be null.
void LoraBackward(float* dx, float* da, float* db, float* scratch_dyb,
                  const float* dy, const float* x, const float* xa,
                  const float* a, const float* b, float scale, int n, int in,
                  int out, int r);

// out[N,C] = wte[tokens[n], :]. Tokens must be in [0, V) (checked by callers).
void EmbeddingForward(float* out, const int32_t* tokens, const float* wte,
                      int n, int C);
// The same from a bf16 table (rows widened to fp32, exactly).
void EmbeddingForwardBf16(float* out, const int32_t* tokens,
                          const uint16_t* wte16, int n, int C);
// dwte[tokens[n], :] += dout[n, :].
void EmbeddingBackward(float* dwte, const float* dout, const int32_t* tokens,
                       int n, int C);

// RMSNorm (Llama): rstd = 1/sqrt(mean(x^2) + eps); out = x * rstd * w.
void RmsNormForward(float* out, float* rstd, const float* x, const float* w,
                    int n, int C, float eps);
void RmsNormBackward(float* dx, float* dw, const float* dout, const float* x,
                     const float* w, const float* rstd, int n, int C);

// Rotary embedding in Hugging Face's rotate_half layout: for each head vector
// v of length HD and half = HD/2, with angle(t, i) = t * theta^(-2i/HD):
//   out[i]      = v[i] cos - v[i+half] sin
//   out[i+half] = v[i+half] cos + v[i] sin        (i < half)
// cos/sin tables are [T, HD/2] (see RopeTables). Position of row (b,t) is t.
// x is [B,T,H*HD]; out may alias x.
void RopeTables(float* cos, float* sin, int T, int HD, float theta);
void RopeForward(float* out, const float* x, const float* cos,
                 const float* sin, int B, int T, int H, int HD);
void RopeBackward(float* dx, const float* dout, const float* cos,
                  const float* sin, int B, int T, int H, int HD);

// Causal grouped-query attention. q [B,T,NH*HD], k and v [B,T,KVH*HD],
// query head h reads kv head h / (NH/KVH). probs [B,NH,T,T] holds the
// softmax (kept for backward; entries above the diagonal are 0).
// out [B,T,NH*HD] = softmax(q k^T / sqrt(HD) + causal mask) v.
void AttentionForward(float* out, float* probs, const float* q, const float* k,
                      const float* v, int B, int T, int NH, int KVH, int HD);
void AttentionBackward(float* dq, float* dk, float* dv, const float* dout,
                       const float* q, const float* k, const float* v,
                       const float* probs, int B, int T, int NH, int KVH,
                       int HD);

// SwiGLU: h = silu(gate) * up, elementwise over n values.
void SwiGluForward(float* h, const float* gate, const float* up, int64_t n);
void SwiGluBackward(float* dgate, float* dup, const float* dh,
                    const float* gate, const float* up, int64_t n);

// out = a + b over n values (out may alias a or b).
void Add(float* out, const float* a, const float* b, int64_t n);
// out = a * b; out += a * b (elementwise over n values).
void Mul(float* out, const float* a, const float* b, int64_t n);
void MulAdd(float* out, const float* a, const float* b, int64_t n);

// Counter-based inverted-dropout mask (the formula is in core/backend.h,
// Backend::DropoutMask): element i depends on (seed, stream, first_index + i)
// only, so it is identical on resume and for any thread count.
void DropoutMask(float* mask, int64_t n, int64_t first_index, float p,
                 uint64_t seed, int stream);

// Softmax cross-entropy over logits [N,V] with integer targets; rows whose
// target == ignore_index are skipped. Adds the summed loss over valid rows to
// *loss_sum and their count to *n_valid. When dlogits is non-null it is
// OVERWRITTEN (not accumulated: logits feed nothing else) with
// grad_scale * (softmax - onehot) on valid rows and 0 on ignored rows;
// pass grad_scale = 1 / (valid tokens in the whole optimizer step) for a mean.
// Targets outside [0,V) other than ignore_index are a programmer error.
void CrossEntropy(float* dlogits, double* loss_sum, int64_t* n_valid,
                  const float* logits, const int32_t* targets, int N, int V,
                  int ignore_index, float grad_scale);

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_OPS_H_
