#include "ops/cpu/cpu_features.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace sheaf::ops {
namespace {

uint64_t Xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t{edx} << 32) | eax;
}

struct Features {
  bool avx512 = false;
  bool avx512_bf16 = false;
  bool amx_bf16 = false;  // AMX-TILE + AMX-BF16, tile state enabled and granted
};

Features Detect() {
  Features f;
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool osxsave = (ecx >> 27) & 1u;
  if (!osxsave) return f;
  // XCR0 bits 1, 2 (SSE, AVX state) and 5, 6, 7 (opmask, ZMM_Hi256,
  // Hi16_ZMM): the OS saves every register AVX-512 code uses.
  const uint64_t xcr0 = Xgetbv0();
  if ((xcr0 & 0xE6) != 0xE6) return f;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool f512 = (ebx >> 16) & 1u, bw = (ebx >> 30) & 1u, vl = (ebx >> 31) & 1u;
  const bool fma = [] {
    unsigned a, b, c, d;
    __get_cpuid(1, &a, &b, &c, &d);
    return ((c >> 12) & 1u) != 0;
  }();
  f.avx512 = f512 && bw && vl && fma;
  __cpuid_count(7, 1, eax, ebx, ecx, edx);
  f.avx512_bf16 = f.avx512 && ((eax >> 5) & 1u);
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool amx = ((edx >> 22) & 1u) && ((edx >> 24) & 1u);
  // XCR0 bits 17, 18 (XTILECFG, XTILEDATA), and Linux's permission to use
  // the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
  if (f.avx512_bf16 && amx && (xcr0 & 0x60000) == 0x60000) {
    f.amx_bf16 = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }
  return f;
}

const Features& Cpu() {
  static const Features f = Detect();
  return f;
}

KernelIsa Choose() {
  const char* env = std::getenv("SHEAF_CPU_KERNELS");
  if (env != nullptr && std::strcmp(env, "portable") == 0) return KernelIsa::kPortable;
  if (env != nullptr && *env != '\0' && std::strcmp(env, "avx512") != 0) {
    std::fprintf(stderr, "cpu backend: SHEAF_CPU_KERNELS=%s is not portable or avx512; "
                 "choosing by the processor\n", env);
  }
  if (env != nullptr && std::strcmp(env, "avx512") == 0 && !Cpu().avx512) {
    std::fprintf(stderr, "cpu backend: SHEAF_CPU_KERNELS=avx512 but this CPU/OS lacks "
                 "AVX-512F/BW/VL: portable kernels\n");
  }
  return Cpu().avx512 ? KernelIsa::kAvx512 : KernelIsa::kPortable;
}

}  // namespace

bool CpuHasAvx512() { return Cpu().avx512; }
bool CpuHasAvx512Bf16() { return Cpu().avx512_bf16; }
bool CpuHasAmxBf16() { return Cpu().amx_bf16; }

KernelIsa ActiveKernelIsa() {
  static const KernelIsa isa = Choose();
  return isa;
}

std::string DescribeKernels() {
  std::string s = "cpu backend: kernels ";
  if (ActiveKernelIsa() == KernelIsa::kAvx512) {
    s += "avx512 (GEMM: own AVX-512 12x32 where M*N*K >= 2^15 and N >= 16, OpenBLAS "
         "otherwise; exp in softmax and SwiGLU: AVX-512";
  } else {
    s += "portable (GEMM: OpenBLAS; exp: libm";
  }
  s += "; attention: tiled with per-row softmax statistics); cpu:";
  s += Cpu().avx512 ? " avx512f/bw/vl" : " no-avx512";
  if (Cpu().avx512_bf16) s += " avx512_bf16";
  if (Cpu().amx_bf16) s += " amx_bf16";
  s += "; compute bf16: ";
  s += ActiveKernelIsa() != KernelIsa::kAvx512 || !Cpu().avx512_bf16
           ? "portable (rounded operands, fp32 GEMM)"
           : Cpu().amx_bf16 ? "AMX tiles (tdpbf16ps)" : "AVX512_BF16 (vdpbf16ps)";
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  if (core != nullptr) s += std::string("; OPENBLAS_CORETYPE=") + core;
  return s;
}

}  // namespace sheaf::ops
