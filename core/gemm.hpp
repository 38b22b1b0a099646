// A GEMM as a description, so one sequence of products (core/hessian_pass.hpp,
// core/covariance_pass.hpp) runs on every executor: row-major BLAS on the CPU,
// cuBLAS on the GPU, and column-major BLAS with cuBLAS's exact arguments in
// the tests that check the mapping. Plain C++, no CUDA header.
#pragma once

#include <cstdint>

namespace gradnoise::detail {

/// Row-major C (m×n) = alpha op(A) op(B) + beta C, as cblas_dgemm(CblasRowMajor, …)
/// takes it; op(A) is m×k and op(B) k×n.
struct RowMajorGemm {
  bool trans_a = false, trans_b = false;
  std::int64_t m = 0, n = 0, k = 0;
  double alpha = 1;
  std::int64_t lda = 0, ldb = 0;
  double beta = 0;
  std::int64_t ldc = 0;
};

/// Column-major C (m×n) = alpha op(first) op(second) + beta C, as
/// cublasDgemm and cblas_dgemm(CblasColMajor, …) take it.
struct ColumnMajorGemm {
  bool trans_first = false, trans_second = false;
  std::int64_t m = 0, n = 0, k = 0;
  double alpha = 1;
  std::int64_t ld_first = 0, ld_second = 0;
  double beta = 0;
  std::int64_t ldc = 0;
};

/// A row-major buffer read column-major is its transpose, so row-major
/// C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: the operands swap
/// (first = B, second = A), each keeps its own transpose flag and leading
/// dimension, and m and n swap.
inline ColumnMajorGemm column_major(const RowMajorGemm& g) {
  return {g.trans_b, g.trans_a, g.n, g.m, g.k, g.alpha, g.ldb, g.lda, g.beta, g.ldc};
}

/// exec.gemm on the description of row-major C = alpha op(A) op(B) + beta C.
template <class Exec>
void row_major_gemm(Exec& exec, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
                    std::int64_t k, double alpha, const double* a, std::int64_t lda,
                    const double* b, std::int64_t ldb, double beta, double* c, std::int64_t ldc) {
  exec.gemm(RowMajorGemm{trans_a, trans_b, m, n, k, alpha, lda, ldb, beta, ldc}, a, b, c);
}

}  // namespace gradnoise::detail
