// fp32 GEMM throughput: sheaf's AVX-512 kernel (ops/cpu/gemm_avx512.h)
// against OpenBLAS (as linked, OPENBLAS_CORETYPE as in the environment) and
// oneDNN's dnnl_sgemm, on a 2048^3 product and the bench model's shapes
// (rows n = B*T = 2048; hidden 256, q/o 256, k/v 128, intermediate 688,
// vocab 258). The three run alternately, each shape best of --reps.
//
// Prints one line per shape: GFLOP per CPU-second (per core busy; see
// CpuSeconds) of each, and the wall-clock GFLOP/s of ours.
// Usage: gemm [--threads N] [--reps R]
#include <cblas.h>
#include <dnnl.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gemm_avx512.h"
#include "ops/cpu/gemm_bf16.h"

namespace {

struct Shape {
  const char* name;
  int M, N, K;
  bool ta, tb;
};

// CPU seconds of the whole process (all threads): on a shared machine the
// time this process was descheduled does not count, so per-core throughput
// stays comparable under load (it still suffers from cache sharing).
double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    else { std::fprintf(stderr, "usage: gemm [--threads N] [--reps R]\n"); return 2; }
  }
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  std::printf("# %s\n", sheaf::ops::DescribeKernels().c_str());
  std::printf("# threads %d, best of %d; OpenBLAS core %s\n", threads, reps, openblas_get_corename());
  if (!sheaf::ops::CpuHasAvx512()) {
    std::printf("# no AVX-512: nothing to compare\n");
    return 0;
  }
  const Shape shapes[] = {
      {"2048^3 NN", 2048, 2048, 2048, false, false},
      {"fwd q/o  x.Wt 2048x256x256", 2048, 256, 256, false, true},
      {"fwd k/v  x.Wt 2048x128x256", 2048, 128, 256, false, true},
      {"fwd gate x.Wt 2048x688x256", 2048, 688, 256, false, true},
      {"fwd down x.Wt 2048x256x688", 2048, 256, 688, false, true},
      {"fwd head x.Wt 2048x258x256", 2048, 258, 256, false, true},
      {"bwd q/o  dy.W 2048x256x256", 2048, 256, 256, false, false},
      {"bwd gate dy.W 2048x256x688", 2048, 256, 688, false, false},
      {"bwd down dy.W 2048x688x256", 2048, 688, 256, false, false},
  };
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::printf("%-30s %10s %10s %10s %12s %10s  (GFLOP per CPU-second; sheaf_wall: wall GFLOP/s; "
              "sheaf_bf16: compute bf16 (AMX where present), x rounded per call, W bf16)\n",
              "shape", "sheaf", "openblas", "onednn", "sheaf_wall", "sheaf_bf16");
  const bool bf16 = sheaf::ops::CpuHasAvx512Bf16();
  for (const Shape& s : shapes) {
    std::vector<float> a(size_t{1} * s.M * s.K), b(size_t{1} * s.K * s.N), c(size_t{1} * s.M * s.N);
    for (float& x : a) x = dist(rng);
    for (float& x : b) x = dist(rng);
    const int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    double best[4] = {1e30, 1e30, 1e30, 1e30}, best_wall = 1e30;
    std::vector<uint16_t> b16(b.size());
    for (size_t i = 0; i < b.size(); ++i) {
      uint32_t u;
      std::memcpy(&u, &b[i], 4);
      b16[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    for (int r = 0; r < reps + 1; ++r) {  // the first round warms caches and pools
      for (int which = 0; which < (bf16 && !s.ta ? 4 : 3); ++which) {
        const auto t0 = std::chrono::steady_clock::now();
        const double c0 = CpuSeconds();
        if (which == 0) {
          sheaf::ops::GemmAvx512(s.ta, s.tb, s.M, s.N, s.K, 1.0f, a.data(), lda, b.data(), ldb,
                                 0.0f, c.data(), s.N);
        } else if (which == 1) {
          cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans,
                      s.tb ? CblasTrans : CblasNoTrans, s.M, s.N, s.K, 1.0f, a.data(), lda,
                      b.data(), ldb, 0.0f, c.data(), s.N);
        } else if (which == 3) {
          (sheaf::ops::CpuHasAmxBf16() ? sheaf::ops::GemmBf16Amx : sheaf::ops::GemmBf16Avx512)(s.tb, s.M, s.N, s.K, 1.0f, a.data(), lda, b16.data(), nullptr,
                                     ldb, 0.0f, c.data(), s.N);
        } else {
          dnnl_sgemm(s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.M, s.N, s.K, 1.0f, a.data(), lda,
                     b.data(), ldb, 0.0f, c.data(), s.N);
        }
        const double dt = CpuSeconds() - c0;
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (r > 0) best[which] = std::min(best[which], dt);
        if (r > 0 && which == 0) best_wall = std::min(best_wall, wall);
      }
    }
    const double flop = 2.0 * s.M * s.N * s.K;
    std::printf("%-30s %10.1f %10.1f %10.1f %12.1f %10.1f\n", s.name, flop / best[0] / 1e9,
                flop / best[1] / 1e9, flop / best[2] / 1e9, flop / best_wall / 1e9,
                best[3] < 1e30 ? flop / best[3] / 1e9 : 0.0);
  }
  return 0;
}
