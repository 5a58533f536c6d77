// Loss heads over the trunk's final hidden states h [N, C] and the head
// weight W [V, C] (lm_head, or the tied embedding).
//
// The selected-rows head reads M chosen rows of h and J chosen vocabulary
// columns of the logits (rows of W):
//   logits[m, j] = <h[rows[m]], W[cols[j]]>          [M, J]
//   loss = Σ_m CE(softmax over the J columns, targets[m])   (targets in [0, J))
// e.g. a yes/no classifier: one row per sample (the answer position), J = 2
// columns (the "yes" and "no" tokens), target 0 or 1. Work and memory are
// O((M + J) · C + M · J): the full [N, V] logits are never formed.
//
// Legend as in ops.h, plus M selected rows and J selected columns.
// Rows and columns may repeat (their gradients then add up).
#ifndef SHEAF_OPS_CPU_HEADS_H_
#define SHEAF_OPS_CPU_HEADS_H_

#include <cstdint>

namespace sheaf::ops {

struct SelectedRowsHeadArgs {
  int n = 0;                        // N rows of h
  int C = 0;                        // channels
  int V = 0;                        // rows of W
  int num_rows = 0;                 // M
  int num_cols = 0;                 // J
  const int32_t* rows = nullptr;    // [M], each in [0, N)
  const int32_t* cols = nullptr;    // [J], each in [0, V)
  const int32_t* targets = nullptr; // [M], each in [0, J) or ignore_index
  int ignore_index = -100;
};

// Floats of scratch for either call (need not survive between them):
// (M + J + max(M, J)) · C: the gathered rows of h and W, and one gradient.
int64_t SelectedRowsHeadScratchFloats(const SelectedRowsHeadArgs& args);

// logits [M, J] is overwritten. Adds the summed cross-entropy of the rows
// whose target is not ignore_index to *loss_sum and their count to *n_valid.
// When dlogits [M, J] is non-null it is OVERWRITTEN with
// grad_scale · (softmax - onehot) (0 on ignored rows), as ops::CrossEntropy.
// Indices out of range are programmer errors (abort).
void SelectedRowsHeadForward(float* logits, float* dlogits, double* loss_sum,
                             int64_t* n_valid, float* scratch, const float* h,
                             const float* w, const SelectedRowsHeadArgs& args,
                             float grad_scale);

// With dlogits from the forward:
//   dh[rows[m]] += dlogits[m] · W[cols]          (only the selected rows)
//   dw[cols[j]] += dlogits[:, j]ᵀ · h[rows]      (only the selected columns)
// dh / dw may be null (not needed / frozen).
void SelectedRowsHeadBackward(float* dh, float* dw, float* scratch,
                              const float* dlogits, const float* h,
                              const float* w, const SelectedRowsHeadArgs& args);

// out[m, :] = src[idx[m], :] for m < M (C columns). Used by the head and by
// callers that add a LoRA on the selected rows/columns of lm_head.
void GatherRows(float* out, const float* src, const int32_t* idx, int M,
                int C);
// dst[idx[m], :] += src[m, :]; repeated indices add in m order (threads
// split the columns, so the result does not depend on the thread count).
void ScatterAddRows(float* dst, const float* src, const int32_t* idx, int M,
                    int C);

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_HEADS_H_
