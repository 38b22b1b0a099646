// The block Krylov eigensolver against LAPACK's dense one on matrices with
// known spectra: decaying, clustered, low-rank, indefinite.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "gradnoise/error.hpp"
#include "gradnoise/krylov.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::relative_error;

/// A = U diag(spectrum) Uᵀ with a random orthogonal U (QR of a Gaussian matrix).
std::vector<double> matrix_with_spectrum(const std::vector<double>& spectrum, unsigned seed) {
  const auto n = static_cast<std::int64_t>(spectrum.size());
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> u(static_cast<std::size_t>(n * n));
  for (double& v : u) v = normal(rng);
  // Modified Gram–Schmidt on the columns.
  for (std::int64_t c = 0; c < n; ++c) {
    double* col = u.data() + c * n;
    for (std::int64_t p = 0; p < c; ++p) {
      const double* prev = u.data() + p * n;
      double dot = 0;
      for (std::int64_t j = 0; j < n; ++j) dot += prev[j] * col[j];
      for (std::int64_t j = 0; j < n; ++j) col[j] -= dot * prev[j];
    }
    double norm = 0;
    for (std::int64_t j = 0; j < n; ++j) norm += col[j] * col[j];
    for (std::int64_t j = 0; j < n; ++j) col[j] /= std::sqrt(norm);
  }
  std::vector<double> a(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t c = 0; c < n; ++c) {
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < n; ++j) a[j * n + i] += spectrum[c] * u[c * n + i] * u[c * n + j];
    }
  }
  return a;
}

BlockOperator dense_operator(const std::vector<double>& a, std::int64_t n, std::int64_t* calls) {
  return [&a, n, calls](const double* in, double* out, std::int64_t cols) {
    ++*calls;
    for (std::int64_t c = 0; c < cols; ++c) {
      for (std::int64_t i = 0; i < n; ++i) {
        double total = 0;
        for (std::int64_t j = 0; j < n; ++j) total += a[j * n + i] * in[c * n + j];
        out[c * n + i] = total;
      }
    }
  };
}

void expect_matches_dense(const std::vector<double>& spectrum, std::int64_t k, unsigned seed,
                          std::int64_t max_passes) {
  const auto n = static_cast<std::int64_t>(spectrum.size());
  const std::vector<double> a = matrix_with_spectrum(spectrum, seed);
  const EigenResult dense = dense_eigenpairs(n, a);
  std::int64_t calls = 0;
  EigenOptions options;
  options.k = k;
  options.tol = 1e-11;
  options.max_passes = max_passes;
  const EigenResult got = top_eigenpairs(n, dense_operator(a, n, &calls), options);
  EXPECT_TRUE(got.converged);
  EXPECT_EQ(calls, got.passes);
  ASSERT_EQ(static_cast<std::int64_t>(got.values.size()), k);
  const double top = std::abs(dense.values[0]);
  for (std::int64_t c = 0; c < k; ++c) {
    EXPECT_LE(std::abs(got.values[c] - dense.values[c]), 1e-9 * top) << "eigenvalue " << c;
    // Eigenvector up to sign, where the eigenvalue is simple.
    double dot = 0;
    for (std::int64_t j = 0; j < n; ++j) dot += got.vectors[c * n + j] * dense.vectors[c * n + j];
    const bool simple = (c == 0 || dense.values[c - 1] - dense.values[c] > 1e-3 * top) &&
                        (c + 1 >= n || dense.values[c] - dense.values[c + 1] > 1e-3 * top);
    if (simple) EXPECT_NEAR(std::abs(dot), 1.0, 1e-8) << "eigenvector " << c;
  }
}

TEST(Krylov, PowerLawSpectrum) {
  std::vector<double> spectrum(300);
  for (std::size_t j = 0; j < spectrum.size(); ++j) spectrum[j] = 1.0 / std::pow(j + 1.0, 1.5);
  expect_matches_dense(spectrum, 10, 1, 40);
}

TEST(Krylov, LowRankReturnsZerosBeyondTheRank) {
  std::vector<double> spectrum(80, 0.0);
  for (int j = 0; j < 5; ++j) spectrum[j] = 5.0 - j;
  expect_matches_dense(spectrum, 8, 2, 40);
}

TEST(Krylov, IndefiniteTakesTheLargestAlgebraic) {
  std::vector<double> spectrum(60);
  for (std::size_t j = 0; j < spectrum.size(); ++j) spectrum[j] = std::sin(0.7 * j) * (j + 1);
  expect_matches_dense(spectrum, 4, 3, 60);
}

TEST(Krylov, WholeSpectrumOfASmallMatrix) {
  expect_matches_dense({4, 3, 2, 1, 0.5, 0.25}, 6, 4, 10);
}

TEST(Krylov, FewPassesForAFastDecayingSpectrum) {
  // The profile's target: top 10 of a Fashion-MNIST-like spectrum in ≤ 30 passes.
  std::vector<double> spectrum(500);
  for (std::size_t j = 0; j < spectrum.size(); ++j) spectrum[j] = std::exp(-0.05 * j);
  const std::vector<double> a = matrix_with_spectrum(spectrum, 5);
  std::int64_t calls = 0;
  EigenOptions options;
  options.k = 10;
  options.tol = 1e-8;
  const EigenResult got = top_eigenpairs(500, dense_operator(a, 500, &calls), options);
  EXPECT_TRUE(got.converged);
  EXPECT_LE(got.passes, 30);
  for (int c = 0; c < 10; ++c) EXPECT_LE(relative_error(got.values[c], spectrum[c]), 1e-7);
}

TEST(Krylov, RejectsImpossibleK) {
  std::int64_t calls = 0;
  const std::vector<double> a = matrix_with_spectrum({1, 2, 3}, 6);
  EigenOptions options;
  options.k = 4;
  EXPECT_THROW(top_eigenpairs(3, dense_operator(a, 3, &calls), options), InputError);
  options.k = 0;
  EXPECT_THROW(top_eigenpairs(3, dense_operator(a, 3, &calls), options), InputError);
}

}  // namespace
}  // namespace gradnoise

namespace gradnoise {
namespace {

// The progress hook sees every pass, in order, and the last call reports the
// passes the result counts (issue 14, item 12: long solves are not silent).
TEST(Krylov, ProgressIsReportedAfterEveryPass) {
  const std::int64_t dim = 40;
  std::vector<double> diag(dim);
  for (std::int64_t i = 0; i < dim; ++i) diag[i] = 1.0 / static_cast<double>(i + 1);
  const BlockOperator apply = [&](const double* in, double* out, std::int64_t cols) {
    for (std::int64_t c = 0; c < cols; ++c) {
      for (std::int64_t i = 0; i < dim; ++i) out[c * dim + i] = diag[i] * in[c * dim + i];
    }
  };
  std::vector<std::int64_t> seen;
  double last_residual = -1;
  EigenOptions options;
  options.k = 3;
  options.block = 2;
  options.progress = [&](std::int64_t pass, std::int64_t max_passes, double residual) {
    seen.push_back(pass);
    EXPECT_EQ(max_passes, options.max_passes);
    last_residual = residual;
  };
  const EigenResult result = top_eigenpairs(dim, apply, options);
  ASSERT_FALSE(seen.empty());
  for (std::size_t j = 0; j < seen.size(); ++j) EXPECT_EQ(seen[j], static_cast<std::int64_t>(j + 1));
  EXPECT_EQ(seen.back(), result.passes);
  EXPECT_TRUE(result.converged);
  EXPECT_LE(last_residual, options.tol);
}

}  // namespace
}  // namespace gradnoise
