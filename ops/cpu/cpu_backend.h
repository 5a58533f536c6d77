// The CPU backend: core's Backend interface (core/backend.h) over the
// kernels of ops/cpu/ops.h (OpenBLAS GEMMs + OpenMP loops) and
// ops/cpu/optimizer_ops.h. Registered as "cpu" at static-init time: a binary
// gets it (and DefaultBackend() returns it) by depending on //ops/cpu:ops.
//
// Supports every op in fp32; Linear and Embedding also take a frozen bf16
// weight (computed in fp32, tile by tile). NF4 is not supported yet.
// Attention keeps the softmax probabilities [B, NH, T, T] as its saved state.
#ifndef SHEAF_OPS_CPU_CPU_BACKEND_H_
#define SHEAF_OPS_CPU_CPU_BACKEND_H_

#include "core/backend.h"

namespace sheaf::ops {

// The registered instance (never null once static initialisation is done).
Backend* CpuBackend();

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_CPU_BACKEND_H_
