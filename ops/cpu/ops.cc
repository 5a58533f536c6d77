// CPU reference kernels. See ops.h for the contract of each function.
//
// Threading model
//  - OpenBLAS is the OpenMP build (libopenblas0-openmp, see
//    third_party/system/BUILD), so BLAS and our loops share one OpenMP
//    runtime and one pool of threads.
//  - Matmul, Linear* and Lora* issue their GEMMs from the calling thread,
//    outside any OpenMP region; OpenBLAS parallelises each GEMM itself.
//  - Attention is the exception: it opens one OpenMP region over (batch,
//    head) tasks and issues its per-head GEMMs (cblas_sgemm) from INSIDE that
//    region. The OpenMP build of OpenBLAS sees it is in a parallel region and
//    runs each of those calls single-threaded, so nothing nests or
//    oversubscribes; with a pthreads OpenBLAS those calls would start its
//    own pool under ours (the reason the build pins the OpenMP flavour).
//  - Everything else is a plain loop parallelised with OpenMP, with no BLAS
//    call inside.
//  - Inner loops carry `#pragma omp simd`: at -O2 GCC's "very cheap" cost
//    model refuses to vectorise loops whose trip count is not a known multiple
//    of the vector width, and never reassociates float reductions; the pragma
//    overrides both where we know it is safe.
//  - Every kernel is deterministic and independent of the thread count: each
//    output element is produced by one thread in a fixed order (gradients
//    that several rows contribute to are reduced by column blocks, and the
//    query heads that share a KV head run one after another in one task, so
//    dK/dV accumulate in head order).
#include "ops/cpu/ops.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "base/allocation.h"
#include "base/rng.h"
#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gemm_avx512.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/cpu/kernel_util.h"
#include "ops/cpu/vec_avx512.h"

namespace sheaf::ops {
namespace {

inline float Dot(const float* a, const float* b, int n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y += alpha * x; x and y must not overlap.
inline void Axpy(float alpha, const float* x, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace

// The AVX-512 GEMM takes the shapes where its 12 x 32 tile is used well:
// at least 16 columns and 2^15 multiply-adds (below that a call's packing
// costs more than it saves; narrow LoRA products, N = r, stay on OpenBLAS).
// The choice depends on the shape and the process's kernel ISA only, never
// on the thread count, so results stay deterministic.
namespace {
bool UseAvx512Gemm(int M, int N, int K) {
  static const bool avx512 = ActiveKernelIsa() == KernelIsa::kAvx512;
  return avx512 && N >= 16 && int64_t{M} * N * K >= (int64_t{1} << 15);
}
}  // namespace

// Guards the degenerate shapes that BLAS rejects as illegal leading
// dimensions (ld must be >= 1) instead of treating as no-ops.
void Gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
          const float* a, int lda, const float* b, int ldb, float beta,
          float* c, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int i = 0; i < M; ++i) {
      float* row = c + static_cast<int64_t>(i) * ldc;
      for (int j = 0; j < N; ++j) row[j] = beta == 0.0f ? 0.0f : beta * row[j];
    }
    return;
  }
  if (UseAvx512Gemm(M, N, K)) {
    GemmAvx512(trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, a,
              std::max(1, lda), b, std::max(1, ldb), beta, c, std::max(1, ldc));
}

void GemmSplitN(int M, int N, int K, float alpha, const float* a, int lda,
                const GemmSegment* b_rows, const GemmSegment* c_cols, int nseg,
                float beta) {
  if (M <= 0 || N <= 0 || nseg <= 0) return;
  if (K > 0 && UseAvx512Gemm(M, N, K)) {
    GemmAvx512SplitN(M, N, K, alpha, a, lda, b_rows, c_cols, nseg, beta);
    return;
  }
  for (int s = 0; s < nseg; ++s) {
    const int n = (s + 1 < nseg ? c_cols[s + 1].begin : N) - c_cols[s].begin;
    Gemm(false, true, M, n, K, alpha, a, lda, b_rows[s].p, b_rows[s].ld, beta,
         const_cast<float*>(c_cols[s].p), c_cols[s].ld);
  }
}

void GemmSplitK(int M, int N, int K, float alpha, const GemmSegment* a_cols,
                const GemmSegment* b_rows, int nseg, float beta, float* c, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K > 0 && nseg > 0 && UseAvx512Gemm(M, N, K)) {
    GemmAvx512SplitK(M, N, K, alpha, a_cols, b_rows, nseg, beta, c, ldc);
    return;
  }
  if (nseg == 0) {
    Gemm(false, false, M, N, 0, alpha, nullptr, 1, nullptr, 1, beta, c, ldc);
    return;
  }
  for (int s = 0; s < nseg; ++s) {
    const int k = (s + 1 < nseg ? a_cols[s + 1].begin : K) - a_cols[s].begin;
    Gemm(false, false, M, N, k, alpha, a_cols[s].p, a_cols[s].ld, b_rows[s].p, b_rows[s].ld,
         s == 0 ? beta : 1.0f, c, ldc);
  }
}

namespace {

// dst[c] += sum_i value(i, c) for c < C, i < n, accumulated in double.
// Parallel over column blocks so that no two threads write the same element
// and the summation order does not depend on the thread count.
template <typename ValueFn>
void AddColumnSums(float* dst, int n, int C, ValueFn value) {
  const int num_blocks = (C + kColumnBlock - 1) / kColumnBlock;
  const bool use_threads = static_cast<int64_t>(n) * C >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
  for (int blk = 0; blk < num_blocks; ++blk) {
    const int c0 = blk * kColumnBlock;
    const int width = std::min(kColumnBlock, C - c0);
    double acc[kColumnBlock] = {};
    for (int i = 0; i < n; ++i) {
#pragma omp simd
      for (int j = 0; j < width; ++j) acc[j] += value(i, c0 + j);
    }
    for (int j = 0; j < width; ++j) dst[c0 + j] += static_cast<float>(acc[j]);
  }
}

}  // namespace

void SetNumThreads(int n) {
  static const bool reported = [] {
    std::fprintf(stderr, "%s\n", DescribeKernels().c_str());
    return true;
  }();
  (void)reported;
  // 0: what the launcher granted (OMP_NUM_THREADS, Slurm, the cgroup's CPU
  // quota), not every CPU of the node.
  if (n <= 0) n = AllocatedCpus();
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int NumThreads() { return omp_get_max_threads(); }

void UsePassiveOmpWaitPolicy(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc?): carry on with the default policy.
}

void Matmul(float* out, const float* a, const float* b, int M, int N, int K,
            bool trans_a, bool trans_b, float alpha, float beta) {
  Gemm(trans_a, trans_b, M, N, K, alpha, a, trans_a ? M : K, b, trans_b ? K : N,
       beta, out, N);
}

// ----------------------------------------------------------------------------
// Linear: y = x @ w^T + bias

void LinearForward(float* y, const float* x, const float* w, const float* bias,
                   int n, int in, int out) {
  float beta = 0.0f;
  if (bias != nullptr) {
    // Seed y with the bias so that the GEMM adds onto it (beta = 1).
    const bool use_threads = static_cast<int64_t>(n) * out >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
    for (int i = 0; i < n; ++i) {
      std::memcpy(y + static_cast<int64_t>(i) * out, bias, sizeof(float) * out);
    }
    beta = 1.0f;
  }
  Gemm(false, true, n, out, in, 1.0f, x, in, w, in, beta, y, out);
}

// dx += dy @ w; dw += dy^T @ x; dbias += sum_rows dy.
void LinearBackward(float* dx, float* dw, float* dbias, const float* dy,
                    const float* x, const float* w, int n, int in, int out) {
  if (dx != nullptr) {
    Gemm(false, false, n, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
  }
  if (dw != nullptr) {
    Gemm(true, false, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
  }
  if (dbias != nullptr) {
    AddColumnSums(dbias, n, out, [=](int i, int c) {
      return static_cast<double>(dy[static_cast<int64_t>(i) * out + c]);
    });
  }
}

// ----------------------------------------------------------------------------
// Linear with a frozen bf16 weight, in fp32 tile by tile.

namespace {

// Rows of W widened per tile: about 256 KiB of fp32 (fits L2 next to the x
// panel) and at least 16 rows so that the GEMMs stay efficient.
int Bf16TileRows(int in) { return std::max(16, (1 << 16) / std::max(1, in)); }

// A per-thread tile buffer, grown once: no allocation in the training loop.
float* Bf16TileBuffer(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(static_cast<size_t>(floats));
  return buffer.data();
}

inline float Bf16ToF32(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

}  // namespace

void WidenBf16(float* out, const uint16_t* in, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) out[i] = Bf16ToF32(in[i]);
}

void LinearForwardBf16(float* y, const float* x, const uint16_t* w16,
                       const float* bias, int n, int in, int out) {
  float beta = 0.0f;
  if (bias != nullptr) {
    const bool use_threads = static_cast<int64_t>(n) * out >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
    for (int i = 0; i < n; ++i) {
      std::memcpy(y + static_cast<int64_t>(i) * out, bias, sizeof(float) * out);
    }
    beta = 1.0f;
  }
  const int tile = Bf16TileRows(in);
  float* w = Bf16TileBuffer(static_cast<int64_t>(tile) * in);
  for (int r0 = 0; r0 < out; r0 += tile) {
    const int rows = std::min(tile, out - r0);
    WidenBf16(w, w16 + static_cast<int64_t>(r0) * in, static_cast<int64_t>(rows) * in);
    // y[:, r0:r0+rows] (ld out) = x @ w_tile^T (+ bias already there).
    Gemm(false, true, n, rows, in, 1.0f, x, in, w, in, beta, y + r0, out);
  }
}

void LinearBackwardBf16(float* dx, float* dbias, const float* dy,
                        const uint16_t* w16, int n, int in, int out) {
  if (dx != nullptr) {
    const int tile = Bf16TileRows(in);
    float* w = Bf16TileBuffer(static_cast<int64_t>(tile) * in);
    for (int r0 = 0; r0 < out; r0 += tile) {
      const int rows = std::min(tile, out - r0);
      WidenBf16(w, w16 + static_cast<int64_t>(r0) * in, static_cast<int64_t>(rows) * in);
      // dx += dy[:, r0:r0+rows] (ld out) @ w_tile.
      Gemm(false, false, n, in, rows, 1.0f, dy + r0, out, w, in, 1.0f, dx, in);
    }
  }
  if (dbias != nullptr) {
    AddColumnSums(dbias, n, out, [=](int i, int c) {
      return static_cast<double>(dy[static_cast<int64_t>(i) * out + c]);
    });
  }
}

// ----------------------------------------------------------------------------
// compute: bf16

bool Bf16DotActive() {
  static const bool on = ActiveKernelIsa() == KernelIsa::kAvx512 && CpuHasAvx512Bf16();
  return on;
}

void RoundToBf16(float* out, const float* in, int64_t n) {
  const bool use_threads = n >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, &in[i], 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      u |= 0x00400000u;
    } else {
      u = (u + 0x7fffu + ((u >> 16) & 1u));
    }
    u &= 0xffff0000u;
    std::memcpy(&out[i], &u, 4);
  }
}

namespace {
// AMX tiles where the processor and the OS allow them, else vdpbf16ps.
void GemmBf16(bool trans_w, int M, int N, int K, const float* a, int lda, const uint16_t* w16,
              const float* w32, int ldw, float beta, float* c, int ldc) {
  static const bool amx = CpuHasAmxBf16();
  (amx ? GemmBf16Amx : GemmBf16Avx512)(trans_w, M, N, K, 1.0f, a, lda, w16, w32, ldw, beta, c,
                                       ldc);
}
float* RoundBuffer(int slot, int64_t floats) {
  thread_local std::vector<float> buffers[2];
  std::vector<float>& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < floats) b.resize(static_cast<size_t>(floats));
  return b.data();
}
}  // namespace

void LinearForwardBf16Compute(float* y, const float* x, const uint16_t* w16,
                              const float* w32, const float* bias, int n, int in,
                              int out) {
  if (Bf16DotActive()) {
    float beta = 0.0f;
    if (bias != nullptr) {
      const bool use_threads = static_cast<int64_t>(n) * out >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
      for (int i = 0; i < n; ++i) {
        std::memcpy(y + static_cast<int64_t>(i) * out, bias, sizeof(float) * out);
      }
      beta = 1.0f;
    }
    if (n > 0 && out > 0 && in > 0) {
      GemmBf16(true, n, out, in, x, in, w16, w32, in, beta, y, out);
    } else {
      Gemm(false, true, n, out, 0, 1.0f, x, in, w32, in, beta, y, out);
    }
    return;
  }
  float* xr = RoundBuffer(0, static_cast<int64_t>(n) * in);
  RoundToBf16(xr, x, static_cast<int64_t>(n) * in);
  if (w16 != nullptr) {
    LinearForwardBf16(y, xr, w16, bias, n, in, out);
  } else {
    float* wr = RoundBuffer(1, static_cast<int64_t>(out) * in);
    RoundToBf16(wr, w32, static_cast<int64_t>(out) * in);
    LinearForward(y, xr, wr, bias, n, in, out);
  }
}

void LinearBackwardBf16Compute(float* dx, float* dbias, const float* dy,
                               const uint16_t* w16, const float* w32, int n,
                               int in, int out) {
  if (dbias != nullptr) {
    AddColumnSums(dbias, n, out, [=](int i, int c) {
      return static_cast<double>(dy[static_cast<int64_t>(i) * out + c]);
    });
  }
  if (dx == nullptr || n <= 0 || in <= 0 || out <= 0) return;
  if (Bf16DotActive()) {
    GemmBf16(false, n, in, out, dy, out, w16, w32, in, 1.0f, dx, in);
    return;
  }
  float* dyr = RoundBuffer(0, static_cast<int64_t>(n) * out);
  RoundToBf16(dyr, dy, static_cast<int64_t>(n) * out);
  if (w16 != nullptr) {
    LinearBackwardBf16(dx, nullptr, dyr, w16, n, in, out);
  } else {
    float* wr = RoundBuffer(1, static_cast<int64_t>(out) * in);
    RoundToBf16(wr, w32, static_cast<int64_t>(out) * in);
    Gemm(false, false, n, in, out, 1.0f, dyr, out, wr, in, 1.0f, dx, in);
  }
}

// ----------------------------------------------------------------------------
// LoRA: xa = x @ a^T; y += scale * xa @ b^T

void LoraForward(float* y, float* xa, const float* x, const float* a,
                 const float* b, float scale, int n, int in, int out, int r) {
  Gemm(false, true, n, r, in, 1.0f, x, in, a, in, 0.0f, xa, r);
  Gemm(false, true, n, out, r, scale, xa, r, b, r, 1.0f, y, out);
}

// g = dy @ b; dx += scale * g @ a; da += scale * g^T @ x;
// db += scale * dy^T @ xa.
void LoraBackward(float* dx, float* da, float* db, float* scratch_dyb,
                  const float* dy, const float* x, const float* xa,
                  const float* a, const float* b, float scale, int n, int in,
                  int out, int r) {
  if (dx != nullptr || da != nullptr) {
    Gemm(false, false, n, r, out, 1.0f, dy, out, b, r, 0.0f, scratch_dyb, r);
    if (dx != nullptr) {
      Gemm(false, false, n, in, r, scale, scratch_dyb, r, a, in, 1.0f, dx, in);
    }
    if (da != nullptr) {
      Gemm(true, false, r, in, n, scale, scratch_dyb, r, x, in, 1.0f, da, in);
    }
  }
  if (db != nullptr) {
    Gemm(true, false, out, r, n, scale, dy, out, xa, r, 1.0f, db, r);
  }
}

// ----------------------------------------------------------------------------
// Embedding: out[n] = wte[tokens[n]]

void EmbeddingForward(float* out, const int32_t* tokens, const float* wte,
                      int n, int C) {
  const bool use_threads = static_cast<int64_t>(n) * C >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
  for (int i = 0; i < n; ++i) {
    std::memcpy(out + static_cast<int64_t>(i) * C,
                wte + static_cast<int64_t>(tokens[i]) * C, sizeof(float) * C);
  }
}

void EmbeddingForwardBf16(float* out, const int32_t* tokens,
                          const uint16_t* wte16, int n, int C) {
  const bool use_threads = static_cast<int64_t>(n) * C >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
  for (int i = 0; i < n; ++i) {
    const uint16_t* row = wte16 + static_cast<int64_t>(tokens[i]) * C;
    float* o = out + static_cast<int64_t>(i) * C;
    for (int c = 0; c < C; ++c) o[c] = Bf16ToF32(row[c]);
  }
}

// dwte[tokens[n]] += dout[n]. Repeated tokens hit the same row, so threads
// split the columns, not the rows.
void EmbeddingBackward(float* dwte, const float* dout, const int32_t* tokens,
                       int n, int C) {
  const int num_blocks = (C + kColumnBlock - 1) / kColumnBlock;
  const bool use_threads = static_cast<int64_t>(n) * C >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
  for (int blk = 0; blk < num_blocks; ++blk) {
    const int c0 = blk * kColumnBlock;
    const int width = std::min(kColumnBlock, C - c0);
    for (int i = 0; i < n; ++i) {
      Axpy(1.0f, dout + static_cast<int64_t>(i) * C + c0,
           dwte + static_cast<int64_t>(tokens[i]) * C + c0, width);
    }
  }
}

// ----------------------------------------------------------------------------
// RMSNorm: rstd = 1/sqrt(mean(x^2) + eps); out = x * rstd * w

void RmsNormForward(float* out, float* rstd, const float* x, const float* w,
                    int n, int C, float eps) {
  const bool use_threads = static_cast<int64_t>(n) * C >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
  for (int i = 0; i < n; ++i) {
    const float* xi = x + static_cast<int64_t>(i) * C;
    float* oi = out + static_cast<int64_t>(i) * C;
    double sum_sq = 0.0;
#pragma omp simd reduction(+ : sum_sq)
    for (int c = 0; c < C; ++c) sum_sq += static_cast<double>(xi[c]) * xi[c];
    const float r = static_cast<float>(1.0 / std::sqrt(sum_sq / C + eps));
    rstd[i] = r;
#pragma omp simd
    for (int c = 0; c < C; ++c) oi[c] = xi[c] * r * w[c];
  }
}

// With r = rstd and m = mean(dout * w * x) over the row:
//   dx += r * (dout * w - x * r^2 * m);  dw += sum_rows dout * x * r.
void RmsNormBackward(float* dx, float* dw, const float* dout, const float* x,
                     const float* w, const float* rstd, int n, int C) {
  if (dx != nullptr) {
    const bool use_threads = static_cast<int64_t>(n) * C >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
    for (int i = 0; i < n; ++i) {
      const int64_t off = static_cast<int64_t>(i) * C;
      const float* xi = x + off;
      const float* di = dout + off;
      float* dxi = dx + off;
      double dot = 0.0;
#pragma omp simd reduction(+ : dot)
      for (int c = 0; c < C; ++c) {
        dot += static_cast<double>(di[c]) * w[c] * xi[c];
      }
      const float r = rstd[i];
      const float k = static_cast<float>(dot / C) * r * r;
#pragma omp simd
      for (int c = 0; c < C; ++c) dxi[c] += r * (di[c] * w[c] - xi[c] * k);
    }
  }
  if (dw != nullptr) {
    AddColumnSums(dw, n, C, [=](int i, int c) {
      const int64_t idx = static_cast<int64_t>(i) * C + c;
      return static_cast<double>(dout[idx] * x[idx] * rstd[i]);
    });
  }
}

// ----------------------------------------------------------------------------
// RoPE (rotate_half layout)

// Mirrors Hugging Face's fp32 arithmetic (inv_freq = 1 / theta^(2i/HD) in
// float, angle = float(t) * inv_freq rounded to float) rather than computing
// the angle in double: at t in the thousands the fp32 angle is off by ~1e-4
// rad, and a checkpoint was trained with exactly those angles.
void RopeTables(float* cos, float* sin, int T, int HD, float theta) {
  const int half = HD / 2;
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) /
                                             static_cast<float>(HD));
  }
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(t) * inv_freq[i];
      cos[static_cast<int64_t>(t) * half + i] =
          static_cast<float>(std::cos(static_cast<double>(angle)));
      sin[static_cast<int64_t>(t) * half + i] =
          static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

// out[i] = v[i] c - v[i+half] s;  out[i+half] = v[i+half] c + v[i] s.
// Iteration i touches only elements i and i+half, and reads both before
// writing, so out may alias x and the loop has no cross-iteration dependence.
void RopeForward(float* out, const float* x, const float* cos, const float* sin,
                 int B, int T, int H, int HD) {
  const int half = HD / 2;
  const int64_t row = static_cast<int64_t>(H) * HD;
  const bool use_threads =
      static_cast<int64_t>(B) * T * row >= kMinParallelWork;
#pragma omp parallel for collapse(2) schedule(static) if (use_threads)
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      const float* ct = cos + static_cast<int64_t>(t) * half;
      const float* st = sin + static_cast<int64_t>(t) * half;
      const int64_t base = (static_cast<int64_t>(b) * T + t) * row;
      for (int h = 0; h < H; ++h) {
        const float* v = x + base + static_cast<int64_t>(h) * HD;
        float* o = out + base + static_cast<int64_t>(h) * HD;
#pragma omp simd
        for (int i = 0; i < half; ++i) {
          const float x1 = v[i];
          const float x2 = v[i + half];
          o[i] = x1 * ct[i] - x2 * st[i];
          o[i + half] = x2 * ct[i] + x1 * st[i];
        }
      }
    }
  }
}

// The rotation is orthogonal, so dx += R^T dout:
//   dx[i] += d[i] c + d[i+half] s;  dx[i+half] += d[i+half] c - d[i] s.
void RopeBackward(float* dx, const float* dout, const float* cos,
                  const float* sin, int B, int T, int H, int HD) {
  const int half = HD / 2;
  const int64_t row = static_cast<int64_t>(H) * HD;
  const bool use_threads =
      static_cast<int64_t>(B) * T * row >= kMinParallelWork;
#pragma omp parallel for collapse(2) schedule(static) if (use_threads)
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      const float* ct = cos + static_cast<int64_t>(t) * half;
      const float* st = sin + static_cast<int64_t>(t) * half;
      const int64_t base = (static_cast<int64_t>(b) * T + t) * row;
      for (int h = 0; h < H; ++h) {
        const float* d = dout + base + static_cast<int64_t>(h) * HD;
        float* g = dx + base + static_cast<int64_t>(h) * HD;
#pragma omp simd
        for (int i = 0; i < half; ++i) {
          const float d1 = d[i];
          const float d2 = d[i + half];
          g[i] += d1 * ct[i] + d2 * st[i];
          g[i + half] += d2 * ct[i] - d1 * st[i];
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------
// Causal grouped-query attention
//
// Forward, per (b, h) with S = q k^T / sqrt(HD) over t' <= t:
//   P = softmax(S) (max-subtracted), O = P V.

// Per (b, h), with the heads addressed in place through the row strides of
// q/k/v (no copies) and GEMMs through OpenBLAS:
//   S = scale * Q_h K_g^T        (written straight into probs)
//   P = causal_softmax(S)        (row t keeps columns <= t; the rest are 0)
//   O_h = P V_g                  (T x HD)
// Causality is exploited by query blocks of kAttnBlock rows: the block of
// rows [r0, r1) only needs keys [0, r1), so each GEMM covers a block-lower-
// triangular region (62.5% of the full T x T work at T = 4 blocks) and the
// diagonal blocks are masked inside. Dense GEMM tiles are several times
// faster than the scalar dot products an exactly-triangular loop would need.
constexpr int kAttnBlock = 64;

void AttentionForward(float* out, float* probs, const float* q, const float* k,
                      const float* v, int B, int T, int NH, int KVH, int HD) {
  SHEAF_OPS_CHECK(KVH > 0 && NH % KVH == 0);
  const int group = NH / KVH;
  const int q_stride = NH * HD;
  const int kv_stride = KVH * HD;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  if (B == 0 || T == 0 || NH == 0) return;
  // One parallel region over (b, h): each task's GEMMs run single-threaded
  // inside it (OpenBLAS built for OpenMP does not nest), and a few large
  // tasks per region keep barrier waits negligible.
  const bool parallel = static_cast<int64_t>(B) * NH * T * T * HD >= kMinParallelWork;
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      const int kvh = h / group;
      const float* qh = q + static_cast<int64_t>(b) * T * q_stride + static_cast<int64_t>(h) * HD;
      const float* kg = k + static_cast<int64_t>(b) * T * kv_stride + static_cast<int64_t>(kvh) * HD;
      const float* vg = v + static_cast<int64_t>(b) * T * kv_stride + static_cast<int64_t>(kvh) * HD;
      float* p = probs + (static_cast<int64_t>(b) * NH + h) * T * T;
      float* oh = out + static_cast<int64_t>(b) * T * q_stride + static_cast<int64_t>(h) * HD;
      for (int r0 = 0; r0 < T; r0 += kAttnBlock) {
        const int r1 = std::min(T, r0 + kAttnBlock), rows = r1 - r0;
        float* pb = p + static_cast<int64_t>(r0) * T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r1, HD, scale,
                    qh + static_cast<int64_t>(r0) * q_stride, q_stride, kg, kv_stride, 0.0f, pb, T);
        for (int t = r0; t < r1; ++t) {
          float* row = p + static_cast<int64_t>(t) * T;
          float max_score = -std::numeric_limits<float>::infinity();
          for (int tk = 0; tk <= t; ++tk) max_score = std::max(max_score, row[tk]);
          float sum = 0.0f;
          for (int tk = 0; tk <= t; ++tk) {
            row[tk] = std::exp(row[tk] - max_score);
            sum += row[tk];
          }
          const float inv_sum = 1.0f / sum;
#pragma omp simd
          for (int tk = 0; tk <= t; ++tk) row[tk] *= inv_sum;
          std::fill(row + t + 1, row + T, 0.0f);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HD, r1, 1.0f, pb, T, vg,
                    kv_stride, 0.0f, oh + static_cast<int64_t>(r0) * q_stride, q_stride);
      }
    }
  }
}

// Backward, per (b, h) with P = probs and scale = 1/sqrt(HD), by the same
// query blocks as forward (rows [r0, r1) touch keys [0, r1) only):
//   dP = dO_h V_g^T;  dS = P o (dP - rowsum(dP o P)) * scale;
//   dQ_h += dS K_g;   dK_g += dS^T Q_h;   dV_g += P^T dO_h.
void AttentionBackward(float* dq, float* dk, float* dv, const float* dout,
                       const float* q, const float* k, const float* v,
                       const float* probs, int B, int T, int NH, int KVH,
                       int HD) {
  SHEAF_OPS_CHECK(KVH > 0 && NH % KVH == 0);
  const int group = NH / KVH;
  const int q_stride = NH * HD;
  const int kv_stride = KVH * HD;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  if (B == 0 || T == 0 || NH == 0) return;
  // Parallel over (b, kv head): the query heads sharing a KV head run one
  // after another in the same task, so their dK/dV accumulations never race.
  const bool parallel = static_cast<int64_t>(B) * NH * T * T * HD >= kMinParallelWork;
#pragma omp parallel if (parallel)
  {
    std::vector<float> ds(static_cast<size_t>(kAttnBlock) * T);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b) {
      for (int kvh = 0; kvh < KVH; ++kvh) {
        for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
          const int64_t q_off = static_cast<int64_t>(b) * T * q_stride + static_cast<int64_t>(h) * HD;
          const int64_t kv_off = static_cast<int64_t>(b) * T * kv_stride + static_cast<int64_t>(kvh) * HD;
          const float* p = probs + (static_cast<int64_t>(b) * NH + h) * T * T;
          for (int r0 = 0; r0 < T; r0 += kAttnBlock) {
            const int r1 = std::min(T, r0 + kAttnBlock), rows = r1 - r0;
            const float* pb = p + static_cast<int64_t>(r0) * T;
            const int64_t qr = q_off + static_cast<int64_t>(r0) * q_stride;
            // dP for rows [r0, r1), keys [0, r1) (ld r1).
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, r1, HD, 1.0f, dout + qr,
                        q_stride, v + kv_off, kv_stride, 0.0f, ds.data(), r1);
            for (int t = r0; t < r1; ++t) {
              float* d = ds.data() + static_cast<int64_t>(t - r0) * r1;
              const float* pr = p + static_cast<int64_t>(t) * T;
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
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, HD, rows, 1.0f, pb, T,
                        dout + qr, q_stride, 1.0f, dv + kv_off, kv_stride);
          }
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------
// SwiGLU: h = silu(gate) * up = gate * sigmoid(gate) * up

namespace {
// The AVX-512 elementwise kernels run on fixed chunks (each element is
// independent, so any split gives the same bits).
constexpr int64_t kVecChunk = 4096;
bool UseAvx512Vec() {
  static const bool avx512 = ActiveKernelIsa() == KernelIsa::kAvx512;
  return avx512;
}
}  // namespace

void SwiGluForward(float* h, const float* gate, const float* up, int64_t n) {
  if (UseAvx512Vec()) {
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t c = 0; c < n; c += kVecChunk) {
      SwiGluForwardAvx512(h + c, gate + c, up + c, std::min(kVecChunk, n - c));
    }
    return;
  }
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float s = 1.0f / (1.0f + std::exp(-g));
    h[i] = g * s * up[i];
  }
}

// With s = sigmoid(g): d silu(g)/dg = s * (1 + g * (1 - s)), so
//   dgate += dh * up * s * (1 + g * (1 - s));  dup += dh * g * s.
void SwiGluBackward(float* dgate, float* dup, const float* dh,
                    const float* gate, const float* up, int64_t n) {
  if (UseAvx512Vec()) {
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t c = 0; c < n; c += kVecChunk) {
      SwiGluBackwardAvx512(dgate + c, dup + c, dh + c, gate + c, up + c,
                           std::min(kVecChunk, n - c));
    }
    return;
  }
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float s = 1.0f / (1.0f + std::exp(-g));
    dgate[i] += dh[i] * up[i] * s * (1.0f + g * (1.0f - s));
    dup[i] += dh[i] * g * s;
  }
}

void Add(float* out, const float* a, const float* b, int64_t n) {
  // Element i reads a[i], b[i] then writes out[i]: aliasing is harmless.
  const bool use_threads = n >= kMinParallelWork;
#pragma omp parallel for simd schedule(static) if (parallel : use_threads)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// The model's loops, moved here from core/model.cc unchanged (same bodies,
// same thresholds, same flags), so results stay bit-identical.
void Mul(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

void MulAdd(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) out[i] += a[i] * b[i];
}

// ----------------------------------------------------------------------------
// Dropout masks: counter-based uniform [0,1) draws.

void DropoutMask(float* mask, int64_t n, int64_t first_index, float p,
                 uint64_t seed, int stream) {
  const uint64_t base =
      SplitMix64(seed ^ SplitMix64(static_cast<uint64_t>(stream) + 1));
  const float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float u = static_cast<float>(
                        SplitMix64(base + static_cast<uint64_t>(first_index + i)) >> 40) *
                    (1.0f / 16777216.0f);
    mask[i] = u < p ? 0.0f : keep_scale;
  }
}

// ----------------------------------------------------------------------------
// Cross-entropy: loss = logsumexp(x) - x[target]

void CrossEntropy(float* dlogits, double* loss_sum, int64_t* n_valid,
                  const float* logits, const int32_t* targets, int N, int V,
                  int ignore_index, float grad_scale) {
  // Per-row losses are summed serially afterwards so that loss_sum does not
  // depend on the thread count or on reduction arrival order.
  std::vector<double> row_loss(N, 0.0);
  const bool use_threads = static_cast<int64_t>(N) * V >= kMinParallelWork;
#pragma omp parallel for schedule(static) if (use_threads)
  for (int i = 0; i < N; ++i) {
    const int32_t target = targets[i];
    float* di =
        dlogits != nullptr ? dlogits + static_cast<int64_t>(i) * V : nullptr;
    if (target == ignore_index) {
      if (di != nullptr) std::fill(di, di + V, 0.0f);
      continue;
    }
    SHEAF_OPS_CHECK(target >= 0 && target < V);
    const float* xi = logits + static_cast<int64_t>(i) * V;
    float max_logit = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max_logit)
    for (int j = 0; j < V; ++j) {
      max_logit = xi[j] > max_logit ? xi[j] : max_logit;
    }
    double sum = 0.0;
    if (di != nullptr) {
      // Keep exp(x - max) in dlogits so the gradient pass needs no second exp.
      for (int j = 0; j < V; ++j) {
        di[j] = std::exp(xi[j] - max_logit);
        sum += di[j];
      }
      const float factor = static_cast<float>(grad_scale / sum);
#pragma omp simd
      for (int j = 0; j < V; ++j) di[j] *= factor;
      di[target] -= grad_scale;
    } else {
      for (int j = 0; j < V; ++j) sum += std::exp(xi[j] - max_logit);
    }
    row_loss[i] = static_cast<double>(max_logit) + std::log(sum) - xi[target];
  }
  double total = 0.0;
  int64_t count = 0;
  for (int i = 0; i < N; ++i) {
    if (targets[i] == ignore_index) continue;
    total += row_loss[i];
    ++count;
  }
  *loss_sum += total;
  *n_valid += count;
}

}  // namespace sheaf::ops
