// Mixture LoRA kernels. See lora_mix.h for the contract and the algebra.
//
// The GEMMs go through ops::Matmul (plain LoRA through ops::LoraForward /
// LoraBackward themselves), issued from the calling thread; the gate
// products are row-parallel OpenMP loops in which each thread owns whole rows.
#include "ops/cpu/lora_mix.h"

#include <cstdio>
#include <cstdlib>

#include "ops/cpu/kernel_util.h"
#include "ops/cpu/ops.h"

namespace sheaf::ops {
namespace {


void CheckArgs(const LoraMixArgs& a) {
  SHEAF_OPS_CHECK(a.n >= 0 && a.in >= 0 && a.out >= 0);
  SHEAF_OPS_CHECK(a.lora_rank >= 1 && a.num_experts >= 1);
  SHEAF_OPS_CHECK(a.gate == nullptr || a.rows_per_group >= 1);
}

// The gate weights of row i: gate row i / P, or all ones without a gate.
inline const float* GateRow(const LoraMixArgs& a, int i) {
  return a.gate + static_cast<int64_t>(i / a.rows_per_group) * a.num_experts;
}

bool UseThreads(const LoraMixArgs& a) {
  return static_cast<int64_t>(a.n) * a.kr() >= kMinParallelWork;
}

// dst[i, k*R + r] = g(i, k) · src[i, k*R + r]. dst may alias src.
void ScaleBlocksByGate(float* dst, const float* src, const LoraMixArgs& a) {
  const int R = a.lora_rank, K = a.num_experts, KR = a.kr();
#pragma omp parallel for schedule(static) if (UseThreads(a))
  for (int i = 0; i < a.n; ++i) {
    const float* g = a.gate != nullptr ? GateRow(a, i) : nullptr;
    const float* s = src + static_cast<int64_t>(i) * KR;
    float* d = dst + static_cast<int64_t>(i) * KR;
    for (int k = 0; k < K; ++k) {
      const float gk = g != nullptr ? g[k] : 1.0f;
#pragma omp simd
      for (int r = 0; r < R; ++r) d[k * R + r] = gk * s[k * R + r];
    }
  }
}

// u[i, r] = Σ_k g(i, k) · src[i, k*R + r]  (k in increasing order).
void ReduceBlocksByGate(float* u, const float* src, const LoraMixArgs& a) {
  const int R = a.lora_rank, K = a.num_experts, KR = a.kr();
#pragma omp parallel for schedule(static) if (UseThreads(a))
  for (int i = 0; i < a.n; ++i) {
    const float* g = a.gate != nullptr ? GateRow(a, i) : nullptr;
    const float* s = src + static_cast<int64_t>(i) * KR;
    float* ui = u + static_cast<int64_t>(i) * R;
    for (int r = 0; r < R; ++r) ui[r] = 0.0f;
    for (int k = 0; k < K; ++k) {
      const float gk = g != nullptr ? g[k] : 1.0f;
#pragma omp simd
      for (int r = 0; r < R; ++r) ui[r] += gk * s[k * R + r];
    }
  }
}

// dst[i, k*R + r] = g(i, k) · u[i, r].
void ExpandByGate(float* dst, const float* u, const LoraMixArgs& a) {
  const int R = a.lora_rank, K = a.num_experts, KR = a.kr();
#pragma omp parallel for schedule(static) if (UseThreads(a))
  for (int i = 0; i < a.n; ++i) {
    const float* g = a.gate != nullptr ? GateRow(a, i) : nullptr;
    const float* ui = u + static_cast<int64_t>(i) * R;
    float* d = dst + static_cast<int64_t>(i) * KR;
    for (int k = 0; k < K; ++k) {
      const float gk = g != nullptr ? g[k] : 1.0f;
#pragma omp simd
      for (int r = 0; r < R; ++r) d[k * R + r] = gk * ui[r];
    }
  }
}

// dgate[g, k] += s · Σ_{rows i of group g} row_dot(i, k), summed in double
// in row order. Parallel over groups: each group's entries have one writer.
template <typename RowDot>
void AddGateGrad(float* dgate, const LoraMixArgs& a, RowDot row_dot) {
  const int K = a.num_experts, P = a.rows_per_group, G = a.num_groups();
#pragma omp parallel for schedule(static) if (UseThreads(a) && G > 1)
  for (int g = 0; g < G; ++g) {
    const int i0 = g * P;
    const int i1 = i0 + P < a.n ? i0 + P : a.n;
    for (int k = 0; k < K; ++k) {
      double acc = 0.0;
      for (int i = i0; i < i1; ++i) acc += row_dot(i, k);
      dgate[static_cast<int64_t>(g) * K + k] +=
          static_cast<float>(static_cast<double>(a.scale) * acc);
    }
  }
}

// <p[0, R), q[0, R)> in double.
inline double BlockDot(const float* p, const float* q, int R) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int r = 0; r < R; ++r) sum += static_cast<double>(p[r]) * q[r];
  return sum;
}

}  // namespace

int LoraMixArgs::num_groups() const {
  if (gate == nullptr) return 1;
  return (n + rows_per_group - 1) / rows_per_group;
}

bool LoraMixArgs::is_plain() const {
  return gate == nullptr &&
         (num_experts == 1 || mixing == LoraMixing::kLoraMixingOutputs);
}

int64_t LoraMixScratchFloats(const LoraMixArgs& a) {
  const int64_t nkr = static_cast<int64_t>(a.n) * a.kr();
  if (a.is_plain()) return nkr;
  if (a.mixing == LoraMixing::kLoraMixingOutputs) return 2 * nkr;
  return 2 * nkr + 2 * static_cast<int64_t>(a.n) * a.lora_rank;
}

void LoraMixForward(float* y, float* xa, float* scratch, const float* x,
                    const LoraMixArgs& a) {
  CheckArgs(a);
  const int KR = a.kr();
  if (a.is_plain()) {
    LoraForward(y, xa, x, a.a_cat, a.b_cat, a.scale, a.n, a.in, a.out, KR);
    return;
  }
  const int64_t nkr = static_cast<int64_t>(a.n) * KR;
  // xa = x a_catᵀ; m = xg (outputs) or ug (weights); y += s · m b_catᵀ.
  Matmul(xa, x, a.a_cat, a.n, KR, a.in, false, true);
  float* m = scratch;
  if (a.mixing == LoraMixing::kLoraMixingOutputs) {
    ScaleBlocksByGate(m, xa, a);
  } else {
    float* u = scratch + 2 * nkr;
    ReduceBlocksByGate(u, xa, a);
    ExpandByGate(m, u, a);
  }
  Matmul(y, m, a.b_cat, a.n, a.out, KR, false, true, a.scale, 1.0f);
}

void LoraMixBackward(float* dx, float* da_cat, float* db_cat, float* dgate,
                     float* scratch, const float* dy, const float* x,
                     const float* xa, const LoraMixArgs& a) {
  CheckArgs(a);
  SHEAF_OPS_CHECK(dgate == nullptr || a.gate != nullptr);
  const int R = a.lora_rank, KR = a.kr();
  if (a.is_plain()) {
    LoraBackward(dx, da_cat, db_cat, scratch, dy, x, xa, a.a_cat, a.b_cat,
                 a.scale, a.n, a.in, a.out, KR);
    return;
  }
  const int64_t nkr = static_cast<int64_t>(a.n) * KR;
  const bool weights = a.mixing == LoraMixing::kLoraMixingWeights;
  float* e = scratch;          // [N, KR]: dy b_cat, then dxa in place
  float* m = scratch + nkr;    // [N, KR]: xg or ug (recomputed)
  float* u = scratch + 2 * nkr;                           // [N, R] (weights)
  float* du = u + static_cast<int64_t>(a.n) * R;          // [N, R] (weights)
  if (db_cat != nullptr || (weights && dgate != nullptr)) {
    if (weights) {
      ReduceBlocksByGate(u, xa, a);
      ExpandByGate(m, u, a);
    } else {
      ScaleBlocksByGate(m, xa, a);
    }
  }
  if (db_cat != nullptr) {
    Matmul(db_cat, dy, m, a.out, KR, a.n, true, false, a.scale, 1.0f);
  }
  if (dx == nullptr && da_cat == nullptr && dgate == nullptr) return;
  Matmul(e, dy, a.b_cat, a.n, KR, a.out, false, false);
  if (!weights) {
    if (dgate != nullptr) {
      AddGateGrad(dgate, a, [&](int i, int k) {
        const int64_t off = static_cast<int64_t>(i) * KR + k * R;
        return BlockDot(e + off, xa + off, R);
      });
    }
    ScaleBlocksByGate(e, e, a);  // dxa_k = g_k e_k
  } else {
    ReduceBlocksByGate(du, e, a);  // du = Σ_k g_k e_k
    if (dgate != nullptr) {
      AddGateGrad(dgate, a, [&](int i, int k) {
        const int64_t off = static_cast<int64_t>(i) * KR + k * R;
        const int64_t row = static_cast<int64_t>(i) * R;
        return BlockDot(e + off, u + row, R) + BlockDot(du + row, xa + off, R);
      });
    }
    ExpandByGate(e, du, a);  // dxa_k = g_k du
  }
  if (dx != nullptr) {
    Matmul(dx, e, a.a_cat, a.n, a.in, KR, false, false, a.scale, 1.0f);
  }
  if (da_cat != nullptr) {
    Matmul(da_cat, e, x, KR, a.in, a.n, true, false, a.scale, 1.0f);
  }
}

}  // namespace sheaf::ops
