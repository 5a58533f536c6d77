// Mixture LoRA: K experts over one frozen projection, mixed per row group.
//
// Legend as in ops.h, plus K experts, R lora rank per expert, G gate groups.
// The experts' factors are stored concatenated so that the K experts are one
// GEMM, not K:
//   a_cat [K*R, in]   rows [k*R, (k+1)*R) are expert k's A_k [R, in]
//   b_cat [out, K*R]  columns [k*R, (k+1)*R) are expert k's B_k [out, R]
//   gate  [G, K]      gate row g weighs rows [g*P, (g+1)*P) of x, with
//                     P = rows_per_group (P = T: one gate row per sample);
//                     the last group may be partial. null = every g_k = 1.
//
// Two mixing forms, both adding onto y (the frozen layer's output):
//   outputs:  y += s · Σ_k g_k (x A_kᵀ) B_kᵀ
//   weights:  y += s · (x A_uᵀ) B_uᵀ  with A_u = Σ_k g_k A_k, B_u = Σ_k g_k B_k
//             (RecLoRA's mixture: the product has cross terms g_j g_k B_k A_j,
//             so it is not the sum of the experts' outputs).
// Neither form materialises per-group weights. With xa = x a_catᵀ [N, K*R]
// (saved for backward) and xa_k its k-th block of R columns:
//   outputs:  y += s · xg b_catᵀ,  xg_k = g_k xa_k
//   weights:  u = Σ_k g_k xa_k [N, R] (= x A_uᵀ),  y += s · ug b_catᵀ,
//             ug_k = g_k u          (ug b_catᵀ = Σ_k g_k u B_kᵀ = u B_uᵀ)
// so both cost what one LoRA of rank K*R costs.
//
// K = 1 without a gate is plain LoRA (ops::LoraForward/LoraBackward), and this
// operator then makes exactly their GEMM calls, so results are bit-identical.
// The same holds for the outputs form with K > 1 and no gate (it is a LoRA of
// rank K*R).
//
// Dropout is not part of the operator: x is the (possibly masked) input, as
// for ops::LoraForward.
//
// Determinism: every output element is written by one thread in a fixed
// order (the gate gradient is summed per group in double, row by row), so
// results do not depend on the thread count. GEMMs are issued outside OpenMP
// regions (see ops.cc).
#ifndef SHEAF_OPS_CPU_LORA_MIX_H_
#define SHEAF_OPS_CPU_LORA_MIX_H_

#include <cstdint>

namespace sheaf::ops {

enum class LoraMixing {
  kLoraMixingOutputs,  // Σ_k g_k B_k A_k x
  kLoraMixingWeights,  // (Σ_k g_k B_k)(Σ_k g_k A_k) x
};

// The problem: shapes, weights and gate of one mixture-LoRA application to
// rows [0, n) of a layer input. Callers applying different mixtures to
// different row ranges pass offset pointers (x, y, gate) per range.
struct LoraMixArgs {
  int n = 0;            // N rows of x and y
  int in = 0;           // IN
  int out = 0;          // OUT
  int lora_rank = 0;    // R per expert
  int num_experts = 1;  // K
  float scale = 1.0f;   // s (alpha / R, or rsLoRA's, times any coefficient)
  const float* a_cat = nullptr;  // [K*R, in]
  const float* b_cat = nullptr;  // [out, K*R]
  const float* gate = nullptr;   // [num_groups(), K] or null (all ones)
  int rows_per_group = 1;        // P; read only when gate is set
  LoraMixing mixing = LoraMixing::kLoraMixingOutputs;

  int kr() const { return num_experts * lora_rank; }
  // ceil(n / rows_per_group); 1 when there is no gate.
  int num_groups() const;
  // True when the operator is a plain LoRA of rank kr() (no gate, and K = 1
  // or the outputs form): it then runs ops::LoraForward / LoraBackward.
  bool is_plain() const;
};

// Floats of scratch that LoraMixForward and LoraMixBackward need (the same
// buffer may serve both; it need not survive between the calls).
//   plain:    N*K*R (backward's dy b_cat)
//   outputs:  2*N*K*R
//   weights:  2*N*K*R + 2*N*R
int64_t LoraMixScratchFloats(const LoraMixArgs& args);

// y[N,OUT] += as above; xa[N,K*R] = x a_catᵀ is written (kept for backward).
void LoraMixForward(float* y, float* xa, float* scratch, const float* x,
                    const LoraMixArgs& args);

// Backward, ADDING into each non-null gradient (null = not needed / frozen):
//   dx[N,IN], da_cat[K*R,IN], db_cat[OUT,K*R], dgate[G,K].
// x and xa are the forward's input and saved xa. With e = dy b_cat [N,K*R]
// and e_k its blocks:
//   outputs:  db_cat += s · dyᵀ xg;  dxa_k = g_k e_k;
//             dgate[g,k] += s · Σ_{rows of g} <e_k, xa_k>
//   weights:  db_cat += s · dyᵀ ug;  du = Σ_k g_k e_k;  dxa_k = g_k du;
//             dgate[g,k] += s · Σ_{rows of g} (<e_k, u> + <du, xa_k>)
//   both:     dx += s · dxa a_cat;  da_cat += s · dxaᵀ x.
// (s stays in the GEMMs' alpha, as in ops::LoraBackward.)
void LoraMixBackward(float* dx, float* da_cat, float* db_cat, float* dgate,
                     float* scratch, const float* dy, const float* x,
                     const float* xa, const LoraMixArgs& args);

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_LORA_MIX_H_
