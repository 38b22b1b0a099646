// A row-major GEMM description run as cuBLAS runs it: column_major() into
// cblas_dgemm(CblasColMajor, …) with exactly cublasDgemm's arguments
// (first = b, second = a). The emulation tests of the GPU's block products
// (H·V, Σ·V) use it, so operand order and leading dimensions are checked
// without a GPU.
#pragma once

#include <cblas.h>

#include <cstdint>

#include "gemm.hpp"

namespace gradnoise::testing {

inline void column_major_dgemm(const detail::RowMajorGemm& row_major, const double* a,
                               const double* b, double* c) {
  const detail::ColumnMajorGemm g = detail::column_major(row_major);
  const auto op = [](bool trans) { return trans ? CblasTrans : CblasNoTrans; };
  const auto i = [](std::int64_t value) { return static_cast<int>(value); };
  cblas_dgemm(CblasColMajor, op(g.trans_first), op(g.trans_second), i(g.m), i(g.n), i(g.k), g.alpha,
              b, i(g.ld_first), a, i(g.ld_second), g.beta, c, i(g.ldc));
}

}  // namespace gradnoise::testing
