// The host executor of the GEMM sequences written once in core/
// (forward_pass.hpp, hessian_pass.hpp, covariance_pass.hpp): row-major BLAS
// for the products, plain loops for the row operations. The GPU's executors
// are the cuBLAS and kernel twins in kernels/.
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cstdint>

#include "gemm.hpp"
#include "gradnoise/loss.hpp"
#include "losses.hpp"

namespace gradnoise::detail {

/// The row operations of core's sequences (forward_backward, hessian_chunk,
/// covariance_chunk) on host buffers.
struct HostRowOps {
  void add_rows(double* rows, const double* vec, std::int64_t m, std::int64_t width) {
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < width; ++j) rows[i * width + j] += vec[j];
    }
  }
  void copy(double* dst, const double* src, std::int64_t count) { std::copy_n(src, count, dst); }
  void loss_state_rows(Loss loss, const double* z, std::int64_t m, std::int64_t k, double* state) {
    losses::visit_loss(loss, [&](auto l) {
      for (std::int64_t i = 0; i < m; ++i) decltype(l)::hessian_state(z + i * k, k, state + i * k);
    });
  }
  void loss_hessian_rows(Loss loss, const double* state, const double* rz, std::int64_t m,
                         std::int64_t cols, std::int64_t k, double* rd) {
    losses::visit_loss(loss, [&](auto l) {
      for (std::int64_t j = 0; j < m * cols; ++j) {
        decltype(l)::hessian_row(state + (j / cols) * k, rz + j * k, k, rd + j * k);
      }
    });
  }
};

/// The CPU executor of core's sequences: every GEMM as the row-major call it is.
struct RowMajorBlasExec : HostRowOps {
  void gemm(const RowMajorGemm& g, const double* a, const double* b, double* c) {
    cblas_dgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans,
                g.trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(g.m), static_cast<int>(g.n),
                static_cast<int>(g.k), g.alpha, a, static_cast<int>(g.lda), b,
                static_cast<int>(g.ldb), g.beta, c, static_cast<int>(g.ldc));
  }
};

}  // namespace gradnoise::detail
