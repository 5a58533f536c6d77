// Internal to ops/cpu's kernel files (ops.cc, lora_mix.cc, heads.cc): the
// shared parallelism thresholds and the programmer-error check.
#ifndef SHEAF_OPS_CPU_KERNEL_UTIL_H_
#define SHEAF_OPS_CPU_KERNEL_UTIL_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace sheaf::ops {

// Below this many elements of work a parallel region costs more than it saves.
inline constexpr int64_t kMinParallelWork = int64_t{1} << 15;

// Width of the column blocks used for race-free reductions over rows (dw of
// RMSNorm, dbias, embedding gradients): 64 floats = 4 cache lines, wide enough
// to vectorise and to keep false sharing to the block edges.
inline constexpr int kColumnBlock = 64;

}  // namespace sheaf::ops

// Programmer-error check that survives NDEBUG (the kernels index memory with
// the checked values, so a silent pass would corrupt the heap).
#define SHEAF_OPS_CHECK(cond)                                               \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                  \
      std::abort();                                                         \
    }                                                                       \
  } while (0)

#endif  // SHEAF_OPS_CPU_KERNEL_UTIL_H_
