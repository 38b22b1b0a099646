// Top eigenpairs of a symmetric operator known only through products, by
// block Krylov iteration with full reorthogonalisation and Rayleigh–Ritz.
// One application of the operator to a block of vectors is one pass over the
// data for Σ or H, so the method works in blocks: a block of b vectors costs
// about as much as one vector, and the pass count is what matters.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace gradnoise {

/// out = A · in for a block of `cols` vectors of length dim, column-major
/// (vector j at [j·dim, (j+1)·dim)). A must be symmetric.
using BlockOperator = std::function<void(const double* in, double* out, std::int64_t cols)>;

/// A symmetric matrix-free operator computed outside the analysis that uses
/// it, e.g. by a session's backend (Profiler::covariance_operator,
/// Profiler::hessian_operator), and the device that computes it, which the
/// reports record. An empty `apply` means none: the CPU operator is used.
struct ExternalOperator {
  BlockOperator apply;
  std::string device = "cpu";
};

/// Called after every pass of an eigensolver: the passes so far, the most
/// allowed, and the worst residual of the wanted pairs relative to max|θ|
/// (converged when it reaches `tol`). For progress displays.
using EigenProgress =
    std::function<void(std::int64_t pass, std::int64_t max_passes, double relative_residual)>;

struct EigenOptions {
  std::int64_t k = 10;          // eigenpairs wanted (largest algebraic)
  double tol = 1e-10;           // ‖A y − θ y‖ ≤ tol · max|θ| for each of the k
  std::int64_t max_passes = 60; // applications of A to a block
  std::int64_t block = 0;       // block size; 0 means k + 4
  std::uint64_t seed = 0;       // the random start block (Philox)
  EigenProgress progress;       // optional
};

struct EigenResult {
  std::vector<double> values;     // k eigenvalues, descending
  std::vector<double> vectors;    // dim × k, column-major, orthonormal
  std::vector<double> residuals;  // ‖A y − θ y‖ per pair
  std::int64_t passes = 0;        // block applications of A used
  bool converged = false;
};

/// The k largest eigenpairs of A (dim × dim). k may equal dim (the whole
/// spectrum, for small problems). Throws InputError for k < 1 or k > dim.
EigenResult top_eigenpairs(std::int64_t dim, const BlockOperator& apply,
                           const EigenOptions& options);

/// All eigenvalues (descending) and eigenvectors of a dense symmetric matrix
/// (column-major dim × dim), by LAPACK dsyevd: the trusted reference.
EigenResult dense_eigenpairs(std::int64_t dim, std::vector<double> matrix);

}  // namespace gradnoise
