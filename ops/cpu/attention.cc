// Tiled causal attention with per-row softmax statistics (see attention.h).
//
// Per (b, h) and query block rows [r0, r1), scale = 1/sqrt(HD):
//   forward   S = scale · Q_blk K[0,r1)ᵀ;  m_t = max_u S_tu;  e = exp(S − m);
//             l_t = 1 / Σ_u e_tu;  P = e · l;  O_blk = P V[0,r1)
//             and (m_t, l_t) are saved;
//   backward  S as in forward (the same GEMM call, so the same bits);
//             P = exp(S − m) · l (the same float operations as forward);
//             dP = dO_blk V[0,r1)ᵀ;  dS = P ∘ (dP − rowsum(dP ∘ P)) · scale;
//             dQ_blk += dS K;  dK += dSᵀ Q_blk;  dV += Pᵀ dO_blk.
// rowsum(dP ∘ P) = rowsum(dO ∘ O), the flash-attention D term: computed
// from the block of P in hand, so O need not be saved.
//
// GEMMs are issued from inside the OpenMP region: the OpenMP build of
// OpenBLAS runs them single-threaded there (see ops.cc's threading notes).
#include "ops/cpu/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/kernel_util.h"
#include "ops/cpu/vec_avx512.h"

namespace sheaf::ops {

int64_t TiledAttentionSavedFloats(int B, int T, int NH) {
  return int64_t{2} * B * NH * T;
}

int AttentionQueryBlock(int T) {
  // 64 rows, as the reference kernel (ops.cc kAttnBlock), for every T.
  // Shorter blocks for long T (to keep a block of scores in L2) were
  // measured slower: at T = 4096, 16-row blocks gave 0.73k tokens per
  // CPU-second on the bench model against 0.92k with 64 rows (OpenBLAS is
  // inefficient at M = 16, HD = 32), and the scratch stays small either way.
  (void)T;
  return 64;
}

void TiledAttentionForward(float* out, float* stats, const float* q, const float* k,
                           const float* v, int B, int T, int NH, int KVH, int HD,
                           KernelIsa isa) {
  SHEAF_OPS_CHECK(KVH > 0 && NH % KVH == 0);
  const bool vector_exp = isa == KernelIsa::kAvx512;
  if (B == 0 || T == 0 || NH == 0) return;
  const int group = NH / KVH;
  const int q_stride = NH * HD;
  const int kv_stride = KVH * HD;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int block = AttentionQueryBlock(T);
  float* row_max = stats;
  float* row_inv = stats + int64_t{B} * NH * T;
  const bool parallel = int64_t{B} * NH * T * T * HD >= kMinParallelWork;
#pragma omp parallel if (parallel)
  {
    // One block of scores, ld T (as the reference's probs rows).
    std::vector<float> s(static_cast<size_t>(block) * T);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < NH; ++h) {
        const int kvh = h / group;
        const float* qh = q + int64_t{b} * T * q_stride + int64_t{h} * HD;
        const float* kg = k + int64_t{b} * T * kv_stride + int64_t{kvh} * HD;
        const float* vg = v + int64_t{b} * T * kv_stride + int64_t{kvh} * HD;
        float* oh = out + int64_t{b} * T * q_stride + int64_t{h} * HD;
        const int64_t stat0 = (int64_t{b} * NH + h) * T;
        for (int r0 = 0; r0 < T; r0 += block) {
          const int r1 = std::min(T, r0 + block), rows = r1 - r0;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r1, HD, scale,
                      qh + int64_t{r0} * q_stride, q_stride, kg, kv_stride, 0.0f, s.data(), T);
          for (int t = r0; t < r1; ++t) {
            float* row = s.data() + int64_t{t - r0} * T;
            float max_score = -std::numeric_limits<float>::infinity();
            for (int tk = 0; tk <= t; ++tk) max_score = std::max(max_score, row[tk]);
            float sum = 0.0f;
            if (vector_exp) {
              sum = ExpShiftSumAvx512(row, row, t + 1, max_score);
            } else {
              for (int tk = 0; tk <= t; ++tk) {
                row[tk] = std::exp(row[tk] - max_score);
                sum += row[tk];
              }
            }
            const float inv_sum = 1.0f / sum;
#pragma omp simd
            for (int tk = 0; tk <= t; ++tk) row[tk] *= inv_sum;
            std::fill(row + t + 1, row + r1, 0.0f);
            row_max[stat0 + t] = max_score;
            row_inv[stat0 + t] = inv_sum;
          }
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HD, r1, 1.0f, s.data(), T,
                      vg, kv_stride, 0.0f, oh + int64_t{r0} * q_stride, q_stride);
        }
      }
    }
  }
}

void TiledAttentionBackward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                            const float* k, const float* v, const float* stats, int B, int T,
                            int NH, int KVH, int HD, KernelIsa isa) {
  SHEAF_OPS_CHECK(KVH > 0 && NH % KVH == 0);
  const bool vector_exp = isa == KernelIsa::kAvx512;
  if (B == 0 || T == 0 || NH == 0) return;
  const int group = NH / KVH;
  const int q_stride = NH * HD;
  const int kv_stride = KVH * HD;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int block = AttentionQueryBlock(T);
  const float* row_max = stats;
  const float* row_inv = stats + int64_t{B} * NH * T;
  const bool parallel = int64_t{B} * NH * T * T * HD >= kMinParallelWork;
#pragma omp parallel if (parallel)
  {
    // The recomputed block of P (ld T, as forward) and of dP / dS (ld r1).
    std::vector<float> p(static_cast<size_t>(block) * T);
    std::vector<float> ds(static_cast<size_t>(block) * T);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b) {
      for (int kvh = 0; kvh < KVH; ++kvh) {
        for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
          const int64_t q_off = int64_t{b} * T * q_stride + int64_t{h} * HD;
          const int64_t kv_off = int64_t{b} * T * kv_stride + int64_t{kvh} * HD;
          const int64_t stat0 = (int64_t{b} * NH + h) * T;
          for (int r0 = 0; r0 < T; r0 += block) {
            const int r1 = std::min(T, r0 + block), rows = r1 - r0;
            const int64_t qr = q_off + int64_t{r0} * q_stride;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r1, HD, scale, q + qr,
                        q_stride, k + kv_off, kv_stride, 0.0f, p.data(), T);
            for (int t = r0; t < r1; ++t) {
              float* row = p.data() + int64_t{t - r0} * T;
              const float max_score = row_max[stat0 + t], inv_sum = row_inv[stat0 + t];
              if (vector_exp) {
                ExpShiftSumAvx512(row, row, t + 1, max_score);
              } else {
                for (int tk = 0; tk <= t; ++tk) row[tk] = std::exp(row[tk] - max_score);
              }
#pragma omp simd
              for (int tk = 0; tk <= t; ++tk) row[tk] *= inv_sum;
              std::fill(row + t + 1, row + r1, 0.0f);
            }
            // dP for rows [r0, r1), keys [0, r1) (ld r1).
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r1, HD, 1.0f, dout + qr,
                        q_stride, v + kv_off, kv_stride, 0.0f, ds.data(), r1);
            for (int t = r0; t < r1; ++t) {
              float* d = ds.data() + int64_t{t - r0} * r1;
              const float* pr = p.data() + int64_t{t - r0} * T;
              float rowsum = 0.0f;
#pragma omp simd reduction(+ : rowsum)
              for (int tk = 0; tk <= t; ++tk) rowsum += d[tk] * pr[tk];
#pragma omp simd
              for (int tk = 0; tk <= t; ++tk) d[tk] = pr[tk] * (d[tk] - rowsum) * scale;
              std::fill(d + t + 1, d + r1, 0.0f);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HD, r1, 1.0f, ds.data(),
                        r1, k + kv_off, kv_stride, 1.0f, dq + qr, q_stride);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, HD, rows, 1.0f, ds.data(), r1,
                        q + qr, q_stride, 1.0f, dk + kv_off, kv_stride);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, HD, rows, 1.0f, p.data(), T,
                        dout + qr, q_stride, 1.0f, dv + kv_off, kv_stride);
          }
        }
      }
    }
  }
}

}  // namespace sheaf::ops
