// AVX512_BF16 GEMM (see gemm_bf16.h). Compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512bf16 (ops/cpu/BUILD :gemm_bf16). As gemm_avx512.cc,
// this file includes no C++ standard header with inline functions or
// templates, so no AVX-512 COMDAT copy can leak into portable code.
#include "ops/cpu/gemm_bf16.h"

#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

namespace sheaf::ops {
namespace {

constexpr int kMr = 12;    // rows of the register tile
constexpr int kNr = 32;    // columns: two zmm of fp32 accumulators
constexpr int kKc = 512;   // K block (even): a B panel is kKc x kNr bf16 = 32 KiB
constexpr int kMc = 144;   // M block
constexpr int kNc = 3072;  // N block
constexpr int kMcAmx = 128;  // M block of the AMX path (32-row blocks)

inline int Min(int a, int b) { return a < b ? a : b; }

// fp32 -> bf16 bits, round to nearest even (NaN stays a quiet NaN).
inline uint32_t Bf16Bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

void* Grow(void** buf, int64_t* cap, int64_t bytes) {
  if (*cap < bytes) {
    free(*buf);
    *buf = aligned_alloc(64, static_cast<size_t>((bytes + 63) / 64 * 64));
    if (*buf == nullptr) abort();
    *cap = bytes;
  }
  return *buf;
}
thread_local void* tls_a = nullptr;
thread_local int64_t tls_a_cap = 0;
thread_local void* tls_b = nullptr;
thread_local int64_t tls_b_cap = 0;
// The converted A and (for an fp32 weight) W of the current call: owned by
// the calling thread, read by the team.
thread_local void* tls_a16 = nullptr;
thread_local int64_t tls_a16_cap = 0;
thread_local void* tls_w16 = nullptr;
thread_local int64_t tls_w16_cap = 0;

// The weight's element (k, j) of op(W) as bf16 bits.
struct Weight {
  bool trans;
  const uint16_t* w16;
  const float* w32;
  int ld;
  uint32_t at(int k, int j) const {
    const int64_t idx = trans ? static_cast<int64_t>(j) * ld + k : static_cast<int64_t>(k) * ld + j;
    return w16 ? w16[idx] : Bf16Bits(w32[idx]);
  }
};

// Packs op(W)[p0 : p0+kc, j0+panel·32 ...] as pairs: dst[q][j] (32-bit) holds
// rows 2q (low half) and 2q+1 (high half) of column j; zero padding beyond
// nc columns and beyond K rows.
void PackB(uint32_t* dst, const Weight& w, int K, int p0, int kc, int j0, int nc, int panel,
           int stride_pairs) {
  const int jj = panel * kNr;
  const int wid = Min(kNr, nc - jj);
  const int pairs = (kc + 1) / 2;
  uint32_t* out = dst + static_cast<int64_t>(panel) * stride_pairs * kNr;
  for (int q = pairs; q < stride_pairs; ++q) {
    for (int j = 0; j < kNr; ++j) out[q * kNr + j] = 0;
  }
  for (int q = 0; q < pairs; ++q) {
    const int k0 = p0 + 2 * q, k1 = k0 + 1;
    uint32_t* row = out + q * kNr;
    int j = 0;
    for (; j < wid; ++j) {
      const uint32_t lo = w.at(k0, j0 + jj + j);
      const uint32_t hi = k1 < K && k1 < p0 + kc ? w.at(k1, j0 + jj + j) : 0u;
      row[j] = lo | (hi << 16);
    }
    for (; j < kNr; ++j) row[j] = 0;
  }
}

// Rows [r0, r1) of A [., K] (ld lda) as bf16 into dst (ld ld2 = K rounded
// up to even, the pad element zero), 16 at a time (vcvtneps2bf16: round to
// nearest even).
void ConvertRows(uint16_t* dst, int ld2, const float* a, int lda, int r0, int r1, int K) {
  for (int r = r0; r < r1; ++r) {
    const float* src = a + static_cast<int64_t>(r) * lda;
    uint16_t* out = dst + static_cast<int64_t>(r) * ld2;
    int k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + k));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), reinterpret_cast<const __m256i&>(h));
    }
    if (k < K) {
      const __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1u);
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + k));
      _mm256_mask_storeu_epi16(out + k, m, reinterpret_cast<const __m256i&>(h));
    }
    for (int z = K; z < ld2; ++z) out[z] = 0;
  }
}

// Packs bf16(A)[i0 : i0+mc, p0 : p0+kc] (from the converted rows, ld ld2,
// p0 even) in panels of kMr rows: dst[q][i] holds the pair (2q, 2q+1) of
// row i.
void PackA(uint32_t* dst, const uint16_t* a16, int ld2, int i0, int mc, int p0, int kc) {
  const int pairs = (kc + 1) / 2;
  const int panels = (mc + kMr - 1) / kMr;
  for (int panel = 0; panel < panels; ++panel) {
    const int ii = panel * kMr;
    const int h = Min(kMr, mc - ii);
    uint32_t* out = dst + static_cast<int64_t>(panel) * pairs * kMr;
    for (int i = 0; i < kMr; ++i) {
      if (i >= h) {
        for (int q = 0; q < pairs; ++q) out[q * kMr + i] = 0;
        continue;
      }
      const uint16_t* src = a16 + static_cast<int64_t>(i0 + ii + i) * ld2 + p0;
      for (int q = 0; q < pairs; ++q) {
        uint32_t v;
        memcpy(&v, src + 2 * q, 4);
        out[q * kMr + i] = v;
      }
    }
  }
}

inline __m512 Dot(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(a), reinterpret_cast<__m512bh&>(b));
}

void Kernel(int pairs, const uint32_t* ap, const uint32_t* bp, float* c, int ldc, int h, int w,
            float alpha, float beta, bool first) {
  __m512 acc[kMr][2];
  for (int i = 0; i < kMr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int q = 0; q < pairs; ++q) {
    const __m512i b0 = _mm512_load_si512(bp);
    const __m512i b1 = _mm512_load_si512(bp + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMr; ++i) {
      const __m512i x = _mm512_set1_epi32(static_cast<int>(ap[i]));
      acc[i][0] = Dot(acc[i][0], x, b0);
      acc[i][1] = Dot(acc[i][1], x, b1);
    }
    ap += kMr;
    bp += kNr;
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  const __mmask16 m0 = static_cast<__mmask16>(w >= 16 ? 0xFFFF : (1u << w) - 1u);
  const __mmask16 m1 = static_cast<__mmask16>(w >= 32 ? 0xFFFF : w <= 16 ? 0 : (1u << (w - 16)) - 1u);
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

// AMX: a 32 x 32 block of C as four 16 x 16 fp32 tiles (tmm0-3), A as two
// 16-row tiles of 32 bf16 (tmm4-5, straight from the converted rows), B as
// two tiles of 16 pairs x 16 columns (tmm6-7, the packed panel's halves).
struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

void AmxConfigure() {
  TileConfig cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

void AmxBlock(int pairs16, const uint16_t* a16, int ld2, int row0, int p0, const uint32_t* bp,
              float* c, int ldc, int h, int w, float alpha, float beta, bool first) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const uint16_t* a = a16 + static_cast<int64_t>(row0) * ld2 + p0;
  const int64_t lda_bytes = static_cast<int64_t>(ld2) * 2;
  for (int q0 = 0; q0 < pairs16; q0 += 16) {
    _tile_loadd(4, a + 2 * q0, lda_bytes);
    _tile_loadd(5, a + 16 * static_cast<int64_t>(ld2) + 2 * q0, lda_bytes);
    _tile_loadd(6, bp + q0 * kNr, kNr * 4);
    _tile_loadd(7, bp + q0 * kNr + 16, kNr * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float acc[32 * 32];
  _tile_stored(0, acc, 128);
  _tile_stored(1, acc + 16, 128);
  _tile_stored(2, acc + 16 * 32, 128);
  _tile_stored(3, acc + 16 * 32 + 16, 128);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  const __mmask16 m0 = static_cast<__mmask16>(w >= 16 ? 0xFFFF : (1u << w) - 1u);
  const __mmask16 m1 = static_cast<__mmask16>(w >= 32 ? 0xFFFF : w <= 16 ? 0 : (1u << (w - 16)) - 1u);
  for (int i = 0; i < h; ++i) {
    float* row = c + static_cast<int64_t>(i) * ldc;
    for (int half = 0; half < 2; ++half) {
      const __mmask16 m = half == 0 ? m0 : m1;
      if (m == 0) continue;
      float* dst = row + 16 * half;
      __m512 v = _mm512_mul_ps(va, _mm512_load_ps(acc + i * 32 + 16 * half));
      if (!first) {
        v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), v);
      } else if (beta != 0.0f) {
        v = _mm512_add_ps(v, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, dst)));
      }
      _mm512_mask_storeu_ps(dst, m, v);
    }
  }
}

void GemmBf16Impl(bool use_amx, bool trans_w, int M, int N, int K, float alpha, const float* a,
                  int lda, const uint16_t* w_bf16, const float* w_f32, int ldw, float beta,
                  float* c, int ldc);

}  // namespace

void GemmBf16Avx512(bool trans_w, int M, int N, int K, float alpha, const float* a, int lda,
                    const uint16_t* w_bf16, const float* w_f32, int ldw, float beta, float* c,
                    int ldc) {
  GemmBf16Impl(false, trans_w, M, N, K, alpha, a, lda, w_bf16, w_f32, ldw, beta, c, ldc);
}

void GemmBf16Amx(bool trans_w, int M, int N, int K, float alpha, const float* a, int lda,
                 const uint16_t* w_bf16, const float* w_f32, int ldw, float beta, float* c,
                 int ldc) {
  GemmBf16Impl(true, trans_w, M, N, K, alpha, a, lda, w_bf16, w_f32, ldw, beta, c, ldc);
}

namespace {

void GemmBf16Impl(bool use_amx, bool trans_w, int M, int N, int K, float alpha, const float* a,
                  int lda, const uint16_t* w_bf16, const float* w_f32, int ldw, float beta,
                  float* c, int ldc) {
  const bool nested = omp_in_parallel() != 0;
  // Rows padded to 32 bf16 (AMX loads 32 per tile row) and to 32 rows.
  const int ld2 = (K + 31) / 32 * 32;
  const int m_pad = (M + 31) / 32 * 32;
  uint16_t* a16 = static_cast<uint16_t*>(
      Grow(&tls_a16, &tls_a16_cap, static_cast<int64_t>(m_pad) * ld2 * 2));
  if (m_pad > M) memset(a16 + static_cast<int64_t>(M) * ld2, 0, static_cast<size_t>(m_pad - M) * ld2 * 2);
  const int wrows = trans_w ? N : K, wcols = trans_w ? K : N;
  uint16_t* w16 = const_cast<uint16_t*>(w_bf16);
  if (w16 == nullptr) {
    w16 = static_cast<uint16_t*>(
        Grow(&tls_w16, &tls_w16_cap, static_cast<int64_t>(wrows) * wcols * 2));
  }
  {
    const int64_t conv = static_cast<int64_t>(M) * K;
#pragma omp parallel if (!nested && conv >= (int64_t{1} << 18))
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      ConvertRows(a16, ld2, a, lda, static_cast<int>(static_cast<int64_t>(M) * t / nt),
                  static_cast<int>(static_cast<int64_t>(M) * (t + 1) / nt), K);
      if (w_bf16 == nullptr) {
        ConvertRows(w16, wcols, w_f32, ldw, static_cast<int>(static_cast<int64_t>(wrows) * t / nt),
                    static_cast<int>(static_cast<int64_t>(wrows) * (t + 1) / nt), wcols);
      }
    }
  }
  const Weight w{trans_w, w16, nullptr, w_bf16 != nullptr ? ldw : wcols};
  for (int j0 = 0; j0 < N; j0 += kNc) {
    const int nc = Min(kNc, N - j0);
    const int panels_b = (nc + kNr - 1) / kNr;
    for (int p0 = 0; p0 < K; p0 += kKc) {
      const int kc = Min(kKc, K - p0);
      const int pairs = (kc + 1) / 2;
      const int pairs16 = (pairs + 15) / 16 * 16;
      const bool first = p0 == 0;
      uint32_t* bpack = static_cast<uint32_t*>(
          Grow(&tls_b, &tls_b_cap, static_cast<int64_t>(panels_b) * pairs16 * kNr * 4));
      const int mb = use_amx ? kMcAmx : kMc;
      const int m_blocks = (M + mb - 1) / mb;
      const int64_t work = static_cast<int64_t>(M) * nc * kc;
#pragma omp parallel if (!nested && work >= (int64_t{1} << 20))
      {
#pragma omp for schedule(static)
        for (int panel = 0; panel < panels_b; ++panel) {
          PackB(bpack, w, K, p0, kc, j0, nc, panel, pairs16);
        }
        if (use_amx) {
          AmxConfigure();
#pragma omp for schedule(static)
          for (int blk = 0; blk < m_blocks; ++blk) {
            const int i0 = blk * mb;
            const int mc = Min(mb, M - i0);
            for (int panel = 0; panel < panels_b; ++panel) {
              const int jj = panel * kNr;
              const uint32_t* bp = bpack + static_cast<int64_t>(panel) * pairs16 * kNr;
              for (int ii = 0; ii < mc; ii += 32) {
                AmxBlock(pairs16, a16, ld2, i0 + ii, p0, bp,
                         c + static_cast<int64_t>(i0 + ii) * ldc + j0 + jj, ldc, Min(32, mc - ii),
                         Min(kNr, nc - jj), alpha, beta, first);
              }
            }
          }
          _tile_release();
        } else {
#pragma omp for schedule(static)
        for (int blk = 0; blk < m_blocks; ++blk) {
          const int i0 = blk * kMc;
          const int mc = Min(kMc, M - i0);
          uint32_t* apack = static_cast<uint32_t*>(
              Grow(&tls_a, &tls_a_cap, static_cast<int64_t>(kMc) * (kKc / 2) * 4));
          PackA(apack, a16, ld2, i0, mc, p0, kc);
          for (int panel = 0; panel < panels_b; ++panel) {
            const int jj = panel * kNr;
            const int wid = Min(kNr, nc - jj);
            const uint32_t* bp = bpack + static_cast<int64_t>(panel) * pairs16 * kNr;
            for (int ii = 0; ii < mc; ii += kMr) {
              Kernel(pairs, apack + static_cast<int64_t>(ii / kMr) * pairs * kMr, bp,
                     c + static_cast<int64_t>(i0 + ii) * ldc + j0 + jj, ldc, Min(kMr, mc - ii),
                     wid, alpha, beta, first);
            }
          }
        }
        }
      }
    }
  }
}

}  // namespace
}  // namespace sheaf::ops
