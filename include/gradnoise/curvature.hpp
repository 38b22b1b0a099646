// Curvature of the loss and what it says about the gradient noise (docs/MATH.md
// "Beyond the mean"): exact Hessian-vector products, the top of the Hessian
// spectrum, McCandlish's B_noise, the alignment of Σ with H (Ziyin et al.),
// the population batch-size tests (norm, inner product, orthogonality) with
// their smallest passing batch, the per-parameter GSNR, and a Monte-Carlo
// ground truth for the two-batch estimators of ‖G‖² and tr Σ.
//
// Everything here is the float64 CPU reference: exact up to rounding, with
// one stated exception per quantity where an exact value is not affordable
// (then the field is empty and `notes` says why; nothing is approximated).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/krylov.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

// ---- Hessian-vector products ---------------------------------------------

/// The Hessian of L(θ) = (1/N) Σ_i ℓ_i as a matrix-free operator.
///
/// Gauss–Newton: H_GN v = (1/N) Σ_i J_iᵀ H_ℓ,i J_i v with J_i = ∂f(x_i)/∂θ and
/// H_ℓ = I (squared loss) or diag(p_i) − p_i p_iᵀ (softmax cross-entropy).
/// Full: H v = H_GN v + (1/N) Σ_i Σ_k δ_{L,i,k} ∇²f_k(x_i) v, the second-order
/// term that products of weights create in deep models (zero for one layer,
/// where H = H_GN exactly).
///
/// One application to a block of vectors is one pass over the data: a forward
/// pass of directional derivatives (R-operator, R a_l = V_l a_{l−1} + c_l +
/// W_l R a_{l−1}), the loss Hessian, and a backward pass (R δ_{l−1} =
/// W_lᵀ R δ_l [+ V_lᵀ δ_l for the full Hessian]), with every column of the
/// block carried through the same GEMMs.
///
/// The operator refers to `model` and `data`; both must outlive it.
/// hessian_operator_cuda (gradnoise/cuda.hpp) is the same product on the GPU.
class HessianOperator {
 public:
  /// Throws InputError unless model, data and loss fit together
  /// (check_profile_inputs) and chunk_rows ≥ 1.
  HessianOperator(const Model& model, const DataSource& data, Loss loss, bool gauss_newton,
                  std::int64_t chunk_rows = 4096);

  /// P, the number of parameters.
  std::int64_t dim() const { return dim_; }
  bool gauss_newton() const { return gauss_newton_; }

  /// out = H · in for `cols` vectors, column-major (vector c at [c·P, (c+1)·P)),
  /// docs/MATH.md flattening. One pass over the data; `in` and `out` must not overlap.
  void apply(const double* in, double* out, std::int64_t cols) const;

  /// `apply` as a BlockOperator for top_eigenpairs; refers to *this.
  BlockOperator as_block_operator() const;

  /// Passes over the data made by `apply` so far.
  std::int64_t passes() const { return passes_; }

 private:
  Model model_;  // a copy: the operator must not outlive a caller's model
  const DataSource& data_;
  Loss loss_;
  bool gauss_newton_;
  std::int64_t chunk_rows_;
  std::int64_t dim_;
  mutable std::int64_t passes_ = 0;
};


// ---- Curvature report -------------------------------------------------------

struct CurvatureOptions {
  /// Top Hessian eigenvalues wanted (largest algebraic); 0 skips the eigensolver.
  std::int64_t k = 5;
  /// Eigensolver tolerance: ‖H y − λ y‖ ≤ tol · max|λ| for each of the k pairs.
  double tol = 1e-10;
  /// Most block applications of H (data passes) the eigensolver may use.
  std::int64_t max_passes = 60;
  /// Use the Gauss–Newton matrix instead of the full Hessian (identical for
  /// one-layer models).
  bool gauss_newton = false;
  /// Rows per chunk at most; block products use fewer rows when a chunk of
  /// the block would pass about 64 MiB.
  std::int64_t chunk_rows = 4096;
  /// Seed of the eigensolver's random start block (Philox).
  std::uint64_t seed = 0;
  /// Where no closed form exists (deep models, cross-entropy), tr(HΣ) and
  /// ‖H‖_F come from the dense P×P matrices H and Σ when P ≤ this (cost
  /// O(N P²) time, 2 P² doubles of memory); above it they are left empty.
  std::int64_t dense_max_params = 2048;
  EigenProgress progress;  // optional: after every eigensolver pass
  /// When `data` is one part of a data set split over processes (MPI ranks):
  /// the sum of a per-part value over all parts, for tr H. The closed and
  /// dense forms of tr(HΣ) are then not computed.
  std::function<double(double)> sum_over_parts;
};

struct CurvatureReport {
  std::string hessian;  // "full" or "gauss_newton": which H every field below uses
  /// Where the Hessian-vector products (eigensolver, GᵀHG, the dense H) ran:
  /// "cpu" or the given operator's device. tr H and the closed form are CPU passes.
  std::string hessian_device = "cpu";
  std::int64_t num_params = 0;

  std::vector<double> hessian_top_eigenvalues;  // k largest eigenvalues of H, descending
  std::vector<double> hessian_eigen_residuals;  // ‖H y − λ y‖ per eigenpair
  std::int64_t hessian_eigen_passes = 0;        // data passes the eigensolver used
  bool hessian_eigen_converged = false;         // every residual within tol (true when k = 0)

  /// tr H, exact in one pass: (1/N) Σ_i Σ_l (‖a_{l−1,i}‖² + [bias_l]) ⟨H_ℓ,i, P_l P_lᵀ⟩
  /// with P_l = W_L ⋯ W_{l+1}. The same for the full and the Gauss–Newton
  /// Hessian: f is affine in every single parameter, so the second-order
  /// term has a zero diagonal.
  double trace_hessian = 0;
  /// Gᵀ H G (one Hessian-vector product with G = param_mean).
  double grad_hessian_grad = 0;

  /// tr(HΣ) = (1/N) Σ_i (g_i − G)ᵀ H (g_i − G); empty when not affordable exactly.
  std::optional<double> trace_hessian_cov;
  /// How tr(HΣ) and ‖H‖_F² were obtained: "closed_form" (one layer, squared
  /// loss: H = I_K ⊗ S, S = (1/N) X̃ᵀX̃), "dense" (P ≤ dense_max_params) or
  /// "unavailable".
  std::string trace_hessian_cov_method;
  /// ‖H‖_F² = tr(H²); empty when not affordable exactly.
  std::optional<double> hessian_frobenius_sq;
  /// tr(Σ²) = ‖Σ‖_F²: as passed to curvature(), else from the dense Σ, else empty.
  std::optional<double> trace_cov_sq;

  /// B_noise = tr(HΣ) / (Gᵀ H G) (McCandlish et al. 2018); empty when tr(HΣ)
  /// is, or when Gᵀ H G ≤ 0.
  std::optional<double> noise_scale_b_noise;
  /// tr(ΣH) / (‖Σ‖_F ‖H‖_F): 1 when Σ ∝ H; empty unless all three are known
  /// and the norms are positive.
  std::optional<double> cov_hessian_cosine;
  /// tr Σ / (2 L tr H): 1 when Σ = 2 L H, which Ziyin et al. predict near a
  /// minimum for batch size 1; empty when L · tr H = 0.
  std::optional<double> noise_curvature_ratio;

  /// One sentence for each field left empty, saying why.
  std::vector<std::string> notes;
  double elapsed_s = 0;
};

/// The curvature report of `model` on `data` at its current θ. `profile` is
/// profile(model, data, {loss}) at the same θ (its loss, trace_cov and
/// param_mean are used). `trace_cov_sq` is tr(Σ²) = ‖Σ‖_F² when the caller
/// has it (e.g. from the covariance module), for the cosine.
/// `hessian`, when given, supplies the Hessian-vector products in place of
/// the CPU HessianOperator; it must be the H that options.gauss_newton names
/// (e.g. hessian_operator_cuda(model, data, loss, options.gauss_newton)).
/// Throws InputError for k < 0 or k > P, tol ≤ 0, max_passes < 1,
/// chunk_rows < 1, a profile of another problem size, or trace_cov_sq < 0.
CurvatureReport curvature(const Model& model, const DataSource& data, Loss loss,
                          const Profile& profile, const CurvatureOptions& options,
                          std::optional<double> trace_cov_sq = {},
                          const ExternalOperator& hessian = {});

// ---- Batch-size tests (population forms) ------------------------------------

/// The value of a batch-size test at batch size b: c(b) · ratio with
/// c(b) = (N − b)/(b(N − 1)) and `ratio` the test's numerator over ‖G‖²
/// (tr Σ/‖G‖², ĜᵀΣĜ/‖G‖² or (tr Σ − ĜᵀΣĜ)/‖G‖²). Exactly 0 at b = N, even
/// when ratio is +inf (‖G‖² = 0). Throws InputError for b outside 1..N.
double batch_test_value(std::int64_t n, std::int64_t batch_size, double ratio);

/// The smallest b in 1..N with batch_test_value(n, b, ratio) ≤ θ², found by
/// bisection on the exact floating values (c(b) and the product are
/// monotone in b after rounding too, so this is the first passing b of a
/// scan). b = N always passes. Throws InputError for θ ≤ 0 or n < 2.
std::int64_t min_passing_batch_size(std::int64_t n, double ratio, double theta);

struct BatchTests {
  std::int64_t n = 0;
  double theta = 0;             // each test passes at b when its value ≤ θ²
  double grad_norm_sq = 0;      // ‖G‖² (from the profile)
  double trace_cov = 0;         // tr Σ (from the profile)
  /// Ĝᵀ Σ Ĝ = Var_i(g_iᵀ Ĝ), Ĝ = G/‖G‖, computed in one pass; empty when ‖G‖² = 0.
  std::optional<double> grad_cov_grad;
  /// Where ĜᵀΣĜ was computed: "cpu" or the given Σ operator's device.
  std::string grad_cov_grad_device = "cpu";

  /// Per test, its value over c(b): tr Σ/‖G‖², ĜᵀΣĜ/‖G‖², max(0, tr Σ − ĜᵀΣĜ)/‖G‖²
  /// (all +inf when ‖G‖² = 0; the max only removes rounding below zero).
  double norm_ratio = 0, inner_product_ratio = 0, orthogonality_ratio = 0;

  std::vector<std::int64_t> batch_sizes;  // as asked
  std::vector<double> norm;               // c(b) tr Σ / ‖G‖², per batch size
  std::vector<double> inner_product;      // c(b) ĜᵀΣĜ / ‖G‖²
  std::vector<double> orthogonality;      // c(b) (tr Σ − ĜᵀΣĜ) / ‖G‖²

  /// Smallest b in 1..N (not only among batch_sizes) passing each test.
  std::int64_t min_batch_norm_test = 0;
  std::int64_t min_batch_inner_product_test = 0;
  std::int64_t min_batch_orthogonality_test = 0;

  /// Per parameter G_j² / param_var_j. A slot with param_var_j = 0 (exactly)
  /// holds +inf when G_j ≠ 0 and NaN when G_j = 0; it is left out of
  /// gsnr_mean and counted in gsnr_zero_variance_params.
  std::vector<double> gsnr;
  /// Mean over the slots with param_var_j > 0; NaN when there are none.
  double gsnr_mean = 0;
  std::int64_t gsnr_zero_variance_params = 0;
};

/// The batch-size tests for every b in `batch_sizes` and the smallest passing
/// b of each. `profile` is profile(model, data, {loss, param_stats = true})
/// at the same θ. `covariance`, when given, is Σ as a matrix-free operator
/// built with G = profile.param_mean (e.g. covariance_operator_cuda); then
/// ĜᵀΣĜ = Ĝᵀ(ΣĜ) comes from one product with it instead of the CPU pass.
/// Throws InputError for θ ≤ 0, a batch size outside 1..N, a profile without
/// param_var, or one of another problem size.
BatchTests batch_tests(const Model& model, const DataSource& data, Loss loss,
                       const Profile& profile, double theta,
                       std::span<const std::int64_t> batch_sizes, std::int64_t chunk_rows = 4096,
                       const ExternalOperator& covariance = {});

/// ĜᵀΣĜ for a unit vector Ĝ computed outside batch_tests (a session's
/// backend: Profiler::grad_cov_grad_operator), and where. Empty: the CPU pass.
struct ExternalProjection {
  std::function<double(const std::vector<double>& unit)> grad_cov_grad;
  std::string device = "cpu";
};

/// The same tests with ĜᵀΣĜ from `product`.
BatchTests batch_tests(const Model& model, const DataSource& data, Loss loss,
                       const Profile& profile, double theta,
                       std::span<const std::int64_t> batch_sizes, std::int64_t chunk_rows,
                       const ExternalProjection& product);

// ---- Two-batch estimators: Monte-Carlo ground truth --------------------------

/// One estimator over the pairs.
struct EstimatorStats {
  double exact = 0;      // what it estimates (its exact expectation where unbiased)
  double mean = 0;       // mean over the pairs that entered
  double std = 0;        // sample standard deviation over those pairs (divides by count − 1)
  double std_error = 0;  // std / √count
  double bias = 0;       // mean − exact
  std::int64_t count = 0;  // pairs that entered
};

struct EstimatorTruth {
  std::int64_t n = 0;
  std::int64_t b_small = 0;
  std::int64_t b_big = 0;
  std::int64_t pairs = 0;
  std::uint64_t seed = 0;

  /// |g_small|², exact E = ‖G‖² + tr Σ / B_small (with replacement).
  EstimatorStats small_batch_norm_sq;
  /// |g_big|², exact E = ‖G‖² + tr Σ / B_big.
  EstimatorStats big_batch_norm_sq;
  /// ‖G‖²_est = (B_big |g_big|² − B_small |g_small|²)/(B_big − B_small); unbiased.
  EstimatorStats grad_norm_sq;
  /// tr Σ_est = (|g_small|² − |g_big|²)/(1/B_small − 1/B_big); unbiased.
  EstimatorStats trace_cov;
  /// B_simple_est = tr Σ_est / ‖G‖²_est per pair, over the pairs with
  /// ‖G‖²_est > 0 (the others are counted in nonpositive_grad_norm_pairs);
  /// exact is tr Σ / ‖G‖². A ratio: biased, and the bias is what this measures.
  EstimatorStats noise_scale_per_pair;
  std::int64_t nonpositive_grad_norm_pairs = 0;
  /// mean(tr Σ_est) / mean(‖G‖²_est) over all pairs, and minus the exact
  /// tr Σ / ‖G‖² (+inf/NaN where a denominator is 0).
  double noise_scale_ratio_of_means = 0;
  double noise_scale_ratio_of_means_bias = 0;

  /// Per pair |g_small|² and |g_big|², in pair order.
  std::vector<double> small_norm_sq;
  std::vector<double> big_norm_sq;
};

/// The sample indices of batch `big ? big : small` of pair `pair`: b draws
/// uniform in [0, N) with replacement, a pure function of (seed, pair, big,
/// draw) through Philox4x32-10 (exactly uniform: Lemire's method with
/// rejection), in draw order.
std::vector<std::int64_t> estimator_batch_indices(std::int64_t n, std::int64_t batch_size,
                                                  std::uint64_t seed, std::int64_t pair, bool big);

/// Draws `pairs` independent pairs of minibatches with replacement (sizes
/// b_small and b_big, indices from estimator_batch_indices), takes the mean
/// gradient of each exactly, and summarises the McCandlish two-batch
/// estimators against the exact ‖G‖² and tr Σ of `profile` (profile(model,
/// data, {loss}) at the same θ). Throws InputError unless
/// 1 ≤ b_small < b_big and pairs ≥ 2, or for a profile of another problem size.
EstimatorTruth two_batch_estimators(const Model& model, const DataSource& data, Loss loss,
                                    const Profile& profile, std::int64_t b_small,
                                    std::int64_t b_big, std::int64_t pairs, std::uint64_t seed,
                                    std::int64_t chunk_rows = 4096);

}  // namespace gradnoise
