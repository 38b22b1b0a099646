// Curvature, the batch-size tests and the two-batch estimators' ground truth
// (include/gradnoise/curvature.hpp), on the float64 CPU path.
//
// Hessian-vector products carry a whole block of vectors through one pass:
// with the block's vectors laid out sample-major ([row i][column c][unit r]),
// every per-layer product of the R-operator forward pass and of the backward
// pass is a single GEMM over all columns at once (see HessianOperator::apply).
//
// B_noise for the linear model with squared loss uses H = I_K ⊗ S,
// S = (1/N) X̃ᵀX̃. With S = R Rᵀ (R = Q Λ^{1/2} from S's eigendecomposition),
// (g_i − G)ᵀ H (g_i − G) = ‖(δ_i x̃_iᵀ − G̃) R‖² = ‖δ_i x'_iᵀ − G'‖² with
// x'_i = Rᵀ x̃_i: tr(HΣ) is the trace of the covariance of the rank-one
// "gradients" δ_i x'_iᵀ, computed with the engine's chunk-centred sums and
// Chan's merge, so it never comes from a cancelling difference.
#include "gradnoise/curvature.hpp"

#include <Random123/philox.h>
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>

#include "chunk_pass.hpp"
#include "hessian_host.hpp"
#include "losses.hpp"
#include "gradnoise/error.hpp"
#include "backend.hpp"
#include "moments.hpp"

namespace gradnoise {
namespace {

/// Doubles a block product may keep per chunk (64 MiB): sets its chunk rows.
constexpr std::int64_t kBlockBudget = std::int64_t{8} << 20;
/// Columns of the identity per pass when H is formed densely.
constexpr std::int64_t kDenseBlock = 256;

/// Row-major C = alpha op(A) op(B) + beta C.
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
          const double* a, std::int64_t lda, const double* b, std::int64_t ldb, double beta,
          double* c, std::int64_t ldc) {
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

double dot(const double* a, const double* b, std::int64_t count) {
  double total = 0;
  for (std::int64_t j = 0; j < count; ++j) total += a[j] * b[j];
  return total;
}

double elapsed_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// Throws InputError unless `profile` was taken on a problem of this size.
void check_profile_matches(const Profile& profile, std::int64_t n, std::int64_t p) {
  if (profile.n != n || profile.num_params != p ||
      static_cast<std::int64_t>(profile.param_mean.size()) != p) {
    throw InputError("the profile describes " + std::to_string(profile.n) + " samples and " +
                     std::to_string(profile.param_mean.size()) + " parameters but the data has " +
                     std::to_string(n) + " samples and the model " + std::to_string(p) +
                     " parameters; expected the profile of this model on this data");
  }
}

void check_inputs(const Model& model, const DataSource& data, Loss loss, std::int64_t chunk_rows) {
  ProfileOptions options;
  options.loss = loss;
  options.chunk_rows = chunk_rows;
  check_profile_inputs(model, data, options);
}

/// Chunk rows for a pass that keeps `doubles_per_row` doubles per row.
std::int64_t rows_for_budget(std::int64_t doubles_per_row, std::int64_t chunk_rows) {
  return std::clamp<std::int64_t>(kBlockBudget / std::max<std::int64_t>(doubles_per_row, 1), 1,
                                  chunk_rows);
}

}  // namespace

// ---- HessianOperator --------------------------------------------------------

HessianOperator::HessianOperator(const Model& model, const DataSource& data, Loss loss,
                                 bool gauss_newton, std::int64_t chunk_rows)
    : model_(model),
      data_(data),
      loss_(loss),
      gauss_newton_(gauss_newton),
      chunk_rows_(chunk_rows),
      dim_(model.num_params()) {
  check_inputs(model, data, loss, chunk_rows);
}

BlockOperator HessianOperator::as_block_operator() const {
  return [this](const double* in, double* out, std::int64_t cols) { apply(in, out, cols); };
}

// The R-operator, per layer l (0-based) with input a_l, output error δ_l
// and the direction's parts V_l (out×in) and c_l (out):
// Forward:  R a_{l+1} = a_l V_lᵀ + R a_l W_lᵀ + c_l            (R a_0 = 0)
// Loss:     R δ_{L−1} = H_ℓ R f
// Backward: R δ_{l−1} = R δ_l W_l [+ δ_l V_l]                  (full only)
// Product:  (Hv)_{W_l} = (1/N) Σ_i R δ_{l,i} a_{l,i}ᵀ [+ δ_{l,i} (R a_{l,i})ᵀ],
//           (Hv)_{b_l} = (1/N) Σ_i R δ_{l,i}.
// The steps are core/hessian_pass.hpp's, the GPU's own sequence of GEMMs
// over all columns of the block at once, run here through row-major BLAS.
void HessianOperator::apply(const double* in, double* out, std::int64_t cols) const {
  if (cols <= 0) return;
  ++passes_;
  const std::int64_t rows = rows_for_budget(detail::hessian_doubles_per_row(model_, cols), chunk_rows_);
  detail::RowMajorBlasExec exec;
  detail::hessian_apply_host(exec, model_, data_, loss_, gauss_newton_, rows, in, out, cols);
}

// ---- Curvature report -------------------------------------------------------

namespace {

/// N · tr H over this source's rows (the caller divides by the whole N):
/// tr H = (1/N) Σ_i Σ_l (‖a_{l,i}‖² + [bias_l]) ⟨H_ℓ,i, Q_l⟩, Q_l = P_l P_lᵀ,
/// P_l = W_{L−1} ⋯ W_{l+1} (K × out_l): the diagonal of J_iᵀ H_ℓ J_i summed.
double trace_hessian_pass(const Model& model, const DataSource& data, Loss loss,
                          std::int64_t chunk_rows) {
  const std::int64_t num_layers = model.num_layers();
  const std::int64_t k = model.output_dim();
  std::vector<std::vector<double>> q(static_cast<std::size_t>(num_layers));
  std::vector<double> prod(static_cast<std::size_t>(k * k), 0.0);  // P_l, K × out_l
  for (std::int64_t c = 0; c < k; ++c) prod[c * k + c] = 1.0;
  for (std::int64_t l = num_layers - 1; l >= 0; --l) {
    const Layer& layer = model.layers[l];
    q[l].resize(static_cast<std::size_t>(k * k));
    gemm(false, true, k, k, layer.out, 1.0, prod.data(), layer.out, prod.data(), layer.out, 0.0,
         q[l].data(), k);
    if (l > 0) {
      std::vector<double> below(static_cast<std::size_t>(k * layer.in));
      gemm(false, false, k, layer.in, layer.out, 1.0, prod.data(), layer.out, layer.weight.data(),
           layer.in, 0.0, below.data(), layer.in);
      prod = std::move(below);
    }
  }
  std::vector<double> state(static_cast<std::size_t>(k));
  double total = 0;
  losses::visit_loss(loss, [&](auto loss_type) {
    using L = decltype(loss_type);
    detail::for_each_chunk(model, data, loss, chunk_rows, [&](const detail::ChunkView& view) {
      double chunk_total = 0;
      for (std::int64_t i = 0; i < view.rows; ++i) {
        L::hessian_state(view.outputs + i * k, k, state.data());
        for (std::int64_t l = 0; l < num_layers; ++l) {
          const Layer& layer = model.layers[l];
          const double* a = view.inputs[l] + i * layer.in;
          const double weight = dot(a, a, layer.in) + (layer.has_bias() ? 1.0 : 0.0);
          chunk_total += weight * L::hessian_inner(state.data(), q[l].data(), k);
        }
      }
      total += chunk_total;
    });
  });
  return total;
}

struct HessCov {
  double trace_hessian_cov = 0;
  double hessian_frobenius_sq = 0;
  std::optional<double> trace_cov_sq;  // only the dense route has it
};

/// One layer, squared loss: tr(HΣ) with H = I_K ⊗ S exactly, in two passes
/// (S, then the covariance of δ_i x'_iᵀ, x'_i = Rᵀ x̃_i, S = R Rᵀ).
HessCov linear_squared_closed_form(const Model& model, const DataSource& data,
                                   std::int64_t chunk_rows) {
  const Layer& layer = model.layers[0];
  const std::int64_t k = layer.out, d = layer.in, n = data.num_samples();
  const bool bias = layer.has_bias();
  const std::int64_t dp = d + (bias ? 1 : 0);
  const std::int64_t rows = rows_for_budget(2 * dp + 2 * k, chunk_rows);
  std::vector<double> x_tilde(static_cast<std::size_t>(rows * dp));
  const auto fill_x_tilde = [&](const detail::ChunkView& view) {
    for (std::int64_t i = 0; i < view.rows; ++i) {
      std::copy_n(view.inputs[0] + i * d, d, x_tilde.data() + i * dp);
      if (bias) x_tilde[i * dp + d] = 1.0;
    }
  };

  // Pass 1: S = (1/N) X̃ᵀX̃.
  std::vector<double> s(static_cast<std::size_t>(dp * dp), 0.0);
  detail::for_each_chunk(model, data, Loss::squared, rows, [&](const detail::ChunkView& view) {
    fill_x_tilde(view);
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(dp),
                static_cast<int>(view.rows), 1.0, x_tilde.data(), static_cast<int>(dp), 1.0,
                s.data(), static_cast<int>(dp));
  });
  const double inv_n = 1.0 / static_cast<double>(n);
  for (std::int64_t j = 0; j < dp; ++j) {
    for (std::int64_t c = j; c < dp; ++c) {
      s[j * dp + c] *= inv_n;
      s[c * dp + j] = s[j * dp + c];
    }
  }
  HessCov result;
  result.hessian_frobenius_sq = static_cast<double>(k) * dot(s.data(), s.data(), dp * dp);

  // R = Q Λ^{1/2} (row-major dp × dp); rounding's negative eigenvalues are 0.
  const EigenResult eig = dense_eigenpairs(dp, s);
  std::vector<double> root(static_cast<std::size_t>(dp * dp));
  for (std::int64_t c = 0; c < dp; ++c) {
    const double scale = std::sqrt(std::max(eig.values[c], 0.0));
    for (std::int64_t j = 0; j < dp; ++j) root[j * dp + c] = eig.vectors[c * dp + j] * scale;
  }

  // Pass 2: chunk-centred covariance of δ_i x'_iᵀ, merged by Chan's update.
  std::vector<double> x_prime(static_cast<std::size_t>(rows * dp));
  std::vector<double> mean(static_cast<std::size_t>(k * dp), 0.0), chunk_mean(mean.size());
  std::vector<double> delta_mean(static_cast<std::size_t>(k)), act_mean(static_cast<std::size_t>(dp));
  std::vector<double> u(static_cast<std::size_t>(rows * k));
  double m2_total = 0;
  std::int64_t count = 0;
  detail::for_each_chunk(model, data, Loss::squared, rows, [&](const detail::ChunkView& view) {
    const std::int64_t m = view.rows;
    const double dm = static_cast<double>(m);
    fill_x_tilde(view);
    gemm(false, false, m, dp, dp, 1.0, x_tilde.data(), dp, root.data(), dp, 0.0, x_prime.data(), dp);
    std::fill(delta_mean.begin(), delta_mean.end(), 0.0);
    std::fill(act_mean.begin(), act_mean.end(), 0.0);
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t r = 0; r < k; ++r) delta_mean[r] += view.errors[0][i * k + r];
      for (std::int64_t c = 0; c < dp; ++c) act_mean[c] += x_prime[i * dp + c];
    }
    for (double& v : delta_mean) v /= dm;
    for (double& v : act_mean) v /= dm;
    detail::RowSums sums;
    for (std::int64_t i = 0; i < m; ++i) {
      double* ui = u.data() + i * k;
      double* vi = x_prime.data() + i * dp;
      double delta_sq = 0, act_sq = 0, su = 0, du = 0, sv = 0, av = 0;
      for (std::int64_t r = 0; r < k; ++r) {
        const double value = view.errors[0][i * k + r];
        delta_sq += value * value;
        ui[r] = value - delta_mean[r];
        su += ui[r] * ui[r];
        du += delta_mean[r] * ui[r];
      }
      for (std::int64_t c = 0; c < dp; ++c) {
        act_sq += vi[c] * vi[c];
        vi[c] -= act_mean[c];
        sv += vi[c] * vi[c];
        av += act_mean[c] * vi[c];
      }
      sums.add_row(delta_sq, act_sq, su, du, sv, av, false);
    }
    // C = UᵀV/m; chunk mean δ̄ x̄'ᵀ + C.
    gemm(true, false, k, dp, m, 1.0 / dm, u.data(), k, x_prime.data(), dp, 0.0, chunk_mean.data(), dp);
    const double c_norm_sq = dot(chunk_mean.data(), chunk_mean.data(), k * dp);
    const double chunk_m2 =
        detail::chunk_centred_sum(sums, dot(delta_mean.data(), delta_mean.data(), k),
                                  dot(act_mean.data(), act_mean.data(), dp), false, dm, c_norm_sq);
    for (std::int64_t r = 0; r < k; ++r) {
      for (std::int64_t c = 0; c < dp; ++c) chunk_mean[r * dp + c] += delta_mean[r] * act_mean[c];
    }
    const detail::MergeWeights w = detail::merge_weights(count, m);
    double diff_sq = 0;
    for (std::size_t j = 0; j < mean.size(); ++j) {
      diff_sq += detail::merge_slot(mean[j], nullptr, chunk_mean[j], 0.0, w);
    }
    m2_total += chunk_m2 + diff_sq * w.cross;
    count += m;
  });
  result.trace_hessian_cov = m2_total * inv_n;
  return result;
}

/// Any model and loss, P small: H formed by P Hessian-vector products and Σ
/// from materialised centred per-sample gradients, then ⟨H, Σ⟩, ‖H‖_F², ‖Σ‖_F².
HessCov dense_form(const Model& model, const DataSource& data, Loss loss,
                   const BlockOperator& hessian, const std::vector<double>& grad,
                   std::int64_t chunk_rows) {
  const std::int64_t p = model.num_params(), n = data.num_samples();
  std::vector<double> hess(static_cast<std::size_t>(p * p));  // column-major
  for (std::int64_t first = 0; first < p; first += kDenseBlock) {
    const std::int64_t cols = std::min(kDenseBlock, p - first);
    std::vector<double> identity(static_cast<std::size_t>(cols * p), 0.0);
    for (std::int64_t c = 0; c < cols; ++c) identity[c * p + first + c] = 1.0;
    hessian(identity.data(), hess.data() + first * p, cols);
  }
  for (std::int64_t j = 0; j < p; ++j) {
    for (std::int64_t c = 0; c < j; ++c) {
      const double sym = 0.5 * (hess[j * p + c] + hess[c * p + j]);
      hess[j * p + c] = hess[c * p + j] = sym;
    }
  }

  const std::int64_t rows = rows_for_budget(p, chunk_rows);
  std::vector<double> centred(static_cast<std::size_t>(rows * p));
  std::vector<double> cov(static_cast<std::size_t>(p * p), 0.0);
  detail::for_each_chunk(model, data, loss, rows, [&](const detail::ChunkView& view) {
    const std::int64_t m = view.rows;
    for (std::int64_t l = 0; l < model.num_layers(); ++l) {
      const Layer& layer = model.layers[l];
      const std::int64_t o = layer.out, ni = layer.in, off = model.param_offset(l);
      for (std::int64_t i = 0; i < m; ++i) {
        double* e = centred.data() + i * p + off;
        const double* delta = view.errors[l] + i * o;
        const double* a = view.inputs[l] + i * ni;
        for (std::int64_t r = 0; r < o; ++r) {
          for (std::int64_t s = 0; s < ni; ++s) e[r * ni + s] = delta[r] * a[s] - grad[off + r * ni + s];
          if (layer.has_bias()) e[o * ni + r] = delta[r] - grad[off + o * ni + r];
        }
      }
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(p), static_cast<int>(m), 1.0,
                centred.data(), static_cast<int>(p), 1.0, cov.data(), static_cast<int>(p));
  });
  const double inv_n = 1.0 / static_cast<double>(n);
  HessCov result;
  double trace_cov_sq = 0;
  for (std::int64_t j = 0; j < p; ++j) {
    for (std::int64_t c = j; c < p; ++c) {
      const double sigma = cov[j * p + c] * inv_n;
      const double twice = (c == j) ? 1.0 : 2.0;
      result.trace_hessian_cov += twice * sigma * hess[j * p + c];
      trace_cov_sq += twice * sigma * sigma;
    }
  }
  result.hessian_frobenius_sq = dot(hess.data(), hess.data(), p * p);
  result.trace_cov_sq = trace_cov_sq;
  return result;
}

}  // namespace

CurvatureReport curvature(const Model& model, const DataSource& data, Loss loss,
                          const Profile& profile, const CurvatureOptions& options,
                          std::optional<double> trace_cov_sq, const ExternalOperator& hessian) {
  const auto start = std::chrono::steady_clock::now();
  check_inputs(model, data, loss, options.chunk_rows);
  const std::int64_t p = model.num_params();
  const std::int64_t n = data.whole_samples();
  const bool part = n != data.num_samples();
  check_profile_matches(profile, n, p);
  if (options.k < 0 || options.k > p) {
    throw InputError("asked for " + std::to_string(options.k) +
                     " Hessian eigenvalues of a model with " + std::to_string(p) +
                     " parameters; expected 0 ≤ k ≤ " + std::to_string(p));
  }
  if (!(options.tol > 0)) {
    throw InputError("the eigensolver tolerance must be positive; got " + std::to_string(options.tol));
  }
  if (options.max_passes < 1) {
    throw InputError("the eigensolver needs at least 1 pass; got max_passes = " +
                     std::to_string(options.max_passes));
  }
  if (trace_cov_sq && !(std::isfinite(*trace_cov_sq) && *trace_cov_sq >= 0)) {
    throw InputError("tr(Σ²) must be a finite number ≥ 0; got " + std::to_string(*trace_cov_sq));
  }

  CurvatureReport report;
  report.hessian = options.gauss_newton ? "gauss_newton" : "full";
  report.num_params = p;
  const HessianOperator op(model, data, loss, options.gauss_newton, options.chunk_rows);
  const BlockOperator apply_hessian = hessian.apply ? hessian.apply : op.as_block_operator();
  report.hessian_device = hessian.apply ? hessian.device : "cpu";

  if (options.k > 0) {
    EigenOptions eigen;
    eigen.k = options.k;
    eigen.tol = options.tol;
    eigen.max_passes = options.max_passes;
    eigen.seed = options.seed;
    eigen.progress = options.progress;
    EigenResult top = top_eigenpairs(p, apply_hessian, eigen);
    report.hessian_top_eigenvalues = std::move(top.values);
    report.hessian_eigen_residuals = std::move(top.residuals);
    report.hessian_eigen_passes = top.passes;
    report.hessian_eigen_converged = top.converged;
    if (!top.converged) {
      report.notes.push_back("the Hessian eigensolver stopped after " + std::to_string(top.passes) +
                             " passes before every residual met the tolerance");
    }
  } else {
    report.hessian_eigen_converged = true;
  }

  const double trace_hessian_sum = trace_hessian_pass(model, data, loss, options.chunk_rows);
  report.trace_hessian =
      (options.sum_over_parts ? options.sum_over_parts(trace_hessian_sum) : trace_hessian_sum) /
      static_cast<double>(n);
  std::vector<double> hg(static_cast<std::size_t>(p));
  apply_hessian(profile.param_mean.data(), hg.data(), 1);
  report.grad_hessian_grad = dot(profile.param_mean.data(), hg.data(), p);

  std::optional<HessCov> hess_cov;
  if (part) {
    report.trace_hessian_cov_method = "unavailable";
    report.notes.push_back(
        "tr(HΣ), ‖H‖_F and so B_noise and the Σ–H cosine are not computed across MPI ranks: "
        "their exact routes need the whole data on one process (docs/MPI.md)");
  } else if (model.num_layers() == 1 && loss == Loss::squared) {
    hess_cov = linear_squared_closed_form(model, data, options.chunk_rows);
    report.trace_hessian_cov_method = "closed_form";
  } else if (p <= options.dense_max_params) {
    hess_cov = dense_form(model, data, loss, apply_hessian, profile.param_mean, options.chunk_rows);
    report.trace_hessian_cov_method = "dense";
  } else {
    report.trace_hessian_cov_method = "unavailable";
    report.notes.push_back(
        "tr(HΣ), ‖H‖_F and so B_noise and the Σ–H cosine are not computed: there is no closed "
        "form beyond the one-layer squared-loss model, and P = " + std::to_string(p) +
        " exceeds dense_max_params = " + std::to_string(options.dense_max_params) +
        " (the exact dense route costs O(N P²))");
  }
  if (hess_cov) {
    report.trace_hessian_cov = hess_cov->trace_hessian_cov;
    report.hessian_frobenius_sq = hess_cov->hessian_frobenius_sq;
  }
  report.trace_cov_sq = trace_cov_sq ? trace_cov_sq : (hess_cov ? hess_cov->trace_cov_sq : std::nullopt);

  if (report.trace_hessian_cov) {
    if (report.grad_hessian_grad > 0) {
      report.noise_scale_b_noise = *report.trace_hessian_cov / report.grad_hessian_grad;
    } else {
      report.notes.push_back("B_noise is not defined: GᵀHG = " +
                             std::to_string(report.grad_hessian_grad) + " is not positive");
    }
  }
  if (report.trace_hessian_cov && report.hessian_frobenius_sq && report.trace_cov_sq) {
    if (*report.hessian_frobenius_sq > 0 && *report.trace_cov_sq > 0) {
      report.cov_hessian_cosine =
          *report.trace_hessian_cov / std::sqrt(*report.hessian_frobenius_sq * *report.trace_cov_sq);
    } else {
      report.notes.push_back("the Σ–H cosine is not defined: ‖H‖_F or ‖Σ‖_F is zero");
    }
  } else if (!report.trace_cov_sq) {
    report.notes.push_back("the Σ–H cosine needs tr(Σ²) = ‖Σ‖_F², which was not given");
  }
  const double denominator = 2.0 * profile.loss * report.trace_hessian;
  if (denominator != 0) {
    report.noise_curvature_ratio = profile.trace_cov / denominator;
  } else {
    report.notes.push_back("tr Σ / (2 L tr H) is not defined: L · tr H = 0");
  }
  report.elapsed_s = elapsed_since(start);
  return report;
}

// ---- Batch-size tests ---------------------------------------------------------

double batch_test_value(std::int64_t n, std::int64_t batch_size, double ratio) {
  const double factor = without_replacement_factor(n, batch_size);
  return factor == 0 ? 0.0 : factor * ratio;
}

std::int64_t min_passing_batch_size(std::int64_t n, double ratio, double theta) {
  if (!(theta > 0) || !std::isfinite(theta)) {
    throw InputError("the batch-size test threshold θ must be a positive number; got " +
                     std::to_string(theta));
  }
  if (n < 2) {
    throw InputError("the batch-size tests need at least 2 samples; got " + std::to_string(n));
  }
  const double bound = theta * theta;
  // value(b) is non-increasing in b and value(N) = 0 ≤ θ²: bisect for the first pass.
  std::int64_t lo = 1, hi = n;
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (batch_test_value(n, mid, ratio) <= bound) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

namespace detail {

double projected_variance(const Model& model, const DataSource& data, Loss loss,
                          const std::vector<double>& unit, std::int64_t chunk_rows) {
  const std::int64_t n = data.num_samples();
  // s_i = g_iᵀĜ = Σ_l δ_{l,i}ᵀ (Ĝ_{W_l} a_{l,i} + Ĝ_{b_l}); Var_i(s_i) chunk-centred, Chan-merged.
  const std::int64_t rows = std::min(chunk_rows, n);
  std::int64_t widest = 0;
  for (const Layer& layer : model.layers) widest = std::max(widest, layer.out);
  std::vector<double> projected(static_cast<std::size_t>(rows * widest));
  std::vector<double> s(static_cast<std::size_t>(rows));
  double mean = 0, m2 = 0;
  std::int64_t count = 0;
  detail::for_each_chunk(model, data, loss, rows, [&](const detail::ChunkView& view) {
    const std::int64_t m = view.rows;
    std::fill_n(s.begin(), m, 0.0);
    for (std::int64_t l = 0; l < model.num_layers(); ++l) {
      const Layer& layer = model.layers[l];
      const std::int64_t o = layer.out, ni = layer.in, off = model.param_offset(l);
      gemm(false, true, m, o, ni, 1.0, view.inputs[l], ni, unit.data() + off, ni, 0.0,
           projected.data(), o);
      for (std::int64_t i = 0; i < m; ++i) {
        double* row = projected.data() + i * o;
        if (layer.has_bias()) {
          for (std::int64_t r = 0; r < o; ++r) row[r] += unit[off + o * ni + r];
        }
        s[i] += dot(view.errors[l] + i * o, row, o);
      }
    }
    double chunk_mean = 0;
    for (std::int64_t i = 0; i < m; ++i) chunk_mean += s[i];
    chunk_mean /= static_cast<double>(m);
    double chunk_m2 = 0;
    for (std::int64_t i = 0; i < m; ++i) chunk_m2 += (s[i] - chunk_mean) * (s[i] - chunk_mean);
    const detail::MergeWeights w = detail::merge_weights(count, m);
    detail::merge_slot(mean, &m2, chunk_mean, chunk_m2, w);
    count += m;
  });
  return m2 / static_cast<double>(n);
}

}  // namespace detail

BatchTests batch_tests(const Model& model, const DataSource& data, Loss loss,
                       const Profile& profile, double theta,
                       std::span<const std::int64_t> batch_sizes, std::int64_t chunk_rows,
                       const ExternalOperator& covariance) {
  ExternalProjection product;
  if (covariance.apply) {
    // ĜᵀΣĜ = Ĝᵀ(ΣĜ): one product with the given operator.
    product.grad_cov_grad = [&](const std::vector<double>& unit) {
      std::vector<double> sigma_unit(unit.size());
      covariance.apply(unit.data(), sigma_unit.data(), 1);
      return dot(unit.data(), sigma_unit.data(), static_cast<std::int64_t>(unit.size()));
    };
    product.device = covariance.device;
  }
  return batch_tests(model, data, loss, profile, theta, batch_sizes, chunk_rows, product);
}

BatchTests batch_tests(const Model& model, const DataSource& data, Loss loss,
                       const Profile& profile, double theta,
                       std::span<const std::int64_t> batch_sizes, std::int64_t chunk_rows,
                       const ExternalProjection& product) {
  if (!(theta > 0) || !std::isfinite(theta)) {
    throw InputError("the batch-size test threshold θ must be a positive number; got " +
                     std::to_string(theta));
  }
  check_inputs(model, data, loss, chunk_rows);
  const std::int64_t n = data.whole_samples();
  const std::int64_t p = model.num_params();
  check_profile_matches(profile, n, p);
  if (static_cast<std::int64_t>(profile.param_var.size()) != p) {
    throw InputError("the batch-size tests need the profile's param_var (profile with "
                     "param_stats = true)");
  }
  for (const std::int64_t b : batch_sizes) {
    if (b < 1 || b > n) {
      throw InputError("batch size " + std::to_string(b) + " is outside 1.." + std::to_string(n) +
                       " (the number of samples)");
    }
  }

  BatchTests result;
  result.n = n;
  result.theta = theta;
  result.grad_norm_sq = profile.grad_norm_sq;
  result.trace_cov = profile.trace_cov;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  result.norm_ratio = result.inner_product_ratio = result.orthogonality_ratio = kInf;
  if (profile.grad_norm_sq > 0) {
    const double grad_norm = std::sqrt(profile.grad_norm_sq);
    const std::vector<double> unit = [&] {
      std::vector<double> u(profile.param_mean);
      for (double& v : u) v /= grad_norm;
      return u;
    }();
    double grad_cov_grad = 0;
    if (product.grad_cov_grad) {
      grad_cov_grad = product.grad_cov_grad(unit);
      result.grad_cov_grad_device = product.device;
    } else {
      grad_cov_grad = detail::projected_variance(model, data, loss, unit, chunk_rows);
    }
    result.grad_cov_grad = grad_cov_grad;
    result.norm_ratio = profile.trace_cov / profile.grad_norm_sq;
    result.inner_product_ratio = grad_cov_grad / profile.grad_norm_sq;
    result.orthogonality_ratio =
        std::max(0.0, profile.trace_cov - grad_cov_grad) / profile.grad_norm_sq;
  }

  result.batch_sizes.assign(batch_sizes.begin(), batch_sizes.end());
  for (const std::int64_t b : batch_sizes) {
    result.norm.push_back(batch_test_value(n, b, result.norm_ratio));
    result.inner_product.push_back(batch_test_value(n, b, result.inner_product_ratio));
    result.orthogonality.push_back(batch_test_value(n, b, result.orthogonality_ratio));
  }
  result.min_batch_norm_test = min_passing_batch_size(n, result.norm_ratio, theta);
  result.min_batch_inner_product_test = min_passing_batch_size(n, result.inner_product_ratio, theta);
  result.min_batch_orthogonality_test = min_passing_batch_size(n, result.orthogonality_ratio, theta);

  result.gsnr.resize(static_cast<std::size_t>(p));
  double gsnr_sum = 0;
  std::int64_t gsnr_count = 0;
  for (std::int64_t j = 0; j < p; ++j) {
    const double g = profile.param_mean[j], var = profile.param_var[j];
    if (var > 0) {
      result.gsnr[j] = g * g / var;
      gsnr_sum += result.gsnr[j];
      ++gsnr_count;
    } else {
      result.gsnr[j] = g != 0 ? kInf : std::numeric_limits<double>::quiet_NaN();
      ++result.gsnr_zero_variance_params;
    }
  }
  result.gsnr_mean = gsnr_count > 0 ? gsnr_sum / static_cast<double>(gsnr_count)
                                    : std::numeric_limits<double>::quiet_NaN();
  return result;
}

// ---- Two-batch estimators -------------------------------------------------------

namespace {

/// Rows of a base source picked by an index list (repeats allowed), so a
/// minibatch can go through the same chunked pass as the whole data.
class RowSubset final : public DataSource {
 public:
  RowSubset(const DataSource& base, const std::vector<std::int64_t>& rows) : base_(base), rows_(rows) {}
  std::int64_t num_samples() const override { return static_cast<std::int64_t>(rows_.size()); }
  std::int64_t num_features() const override { return base_.num_features(); }
  TargetKind target_kind() const override { return base_.target_kind(); }
  std::int64_t num_targets() const override { return base_.num_targets(); }
  void read(std::int64_t first, std::int64_t count, double* x, double* y,
            std::int32_t* labels) const override {
    const std::int64_t d = num_features(), k = num_targets();
    // Reads runs of consecutive base rows at once.
    for (std::int64_t j = first; j < first + count;) {
      std::int64_t run = 1;
      while (j + run < first + count && rows_[j + run] == rows_[j] + run) ++run;
      const std::int64_t at = j - first;
      base_.read(rows_[j], run, x + at * d, y ? y + at * k : nullptr, labels ? labels + at : nullptr);
      j += run;
    }
  }

 private:
  const DataSource& base_;
  const std::vector<std::int64_t>& rows_;
};

/// |g_B|² for the multiset of rows B: ‖(1/b) Σ_{i∈B} g_i‖².
double batch_grad_norm_sq(const Model& model, const DataSource& data, Loss loss,
                          const std::vector<std::int64_t>& rows, std::int64_t chunk_rows,
                          std::vector<double>& sum) {
  std::fill(sum.begin(), sum.end(), 0.0);
  const RowSubset subset(data, rows);
  detail::for_each_chunk(model, subset, loss, chunk_rows, [&](const detail::ChunkView& view) {
    for (std::int64_t l = 0; l < model.num_layers(); ++l) {
      const Layer& layer = model.layers[l];
      const std::int64_t o = layer.out, ni = layer.in, off = model.param_offset(l);
      gemm(true, false, o, ni, view.rows, 1.0, view.errors[l], o, view.inputs[l], ni, 1.0,
           sum.data() + off, ni);
      if (layer.has_bias()) {
        for (std::int64_t i = 0; i < view.rows; ++i) {
          for (std::int64_t r = 0; r < o; ++r) sum[off + o * ni + r] += view.errors[l][i * o + r];
        }
      }
    }
  });
  const double b = static_cast<double>(rows.size());
  return dot(sum.data(), sum.data(), static_cast<std::int64_t>(sum.size())) / (b * b);
}

EstimatorStats summarise(const std::vector<double>& values, double exact) {
  EstimatorStats stats;
  stats.exact = exact;
  stats.count = static_cast<std::int64_t>(values.size());
  if (stats.count == 0) {
    stats.mean = stats.std = stats.std_error = stats.bias = std::numeric_limits<double>::quiet_NaN();
    return stats;
  }
  for (double v : values) stats.mean += v;
  stats.mean /= static_cast<double>(stats.count);
  double m2 = 0;
  for (double v : values) m2 += (v - stats.mean) * (v - stats.mean);
  stats.std = stats.count > 1 ? std::sqrt(m2 / static_cast<double>(stats.count - 1))
                              : std::numeric_limits<double>::quiet_NaN();
  stats.std_error = stats.std / std::sqrt(static_cast<double>(stats.count));
  stats.bias = stats.mean - exact;
  return stats;
}

}  // namespace

std::vector<std::int64_t> estimator_batch_indices(std::int64_t n, std::int64_t batch_size,
                                                  std::uint64_t seed, std::int64_t pair, bool big) {
  if (n < 1 || batch_size < 0 || batch_size > std::numeric_limits<std::uint32_t>::max()) {
    throw InputError("cannot draw a batch of " + std::to_string(batch_size) + " from " +
                     std::to_string(n) + " samples; expected n ≥ 1 and 0 ≤ b < 2³²");
  }
  __extension__ typedef unsigned __int128 uint128;
  const r123::Philox4x32 generator;
  const r123::Philox4x32::key_type key = {
      {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
  const auto range = static_cast<std::uint64_t>(n);
  const std::uint64_t threshold = (0 - range) % range;  // 2⁶⁴ mod n: Lemire's rejection bound
  const auto pair_bits = static_cast<std::uint64_t>(pair);
  std::vector<std::int64_t> indices(static_cast<std::size_t>(batch_size));
  for (std::int64_t draw = 0; draw < batch_size; ++draw) {
    std::int64_t index = -1;
    // Each Philox block gives two 64-bit candidates; a rejected pair (odds
    // about (n/2⁶⁴)²) moves on to the next attempt's block.
    for (std::uint32_t attempt = 0; index < 0; ++attempt) {
      const r123::Philox4x32::ctr_type counter = {
          {static_cast<std::uint32_t>(pair_bits), static_cast<std::uint32_t>(pair_bits >> 32),
           0x45530000u | (big ? 0x8000u : 0u) | (attempt & 0x7fffu), static_cast<std::uint32_t>(draw)}};
      const r123::Philox4x32::ctr_type bits = generator(counter, key);
      for (int half = 0; half < 2 && index < 0; ++half) {
        const std::uint64_t x = std::uint64_t{bits[2 * half]} << 32 | bits[2 * half + 1];
        const uint128 product = static_cast<uint128>(x) * range;
        if (static_cast<std::uint64_t>(product) >= threshold) {
          index = static_cast<std::int64_t>(product >> 64);
        }
      }
    }
    indices[draw] = index;
  }
  return indices;
}

EstimatorTruth two_batch_estimators(const Model& model, const DataSource& data, Loss loss,
                                    const Profile& profile, std::int64_t b_small,
                                    std::int64_t b_big, std::int64_t pairs, std::uint64_t seed,
                                    std::int64_t chunk_rows) {
  check_inputs(model, data, loss, chunk_rows);
  const std::int64_t n = data.num_samples();
  const std::int64_t p = model.num_params();
  check_profile_matches(profile, n, p);
  if (b_small < 1 || b_big <= b_small) {
    throw InputError("the two-batch estimators need 1 ≤ B_small < B_big; got B_small = " +
                     std::to_string(b_small) + " and B_big = " + std::to_string(b_big));
  }
  if (pairs < 2) {
    throw InputError("the two-batch estimators need at least 2 pairs of batches for a standard "
                     "deviation; got " + std::to_string(pairs));
  }

  EstimatorTruth truth;
  truth.n = n;
  truth.b_small = b_small;
  truth.b_big = b_big;
  truth.pairs = pairs;
  truth.seed = seed;
  const double bs = static_cast<double>(b_small), bb = static_cast<double>(b_big);
  std::vector<double> sum(static_cast<std::size_t>(p));
  std::vector<double> grad_est, trace_est, noise_scale;
  for (std::int64_t pair = 0; pair < pairs; ++pair) {
    double norm_sq[2];
    for (int big = 0; big < 2; ++big) {
      std::vector<std::int64_t> rows =
          estimator_batch_indices(n, big ? b_big : b_small, seed, pair, big != 0);
      std::sort(rows.begin(), rows.end());  // locality; the multiset is what counts
      norm_sq[big] = batch_grad_norm_sq(model, data, loss, rows, chunk_rows, sum);
    }
    truth.small_norm_sq.push_back(norm_sq[0]);
    truth.big_norm_sq.push_back(norm_sq[1]);
    const double g = (bb * norm_sq[1] - bs * norm_sq[0]) / (bb - bs);
    const double s = (norm_sq[0] - norm_sq[1]) / (1.0 / bs - 1.0 / bb);
    grad_est.push_back(g);
    trace_est.push_back(s);
    if (g > 0) {
      noise_scale.push_back(s / g);
    } else {
      ++truth.nonpositive_grad_norm_pairs;
    }
  }

  const double exact_noise_scale = profile.noise_scale_simple;
  truth.small_batch_norm_sq = summarise(truth.small_norm_sq, profile.grad_norm_sq + profile.trace_cov / bs);
  truth.big_batch_norm_sq = summarise(truth.big_norm_sq, profile.grad_norm_sq + profile.trace_cov / bb);
  truth.grad_norm_sq = summarise(grad_est, profile.grad_norm_sq);
  truth.trace_cov = summarise(trace_est, profile.trace_cov);
  truth.noise_scale_per_pair = summarise(noise_scale, exact_noise_scale);
  truth.noise_scale_ratio_of_means = truth.trace_cov.mean / truth.grad_norm_sq.mean;
  truth.noise_scale_ratio_of_means_bias = truth.noise_scale_ratio_of_means - exact_noise_scale;
  return truth;
}

}  // namespace gradnoise
