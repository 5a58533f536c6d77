// Device-side helpers for the NCCL communicator test: fill a buffer with a
// closed-form pattern, and keep a stream busy for a while (to make a
// collective miss its deadline without a second process).
//
// Plain C++ plus CUDA types only (no absl): this header is compiled by nvcc
// as well as by the host compiler. Launchers return cudaSuccess or the error
// (cudaErrorInvalidValue for a broken precondition, else the launch error).
#ifndef SHEAF_DIST_CUDA_TEST_KERNELS_H_
#define SHEAF_DIST_CUDA_TEST_KERNELS_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace sheaf::dist::cuda_test {

// x[i] = a + b * (i % period) for i in [0, n), on `stream`. n >= 0,
// period >= 1, x a device pointer unless n == 0.
cudaError_t LaunchFillAffine(float* x, int64_t n, float a, float b, int64_t period,
                             cudaStream_t stream);

// One thread that spins on the global timer for `nanoseconds` (>= 0), so
// work queued behind it on `stream` starts that much later.
cudaError_t LaunchSpin(int64_t nanoseconds, cudaStream_t stream);

}  // namespace sheaf::dist::cuda_test

#endif  // SHEAF_DIST_CUDA_TEST_KERNELS_H_
