// Σ V, the dense Σ, its top eigenpairs and tr(Σ²) against materialised
// per-sample gradients (brute force, two-pass centred), on linear, two-layer
// and deep linear models, squared loss and cross-entropy, with and without
// biases; then an ill-conditioned case (‖G‖² ≫ tr Σ) and the refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "brute_force.hpp"
#include "gradnoise/covariance.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/krylov.hpp"
#include "gradnoise/profile.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::max_abs;
using testing::random_dataset;
using testing::random_model;
using testing::relative_error;

/// Σ from materialised g_i: G first, then (1/N) Σ (g_i − G)(g_i − G)ᵀ.
struct DenseReference {
  std::int64_t p = 0;
  std::vector<double> mean;   // G
  std::vector<double> sigma;  // P×P, column-major (symmetric)
  double trace = 0;
};

DenseReference dense_reference(const Model& model, const DataSource& data, Loss loss) {
  const PerSample ps = per_sample_gradients(model, data, loss);
  DenseReference ref;
  ref.p = ps.p;
  ref.mean.assign(static_cast<std::size_t>(ps.p), 0.0);
  for (std::int64_t i = 0; i < ps.n; ++i) {
    for (std::int64_t j = 0; j < ps.p; ++j) ref.mean[j] += ps.grads[i * ps.p + j];
  }
  for (double& g : ref.mean) g /= static_cast<double>(ps.n);
  ref.sigma.assign(static_cast<std::size_t>(ps.p * ps.p), 0.0);
  std::vector<double> centred(static_cast<std::size_t>(ps.p));
  for (std::int64_t i = 0; i < ps.n; ++i) {
    for (std::int64_t j = 0; j < ps.p; ++j) centred[j] = ps.grads[i * ps.p + j] - ref.mean[j];
    for (std::int64_t c = 0; c < ps.p; ++c) {
      for (std::int64_t r = 0; r < ps.p; ++r) ref.sigma[c * ps.p + r] += centred[r] * centred[c];
    }
  }
  for (double& s : ref.sigma) s /= static_cast<double>(ps.n);
  for (std::int64_t j = 0; j < ps.p; ++j) ref.trace += ref.sigma[j * ps.p + j];
  return ref;
}

/// The diagonal block of rows/columns [first, first + count).
std::vector<double> block_of(const std::vector<double>& sigma, std::int64_t p, std::int64_t first,
                             std::int64_t count) {
  std::vector<double> block(static_cast<std::size_t>(count * count));
  for (std::int64_t c = 0; c < count; ++c) {
    for (std::int64_t r = 0; r < count; ++r) {
      block[c * count + r] = sigma[(first + c) * p + first + r];
    }
  }
  return block;
}

double frobenius_sq(const std::vector<double>& matrix) {
  double total = 0;
  for (double v : matrix) total += v * v;
  return total;
}

/// Σ·V with plain loops (dim × cols, column-major).
std::vector<double> dense_times(const std::vector<double>& sigma, std::int64_t dim,
                                const std::vector<double>& v, std::int64_t cols) {
  std::vector<double> out(static_cast<std::size_t>(dim * cols), 0.0);
  for (std::int64_t c = 0; c < cols; ++c) {
    for (std::int64_t j = 0; j < dim; ++j) {
      for (std::int64_t r = 0; r < dim; ++r) out[c * dim + r] += sigma[j * dim + r] * v[c * dim + j];
    }
  }
  return out;
}

std::vector<double> random_block(std::int64_t dim, std::int64_t cols, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> v(static_cast<std::size_t>(dim * cols));
  for (double& x : v) x = normal(rng);
  return v;
}

/// max_c ‖got_c − want_c‖ / (‖Σ‖₂ ‖v_c‖): the error of Σv relative to its natural scale.
double product_error(const std::vector<double>& got, const std::vector<double>& want,
                     const std::vector<double>& v, std::int64_t dim, std::int64_t cols,
                     double sigma_norm) {
  double worst = 0;
  for (std::int64_t c = 0; c < cols; ++c) {
    double diff = 0, norm_v = 0;
    for (std::int64_t j = 0; j < dim; ++j) {
      diff += (got[c * dim + j] - want[c * dim + j]) * (got[c * dim + j] - want[c * dim + j]);
      norm_v += v[c * dim + j] * v[c * dim + j];
    }
    worst = std::max(worst, std::sqrt(diff) / (sigma_norm * std::sqrt(norm_v)));
  }
  return worst;
}

struct Case {
  std::string name;
  std::vector<std::int64_t> widths;
  bool bias;
  Loss loss;
  std::int64_t n;
  unsigned seed;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class CovarianceVsBruteForce : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const Case& c = GetParam();
    model_ = random_model(c.widths, c.bias, c.seed);
    data_ = random_dataset(c.n, c.widths.front(), c.widths.back(), c.loss, c.seed + 100);
    ref_ = dense_reference(model_, data_, c.loss);
    ASSERT_GT(ref_.trace, 0.0);
  }

  Model model_;
  Dataset data_;
  DenseReference ref_;
};

TEST_P(CovarianceVsBruteForce, ApplyMatchesDenseProduct) {
  const Loss loss = GetParam().loss;
  const std::int64_t p = ref_.p;
  const double sigma_norm = dense_eigenpairs(p, ref_.sigma).values[0];
  const std::int64_t cols = 3;
  const std::vector<double> v = random_block(p, cols, 7);
  const std::vector<double> want = dense_times(ref_.sigma, p, v, cols);
  // Chunks that do not divide N, and one chunk holding everything.
  for (const std::int64_t chunk : {std::int64_t{7}, std::int64_t{4096}}) {
    const CovarianceOperator op(model_, data_, loss, ref_.mean, chunk);
    ASSERT_EQ(op.dim(), p);
    std::vector<double> got(v.size());
    op.apply(v.data(), got.data(), cols);
    EXPECT_EQ(op.passes(), 1);
    EXPECT_LE(product_error(got, want, v, p, cols, sigma_norm), 1e-10) << "chunk " << chunk;
    // Through the eigensolver's interface too.
    std::vector<double> again(v.size());
    op.as_block_operator()(v.data(), again.data(), cols);
    EXPECT_EQ(op.passes(), 2);
    EXPECT_EQ(again, got) << "the same input gives bit-identical products";
  }
}

TEST_P(CovarianceVsBruteForce, LayerOperatorMatchesDiagonalBlock) {
  const Loss loss = GetParam().loss;
  for (std::int64_t l = 0; l < model_.num_layers(); ++l) {
    const std::int64_t first = model_.param_offset(l);
    const std::int64_t dim = model_.layers[l].num_params();
    const std::vector<double> block = block_of(ref_.sigma, ref_.p, first, dim);
    const double block_norm = dense_eigenpairs(dim, block).values[0];
    const std::vector<double> v = random_block(dim, 2, 11 + static_cast<unsigned>(l));
    const CovarianceOperator op(model_, data_, loss, ref_.mean, 5, l);
    ASSERT_EQ(op.dim(), dim);
    std::vector<double> got(v.size());
    op.apply(v.data(), got.data(), 2);
    EXPECT_LE(product_error(got, dense_times(block, dim, v, 2), v, dim, 2, block_norm), 1e-10)
        << Model::layer_name(l);
  }
}

TEST_P(CovarianceVsBruteForce, DenseMatrixMatches) {
  const std::vector<double> got = covariance_matrix(model_, data_, GetParam().loss, ref_.mean, 4096, 6);
  ASSERT_EQ(got.size(), ref_.sigma.size());
  const double scale = max_abs(ref_.sigma);
  for (std::size_t j = 0; j < got.size(); ++j) {
    ASSERT_LE(std::abs(got[j] - ref_.sigma[j]), 1e-10 * scale) << "entry " << j;
  }
}

TEST_P(CovarianceVsBruteForce, TraceSqBothMethodsMatchFrobenius) {
  const Loss loss = GetParam().loss;
  const double want = frobenius_sq(ref_.sigma);
  for (const TraceSqMethod method : {TraceSqMethod::dense, TraceSqMethod::gram}) {
    // Gram: outer blocks of 10 rows and chunks of 7, so blocks and chunks straddle each other.
    TraceSqOptions options;
    options.method = method;
    options.chunk_rows = 7;
    options.block_rows = 10;
    const TraceSq got = trace_cov_sq(model_, data_, loss, ref_.mean, options);
    EXPECT_EQ(got.method, method);
    EXPECT_LE(relative_error(got.total, want), 1e-10) << static_cast<int>(method);
    ASSERT_EQ(static_cast<std::int64_t>(got.layers.size()), model_.num_layers());
    for (std::int64_t l = 0; l < model_.num_layers(); ++l) {
      const double want_l = frobenius_sq(
          block_of(ref_.sigma, ref_.p, model_.param_offset(l), model_.layers[l].num_params()));
      EXPECT_LE(relative_error(got.layers[l], want_l), 1e-10)
          << static_cast<int>(method) << " " << Model::layer_name(l);
    }
  }
}

TEST_P(CovarianceVsBruteForce, SpectrumMatchesDenseEigenpairs) {
  const Loss loss = GetParam().loss;
  const Profile prof = profile_brute_force(model_, data_, loss, false);
  SpectrumOptions options;
  options.k = 4;
  options.tol = 1e-12;
  options.max_passes = 100;
  options.chunk_rows = 9;
  const CovarianceSpectrum got = covariance_spectrum(model_, data_, loss, prof, options);
  const EigenResult want = dense_eigenpairs(ref_.p, ref_.sigma);
  EXPECT_TRUE(got.converged);
  ASSERT_EQ(got.top_eigenvalues.size(), 4u);
  const double top = want.values[0];
  for (std::int64_t c = 0; c < 4; ++c) {
    ASSERT_GT(want.values[c], 1e-6 * top) << "the test needs a nonzero top-4";
    EXPECT_LE(relative_error(got.top_eigenvalues[c], want.values[c]), 1e-8) << "eigenvalue " << c;
    const bool separated = (c == 0 || want.values[c - 1] - want.values[c] > 1e-2 * top) &&
                           want.values[c] - want.values[c + 1] > 1e-2 * top;
    if (!separated) continue;
    double dot = 0;
    for (std::int64_t j = 0; j < ref_.p; ++j) {
      dot += got.top_eigenvectors[c * ref_.p + j] * want.vectors[c * ref_.p + j];
    }
    EXPECT_NEAR(std::abs(dot), 1.0, 1e-8) << "eigenvector " << c;
  }
  // Small problem: tr(Σ²) is computed exactly, and agrees with ‖Σ‖_F².
  const double frob = frobenius_sq(ref_.sigma);
  EXPECT_TRUE(got.trace_cov_sq_exact);
  EXPECT_LE(relative_error(got.trace_cov_sq, frob), 1e-10);
  EXPECT_LE(relative_error(got.effective_rank, ref_.trace * ref_.trace / frob), 1e-10);
  double top_sq = 0;
  for (std::int64_t c = 0; c < 4; ++c) top_sq += want.values[c] * want.values[c];
  EXPECT_LE(relative_error(got.top_eigenvalues_sq_sum, top_sq), 1e-8);
  EXPECT_LE(got.top_eigenvalues_sq_sum, got.trace_cov_sq * (1 + 1e-12));

  // Per layer: the diagonal blocks' spectra and Frobenius norms.
  ASSERT_EQ(static_cast<std::int64_t>(got.layers.size()), model_.num_layers());
  for (std::int64_t l = 0; l < model_.num_layers(); ++l) {
    const std::int64_t dim = model_.layers[l].num_params();
    const std::vector<double> block = block_of(ref_.sigma, ref_.p, model_.param_offset(l), dim);
    const EigenResult want_l = dense_eigenpairs(dim, block);
    const CovarianceSpectrum::Layer& layer = got.layers[l];
    EXPECT_EQ(layer.name, Model::layer_name(l));
    EXPECT_TRUE(layer.converged);
    const auto k_l = static_cast<std::int64_t>(layer.top_eigenvalues.size());
    ASSERT_EQ(k_l, std::min<std::int64_t>(4, dim));
    for (std::int64_t c = 0; c < k_l; ++c) {
      EXPECT_LE(std::abs(layer.top_eigenvalues[c] - want_l.values[c]), 1e-8 * want_l.values[0])
          << layer.name << " eigenvalue " << c;
    }
    double block_trace = 0;
    for (std::int64_t j = 0; j < dim; ++j) block_trace += block[j * dim + j];
    EXPECT_LE(relative_error(layer.trace_cov_sq, frobenius_sq(block)), 1e-10) << layer.name;
    EXPECT_LE(relative_error(layer.effective_rank, block_trace * block_trace / frobenius_sq(block)),
              1e-10)
        << layer.name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Covariance, CovarianceVsBruteForce,
    ::testing::Values(Case{"linear_mse_bias", {6, 3}, true, Loss::squared, 41, 1},
                      Case{"linear_ce_nobias", {7, 4}, false, Loss::cross_entropy, 37, 2},
                      Case{"two_layer_mse_nobias", {5, 4, 3}, false, Loss::squared, 43, 3},
                      Case{"two_layer_ce_bias", {5, 4, 3}, true, Loss::cross_entropy, 39, 4},
                      Case{"deep_mse_bias", {4, 3, 3, 3, 2}, true, Loss::squared, 45, 5},
                      Case{"deep_ce_nobias", {5, 4, 3, 3}, false, Loss::cross_entropy, 47, 6},
                      Case{"linear_bce_bias", {6, 3}, true, Loss::binary_cross_entropy, 41, 7},
                      Case{"two_layer_bce_nobias", {5, 4, 3}, false, Loss::binary_cross_entropy, 43, 8}),
    case_name);

// ---- Beyond the small cases ------------------------------------------------

TEST(CovarianceTraceSq, GramTilesBlocksAndChunksAgree) {
  // The Gram method works in tiles of 512 outer × 1024 inner rows inside outer
  // blocks; blocks, tiles and chunks of several sizes straddle one another here,
  // so every pair weighting (j > i, j = i, j < i) and every tile edge is exercised.
  const Model model = random_model({4, 3, 2}, true, 21);
  struct Setting {
    std::int64_t n;
    std::vector<std::int64_t> blocks, chunks;
  };
  for (const Setting& setting : {Setting{600, {0, 7, 250, 599}, {100, 333}},
                                 Setting{2500, {0, 1100}, {2000, 700}}}) {
    const Dataset data = random_dataset(setting.n, 4, 2, Loss::squared, 22);
    const DenseReference ref = dense_reference(model, data, Loss::squared);
    const double want = frobenius_sq(ref.sigma);
    for (const std::int64_t block : setting.blocks) {
      for (const std::int64_t chunk : setting.chunks) {
        TraceSqOptions options;
        options.method = TraceSqMethod::gram;
        options.block_rows = block;
        options.chunk_rows = chunk;
        const TraceSq got = trace_cov_sq(model, data, Loss::squared, ref.mean, options);
        EXPECT_LE(relative_error(got.total, want), 1e-10)
            << "n " << setting.n << " block " << block << " chunk " << chunk;
        const std::int64_t block_rows = block == 0 ? setting.n : std::min(block, setting.n);
        const std::int64_t blocks = (setting.n + block_rows - 1) / block_rows;
        EXPECT_EQ(got.passes, 2 + 2 * blocks) << "n " << setting.n << " block " << block;
      }
    }
  }
}

TEST(CovarianceTraceSq, AutomaticPicksTheCheaperMethod) {
  const Model model = random_model({6, 3}, true, 31);
  const Dataset small_n = random_dataset(10, 6, 3, Loss::squared, 32);
  const Dataset large_n = random_dataset(400, 6, 3, Loss::squared, 33);
  // P = 21: dense costs N·P·(P+1) = 462 N flops, run 1.5 times as fast as the
  // Gram method's N²·(6 + 9 + 3) = 18 N²: dense wins from N = 18 on.
  EXPECT_EQ(trace_cov_sq_flops(model, 10, TraceSqMethod::dense), 10.0 * 21 * 22);
  EXPECT_EQ(trace_cov_sq_flops(model, 10, TraceSqMethod::gram), 100.0 * 18);
  const Profile prof_small = profile_brute_force(model, small_n, Loss::squared, false);
  const Profile prof_large = profile_brute_force(model, large_n, Loss::squared, false);
  EXPECT_EQ(trace_cov_sq(model, small_n, Loss::squared, prof_small.param_mean).method,
            TraceSqMethod::gram);
  EXPECT_EQ(trace_cov_sq(model, large_n, Loss::squared, prof_large.param_mean).method,
            TraceSqMethod::dense);
  TraceSqOptions options;
  options.max_dense_params = 20;
  EXPECT_EQ(trace_cov_sq(model, large_n, Loss::squared, prof_large.param_mean, options).method,
            TraceSqMethod::gram);
}

TEST(CovarianceSpectrumTest, WholeSpectrumGivesTraceSqAndBoundsWithoutIt) {
  const Model model = random_model({5, 4, 3}, true, 41);
  const Dataset data = random_dataset(60, 5, 3, Loss::cross_entropy, 42);
  const Profile prof = profile_brute_force(model, data, Loss::cross_entropy, false);
  const DenseReference ref = dense_reference(model, data, Loss::cross_entropy);
  const double frob = frobenius_sq(ref.sigma);

  // k = P: the eigenvalues are all of Σ, so Σλ² is tr(Σ²) itself.
  SpectrumOptions all;
  all.k = model.num_params();
  all.tol = 1e-12;
  all.per_layer = false;
  all.keep_vectors = false;
  const CovarianceSpectrum whole = covariance_spectrum(model, data, Loss::cross_entropy, prof, all);
  EXPECT_TRUE(whole.top_eigenvectors.empty());
  EXPECT_LE(relative_error(whole.top_eigenvalues_sq_sum, frob), 1e-10);
  EXPECT_LE(relative_error(whole.trace_cov_sq, frob), 1e-10);
  for (const CovarianceSpectrum::Layer& layer : whole.layers) {
    EXPECT_TRUE(layer.top_eigenvalues.empty());
    EXPECT_EQ(layer.passes, 0);
  }

  // Exact tr(Σ²) refused by its cost: NaN, with the labelled bounds still there.
  SpectrumOptions cheap;
  cheap.k = 3;
  cheap.tol = 1e-12;
  cheap.exact_trace_sq_max_flops = 0;
  const CovarianceSpectrum bounded = covariance_spectrum(model, data, Loss::cross_entropy, prof, cheap);
  EXPECT_FALSE(bounded.trace_cov_sq_exact);
  EXPECT_TRUE(std::isnan(bounded.trace_cov_sq));
  EXPECT_TRUE(std::isnan(bounded.effective_rank));
  EXPECT_EQ(bounded.trace_sq_passes, 0);
  EXPECT_GT(bounded.top_eigenvalues_sq_sum, 0.0);
  EXPECT_LT(bounded.top_eigenvalues_sq_sum, frob);
  EXPECT_GT(bounded.effective_rank_upper_bound, ref.trace * ref.trace / frob);
  // ...and computed when asked for all the same.
  cheap.exact_trace_sq = true;
  const CovarianceSpectrum asked = covariance_spectrum(model, data, Loss::cross_entropy, prof, cheap);
  EXPECT_TRUE(asked.trace_cov_sq_exact);
  EXPECT_LE(relative_error(asked.trace_cov_sq, frob), 1e-10);
  EXPECT_GT(asked.trace_sq_passes, 0);
}

// ---- Ill-conditioned: ‖G‖² ≫ tr Σ -------------------------------------------

/// Inputs 3 + 1e-3·noise, so every ã_i is nearly the same vector, and weights
/// far from the fit, so every δ_i is nearly the same too: g_i ≈ G for all i.
Dataset nearly_constant_inputs(std::int64_t n, std::int64_t d, std::int64_t k, Loss loss,
                               unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  Dataset data;
  data.n = n;
  data.d = d;
  data.k = k;
  for (std::int64_t j = 0; j < n * d; ++j) data.x.push_back(3.0 + 1e-3 * normal(rng));
  if (loss == Loss::squared) {
    for (std::int64_t j = 0; j < n * k; ++j) data.y.push_back(1e-2 * normal(rng));
  } else {
    data.labels.assign(static_cast<std::size_t>(n), 0);  // the model puts its mass elsewhere
  }
  return data;
}

struct IllConditioned {
  Model model;
  Dataset data;
  Loss loss;
};

std::vector<IllConditioned> ill_conditioned_cases() {
  std::vector<IllConditioned> cases;
  {
    IllConditioned c{random_model({6, 3}, true, 51, 10.0), nearly_constant_inputs(80, 6, 3, Loss::squared, 52),
                     Loss::squared};
    cases.push_back(std::move(c));
  }
  {
    IllConditioned c{random_model({6, 4, 3}, true, 53, 10.0),
                     nearly_constant_inputs(80, 6, 3, Loss::squared, 54), Loss::squared};
    cases.push_back(std::move(c));
  }
  {
    // Cross-entropy: every label 0, the bias pushes all mass onto class 1.
    IllConditioned c{random_model({6, 3}, true, 55, 1.0),
                     nearly_constant_inputs(80, 6, 3, Loss::cross_entropy, 56), Loss::cross_entropy};
    c.model.layers[0].bias = {-3.0, 3.0, 0.0};
    cases.push_back(std::move(c));
  }
  return cases;
}

TEST(CovarianceNumerics, LargeMeanGradient) {
  for (const IllConditioned& c : ill_conditioned_cases()) {
    const Profile prof = profile_brute_force(c.model, c.data, c.loss, false);
    const DenseReference ref = dense_reference(c.model, c.data, c.loss);
    const double ratio = prof.grad_norm_sq / prof.trace_cov;
    ASSERT_GE(ratio, 1e4) << "the case must be ill-conditioned";
    const std::int64_t p = ref.p;
    const double sigma_norm = dense_eigenpairs(p, ref.sigma).values[0];

    // Σv stays accurate: the centred scalars never carry ‖G‖².
    const std::vector<double> v = random_block(p, 3, 61);
    const CovarianceOperator op(c.model, c.data, c.loss, ref.mean, 16);
    std::vector<double> got(v.size());
    op.apply(v.data(), got.data(), 3);
    const std::vector<double> want = dense_times(ref.sigma, p, v, 3);
    EXPECT_LE(product_error(got, want, v, p, 3, sigma_norm), 1e-10) << "ratio " << ratio;

    // The uncentred form (1/N) Σ g_i g_iᵀv − G Gᵀv loses about log10(ratio)
    // digits: shown here so the test above means something.
    const PerSample ps = per_sample_gradients(c.model, c.data, c.loss);
    std::vector<double> naive(v.size(), 0.0);
    for (std::int64_t col = 0; col < 3; ++col) {
      const double* vc = v.data() + col * p;
      double g_dot = 0;
      for (std::int64_t j = 0; j < p; ++j) g_dot += ref.mean[j] * vc[j];
      for (std::int64_t i = 0; i < ps.n; ++i) {
        const double* g = ps.grads.data() + i * p;
        double dot = 0;
        for (std::int64_t j = 0; j < p; ++j) dot += g[j] * vc[j];
        for (std::int64_t j = 0; j < p; ++j) naive[col * p + j] += g[j] * dot / static_cast<double>(ps.n);
      }
      for (std::int64_t j = 0; j < p; ++j) naive[col * p + j] -= ref.mean[j] * g_dot;
    }
    const double naive_error = product_error(naive, want, v, p, 3, sigma_norm);
    const double centred_error = product_error(got, want, v, p, 3, sigma_norm);
    EXPECT_GT(naive_error, 1e-10) << "ratio " << ratio;
    EXPECT_GT(naive_error, 100 * centred_error) << "ratio " << ratio;

    // Eigenvalues and tr(Σ²) by both methods.
    SpectrumOptions options;
    options.k = 3;
    options.tol = 1e-12;
    options.max_passes = 100;
    options.per_layer = false;
    const CovarianceSpectrum spec = covariance_spectrum(c.model, c.data, c.loss, prof, options);
    const EigenResult dense = dense_eigenpairs(p, ref.sigma);
    for (std::int64_t k = 0; k < 3; ++k) {
      EXPECT_LE(relative_error(spec.top_eigenvalues[k], dense.values[k]), 1e-8) << "eigenvalue " << k;
    }
    const double frob = frobenius_sq(ref.sigma);
    // The uncentred Gram form g_iᵀg_j − g_iᵀG − g_jᵀG + ‖G‖², for comparison.
    double naive_sum = 0;
    {
      std::vector<double> g_dot_mean(static_cast<std::size_t>(ps.n), 0.0);
      double mean_sq = 0;
      for (std::int64_t j = 0; j < p; ++j) mean_sq += ref.mean[j] * ref.mean[j];
      for (std::int64_t i = 0; i < ps.n; ++i) {
        for (std::int64_t j = 0; j < p; ++j) g_dot_mean[i] += ps.grads[i * p + j] * ref.mean[j];
      }
      for (std::int64_t i = 0; i < ps.n; ++i) {
        for (std::int64_t k = 0; k < ps.n; ++k) {
          double dot = 0;
          for (std::int64_t j = 0; j < p; ++j) dot += ps.grads[i * p + j] * ps.grads[k * p + j];
          const double e = dot - g_dot_mean[i] - g_dot_mean[k] + mean_sq;
          naive_sum += e * e;
        }
      }
      naive_sum /= static_cast<double>(ps.n) * static_cast<double>(ps.n);
    }
    for (const TraceSqMethod method : {TraceSqMethod::dense, TraceSqMethod::gram}) {
      TraceSqOptions trace_options;
      trace_options.method = method;
      trace_options.chunk_rows = 16;
      const TraceSq trace = trace_cov_sq(c.model, c.data, c.loss, ref.mean, trace_options);
      EXPECT_LE(relative_error(trace.total, frob), 1e-10)
          << "method " << static_cast<int>(method) << ", ratio " << ratio;
      // Measured at ratio 1.6e6–5e6: both methods ≈ 3e-14–2e-13, the uncentred
      // Gram form 6e-12–3e-11 (about 100–800 times worse).
      EXPECT_GT(relative_error(naive_sum, frob), 10 * relative_error(trace.total, frob))
          << "method " << static_cast<int>(method) << ", ratio " << ratio;
    }
  }
}

// ---- Refusals --------------------------------------------------------------

TEST(CovarianceErrors, DenseMatrixRefusesLargeP) {
  const Model model = random_model({6, 3}, true, 71);  // P = 21
  const Dataset data = random_dataset(20, 6, 3, Loss::squared, 72);
  const std::vector<double> mean(21, 0.0);
  try {
    covariance_matrix(model, data, Loss::squared, mean, 20);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("P = 21"), std::string::npos) << message;
    EXPECT_NE(message.find("MiB"), std::string::npos) << message;
    EXPECT_NE(message.find("20"), std::string::npos) << message;
  }
  EXPECT_NO_THROW(covariance_matrix(model, data, Loss::squared, mean, 21));
  TraceSqOptions forced;
  forced.method = TraceSqMethod::dense;
  forced.max_dense_params = 20;
  EXPECT_THROW(trace_cov_sq(model, data, Loss::squared, mean, forced), InputError);
}

TEST(CovarianceErrors, BadSampleIsNamedByItsRowInTheData) {
  // Passes are split over threads by row ranges; the message must still name
  // the sample's index in the whole data set.
  const Model model = random_model({4, 3}, true, 75);
  Dataset data = random_dataset(40, 4, 3, Loss::cross_entropy, 76);
  data.labels[33] = 7;  // outside [0, 3): found only when the pass reaches it
  const std::vector<double> mean(15, 0.0);
  const CovarianceOperator op(model, data, Loss::cross_entropy, mean, 7);
  const std::vector<double> v(15, 1.0);
  std::vector<double> out(15);
  try {
    op.apply(v.data(), out.data(), 1);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("sample 33 ", 0), 0u) << e.what();
  }
}

TEST(CovarianceErrors, BadArguments) {
  const Model model = random_model({6, 3}, true, 73);
  const Dataset data = random_dataset(20, 6, 3, Loss::squared, 74);
  const std::vector<double> mean(21, 0.0);
  EXPECT_THROW(CovarianceOperator(model, data, Loss::squared, std::vector<double>(20, 0.0)), InputError);
  EXPECT_THROW(CovarianceOperator(model, data, Loss::squared, mean, 4096, 1), InputError);
  EXPECT_THROW(CovarianceOperator(model, data, Loss::squared, mean, 4096, -2), InputError);
  EXPECT_THROW(CovarianceOperator(model, data, Loss::cross_entropy, mean), InputError);  // real targets
  const Profile prof = profile_brute_force(model, data, Loss::squared, false);
  SpectrumOptions options;
  options.k = 0;
  EXPECT_THROW(covariance_spectrum(model, data, Loss::squared, prof, options), InputError);
  Profile no_mean = prof;
  no_mean.param_mean.clear();
  EXPECT_THROW(covariance_spectrum(model, data, Loss::squared, no_mean, {}), InputError);
}

}  // namespace
}  // namespace gradnoise
