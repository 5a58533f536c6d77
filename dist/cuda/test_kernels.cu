// Kernels first, then their launchers (which check preconditions and the
// launch result). See test_kernels.h.
#include <algorithm>

#include "dist/cuda/test_kernels.h"

namespace sheaf::dist::cuda_test {
namespace {

// ---- kernels ---------------------------------------------------------------

// Grid-stride loop: any grid size covers any n.
__global__ void FillAffineKernel(float* x, int64_t n, float a, float b, int64_t period) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    x[i] = a + b * static_cast<float>(i % period);
  }
}

// %globaltimer counts nanoseconds on every architecture we target, unlike
// clock64(), whose rate would have to be looked up per device.
__device__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void SpinKernel(int64_t nanoseconds) {
  const uint64_t start = GlobalTimerNs();
  while (GlobalTimerNs() - start < static_cast<uint64_t>(nanoseconds)) {
  }
}

}  // namespace

// ---- launchers -------------------------------------------------------------

cudaError_t LaunchFillAffine(float* x, int64_t n, float a, float b, int64_t period,
                             cudaStream_t stream) {
  if (n < 0 || period < 1 || (n > 0 && x == nullptr)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  constexpr int64_t kMaxBlocks = 4096;  // grid-stride loop does the rest
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks);
  FillAffineKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, n, a, b, period);
  return cudaGetLastError();
}

cudaError_t LaunchSpin(int64_t nanoseconds, cudaStream_t stream) {
  if (nanoseconds < 0) return cudaErrorInvalidValue;
  SpinKernel<<<1, 1, 0, stream>>>(nanoseconds);
  return cudaGetLastError();
}

}  // namespace sheaf::dist::cuda_test
