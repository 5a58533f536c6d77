// AVX-512 elementwise kernels (see vec_avx512.h). Compiled with -mavx512f
// -mavx512bw -mavx512vl -mfma; like gemm_avx512.cc this file includes no
// C++ header with inline functions or templates (their COMDAT copies could
// be kept for the whole program and fault on a processor without AVX-512).
#include "ops/cpu/vec_avx512.h"

#include <immintrin.h>
#include <stdint.h>

namespace sheaf::ops {
namespace {

inline __m512 Exp16(__m512 x) {
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
  // ln2 split in a part exact in few bits and the rest (Cody-Waite), so that
  // x − n·ln2 is exact for |n| <= 128.
  const __m512 ln2_hi = _mm512_set1_ps(0.693145751953125f);
  const __m512 ln2_lo = _mm512_set1_ps(1.428606765330187045e-06f);
  // Below -104 the result is 0 in fp32 anyway; clamping keeps -inf from
  // turning into NaN in the reduction. Above 88.73 it overflows to inf.
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.8f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
  r = _mm512_fnmadd_ps(n, ln2_lo, r);
  // e^r = Σ r^k / k!, k <= 7, by Horner.
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 TailMask(int64_t left) {
  return static_cast<__mmask16>(left >= 16 ? 0xFFFF : (1u << left) - 1u);
}

}  // namespace

float ExpShiftSumAvx512(float* out, const float* x, int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    const __m512 e = Exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s));
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
    _mm512_mask_storeu_ps(out + i, m, e);
  }
  return _mm512_reduce_add_ps(acc);
}

void ExpAvx512(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    _mm512_mask_storeu_ps(out + i, m, Exp16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

void SwiGluForwardAvx512(float* h, const float* gate, const float* up, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, Exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(h + i, m, _mm512_mul_ps(_mm512_mul_ps(g, s), _mm512_maskz_loadu_ps(m, up + i)));
  }
}

// dgate += dh·up·s·(1 + g·(1 − s));  dup += dh·g·s.
void SwiGluBackwardAvx512(float* dgate, float* dup, const float* dh, const float* gate,
                          const float* up, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = TailMask(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
    const __m512 d = _mm512_maskz_loadu_ps(m, dh + i);
    const __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, Exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    const __m512 dsilu = _mm512_mul_ps(s, _mm512_add_ps(one, _mm512_mul_ps(g, _mm512_sub_ps(one, s))));
    const __m512 dg = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dgate + i),
                                    _mm512_mul_ps(_mm512_mul_ps(d, u), dsilu));
    const __m512 du = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dup + i),
                                    _mm512_mul_ps(_mm512_mul_ps(d, g), s));
    _mm512_mask_storeu_ps(dgate + i, m, dg);
    _mm512_mask_storeu_ps(dup + i, m, du);
  }
}

}  // namespace sheaf::ops
