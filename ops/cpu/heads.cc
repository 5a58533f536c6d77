// Selected-rows head. See heads.h for the contract.
//
// Forward gathers the M rows of h and the J rows of W, multiplies them into
// [M, J] logits (one GEMM) and runs ops::CrossEntropy over the J columns;
// backward gathers again (scratch need not survive), forms dW_sel and dh_sel
// by GEMM and scatters them back by index.
#include "ops/cpu/heads.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ops/cpu/kernel_util.h"
#include "ops/cpu/ops.h"

namespace sheaf::ops {
namespace {


void CheckArgs(const SelectedRowsHeadArgs& a) {
  SHEAF_OPS_CHECK(a.n >= 0 && a.C >= 0 && a.V >= 0);
  SHEAF_OPS_CHECK(a.num_rows >= 0 && a.num_cols >= 1);
  for (int m = 0; m < a.num_rows; ++m) {
    SHEAF_OPS_CHECK(a.rows[m] >= 0 && a.rows[m] < a.n);
  }
  for (int j = 0; j < a.num_cols; ++j) {
    SHEAF_OPS_CHECK(a.cols[j] >= 0 && a.cols[j] < a.V);
  }
}

}  // namespace

void GatherRows(float* out, const float* src, const int32_t* idx, int M,
                int C) {
  const bool use_threads = static_cast<int64_t>(M) * C >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
  for (int m = 0; m < M; ++m) {
    std::memcpy(out + static_cast<int64_t>(m) * C,
                src + static_cast<int64_t>(idx[m]) * C, sizeof(float) * C);
  }
}

void ScatterAddRows(float* dst, const float* src, const int32_t* idx, int M,
                    int C) {
  // Repeated indices hit the same row, so threads split the columns.
  const int num_blocks = (C + kColumnBlock - 1) / kColumnBlock;
  const bool use_threads = static_cast<int64_t>(M) * C >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
  for (int blk = 0; blk < num_blocks; ++blk) {
    const int c0 = blk * kColumnBlock;
    const int width = std::min(kColumnBlock, C - c0);
    for (int m = 0; m < M; ++m) {
      const float* s = src + static_cast<int64_t>(m) * C + c0;
      float* d = dst + static_cast<int64_t>(idx[m]) * C + c0;
#pragma omp simd
      for (int j = 0; j < width; ++j) d[j] += s[j];
    }
  }
}

int64_t SelectedRowsHeadScratchFloats(const SelectedRowsHeadArgs& a) {
  return (static_cast<int64_t>(a.num_rows) + a.num_cols +
          std::max(a.num_rows, a.num_cols)) *
         a.C;
}

void SelectedRowsHeadForward(float* logits, float* dlogits, double* loss_sum,
                             int64_t* n_valid, float* scratch, const float* h,
                             const float* w, const SelectedRowsHeadArgs& a,
                             float grad_scale) {
  CheckArgs(a);
  const int M = a.num_rows, J = a.num_cols;
  float* hs = scratch;                                // [M, C]
  float* ws = scratch + static_cast<int64_t>(M) * a.C;  // [J, C]
  GatherRows(hs, h, a.rows, M, a.C);
  GatherRows(ws, w, a.cols, J, a.C);
  Matmul(logits, hs, ws, M, J, a.C, false, true);
  CrossEntropy(dlogits, loss_sum, n_valid, logits, a.targets, M, J,
               a.ignore_index, grad_scale);
}

void SelectedRowsHeadBackward(float* dh, float* dw, float* scratch,
                              const float* dlogits, const float* h,
                              const float* w, const SelectedRowsHeadArgs& a) {
  CheckArgs(a);
  const int M = a.num_rows, J = a.num_cols;
  float* hs = scratch;                                   // [M, C]
  float* ws = scratch + static_cast<int64_t>(M) * a.C;     // [J, C]
  float* grad = ws + static_cast<int64_t>(J) * a.C;        // [max(M, J), C]
  if (dw != nullptr) {
    // dW_sel [J, C] = dlogitsᵀ h_sel.
    GatherRows(hs, h, a.rows, M, a.C);
    Matmul(grad, dlogits, hs, J, a.C, M, true, false);
    ScatterAddRows(dw, grad, a.cols, J, a.C);
  }
  if (dh != nullptr) {
    // dh_sel [M, C] = dlogits W_sel.
    GatherRows(ws, w, a.cols, J, a.C);
    Matmul(grad, dlogits, ws, M, a.C, J, false, false);
    ScatterAddRows(dh, grad, a.rows, M, a.C);
  }
}

}  // namespace sheaf::ops
