// Curvature, batch-size tests and two-batch estimators against independent
// references on small problems:
// - Hessian-vector products against complex-step differentiation of a
//   templated per-sample gradient written here (Im ∇L(θ + ihv)/h = Hv to
//   rounding, no subtractive cancellation), against Gauss–Newton built from
//   complex-step Jacobians, and against central finite differences of the
//   engine's gradient;
// - tr(HΣ), ‖H‖_F, tr(Σ²) and B_noise against dense H and a dense Σ from
//   materialised per-sample gradients (tests/brute_force.hpp);
// - the batch tests against dense Σ and a scan over every b;
// - the estimators against per-pair brute force and an independent Monte-Carlo.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <limits>
#include <map>
#include <random>
#include <string>

#include "brute_force.hpp"
#include "gradnoise/curvature.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/krylov.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::all_near;
using testing::max_abs;
using testing::random_dataset;
using testing::random_model;
using testing::relative_error;
using cplx = std::complex<double>;

constexpr double kStep = 1e-30;  // complex step: no cancellation, so tiny is exact

// ---- Independent reference: per-sample forward/backward on any scalar type ----

template <class T>
T real_part(const T& v) { return v; }
double real_part(const cplx& v) { return v.real(); }

/// Forward pass of one sample with parameters `theta` (docs/MATH.md flattening);
/// returns a_0, ..., a_L.
template <class T>
std::vector<std::vector<T>> forward(const Model& model, const std::vector<T>& theta, const double* x) {
  std::vector<std::vector<T>> a(static_cast<std::size_t>(model.num_layers() + 1));
  a[0].assign(x, x + model.input_dim());
  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    const Layer& layer = model.layers[l];
    const std::int64_t off = model.param_offset(l);
    a[l + 1].assign(static_cast<std::size_t>(layer.out), T(0));
    for (std::int64_t r = 0; r < layer.out; ++r) {
      T z = layer.has_bias() ? theta[off + layer.out * layer.in + r] : T(0);
      for (std::int64_t s = 0; s < layer.in; ++s) z += theta[off + r * layer.in + s] * a[l][s];
      a[l + 1][r] = z;
    }
  }
  return a;
}

/// softmax(f) with a real shift (the shift cancels, so this stays analytic).
template <class T>
std::vector<T> softmax_of(const std::vector<T>& f) {
  double shift = real_part(f[0]);
  for (const T& z : f) shift = std::max(shift, real_part(z));
  std::vector<T> p(f.size());
  T total(0);
  for (std::size_t c = 0; c < f.size(); ++c) {
    p[c] = std::exp(f[c] - shift);
    total += p[c];
  }
  for (T& v : p) v /= total;
  return p;
}

/// ∇L(θ) = (1/N) Σ_i g_i by plain loops, on any scalar type.
template <class T>
std::vector<T> mean_gradient(const Model& model, const std::vector<T>& theta, const Dataset& data,
                             Loss loss) {
  const std::int64_t p = model.num_params(), k = model.output_dim();
  std::vector<T> grad(static_cast<std::size_t>(p), T(0));
  for (std::int64_t i = 0; i < data.n; ++i) {
    const auto a = forward(model, theta, data.x.data() + i * data.d);
    const std::vector<T>& f = a.back();
    std::vector<T> delta(f.size());
    if (loss == Loss::squared) {
      for (std::int64_t c = 0; c < k; ++c) delta[c] = f[c] - data.y[i * k + c];
    } else if (loss == Loss::binary_cross_entropy) {
      for (std::int64_t c = 0; c < k; ++c) delta[c] = 1.0 / (1.0 + exp(-f[c])) - data.y[i * k + c];
    } else {
      delta = softmax_of(f);
      delta[data.labels[i]] -= 1.0;
    }
    for (std::int64_t l = model.num_layers() - 1; l >= 0; --l) {
      const Layer& layer = model.layers[l];
      const std::int64_t off = model.param_offset(l);
      for (std::int64_t r = 0; r < layer.out; ++r) {
        for (std::int64_t s = 0; s < layer.in; ++s) grad[off + r * layer.in + s] += delta[r] * a[l][s];
        if (layer.has_bias()) grad[off + layer.out * layer.in + r] += delta[r];
      }
      std::vector<T> below(static_cast<std::size_t>(layer.in), T(0));
      for (std::int64_t r = 0; r < layer.out; ++r) {
        for (std::int64_t s = 0; s < layer.in; ++s) below[s] += theta[off + r * layer.in + s] * delta[r];
      }
      delta = std::move(below);
    }
  }
  for (T& g : grad) g /= static_cast<double>(data.n);
  return grad;
}

/// Full Hessian times v by complex step on the gradient.
std::vector<double> complex_step_hv(const Model& model, const Dataset& data, Loss loss,
                                    const double* v) {
  const std::vector<double> theta = model.flatten();
  std::vector<cplx> shifted(theta.size());
  for (std::size_t j = 0; j < theta.size(); ++j) shifted[j] = cplx(theta[j], kStep * v[j]);
  const std::vector<cplx> grad = mean_gradient(model, shifted, data, loss);
  std::vector<double> hv(theta.size());
  for (std::size_t j = 0; j < theta.size(); ++j) hv[j] = grad[j].imag() / kStep;
  return hv;
}

/// Dense full Hessian (column-major P×P), column by column by complex step.
std::vector<double> dense_full_hessian(const Model& model, const Dataset& data, Loss loss) {
  const std::int64_t p = model.num_params();
  std::vector<double> h(static_cast<std::size_t>(p * p)), e(static_cast<std::size_t>(p), 0.0);
  for (std::int64_t j = 0; j < p; ++j) {
    e[j] = 1.0;
    const std::vector<double> col = complex_step_hv(model, data, loss, e.data());
    std::copy(col.begin(), col.end(), h.begin() + j * p);
    e[j] = 0.0;
  }
  return h;
}

/// Dense Gauss–Newton (1/N) Σ_i J_iᵀ H_ℓ,i J_i, with J_i by complex step on f(x_i).
std::vector<double> dense_gauss_newton(const Model& model, const Dataset& data, Loss loss) {
  const std::int64_t p = model.num_params(), k = model.output_dim();
  const std::vector<double> theta = model.flatten();
  std::vector<double> gn(static_cast<std::size_t>(p * p), 0.0);
  for (std::int64_t i = 0; i < data.n; ++i) {
    const double* x = data.x.data() + i * data.d;
    std::vector<double> jac(static_cast<std::size_t>(k * p));  // row-major K×P
    for (std::int64_t j = 0; j < p; ++j) {
      std::vector<cplx> shifted(theta.begin(), theta.end());
      shifted[j] += cplx(0.0, kStep);
      const std::vector<cplx> f = forward(model, shifted, x).back();
      for (std::int64_t c = 0; c < k; ++c) jac[c * p + j] = f[c].imag() / kStep;
    }
    std::vector<double> a(static_cast<std::size_t>(k * k), 0.0);  // H_ℓ
    if (loss == Loss::squared) {
      for (std::int64_t c = 0; c < k; ++c) a[c * k + c] = 1.0;
    } else if (loss == Loss::binary_cross_entropy) {
      const std::vector<double> f = forward(model, theta, x).back();
      for (std::int64_t c = 0; c < k; ++c) {
        const double sigma = 1.0 / (1.0 + std::exp(-f[c]));
        a[c * k + c] = sigma * (1.0 - sigma);
      }
    } else {
      const std::vector<double> prob = softmax_of(forward(model, theta, x).back());
      for (std::int64_t c = 0; c < k; ++c) {
        for (std::int64_t e = 0; e < k; ++e) a[c * k + e] = (c == e ? prob[c] : 0.0) - prob[c] * prob[e];
      }
    }
    for (std::int64_t r = 0; r < p; ++r) {
      for (std::int64_t s = 0; s < p; ++s) {
        double total = 0;
        for (std::int64_t c = 0; c < k; ++c) {
          for (std::int64_t e = 0; e < k; ++e) total += jac[c * p + r] * a[c * k + e] * jac[e * p + s];
        }
        gn[s * p + r] += total / static_cast<double>(data.n);
      }
    }
  }
  return gn;
}

std::vector<double> mat_vec(const std::vector<double>& m, const double* v, std::int64_t p) {
  std::vector<double> out(static_cast<std::size_t>(p), 0.0);
  for (std::int64_t c = 0; c < p; ++c) {
    for (std::int64_t r = 0; r < p; ++r) out[r] += m[c * p + r] * v[c];
  }
  return out;
}

/// Dense Σ (P×P) and G from materialised per-sample gradients, two-pass centred.
struct DenseMoments {
  std::vector<double> grad;  // G
  std::vector<double> cov;   // Σ, symmetric
};
DenseMoments dense_moments(const Model& model, const Dataset& data, Loss loss) {
  const PerSample ps = per_sample_gradients(model, data, loss);
  DenseMoments out;
  out.grad.assign(static_cast<std::size_t>(ps.p), 0.0);
  for (std::int64_t i = 0; i < ps.n; ++i) {
    for (std::int64_t j = 0; j < ps.p; ++j) out.grad[j] += ps.grads[i * ps.p + j] / static_cast<double>(ps.n);
  }
  out.cov.assign(static_cast<std::size_t>(ps.p * ps.p), 0.0);
  for (std::int64_t i = 0; i < ps.n; ++i) {
    for (std::int64_t r = 0; r < ps.p; ++r) {
      const double er = ps.grads[i * ps.p + r] - out.grad[r];
      for (std::int64_t c = 0; c < ps.p; ++c) {
        out.cov[r * ps.p + c] += er * (ps.grads[i * ps.p + c] - out.grad[c]) / static_cast<double>(ps.n);
      }
    }
  }
  return out;
}

double frobenius_dot(const std::vector<double>& a, const std::vector<double>& b) {
  double total = 0;
  for (std::size_t j = 0; j < a.size(); ++j) total += a[j] * b[j];
  return total;
}

std::vector<double> random_vectors(std::int64_t count, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> v(static_cast<std::size_t>(count));
  for (double& x : v) x = normal(rng);
  return v;
}

Profile engine_profile(const Model& model, const Dataset& data, Loss loss, bool param_stats = false) {
  ProfileOptions options;
  options.loss = loss;
  options.param_stats = param_stats;
  options.chunk_rows = 4;
  return profile_cpu(model, data, options);
}

struct Case {
  std::string name;
  std::vector<std::int64_t> widths;  // {D, ..., K}
  Loss loss;
  bool bias;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"linear_mse_bias", {4, 3}, Loss::squared, true},
      {"linear_mse_nobias", {5, 2}, Loss::squared, false},
      {"linear_ce_bias", {4, 3}, Loss::cross_entropy, true},
      {"two_layer_mse_bias", {4, 3, 2}, Loss::squared, true},
      {"two_layer_ce_bias", {3, 4, 3}, Loss::cross_entropy, true},
      {"three_layer_mse_nobias", {3, 4, 2, 2}, Loss::squared, false},
      {"three_layer_ce_bias", {3, 2, 3, 3}, Loss::cross_entropy, true},
      {"linear_bce_bias", {4, 3}, Loss::binary_cross_entropy, true},
      {"two_layer_bce_nobias", {3, 4, 2}, Loss::binary_cross_entropy, false},
  };
  return all;
}

Dataset case_data(const Case& c, std::int64_t n = 13, unsigned seed = 5, double offset = 0.5) {
  return random_dataset(n, c.widths.front(), c.widths.back(), c.loss, seed, offset);
}

// ---- Hessian-vector products ---------------------------------------------------

TEST(Curvature, HessianVectorMatchesComplexStep) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const Model model = random_model(c.widths, c.bias, 3);
    const Dataset data = case_data(c);
    const std::int64_t p = model.num_params(), cols = 3;
    const std::vector<double> v = random_vectors(p * cols, 17);
    const std::vector<double> gn = dense_gauss_newton(model, data, c.loss);
    for (const bool gauss_newton : {false, true}) {
      SCOPED_TRACE(gauss_newton ? "gauss_newton" : "full");
      // Chunks of 5 rows: the products must add up across chunks.
      const HessianOperator op(model, data, c.loss, gauss_newton, 5);
      std::vector<double> got(static_cast<std::size_t>(p * cols));
      op.apply(v.data(), got.data(), cols);
      EXPECT_EQ(op.passes(), 1);
      for (std::int64_t col = 0; col < cols; ++col) {
        const std::vector<double> want = gauss_newton ? mat_vec(gn, v.data() + col * p, p)
                                                      : complex_step_hv(model, data, c.loss, v.data() + col * p);
        const std::vector<double> column(got.begin() + col * p, got.begin() + (col + 1) * p);
        EXPECT_TRUE(all_near(column, want, 1e-10, 1e-12 * max_abs(want))) << "column " << col;
      }
    }
  }
}

TEST(Curvature, HessianVectorMatchesFiniteDifferences) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const Model model = random_model(c.widths, c.bias, 4);
    const Dataset data = case_data(c, 17, 6);
    const std::int64_t p = model.num_params();
    const std::vector<double> v = random_vectors(p, 23);
    // Central difference of the engine's gradient: error O(h²) + O(ε/h).
    const double h = 1e-5;
    const std::vector<double> theta = model.flatten();
    std::vector<double> plus(theta), minus(theta);
    for (std::int64_t j = 0; j < p; ++j) {
      plus[j] += h * v[j];
      minus[j] -= h * v[j];
    }
    Model model_plus = model, model_minus = model;
    model_plus.unflatten(plus);
    model_minus.unflatten(minus);
    const std::vector<double> g_plus = engine_profile(model_plus, data, c.loss).param_mean;
    const std::vector<double> g_minus = engine_profile(model_minus, data, c.loss).param_mean;
    std::vector<double> want(static_cast<std::size_t>(p));
    for (std::int64_t j = 0; j < p; ++j) want[j] = (g_plus[j] - g_minus[j]) / (2 * h);

    const HessianOperator op(model, data, c.loss, false);
    std::vector<double> got(static_cast<std::size_t>(p));
    op.apply(v.data(), got.data(), 1);
    EXPECT_TRUE(all_near(got, want, 1e-6, 1e-7 * max_abs(want)));
  }
}

TEST(Curvature, OneLayerGaussNewtonEqualsFull) {
  for (const Loss loss : all_losses()) {
    const Model model = random_model({5, 3}, true, 8);
    const Dataset data = random_dataset(11, 5, 3, loss, 9, 0.3);
    const std::int64_t p = model.num_params(), cols = 4;
    const std::vector<double> v = random_vectors(p * cols, 2);
    std::vector<double> full(static_cast<std::size_t>(p * cols)), gn(full.size());
    HessianOperator(model, data, loss, false).apply(v.data(), full.data(), cols);
    HessianOperator(model, data, loss, true).apply(v.data(), gn.data(), cols);
    EXPECT_TRUE(all_near(gn, full, 1e-14, 0.0));
  }
}

TEST(Curvature, DeepFullHessianDiffersFromGaussNewton) {
  // The second-order term is what the full product adds; a test comparing the
  // two must be able to see it.
  const Model model = random_model({3, 4, 2}, true, 12);
  const Dataset data = random_dataset(15, 3, 2, Loss::squared, 13, 0.5);
  const std::int64_t p = model.num_params();
  const std::vector<double> v = random_vectors(p, 3);
  std::vector<double> full(static_cast<std::size_t>(p)), gn(full.size());
  HessianOperator(model, data, Loss::squared, false).apply(v.data(), full.data(), 1);
  HessianOperator(model, data, Loss::squared, true).apply(v.data(), gn.data(), 1);
  double diff = 0, norm = 0;
  for (std::int64_t j = 0; j < p; ++j) {
    diff += (full[j] - gn[j]) * (full[j] - gn[j]);
    norm += full[j] * full[j];
  }
  EXPECT_GT(std::sqrt(diff / norm), 1e-2);
}

// ---- Spectrum and trace ----------------------------------------------------------

TEST(Curvature, TopEigenvaluesMatchDense) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const Model model = random_model(c.widths, c.bias, 21);
    const Dataset data = case_data(c, 19, 22);
    const Profile profile = engine_profile(model, data, c.loss);
    const std::int64_t p = model.num_params();
    for (const bool gauss_newton : {false, true}) {
      SCOPED_TRACE(gauss_newton ? "gauss_newton" : "full");
      const std::vector<double> dense = gauss_newton ? dense_gauss_newton(model, data, c.loss)
                                                     : dense_full_hessian(model, data, c.loss);
      const EigenResult want = dense_eigenpairs(p, dense);
      CurvatureOptions options;
      options.k = 4;
      options.gauss_newton = gauss_newton;
      options.tol = 1e-11;
      const CurvatureReport got = curvature(model, data, c.loss, profile, options);
      EXPECT_EQ(got.hessian, gauss_newton ? "gauss_newton" : "full");
      EXPECT_TRUE(got.hessian_eigen_converged);
      ASSERT_EQ(got.hessian_top_eigenvalues.size(), 4u);
      const double scale = std::max(std::abs(want.values.front()), std::abs(want.values.back()));
      for (std::size_t j = 0; j < 4; ++j) {
        EXPECT_LE(std::abs(got.hessian_top_eigenvalues[j] - want.values[j]), 1e-8 * scale)
            << "eigenvalue " << j;
      }
      // tr H is the same for both (the second-order term has a zero diagonal).
      double trace = 0;
      for (std::int64_t j = 0; j < p; ++j) trace += dense[j * p + j];
      EXPECT_LE(relative_error(got.trace_hessian, trace), 1e-10);
    }
  }
}

// ---- B_noise, cosine, Ziyin ratio -------------------------------------------------

/// The report's dense-reference quantities: tr(HΣ), GᵀHG, ‖H‖_F², tr(Σ²).
struct DenseCurvature {
  double trace_hessian_cov, grad_hessian_grad, hessian_frobenius_sq, trace_cov_sq, trace_hessian;
};
DenseCurvature dense_curvature(const Model& model, const Dataset& data, Loss loss, bool gauss_newton) {
  const std::int64_t p = model.num_params();
  const std::vector<double> h = gauss_newton ? dense_gauss_newton(model, data, loss)
                                             : dense_full_hessian(model, data, loss);
  const DenseMoments mom = dense_moments(model, data, loss);
  DenseCurvature out{};
  out.trace_hessian_cov = frobenius_dot(h, mom.cov);  // Σ symmetric: orientation irrelevant
  const std::vector<double> hg = mat_vec(h, mom.grad.data(), p);
  out.grad_hessian_grad = frobenius_dot(mom.grad, hg);
  out.hessian_frobenius_sq = frobenius_dot(h, h);
  out.trace_cov_sq = frobenius_dot(mom.cov, mom.cov);
  for (std::int64_t j = 0; j < p; ++j) out.trace_hessian += h[j * p + j];
  return out;
}

void expect_report_matches_dense(const CurvatureReport& got, const DenseCurvature& want,
                                 double rtol) {
  ASSERT_TRUE(got.trace_hessian_cov.has_value());
  ASSERT_TRUE(got.hessian_frobenius_sq.has_value());
  ASSERT_TRUE(got.noise_scale_b_noise.has_value());
  EXPECT_LE(relative_error(*got.trace_hessian_cov, want.trace_hessian_cov), rtol);
  EXPECT_LE(relative_error(got.grad_hessian_grad, want.grad_hessian_grad), rtol);
  EXPECT_LE(relative_error(*got.hessian_frobenius_sq, want.hessian_frobenius_sq), rtol);
  EXPECT_LE(relative_error(got.trace_hessian, want.trace_hessian), rtol);
  EXPECT_LE(relative_error(*got.noise_scale_b_noise,
                           want.trace_hessian_cov / want.grad_hessian_grad),
            rtol);
}

TEST(Curvature, BNoiseLinearSquaredClosedFormMatchesDense) {
  for (const bool bias : {true, false}) {
    SCOPED_TRACE(bias ? "bias" : "no bias");
    const Model model = random_model({4, 3}, bias, 31);
    const Dataset data = random_dataset(23, 4, 3, Loss::squared, 32, 2.0);
    const Profile profile = engine_profile(model, data, Loss::squared);
    CurvatureOptions options;
    options.k = 0;
    options.chunk_rows = 5;
    const CurvatureReport got = curvature(model, data, Loss::squared, profile, options);
    EXPECT_EQ(got.trace_hessian_cov_method, "closed_form");
    const DenseCurvature want = dense_curvature(model, data, Loss::squared, false);
    expect_report_matches_dense(got, want, 1e-10);
    EXPECT_FALSE(got.cov_hessian_cosine.has_value());  // tr(Σ²) not given, no dense Σ
  }
}

TEST(Curvature, BNoiseClosedFormStableUnderLargeMeanGradient) {
  // Inputs near 10 with a small spread, targets near 1e4: ‖G‖²/tr Σ ≈ 1e8.
  // The per-sample terms g_iᵀHg_i then agree in their first ~8 digits, so
  // tr(HΣ) taken as mean(g_iᵀHg_i) − GᵀHG loses them; the test shows that
  // this naive difference misses the reference by far more than the tolerance.
  const Model model = random_model({3, 2}, true, 41, 1e-3);
  Dataset data = random_dataset(40, 3, 2, Loss::squared, 42, 10.0);
  for (double& x : data.x) x = 10.0 + 1e-3 * (x - 10.0);
  for (double& y : data.y) y = 1e4 + 1e-1 * y;
  const Profile profile = engine_profile(model, data, Loss::squared);
  ASSERT_GT(profile.grad_norm_sq / profile.trace_cov, 1e7);
  CurvatureOptions options;
  options.k = 0;
  options.chunk_rows = 7;
  const CurvatureReport got = curvature(model, data, Loss::squared, profile, options);
  const DenseCurvature want = dense_curvature(model, data, Loss::squared, false);
  expect_report_matches_dense(got, want, 1e-9);

  const std::int64_t p = model.num_params();
  const std::vector<double> h = dense_full_hessian(model, data, Loss::squared);
  const PerSample ps = per_sample_gradients(model, data, Loss::squared);
  const DenseMoments mom = dense_moments(model, data, Loss::squared);
  double naive = -frobenius_dot(mom.grad, mat_vec(h, mom.grad.data(), p));
  for (std::int64_t i = 0; i < ps.n; ++i) {
    const double* g = ps.grads.data() + i * p;
    const std::vector<double> hg = mat_vec(h, g, p);
    for (std::int64_t j = 0; j < p; ++j) naive += g[j] * hg[j] / static_cast<double>(ps.n);
  }
  EXPECT_GT(relative_error(naive, want.trace_hessian_cov),
            100 * relative_error(*got.trace_hessian_cov, want.trace_hessian_cov));
  EXPECT_GT(relative_error(naive, want.trace_hessian_cov), 1e-9);
}

TEST(Curvature, DenseRouteMatchesBruteForce) {
  for (const Case& c : cases()) {
    if (c.widths.size() == 2 && c.loss == Loss::squared) continue;  // closed form, tested above
    SCOPED_TRACE(c.name);
    const Model model = random_model(c.widths, c.bias, 51);
    const Dataset data = case_data(c, 21, 52);
    const Profile profile = engine_profile(model, data, c.loss);
    for (const bool gauss_newton : {false, true}) {
      SCOPED_TRACE(gauss_newton ? "gauss_newton" : "full");
      CurvatureOptions options;
      options.k = 0;
      options.gauss_newton = gauss_newton;
      options.chunk_rows = 6;
      const CurvatureReport got = curvature(model, data, c.loss, profile, options);
      EXPECT_EQ(got.trace_hessian_cov_method, "dense");
      const DenseCurvature want = dense_curvature(model, data, c.loss, gauss_newton);
      if (want.grad_hessian_grad <= 0) {
        EXPECT_FALSE(got.noise_scale_b_noise.has_value());
        continue;
      }
      expect_report_matches_dense(got, want, 1e-10);
      ASSERT_TRUE(got.trace_cov_sq.has_value());
      EXPECT_LE(relative_error(*got.trace_cov_sq, want.trace_cov_sq), 1e-10);
      ASSERT_TRUE(got.cov_hessian_cosine.has_value());
      EXPECT_LE(relative_error(*got.cov_hessian_cosine,
                               want.trace_hessian_cov /
                                   std::sqrt(want.hessian_frobenius_sq * want.trace_cov_sq)),
                1e-10);
    }
  }
}

TEST(Curvature, DenseRouteLeftEmptyAboveLimit) {
  const Model model = random_model({3, 4, 3}, true, 61);
  const Dataset data = random_dataset(12, 3, 3, Loss::cross_entropy, 62);
  const Profile profile = engine_profile(model, data, Loss::cross_entropy);
  CurvatureOptions options;
  options.k = 2;
  options.dense_max_params = model.num_params() - 1;
  const CurvatureReport got = curvature(model, data, Loss::cross_entropy, profile, options);
  EXPECT_EQ(got.trace_hessian_cov_method, "unavailable");
  EXPECT_FALSE(got.trace_hessian_cov.has_value());
  EXPECT_FALSE(got.noise_scale_b_noise.has_value());
  EXPECT_FALSE(got.hessian_frobenius_sq.has_value());
  EXPECT_FALSE(got.cov_hessian_cosine.has_value());
  EXPECT_FALSE(got.notes.empty());
  // What needs no dense matrix is still there.
  EXPECT_TRUE(got.noise_curvature_ratio.has_value());
  EXPECT_EQ(got.hessian_top_eigenvalues.size(), 2u);
}

TEST(Curvature, CosineAndRatioFromGivenTraceCovSq) {
  const Model model = random_model({4, 2}, true, 71);
  const Dataset data = random_dataset(30, 4, 2, Loss::squared, 72, 1.0);
  const Profile profile = engine_profile(model, data, Loss::squared);
  const DenseCurvature want = dense_curvature(model, data, Loss::squared, false);
  CurvatureOptions options;
  options.k = 0;
  const CurvatureReport got = curvature(model, data, Loss::squared, profile, options, want.trace_cov_sq);
  ASSERT_TRUE(got.cov_hessian_cosine.has_value());
  EXPECT_LE(relative_error(*got.cov_hessian_cosine,
                           want.trace_hessian_cov / std::sqrt(want.hessian_frobenius_sq * want.trace_cov_sq)),
            1e-10);
  ASSERT_TRUE(got.noise_curvature_ratio.has_value());
  const Profile brute = profile_brute_force(model, data, Loss::squared, false);
  EXPECT_LE(relative_error(*got.noise_curvature_ratio,
                           brute.trace_cov / (2 * brute.loss * want.trace_hessian)),
            1e-10);
}

TEST(Curvature, NoiseMatchesTwiceLossTimesHessianNearMinimum) {
  // Ziyin et al.: at the least-squares minimum with label noise independent
  // of x, Σ ≈ 2 L H for batch size 1, so the ratio and the cosine are ≈ 1
  // (to O(1/√N)); away from the minimum they are not, which the test checks
  // too so that it can fail.
  const std::int64_t n = 20000, d = 4;
  std::mt19937_64 rng(81);
  std::normal_distribution<double> normal;
  Dataset data;
  data.n = n;
  data.d = d;
  data.k = 1;
  const double w[d] = {1.0, -2.0, 0.5, 1.5};
  for (std::int64_t i = 0; i < n; ++i) {
    double y = 0.5;
    for (std::int64_t j = 0; j < d; ++j) {
      const double x = normal(rng);
      data.x.push_back(x);
      y += w[j] * x;
    }
    data.y.push_back(y + 0.3 * normal(rng));
  }
  const auto report_at = [&](const Model& model) {
    const Profile profile = engine_profile(model, data, Loss::squared);
    const DenseMoments mom = dense_moments(model, data, Loss::squared);
    CurvatureOptions options;
    options.k = 0;
    return curvature(model, data, Loss::squared, profile, options, frobenius_dot(mom.cov, mom.cov));
  };
  const CurvatureReport at_minimum = report_at(fit_least_squares(data, true));
  ASSERT_TRUE(at_minimum.noise_curvature_ratio && at_minimum.cov_hessian_cosine);
  EXPECT_NEAR(*at_minimum.noise_curvature_ratio, 1.0, 0.03);
  EXPECT_GT(*at_minimum.cov_hessian_cosine, 0.99);
  const CurvatureReport at_zero = report_at(make_model(std::vector<std::int64_t>{d, 1}, true, Init::zeros, 0));
  ASSERT_TRUE(at_zero.noise_curvature_ratio);
  EXPECT_GT(std::abs(*at_zero.noise_curvature_ratio - 1.0), 0.1);
}

TEST(Curvature, RejectsBadInputs) {
  const Model model = random_model({3, 2}, true, 91);
  const Dataset data = random_dataset(10, 3, 2, Loss::squared, 92);
  const Profile profile = engine_profile(model, data, Loss::squared);
  CurvatureOptions options;
  options.k = model.num_params() + 1;
  EXPECT_THROW(curvature(model, data, Loss::squared, profile, options), InputError);
  options.k = -1;
  EXPECT_THROW(curvature(model, data, Loss::squared, profile, options), InputError);
  options.k = 2;
  options.tol = 0;
  EXPECT_THROW(curvature(model, data, Loss::squared, profile, options), InputError);
  options.tol = 1e-10;
  EXPECT_THROW(curvature(model, data, Loss::squared, profile, options, -1.0), InputError);
  const Dataset other = random_dataset(11, 3, 2, Loss::squared, 93);
  EXPECT_THROW(curvature(model, other, Loss::squared, profile, options), InputError);
  EXPECT_THROW(curvature(model, data, Loss::cross_entropy, profile, options), InputError);
  EXPECT_THROW(HessianOperator(model, data, Loss::squared, false, 0), InputError);
  options.k = model.num_params();  // the whole spectrum is allowed
  EXPECT_NO_THROW(curvature(model, data, Loss::squared, profile, options));
}

// ---- Batch-size tests ----------------------------------------------------------

TEST(BatchTests, MatchDenseCovariance) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const Model model = random_model(c.widths, c.bias, 101);
    const Dataset data = case_data(c, 25, 102, 1.0);
    const Profile profile = engine_profile(model, data, c.loss, true);
    const DenseMoments mom = dense_moments(model, data, c.loss);
    const std::int64_t p = model.num_params(), n = data.n;
    const double grad_norm_sq = frobenius_dot(mom.grad, mom.grad);
    double trace_cov = 0;
    for (std::int64_t j = 0; j < p; ++j) trace_cov += mom.cov[j * p + j];
    const std::vector<double> sg = mat_vec(mom.cov, mom.grad.data(), p);
    const double grad_cov_grad = frobenius_dot(mom.grad, sg) / grad_norm_sq;  // ĜᵀΣĜ

    std::vector<std::int64_t> all(static_cast<std::size_t>(n));
    for (std::int64_t b = 1; b <= n; ++b) all[b - 1] = b;
    const double norm_at_8 = (n - 8.0) / (8.0 * (n - 1.0)) * trace_cov / grad_norm_sq;
    const double theta = std::sqrt(norm_at_8) * 1.0000001;  // the norm test passes from b = 8
    const BatchTests got = batch_tests(model, data, c.loss, profile, theta, all, 7);
    ASSERT_TRUE(got.grad_cov_grad.has_value());
    EXPECT_LE(relative_error(*got.grad_cov_grad, grad_cov_grad), 1e-10);
    std::vector<double> norm, inner, orth;
    for (std::int64_t b = 1; b <= n; ++b) {
      const double factor = (n - b) / (static_cast<double>(b) * (n - 1.0));
      norm.push_back(factor * trace_cov / grad_norm_sq);
      inner.push_back(factor * grad_cov_grad / grad_norm_sq);
      orth.push_back(factor * (trace_cov - grad_cov_grad) / grad_norm_sq);
    }
    EXPECT_TRUE(all_near(got.norm, norm, 1e-10, 0.0));
    EXPECT_TRUE(all_near(got.inner_product, inner, 1e-10, 0.0));
    EXPECT_TRUE(all_near(got.orthogonality, orth, 1e-10, 0.0));
    EXPECT_EQ(got.norm.back(), 0.0);

    // The smallest passing b is the first b of a scan over the reported values.
    const auto first_pass = [&](const std::vector<double>& values) {
      for (std::int64_t b = 1; b <= n; ++b) {
        if (values[b - 1] <= theta * theta) return b;
      }
      return std::int64_t{-1};
    };
    EXPECT_EQ(got.min_batch_norm_test, first_pass(got.norm));
    EXPECT_EQ(got.min_batch_norm_test, 8);
    EXPECT_EQ(got.min_batch_inner_product_test, first_pass(got.inner_product));
    EXPECT_EQ(got.min_batch_orthogonality_test, first_pass(got.orthogonality));
    EXPECT_LE(got.min_batch_inner_product_test, got.min_batch_norm_test);
    EXPECT_LE(got.min_batch_orthogonality_test, got.min_batch_norm_test);
  }
}

TEST(BatchTests, StableUnderLargeMeanGradient) {
  // ‖G‖²/tr Σ ≈ 1e8: ĜᵀΣĜ = Var_i(g_iᵀĜ) must still match the dense Σ.
  const Model model = random_model({3, 2}, true, 41, 1e-3);
  Dataset data = random_dataset(40, 3, 2, Loss::squared, 42, 10.0);
  for (double& x : data.x) x = 10.0 + 1e-3 * (x - 10.0);
  for (double& y : data.y) y = 1e4 + 1e-1 * y;
  const Profile profile = engine_profile(model, data, Loss::squared, true);
  ASSERT_GT(profile.grad_norm_sq / profile.trace_cov, 1e7);
  const DenseMoments mom = dense_moments(model, data, Loss::squared);
  const double grad_cov_grad = frobenius_dot(mom.grad, mat_vec(mom.cov, mom.grad.data(), model.num_params())) /
                               frobenius_dot(mom.grad, mom.grad);
  const std::int64_t sizes[] = {1, 40};
  const BatchTests got = batch_tests(model, data, Loss::squared, profile, 1e-3, sizes, 7);
  ASSERT_TRUE(got.grad_cov_grad.has_value());
  EXPECT_LE(relative_error(*got.grad_cov_grad, grad_cov_grad), 1e-9);
}

TEST(BatchTests, MinimumSearchMatchesScan) {
  std::mt19937_64 rng(111);
  std::uniform_int_distribution<std::int64_t> sizes(2, 3000);
  std::uniform_real_distribution<double> log_ratio(-6, 6), log_theta(-4, 1);
  const auto scan = [](std::int64_t n, double ratio, double theta) {
    for (std::int64_t b = 1; b <= n; ++b) {
      if (batch_test_value(n, b, ratio) <= theta * theta) return b;
    }
    return std::int64_t{-1};
  };
  std::int64_t interior = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const std::int64_t n = sizes(rng);
    const double ratio = std::pow(10.0, log_ratio(rng)), theta = std::pow(10.0, log_theta(rng));
    const std::int64_t got = min_passing_batch_size(n, ratio, theta);
    EXPECT_EQ(got, scan(n, ratio, theta)) << "n " << n << " ratio " << ratio << " theta " << theta;
    interior += (got > 1 && got < n) ? 1 : 0;
  }
  EXPECT_GT(interior, 50);  // most trials land strictly inside 1..N
  // Exact tie: c(2) = 1/4 for N = 3, and 0.5² = 0.25 exactly: b = 2 passes, b = 1 does not.
  EXPECT_EQ(min_passing_batch_size(3, 1.0, 0.5), 2);
  EXPECT_EQ(min_passing_batch_size(3, 1.0, std::nextafter(0.5, 0.0)), 3);
  EXPECT_EQ(min_passing_batch_size(100, 0.0, 1e-3), 1);
  EXPECT_EQ(min_passing_batch_size(100, std::numeric_limits<double>::infinity(), 1e3), 100);
  EXPECT_EQ(batch_test_value(100, 100, std::numeric_limits<double>::infinity()), 0.0);
  EXPECT_THROW(min_passing_batch_size(100, 1.0, 0.0), InputError);
  EXPECT_THROW(min_passing_batch_size(100, 1.0, -1.0), InputError);
}

TEST(BatchTests, GsnrMatchesParamStats) {
  const Model model = random_model({4, 3}, true, 121);
  Dataset data = random_dataset(30, 4, 3, Loss::squared, 122, 0.5);
  for (std::int64_t i = 0; i < data.n; ++i) data.x[i * data.d + 2] = 0.0;  // a dead feature
  const Profile profile = engine_profile(model, data, Loss::squared, true);
  const Profile brute = profile_brute_force(model, data, Loss::squared, true);
  const std::int64_t sizes[] = {1, 5, 30};
  const BatchTests got = batch_tests(model, data, Loss::squared, profile, 0.5, sizes);
  const std::int64_t p = model.num_params();
  // The weights on the dead feature have g_ij = 0 for every sample: variance 0.
  EXPECT_EQ(got.gsnr_zero_variance_params, 3);
  double sum = 0;
  std::int64_t count = 0;
  for (std::int64_t j = 0; j < p; ++j) {
    const bool dead = j < 12 && j % 4 == 2;
    if (dead) {
      EXPECT_TRUE(std::isnan(got.gsnr[j])) << "slot " << j;
      continue;
    }
    const double want = brute.param_mean[j] * brute.param_mean[j] / brute.param_var[j];
    EXPECT_LE(relative_error(got.gsnr[j], want), 1e-9) << "slot " << j;
    sum += want;
    ++count;
  }
  EXPECT_LE(relative_error(got.gsnr_mean, sum / static_cast<double>(count)), 1e-9);
}

TEST(BatchTests, RejectsBadInputs) {
  const Model model = random_model({3, 2}, true, 131);
  const Dataset data = random_dataset(10, 3, 2, Loss::squared, 132);
  const Profile with_var = engine_profile(model, data, Loss::squared, true);
  const Profile without_var = engine_profile(model, data, Loss::squared, false);
  const std::int64_t ok[] = {1, 10}, zero[] = {0}, too_big[] = {11};
  EXPECT_NO_THROW(batch_tests(model, data, Loss::squared, with_var, 0.1, ok));
  EXPECT_THROW(batch_tests(model, data, Loss::squared, with_var, 0.0, ok), InputError);
  EXPECT_THROW(batch_tests(model, data, Loss::squared, with_var, -0.5, ok), InputError);
  EXPECT_THROW(batch_tests(model, data, Loss::squared, with_var, 0.1, zero), InputError);
  EXPECT_THROW(batch_tests(model, data, Loss::squared, with_var, 0.1, too_big), InputError);
  EXPECT_THROW(batch_tests(model, data, Loss::squared, without_var, 0.1, ok), InputError);
}

// ---- Two-batch estimators --------------------------------------------------------

/// |g_B|² from materialised per-sample gradients.
double brute_batch_norm_sq(const PerSample& ps, const std::vector<std::int64_t>& rows) {
  std::vector<double> g(static_cast<std::size_t>(ps.p), 0.0);
  for (const std::int64_t i : rows) {
    for (std::int64_t j = 0; j < ps.p; ++j) g[j] += ps.grads[i * ps.p + j];
  }
  const double b = static_cast<double>(rows.size());
  return frobenius_dot(g, g) / (b * b);
}

TEST(Estimators, PerPairNormsMatchBruteForce) {
  for (const Case& c : {cases()[0], cases()[4]}) {
    SCOPED_TRACE(c.name);
    const Model model = random_model(c.widths, c.bias, 141);
    const Dataset data = case_data(c, 17, 142);
    const Profile profile = engine_profile(model, data, c.loss);
    const PerSample ps = per_sample_gradients(model, data, c.loss);
    const EstimatorTruth got = two_batch_estimators(model, data, c.loss, profile, 3, 11, 25, 7, 4);
    ASSERT_EQ(got.small_norm_sq.size(), 25u);
    std::vector<double> small, big;
    for (std::int64_t pair = 0; pair < 25; ++pair) {
      small.push_back(brute_batch_norm_sq(ps, estimator_batch_indices(data.n, 3, 7, pair, false)));
      big.push_back(brute_batch_norm_sq(ps, estimator_batch_indices(data.n, 11, 7, pair, true)));
    }
    EXPECT_TRUE(all_near(got.small_norm_sq, small, 1e-10, 0.0));
    EXPECT_TRUE(all_near(got.big_norm_sq, big, 1e-10, 0.0));
    // The estimators are these formulas per pair.
    double g_sum = 0, s_sum = 0;
    for (std::size_t j = 0; j < small.size(); ++j) {
      g_sum += (11 * big[j] - 3 * small[j]) / 8.0;
      s_sum += (small[j] - big[j]) / (1.0 / 3 - 1.0 / 11);
    }
    EXPECT_LE(relative_error(got.grad_norm_sq.mean, g_sum / 25), 1e-9);
    EXPECT_LE(relative_error(got.trace_cov.mean, s_sum / 25), 1e-9);
    EXPECT_EQ(got.grad_norm_sq.exact, profile.grad_norm_sq);
    EXPECT_EQ(got.trace_cov.exact, profile.trace_cov);
    EXPECT_LE(relative_error(got.noise_scale_ratio_of_means, s_sum / g_sum), 1e-9);
  }
}

TEST(Estimators, UnbiasedWithinStandardErrors) {
  // With replacement E|g_B|² = ‖G‖² + tr Σ / b exactly, so ‖G‖²_est and
  // tr Σ_est are unbiased. Checked on the module's pairs and on an independent
  // Monte-Carlo drawn here (mt19937, brute-force gradients).
  for (const Case& c : {cases()[0], cases()[6]}) {
    SCOPED_TRACE(c.name);
    const Model model = random_model(c.widths, c.bias, 151);
    const Dataset data = case_data(c, 20, 152, 0.5);
    const Profile profile = engine_profile(model, data, c.loss);
    const std::int64_t b_small = 2, b_big = 16, pairs = 4000;
    const EstimatorTruth got = two_batch_estimators(model, data, c.loss, profile, b_small, b_big, pairs, 3);
    const auto within = [](const EstimatorStats& s, double k_se) {
      return std::abs(s.mean - s.exact) <= k_se * s.std_error;
    };
    EXPECT_TRUE(within(got.grad_norm_sq, 4)) << got.grad_norm_sq.bias << " vs SE " << got.grad_norm_sq.std_error;
    EXPECT_TRUE(within(got.trace_cov, 4)) << got.trace_cov.bias << " vs SE " << got.trace_cov.std_error;
    EXPECT_TRUE(within(got.small_batch_norm_sq, 4));
    EXPECT_TRUE(within(got.big_batch_norm_sq, 4));
    EXPECT_EQ(got.grad_norm_sq.count, pairs);
    // The without-replacement expectation ‖G‖² + c(b) tr Σ is a different
    // number, and the Monte-Carlo must be able to tell them apart.
    const double without = profile.grad_norm_sq +
                           without_replacement_factor(data.n, b_big) * profile.trace_cov;
    EXPECT_GT(std::abs(got.big_batch_norm_sq.mean - without), 4 * got.big_batch_norm_sq.std_error);

    // Independent Monte-Carlo.
    const PerSample ps = per_sample_gradients(model, data, c.loss);
    std::mt19937_64 rng(99);
    std::uniform_int_distribution<std::int64_t> pick(0, data.n - 1);
    std::vector<double> g_est, s_est;
    for (std::int64_t pair = 0; pair < pairs; ++pair) {
      std::vector<std::int64_t> small(b_small), big(b_big);
      for (auto& i : small) i = pick(rng);
      for (auto& i : big) i = pick(rng);
      const double ns = brute_batch_norm_sq(ps, small), nb = brute_batch_norm_sq(ps, big);
      g_est.push_back((b_big * nb - b_small * ns) / double(b_big - b_small));
      s_est.push_back((ns - nb) / (1.0 / b_small - 1.0 / b_big));
    }
    const auto mean_se = [](const std::vector<double>& v) {
      double mean = 0, m2 = 0;
      for (double x : v) mean += x / v.size();
      for (double x : v) m2 += (x - mean) * (x - mean);
      return std::pair{mean, std::sqrt(m2 / (v.size() - 1) / v.size())};
    };
    const auto [g_mean, g_se] = mean_se(g_est);
    const auto [s_mean, s_se] = mean_se(s_est);
    EXPECT_LE(std::abs(g_mean - profile.grad_norm_sq), 4 * g_se);
    EXPECT_LE(std::abs(s_mean - profile.trace_cov), 4 * s_se);
    EXPECT_LE(std::abs(g_mean - got.grad_norm_sq.mean),
              4 * std::hypot(g_se, got.grad_norm_sq.std_error));
    EXPECT_LE(std::abs(s_mean - got.trace_cov.mean), 4 * std::hypot(s_se, got.trace_cov.std_error));
  }
}

TEST(Estimators, IndicesUniformAndReproducible) {
  const std::int64_t n = 10, draws = 100000;
  const std::vector<std::int64_t> indices = estimator_batch_indices(n, draws, 5, 0, false);
  std::vector<double> counts(n, 0.0);
  for (const std::int64_t i : indices) {
    ASSERT_GE(i, 0);
    ASSERT_LT(i, n);
    counts[i] += 1;
  }
  double chi_sq = 0;
  const double expected = double(draws) / n;
  for (double c : counts) chi_sq += (c - expected) * (c - expected) / expected;
  EXPECT_LT(chi_sq, 30.0);  // 9 degrees of freedom: P(χ² > 30) ≈ 4e-4
  EXPECT_EQ(indices, estimator_batch_indices(n, draws, 5, 0, false));
  EXPECT_NE(indices, estimator_batch_indices(n, draws, 6, 0, false));
  EXPECT_NE(indices, estimator_batch_indices(n, draws, 5, 1, false));
  EXPECT_NE(indices, estimator_batch_indices(n, draws, 5, 0, true));
  // Prefix-stable: the first draws do not depend on the batch size.
  const std::vector<std::int64_t> head = estimator_batch_indices(n, 7, 5, 0, false);
  EXPECT_TRUE(std::equal(head.begin(), head.end(), indices.begin()));
}

TEST(Estimators, DeterministicForASeed) {
  const Model model = random_model({3, 2}, true, 161);
  const Dataset data = random_dataset(15, 3, 2, Loss::squared, 162);
  const Profile profile = engine_profile(model, data, Loss::squared);
  const EstimatorTruth a = two_batch_estimators(model, data, Loss::squared, profile, 2, 5, 50, 9);
  const EstimatorTruth b = two_batch_estimators(model, data, Loss::squared, profile, 2, 5, 50, 9);
  const EstimatorTruth other = two_batch_estimators(model, data, Loss::squared, profile, 2, 5, 50, 10);
  EXPECT_EQ(a.small_norm_sq, b.small_norm_sq);
  EXPECT_EQ(a.big_norm_sq, b.big_norm_sq);
  EXPECT_NE(a.small_norm_sq, other.small_norm_sq);
}

TEST(Estimators, RejectsBadInputs) {
  const Model model = random_model({3, 2}, true, 171);
  const Dataset data = random_dataset(10, 3, 2, Loss::squared, 172);
  const Profile profile = engine_profile(model, data, Loss::squared);
  EXPECT_THROW(two_batch_estimators(model, data, Loss::squared, profile, 4, 4, 10, 0), InputError);
  EXPECT_THROW(two_batch_estimators(model, data, Loss::squared, profile, 5, 4, 10, 0), InputError);
  EXPECT_THROW(two_batch_estimators(model, data, Loss::squared, profile, 0, 4, 10, 0), InputError);
  EXPECT_THROW(two_batch_estimators(model, data, Loss::squared, profile, 1, 4, 1, 0), InputError);
  const Dataset other = random_dataset(12, 3, 2, Loss::squared, 173);
  EXPECT_THROW(two_batch_estimators(model, other, Loss::squared, profile, 1, 4, 10, 0), InputError);
}

}  // namespace
}  // namespace gradnoise
