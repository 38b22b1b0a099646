// Block Krylov Rayleigh–Ritz with full reorthogonalisation.
//
// Basis Q grows by one block per application of A: the new block is A applied
// to the previous one, orthogonalised twice against all of Q (block classical
// Gram–Schmidt, two GEMMs a round; twice is enough) and within itself. Both Q and A·Q are kept,
// so the projected matrix T = Qᵀ(AQ) and every Ritz residual ‖AQy − θQy‖ are
// exact, not recurrences: convergence is judged on true residuals.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "gradnoise/error.hpp"
#include "gradnoise/krylov.hpp"
#include "random.hpp"

extern "C" void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda,
                        double* w, double* work, const int* lwork, int* iwork, const int* liwork,
                        int* info);

namespace gradnoise {
namespace {

double norm(const double* v, std::int64_t dim) {
  double total = 0;
  for (std::int64_t j = 0; j < dim; ++j) total += v[j] * v[j];
  return std::sqrt(total);
}

/// w -= Q (Qᵀ w) for the `cols` columns of Q at q (dim each), twice.
void orthogonalise(const double* q, std::int64_t dim, std::int64_t cols, double* w) {
  if (cols == 0) return;
  std::vector<double> coef(static_cast<std::size_t>(cols));
  for (int round = 0; round < 2; ++round) {
    cblas_dgemv(CblasColMajor, CblasTrans, static_cast<int>(dim), static_cast<int>(cols), 1.0, q,
                static_cast<int>(dim), w, 1, 0.0, coef.data(), 1);
    cblas_dgemv(CblasColMajor, CblasNoTrans, static_cast<int>(dim), static_cast<int>(cols), -1.0, q,
                static_cast<int>(dim), coef.data(), 1, 1.0, w, 1);
  }
}

/// W -= Q (Qᵀ W) for a block of `cols` columns at once, twice: two GEMMs a
/// round, so the basis (dim × basis, hundreds of MB for P ~ 10⁵ and a
/// hundred columns) is read four times for the whole block, where one column
/// at a time read it four times per column.
void orthogonalise_block(const double* q, std::int64_t dim, std::int64_t basis, double* w,
                         std::int64_t cols) {
  if (basis == 0 || cols == 0) return;
  std::vector<double> coef(static_cast<std::size_t>(basis * cols));
  for (int round = 0; round < 2; ++round) {
    cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, static_cast<int>(basis), static_cast<int>(cols),
                static_cast<int>(dim), 1.0, q, static_cast<int>(dim), w, static_cast<int>(dim), 0.0,
                coef.data(), static_cast<int>(basis));
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(dim), static_cast<int>(cols),
                static_cast<int>(basis), -1.0, q, static_cast<int>(dim), coef.data(), static_cast<int>(basis),
                1.0, w, static_cast<int>(dim));
  }
}

/// Appends the columns of `block` (dim × cols) to the basis q after making
/// them orthonormal to it (block classical Gram–Schmidt, twice, against the
/// basis it had; then each column twice against the ones this call added); a
/// column that vanishes (the Krylov space closed in that direction) is
/// replaced by a fresh random one, made orthogonal to the whole basis.
void extend_basis(std::vector<double>& q, std::int64_t dim, std::int64_t& basis_cols,
                  std::vector<double> block, std::int64_t cols, std::uint64_t seed,
                  std::uint64_t& fresh) {
  std::vector<double> before(static_cast<std::size_t>(cols));
  for (std::int64_t c = 0; c < cols; ++c) before[c] = norm(block.data() + c * dim, dim);
  const std::int64_t old_cols = basis_cols;
  orthogonalise_block(q.data(), dim, old_cols, block.data(), cols);
  q.reserve(static_cast<std::size_t>(std::min(dim, old_cols + cols) * dim));
  for (std::int64_t c = 0; c < cols && basis_cols < dim; ++c) {
    double* w = block.data() + c * dim;
    q.resize(static_cast<std::size_t>((basis_cols + 1) * dim));
    orthogonalise(q.data() + old_cols * dim, dim, basis_cols - old_cols, w);
    double after = norm(w, dim);
    // Tries with random directions until one is independent of the basis.
    while (!(after > 1e-10 * std::max(before[c], 1e-300))) {
      detail::fill_normals(seed, 0x4b525931u, fresh++, w, dim);
      const double start = norm(w, dim);
      orthogonalise(q.data(), dim, basis_cols, w);
      after = norm(w, dim);
      if (after > 1e-6 * start) break;
    }
    double* dst = q.data() + basis_cols * dim;
    for (std::int64_t j = 0; j < dim; ++j) dst[j] = w[j] / after;
    ++basis_cols;
  }
}

/// Eigen-decomposition of a symmetric n×n column-major matrix in place:
/// ascending values, vectors in the columns.
std::vector<double> symmetric_eigen(std::int64_t n, std::vector<double>& a) {
  const int n_i = static_cast<int>(n);
  std::vector<double> values(static_cast<std::size_t>(n));
  int info = 0, lwork = -1, liwork = -1, iwork_query = 0;
  double work_query = 0;
  const char jobz = 'V', uplo = 'L';
  dsyevd_(&jobz, &uplo, &n_i, a.data(), &n_i, values.data(), &work_query, &lwork, &iwork_query,
          &liwork, &info);
  lwork = static_cast<int>(work_query);
  liwork = iwork_query;
  std::vector<double> work(static_cast<std::size_t>(std::max(lwork, 1)));
  std::vector<int> iwork(static_cast<std::size_t>(std::max(liwork, 1)));
  dsyevd_(&jobz, &uplo, &n_i, a.data(), &n_i, values.data(), work.data(), &lwork, iwork.data(),
          &liwork, &info);
  if (info != 0) {
    throw RuntimeError("the symmetric eigensolver (LAPACK dsyevd) failed (info " +
                       std::to_string(info) + ")");
  }
  return values;
}

}  // namespace

EigenResult dense_eigenpairs(std::int64_t dim, std::vector<double> matrix) {
  if (static_cast<std::int64_t>(matrix.size()) != dim * dim) {
    throw InputError("a dense matrix of " + std::to_string(matrix.size()) + " entries is not " +
                     std::to_string(dim) + "×" + std::to_string(dim));
  }
  const std::vector<double> ascending = symmetric_eigen(dim, matrix);
  EigenResult result;
  result.values.assign(ascending.rbegin(), ascending.rend());
  result.vectors.resize(matrix.size());
  for (std::int64_t c = 0; c < dim; ++c) {
    std::copy_n(matrix.data() + (dim - 1 - c) * dim, dim, result.vectors.data() + c * dim);
  }
  result.residuals.assign(static_cast<std::size_t>(dim), 0.0);
  result.converged = true;
  return result;
}

EigenResult top_eigenpairs(std::int64_t dim, const BlockOperator& apply, const EigenOptions& options) {
  const std::int64_t k = options.k;
  if (k < 1 || k > dim) {
    throw InputError("asked for " + std::to_string(k) + " eigenpairs of a " + std::to_string(dim) +
                     "-dimensional operator; expected 1 ≤ k ≤ " + std::to_string(dim));
  }
  const std::int64_t block = std::min(dim, options.block > 0 ? options.block : k + 4);
  std::vector<double> q, aq;  // basis and A·basis, dim × basis_cols, column-major
  std::int64_t basis_cols = 0;
  std::uint64_t fresh = 0;

  std::vector<double> start(static_cast<std::size_t>(block * dim));
  for (std::int64_t c = 0; c < block; ++c) {
    detail::fill_normals(options.seed, 0x4b525930u, static_cast<std::uint64_t>(c),
                         start.data() + c * dim, dim);
  }
  extend_basis(q, dim, basis_cols, std::move(start), block, options.seed, fresh);

  EigenResult result;
  std::int64_t applied_cols = 0;  // columns of q whose A-image is in aq
  std::vector<double> projected;  // T = Qᵀ(AQ) of the last pass, symmetric, projected_cols²
  std::int64_t projected_cols = 0;
  while (true) {
    // Apply A to the newest columns: one pass.
    const std::int64_t new_cols = basis_cols - applied_cols;
    aq.resize(static_cast<std::size_t>(basis_cols * dim));
    apply(q.data() + applied_cols * dim, aq.data() + applied_cols * dim, new_cols);
    applied_cols = basis_cols;
    ++result.passes;

    // Rayleigh–Ritz on the whole basis. T = Qᵀ(AQ) grows by the new columns'
    // rows and columns only (the old block is last pass's, Q and AQ's old
    // columns being unchanged): two GEMMs over the new columns instead of one
    // over the whole basis, which for P ~ 10⁵ and a hundred columns was most
    // of a pass's host time.
    const std::int64_t n = basis_cols, old = projected_cols, fresh_cols = n - old;
    std::vector<double> t(static_cast<std::size_t>(n * n));
    for (std::int64_t j = 0; j < old; ++j) std::copy_n(projected.data() + j * old, old, t.data() + j * n);
    std::vector<double> columns(static_cast<std::size_t>(n * fresh_cols));  // Qᵀ(AQ_new), n × new
    cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(fresh_cols),
                static_cast<int>(dim), 1.0, q.data(), static_cast<int>(dim), aq.data() + old * dim,
                static_cast<int>(dim), 0.0, columns.data(), static_cast<int>(n));
    for (std::int64_t j = 0; j < fresh_cols; ++j) std::copy_n(columns.data() + j * n, n, t.data() + (old + j) * n);
    if (old > 0) {
      std::vector<double> rows(static_cast<std::size_t>(fresh_cols * old));  // Q_newᵀ(AQ_old), new × old
      cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, static_cast<int>(fresh_cols), static_cast<int>(old),
                  static_cast<int>(dim), 1.0, q.data() + old * dim, static_cast<int>(dim), aq.data(),
                  static_cast<int>(dim), 0.0, rows.data(), static_cast<int>(fresh_cols));
      for (std::int64_t j = 0; j < old; ++j) {
        for (std::int64_t i = 0; i < fresh_cols; ++i) t[j * n + old + i] = rows[j * fresh_cols + i];
      }
    }
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < i; ++j) {
        const double sym = 0.5 * (t[i * n + j] + t[j * n + i]);
        t[i * n + j] = t[j * n + i] = sym;
      }
    }
    projected = t;
    projected_cols = n;
    const std::vector<double> theta = symmetric_eigen(n, t);  // ascending; t holds Y
    const std::int64_t have = std::min(k, n);
    // Ritz vectors x = Q y and A x = (AQ) y for the top `have`.
    std::vector<double> y(static_cast<std::size_t>(n * have));
    for (std::int64_t c = 0; c < have; ++c) std::copy_n(t.data() + (n - 1 - c) * n, n, y.data() + c * n);
    std::vector<double> x(static_cast<std::size_t>(dim * have)), ax(x.size());
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(dim),
                static_cast<int>(have), static_cast<int>(n), 1.0, q.data(), static_cast<int>(dim),
                y.data(), static_cast<int>(n), 0.0, x.data(), static_cast<int>(dim));
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(dim),
                static_cast<int>(have), static_cast<int>(n), 1.0, aq.data(), static_cast<int>(dim),
                y.data(), static_cast<int>(n), 0.0, ax.data(), static_cast<int>(dim));
    double scale = 0;
    for (double v : theta) scale = std::max(scale, std::abs(v));
    result.values.assign(static_cast<std::size_t>(have), 0.0);
    result.residuals.assign(static_cast<std::size_t>(have), 0.0);
    bool all_converged = have == k;
    for (std::int64_t c = 0; c < have; ++c) {
      const double value = theta[n - 1 - c];
      result.values[c] = value;
      double r = 0;
      for (std::int64_t j = 0; j < dim; ++j) {
        const double e = ax[c * dim + j] - value * x[c * dim + j];
        r += e * e;
      }
      result.residuals[c] = std::sqrt(r);
      all_converged = all_converged && result.residuals[c] <= options.tol * std::max(scale, 1e-300);
    }
    result.vectors = std::move(x);
    if (options.progress) {
      double worst = 0;
      for (const double r : result.residuals) worst = std::max(worst, r / std::max(scale, 1e-300));
      options.progress(result.passes, options.max_passes, worst);
    }
    // The basis spans everything: Rayleigh–Ritz is then exact.
    if (basis_cols == dim) all_converged = all_converged || have == k;
    if (all_converged || result.passes >= options.max_passes || basis_cols == dim) {
      result.converged = all_converged;
      return result;
    }
    // Next block: A applied to the newest block, made orthonormal to the basis.
    std::vector<double> next(aq.end() - static_cast<std::ptrdiff_t>(new_cols * dim), aq.end());
    extend_basis(q, dim, basis_cols, std::move(next), std::min(new_cols, block), options.seed, fresh);
  }
}

}  // namespace gradnoise
