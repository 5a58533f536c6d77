// Which kernels the CPU backend runs, chosen once per process from the
// processor's features (compiled portably: this file runs before dispatch).
//
// SHEAF_CPU_KERNELS=portable forces the portable kernels (OpenBLAS GEMMs,
// compiler-vectorised loops) on any processor, e.g. to resume a run
// bit for bit that was trained without AVX-512; =avx512 asks for the
// AVX-512 kernels and falls back (saying so) where the CPU lacks them.
// Unset: AVX-512 where the processor and the OS support it.
#ifndef SHEAF_OPS_CPU_CPU_FEATURES_H_
#define SHEAF_OPS_CPU_CPU_FEATURES_H_

#include <string>

namespace sheaf::ops {

// cpuid + XCR0: AVX-512F, BW and VL usable (the OS saves the zmm state).
bool CpuHasAvx512();
// AVX512_BF16 (vdpbf16ps) as well.
bool CpuHasAvx512Bf16();
// AMX-TILE and AMX-BF16 (tdpbf16ps), enabled by the OS, and this process
// granted the tile data state (asked for on the first call).
bool CpuHasAmxBf16();

enum class KernelIsa { kPortable, kAvx512 };
// The choice for this process (fixed at the first call).
KernelIsa ActiveKernelIsa();
// One line naming the choice, e.g.
// "cpu backend: kernels avx512 (GEMM: own AVX-512 12x32 where M*N*K >= 2^15 and N >= 16,
//  OpenBLAS otherwise; exp in softmax and SwiGLU: AVX-512; attention: tiled with per-row
//  softmax statistics); cpu: avx512f/bw/vl avx512_bf16".
std::string DescribeKernels();

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_CPU_FEATURES_H_
