// AVX-512 fp32 GEMM (see gemm_avx512.h). Compiled with -mavx512f -mavx512bw
// -mavx512vl -mfma (ops/cpu/BUILD :gemm_avx512).
//
// This translation unit deliberately includes no C++ standard header that
// defines inline functions or templates (std::min, std::vector, ...): such
// functions are emitted as COMDAT copies, and the linker may keep this
// file's AVX-512 copy for the whole program, which would then fault on a
// processor without AVX-512. Only intrinsics, C library calls and functions
// local to this file are used.
#include "ops/cpu/gemm_avx512.h"

#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

namespace sheaf::ops {
namespace {

constexpr int kMr = 12;   // rows of the register tile
constexpr int kNr = 32;   // columns: two zmm vectors
constexpr int kKc = 256;  // K block: a B panel (kKc x kNr) is 32 KiB, in L1
constexpr int kMc = 144;  // M block: 12 panels, 144 KiB of packed A, in L2
constexpr int kNc = 3072; // N block: packed B up to 3 MiB (L3)

inline int Min(int a, int b) { return a < b ? a : b; }

// A per-thread buffer of at least `floats` floats, 64-byte aligned, grown
// on demand and kept for the thread's lifetime (no allocation per call).
float* ThreadBuffer(float** buf, int64_t* cap, int64_t floats) {
  if (*cap < floats) {
    free(*buf);
    *buf = static_cast<float*>(aligned_alloc(64, static_cast<size_t>((floats * 4 + 63) / 64 * 64)));
    if (*buf == nullptr) abort();
    *cap = floats;
  }
  return *buf;
}
thread_local float* tls_a = nullptr;
thread_local int64_t tls_a_cap = 0;
thread_local float* tls_b = nullptr;
thread_local int64_t tls_b_cap = 0;

// A matrix given as row blocks of storage (see GemmSegments in the header):
// storage row `idx` lives at seg.p + (idx - seg.begin) * seg.ld of the
// segment holding it. A plain matrix is one segment beginning at 0.
struct Rows {
  const GemmSegment* seg;
  int n;
  // Segments are few (<= 8) and looked up once per packed row.
  const float* Row(int idx) const {
    int s = 0;
    while (s + 1 < n && idx >= seg[s + 1].begin) ++s;
    return seg[s].p + static_cast<int64_t>(idx - seg[s].begin) * seg[s].ld;
  }
};

// Packs op(B)[p0 : p0+kc, j0 : j0+nc] into panels of kNr columns:
// dst[panel][p][j], zero beyond nc. Storage rows of b are K rows (not
// transposed) or N rows (transposed).
void PackB(float* dst, const Rows& b, bool trans_b, int p0, int kc, int j0, int nc,
           int panel_begin, int panel_end) {
  for (int panel = panel_begin; panel < panel_end; ++panel) {
    const int jj = panel * kNr;
    const int w = Min(kNr, nc - jj);
    float* out = dst + static_cast<int64_t>(panel) * kc * kNr;
    if (!trans_b) {
      const __mmask16 m0 = static_cast<__mmask16>(w >= 16 ? 0xFFFF : (1u << w) - 1u);
      const __mmask16 m1 = static_cast<__mmask16>(w >= 32 ? 0xFFFF : w <= 16 ? 0 : (1u << (w - 16)) - 1u);
      for (int p = 0; p < kc; ++p) {
        const float* src = b.Row(p0 + p) + j0 + jj;
        _mm512_store_ps(out + p * kNr, _mm512_maskz_loadu_ps(m0, src));
        _mm512_store_ps(out + p * kNr + 16, _mm512_maskz_loadu_ps(m1, src + 16));
      }
    } else {
      // B stored [N, K]: column j of op(B) is row j of b, contiguous in p.
      for (int p = 0; p < kc; ++p) {
        for (int j = 0; j < kNr; ++j) out[p * kNr + j] = 0.0f;
      }
      for (int j = 0; j < w; ++j) {
        const float* src = b.Row(j0 + jj + j) + p0;
        for (int p = 0; p < kc; ++p) out[p * kNr + j] = src[p];
      }
    }
  }
}

// Packs op(A)[i0 : i0+mc, p0 : p0+kc] into panels of kMr rows:
// dst[panel][p][i], zero beyond mc. Not transposed, A may be split along K
// into column blocks (acols: segment s holds columns [begin, next begin) of
// op(A), row i at p + i * ld).
void PackA(float* dst, const float* a, int lda, bool trans_a, const GemmSegment* acols,
           int nacols, int i0, int mc, int p0, int kc) {
  const int panels = (mc + kMr - 1) / kMr;
  for (int panel = 0; panel < panels; ++panel) {
    const int ii = panel * kMr;
    const int h = Min(kMr, mc - ii);
    float* out = dst + static_cast<int64_t>(panel) * kc * kMr;
    if (trans_a) {
      // A stored [K, M]: row p of a holds op(A)[., p], contiguous in i.
      for (int p = 0; p < kc; ++p) {
        const float* src = a + static_cast<int64_t>(p0 + p) * lda + i0 + ii;
        int i = 0;
        for (; i < h; ++i) out[p * kMr + i] = src[i];
        for (; i < kMr; ++i) out[p * kMr + i] = 0.0f;
      }
    } else if (acols == nullptr) {
      for (int i = 0; i < kMr; ++i) {
        if (i < h) {
          const float* src = a + static_cast<int64_t>(i0 + ii + i) * lda + p0;
          for (int p = 0; p < kc; ++p) out[p * kMr + i] = src[p];
        } else {
          for (int p = 0; p < kc; ++p) out[p * kMr + i] = 0.0f;
        }
      }
    } else {
      for (int i = 0; i < kMr; ++i) {
        if (i >= h) {
          for (int p = 0; p < kc; ++p) out[p * kMr + i] = 0.0f;
          continue;
        }
        const int row = i0 + ii + i;
        for (int s = 0; s < nacols; ++s) {
          const int begin = acols[s].begin;
          const int end = s + 1 < nacols ? acols[s + 1].begin : p0 + kc;
          const int lo = begin > p0 ? begin : p0, hi = end < p0 + kc ? end : p0 + kc;
          if (lo >= hi) continue;
          const float* src = acols[s].p + static_cast<int64_t>(row) * acols[s].ld - begin;
          for (int p = lo; p < hi; ++p) out[(p - p0) * kMr + i] = src[p];
        }
      }
    }
  }
}

// The 12 x 32 tile: acc = Σ_p ap[p][i] · bp[p][j] over kc, then
//   first K block: C = alpha·acc + beta·C (beta == 0: C not read);
//   later blocks:  C += alpha·acc.
// Rows >= h and columns >= w are not written.
void Kernel(int kc, const float* ap, const float* bp, float* c, int ldc, int h, int w,
            float alpha, float beta, bool first) {
  __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
  __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
  __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
  __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
  __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
  __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
  __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();
  __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
  __m512 c80 = _mm512_setzero_ps(), c81 = _mm512_setzero_ps();
  __m512 c90 = _mm512_setzero_ps(), c91 = _mm512_setzero_ps();
  __m512 ca0 = _mm512_setzero_ps(), ca1 = _mm512_setzero_ps();
  __m512 cb0 = _mm512_setzero_ps(), cb1 = _mm512_setzero_ps();
  for (int p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_load_ps(bp);
    const __m512 b1 = _mm512_load_ps(bp + 16);
    __m512 x;
#define SHEAF_ROW(i, r0, r1)            \
  x = _mm512_set1_ps(ap[i]);            \
  r0 = _mm512_fmadd_ps(x, b0, r0);      \
  r1 = _mm512_fmadd_ps(x, b1, r1);
    SHEAF_ROW(0, c00, c01)
    SHEAF_ROW(1, c10, c11)
    SHEAF_ROW(2, c20, c21)
    SHEAF_ROW(3, c30, c31)
    SHEAF_ROW(4, c40, c41)
    SHEAF_ROW(5, c50, c51)
    SHEAF_ROW(6, c60, c61)
    SHEAF_ROW(7, c70, c71)
    SHEAF_ROW(8, c80, c81)
    SHEAF_ROW(9, c90, c91)
    SHEAF_ROW(10, ca0, ca1)
    SHEAF_ROW(11, cb0, cb1)
#undef SHEAF_ROW
    ap += kMr;
    bp += kNr;
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  const __mmask16 m0 = static_cast<__mmask16>(w >= 16 ? 0xFFFF : (1u << w) - 1u);
  const __mmask16 m1 = static_cast<__mmask16>(w >= 32 ? 0xFFFF : w <= 16 ? 0 : (1u << (w - 16)) - 1u);
  const __m512 acc[kMr][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                              {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71},
                              {c80, c81}, {c90, c91}, {ca0, ca1}, {cb0, cb1}};
  for (int i = 0; i < h; ++i) {
    float* row = c + static_cast<int64_t>(i) * ldc;
    for (int half = 0; half < 2; ++half) {
      const __mmask16 m = half == 0 ? m0 : m1;
      if (m == 0) continue;
      float* dst = row + 16 * half;
      __m512 v = _mm512_mul_ps(va, acc[i][half]);
      if (!first) {
        v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), v);
      } else if (beta != 0.0f) {
        v = _mm512_add_ps(v, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, dst)));
      }
      _mm512_mask_storeu_ps(dst, m, v);
    }
  }
}

// C column blocks: column j of C is column (j - begin) of segment s's
// matrix (row i at p + i * ld). A tile that falls in one segment is written
// in place; a tile that straddles segments is computed into a local tile and
// merged element by element (the same alpha / beta rule as Kernel).
void Tile(int kc, const float* ap, const float* bp, const GemmSegment* ccols, int nccols,
          int row0, int col0, int h, int w, float alpha, float beta, bool first) {
  int s = 0;
  while (s + 1 < nccols && col0 >= ccols[s + 1].begin) ++s;
  const int end = s + 1 < nccols ? ccols[s + 1].begin : 0x7fffffff;
  float* cs = const_cast<float*>(ccols[s].p);
  if (col0 + w <= end) {
    Kernel(kc, ap, bp, cs + static_cast<int64_t>(row0) * ccols[s].ld + (col0 - ccols[s].begin),
           ccols[s].ld, h, w, alpha, beta, first);
    return;
  }
  alignas(64) float acc[kMr * kNr];
  Kernel(kc, ap, bp, acc, kNr, kMr, kNr, 1.0f, 0.0f, true);
  for (int j = 0; j < w; ++j) {
    const int col = col0 + j;
    while (s + 1 < nccols && col >= ccols[s + 1].begin) ++s;
    float* base = const_cast<float*>(ccols[s].p) + (col - ccols[s].begin);
    for (int i = 0; i < h; ++i) {
      float* dst = base + static_cast<int64_t>(row0 + i) * ccols[s].ld;
      const float v = alpha * acc[i * kNr + j];
      *dst = !first ? *dst + v : beta != 0.0f ? v + beta * *dst : v;
    }
  }
}

void GemmCore(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* a,
              int lda, const GemmSegment* acols, int nacols, const Rows& b, float beta,
              const GemmSegment* ccols, int nccols) {
  const bool nested = omp_in_parallel() != 0;
  for (int j0 = 0; j0 < N; j0 += kNc) {
    const int nc = Min(kNc, N - j0);
    const int panels_b = (nc + kNr - 1) / kNr;
    for (int p0 = 0; p0 < K; p0 += kKc) {
      const int kc = Min(kKc, K - p0);
      const bool first = p0 == 0;
      float* bpack = ThreadBuffer(&tls_b, &tls_b_cap, static_cast<int64_t>(panels_b) * kc * kNr);
      const int m_blocks = (M + kMc - 1) / kMc;
      const int64_t work = static_cast<int64_t>(M) * nc * kc;
#pragma omp parallel if (!nested && work >= (int64_t{1} << 20))
      {
#pragma omp for schedule(static)
        for (int panel = 0; panel < panels_b; ++panel) {
          PackB(bpack, b, trans_b, p0, kc, j0, nc, panel, panel + 1);
        }
#pragma omp for schedule(static)
        for (int blk = 0; blk < m_blocks; ++blk) {
          const int i0 = blk * kMc;
          const int mc = Min(kMc, M - i0);
          float* apack = ThreadBuffer(&tls_a, &tls_a_cap, static_cast<int64_t>(kMc) * kKc);
          PackA(apack, a, lda, trans_a, acols, nacols, i0, mc, p0, kc);
          for (int panel = 0; panel < panels_b; ++panel) {
            const int jj = panel * kNr;
            const int w = Min(kNr, nc - jj);
            const float* bp = bpack + static_cast<int64_t>(panel) * kc * kNr;
            for (int ii = 0; ii < mc; ii += kMr) {
              Tile(kc, apack + static_cast<int64_t>(ii / kMr) * kc * kMr, bp, ccols, nccols,
                   i0 + ii, j0 + jj, Min(kMr, mc - ii), w, alpha, beta, first);
            }
          }
        }
      }
    }
  }
}

}  // namespace

void GemmAvx512(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* a,
                int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  const GemmSegment bseg{b, ldb, 0};
  const GemmSegment cseg{c, ldc, 0};
  GemmCore(trans_a, trans_b, M, N, K, alpha, a, lda, nullptr, 0, Rows{&bseg, 1}, beta, &cseg, 1);
}

void GemmAvx512SplitN(int M, int N, int K, float alpha, const float* a, int lda,
                      const GemmSegment* b_rows, const GemmSegment* c_cols, int nseg,
                      float beta) {
  GemmCore(false, true, M, N, K, alpha, a, lda, nullptr, 0, Rows{b_rows, nseg}, beta, c_cols,
           nseg);
}

void GemmAvx512SplitK(int M, int N, int K, float alpha, const GemmSegment* a_cols,
                      const GemmSegment* b_rows, int nseg, float beta, float* c, int ldc) {
  const GemmSegment cseg{c, ldc, 0};
  GemmCore(false, false, M, N, K, alpha, nullptr, 0, a_cols, nseg, Rows{b_rows, nseg}, beta,
           &cseg, 1);
}

}  // namespace sheaf::ops
