// An fp32 GEMM for AVX-512F processors, compiled with AVX-512 flags in its
// own library (:gemm_avx512) and called only after a runtime CPU check, so
// that the default build stays portable (x86-64-v2).
//
// C[M,N] = alpha · op(A) op(B) + beta · C, row-major, op as in ops.h Gemm
// (trans_a: a stored [K,M]; trans_b: b stored [N,K]); M, N, K >= 1.
// beta == 0 does not read C (NaNs in it are ignored).
//
// Scheme (GotoBLAS / BLIS): B is packed in panels of 32 columns by blocks of
// kKc rows of K, A in panels of 12 rows; a 12 x 32 register tile (24 zmm
// accumulators) runs over one K block. Tails in M and N are zero-padded in
// the packed panels and written back with masked stores.
//
// Deterministic and independent of the thread count: each element of C is
// produced by one thread, which adds its K products in a fixed order (K
// blocks in order, each block's products in order, alpha applied per block).
// Threads split the blocks of M rows; inside an OpenMP parallel region it
// runs on the calling thread.
#ifndef SHEAF_OPS_CPU_GEMM_AVX512_H_
#define SHEAF_OPS_CPU_GEMM_AVX512_H_

namespace sheaf::ops {

// A block of a matrix split into pieces that live apart in memory: rows
// (or columns) [begin, next segment's begin) of the logical matrix are rows
// (or columns) of the matrix at p, with leading dimension ld.
struct GemmSegment {
  const float* p;
  int ld;
  int begin;
};

// Call only when CpuHasAvx512() (cpu_features.h).
void GemmAvx512(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* a,
                int lda, const float* b, int ldb, float beta, float* c, int ldc);

// Grouped forms (fused projections), with the same per-element order as
// GemmAvx512, so each element equals what GemmAvx512 gives on its own block:
// SplitN: C_s[M, n_s] = alpha · A[M,K] · B_sᵀ + beta · C_s, the logical
//   B = [B_0; B_1; ...] (b_rows[s]: its rows [begin, next), stored [n_s, K])
//   and C = [C_0 C_1 ...] (c_cols[s]: columns [begin, next)), both with the
//   same begins; N = Σ n_s. A is packed once for all of them.
// SplitK: C[M,N] = alpha · Σ_s A_s[M, k_s] · B_s[k_s, N] + beta · C, the
//   logical A = [A_0 A_1 ...] (a_cols[s]: columns [begin, next)) and
//   B = [B_0; B_1; ...] (b_rows[s]: rows [begin, next)); K = Σ k_s. The K
//   products of an element are added in logical order (kKc blocks).
void GemmAvx512SplitN(int M, int N, int K, float alpha, const float* a, int lda,
                      const GemmSegment* b_rows, const GemmSegment* c_cols, int nseg,
                      float beta);
void GemmAvx512SplitK(int M, int N, int K, float alpha, const GemmSegment* a_cols,
                      const GemmSegment* b_rows, int nseg, float beta, float* c, int ldc);

}  // namespace sheaf::ops

#endif  // SHEAF_OPS_CPU_GEMM_AVX512_H_
