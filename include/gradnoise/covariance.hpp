// The shape of the gradient noise (docs/MATH.md "Beyond the mean"): products with
// the covariance Σ = (1/N) Σ_i (g_i − G)(g_i − G)ᵀ without forming it, its top
// eigenpairs, and tr(Σ²) = ‖Σ‖_F², exactly, on the CPU in float64.
//
// Every layer's per-sample gradient is rank one, g_{l,i} = δ_{l,i} ã_{l,i}ᵀ
// (ã = [a; 1] when the layer has a bias), so a block of b products Σ V costs
// two GEMMs per layer and chunk, about 4·N·b·Σ_l out_l·in_l flops and one pass
// over the data; Σ itself (P² doubles) is formed only when asked and small.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/krylov.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

/// Σ V for a block of vectors, exact and matrix-free, one pass over the data
/// per block:
///   Σ v = (1/N) Σ_i g_i c_i − G c̄,   c_i = g_iᵀv − Gᵀv,   c̄ = (1/N) Σ_i c_i.
/// The scalars c_i are centred, so the G Gᵀ part never cancels; c̄ is 0 in
/// exact arithmetic and subtracting G c̄ removes the rounding of Σ_i c_i
/// (and, to first order, any error in the G given), which matters when
/// ‖G‖² ≫ tr Σ. Per chunk and layer: Z = Ã_l V_lᵀ for all b columns at once
/// (one GEMM), c_i = Σ_l rowdot(Δ_l, Z) − Gᵀv, then out_l += (c∘Δ_l)ᵀ Ã_l
/// (one GEMM). With `layer` ≥ 0 the operator is the diagonal block Σ_ll
/// (dimension: that layer's P_l, slots W_l row-major then b_l).
///
/// The data source must outlive the operator. apply() is const but counts
/// passes; one operator must not be applied from two threads at once.
class CovarianceOperator {
 public:
  /// `mean_grad` is G over all P slots (Profile::param_mean). Throws InputError
  /// when the model, data and loss do not fit together (as for the profile),
  /// when mean_grad does not have P entries, or when `layer` is out of range.
  CovarianceOperator(const Model& model, const DataSource& data, Loss loss,
                     std::vector<double> mean_grad, std::int64_t chunk_rows = 4096,
                     std::int64_t layer = -1);

  /// P, or P_l for a single-layer operator.
  std::int64_t dim() const { return dim_; }
  /// out = Σ · in for `cols` column-major vectors of length dim() (one data pass).
  void apply(const double* in, double* out, std::int64_t cols) const;
  /// The operator as the eigensolver takes it; refers to *this.
  BlockOperator as_block_operator() const;
  /// Data passes (calls of apply with cols ≥ 1) so far.
  std::int64_t passes() const { return passes_; }

 private:
  Model model_;
  const DataSource& data_;
  Loss loss_;
  std::vector<double> mean_grad_;  // G restricted to the operator's slots
  std::int64_t chunk_rows_;
  std::int64_t layer_;             // −1: all layers
  std::int64_t dim_;
  mutable std::int64_t passes_ = 0;
};

/// The dense P×P covariance (column-major, symmetric), from the centred
/// per-sample gradients g_i − G of each chunk by rank-m updates (dsyrk), about
/// N·P² flops. Throws InputError naming P and the memory it would take when
/// P > max_params.
std::vector<double> covariance_matrix(const Model& model, const DataSource& data, Loss loss,
                                      const std::vector<double>& mean_grad,
                                      std::int64_t max_params = 4096,
                                      std::int64_t chunk_rows = 4096);

// ---- tr(Σ²) ---------------------------------------------------------------

enum class TraceSqMethod {
  automatic,  // the faster by the flop estimate, dense flops counted at 1.5× the Gram rate
              // (dense only up to max_dense_params)
  dense,      // ‖Σ‖_F² from covariance_matrix: N·P² flops, P² doubles
  gram,       // (1/N²) Σ_{i,j} (g̃_iᵀ g̃_j)² by blocks of the Gram matrix: ≈ N²·Σ_l(in_l + 3 out_l + 3) flops
};

struct TraceSqOptions {
  TraceSqMethod method = TraceSqMethod::automatic;
  std::int64_t chunk_rows = 4096;
  /// The dense method is used (and allowed) only up to this many parameters.
  std::int64_t max_dense_params = 8192;
  /// Gram method: rows whose factors are held at once (the outer block); 0
  /// picks it from a 256 MiB budget. Each outer block costs one data pass.
  std::int64_t block_rows = 0;
};

struct TraceSq {
  double total = 0;                // tr(Σ²) = ‖Σ‖_F²
  std::vector<double> layers;      // tr(Σ_ll²) = ‖Σ_ll‖_F² per layer
  TraceSqMethod method = TraceSqMethod::automatic;  // the method that ran
  std::int64_t passes = 0;         // data passes used
  double flops = 0;                // the estimate that chose it
};

/// Estimated flops of each method (the basis of `automatic`).
double trace_cov_sq_flops(const Model& model, std::int64_t n, TraceSqMethod method);

/// tr(Σ²) exactly, and per layer.
///
/// Gram method: ⟨g̃_i, g̃_j⟩ with g̃ = g − G is summed layer by layer in a
/// centred form. With the data means δ̄ and ā (ā's bias slot is 1), u_i = δ_i − δ̄,
/// v_i = ã_i − ā and C = (1/N) Σ u_i v_iᵀ, one has G = δ̄ āᵀ + C and
///   g̃_i = δ_i v_iᵀ + u_i āᵀ − C,
///   ⟨g̃_i, g̃_j⟩ = (δ_i·δ_j)(v_i·v_j) + (δ_i·u_j)(v_i·ā) + (u_i·δ_j)(ā·v_j)
///                + (u_i·u_j)‖ā‖² − h_i − h_j + ‖C‖²,   h_i = δ_iᵀCv_i + u_iᵀCā,
/// none of whose terms carries ‖G‖², so the entries do not cancel when
/// ‖G‖² ≫ tr Σ (the uncentred g_iᵀg_j − g_iᵀG − g_jᵀG + ‖G‖² loses about
/// log10(‖G‖²/tr Σ) digits per entry). It needs two extra passes for δ̄, ā, C
/// and ignores mean_grad. Dense method: ‖Σ‖_F² of covariance_matrix.
TraceSq trace_cov_sq(const Model& model, const DataSource& data, Loss loss,
                     const std::vector<double>& mean_grad, const TraceSqOptions& options = {});

// ---- Spectrum -------------------------------------------------------------

struct SpectrumOptions {
  std::int64_t k = 10;            // top eigenpairs wanted (clamped to P_l per layer)
  double tol = 1e-10;             // ‖Σy − θy‖ ≤ tol·θ_max (EigenOptions::tol)
  std::int64_t max_passes = 60;   // per eigensolve
  /// Krylov block size; 0 picks ⌈k/2⌉ + 1 (each block column costs about as
  /// much as a forward pass, so fewer columns and a few more passes win).
  /// Eigenvalues repeated more than `block` times may be missed.
  std::int64_t block = 0;
  std::uint64_t seed = 0;
  std::int64_t chunk_rows = 4096;
  bool keep_vectors = true;       // fill top_eigenvectors
  bool per_layer = true;          // also the spectra of the diagonal blocks Σ_ll
  /// tr(Σ²) is computed exactly when this is set, or when its estimated cost
  /// is at most exact_trace_sq_max_flops (a few seconds of CPU). Otherwise only
  /// the lower bound Σ_top λ² is reported.
  bool exact_trace_sq = false;
  double exact_trace_sq_max_flops = 1e11;
  TraceSqMethod trace_sq_method = TraceSqMethod::automatic;
  EigenProgress progress;  // optional: after every eigensolver pass
  /// When set, the Σ_ll products of the per-layer spectra come from it (e.g.
  /// summed over MPI ranks) instead of a CPU operator on `data`.
  std::function<BlockOperator(std::int64_t layer)> layer_covariance;
};

struct CovarianceSpectrum {
  std::int64_t num_params = 0;
  std::vector<double> top_eigenvalues;   // descending, k
  std::vector<double> top_eigenvectors;  // P×k column-major (empty unless keep_vectors)
  std::vector<double> residuals;         // ‖Σy − θy‖ per pair
  double trace_cov = 0;                  // tr Σ (from the profile)
  /// tr(Σ²) = ‖Σ‖_F², exact; NaN when it was not computed (see trace_cov_sq_exact).
  double trace_cov_sq = 0;
  bool trace_cov_sq_exact = false;
  /// Σ_top λ² over the k eigenvalues found: a lower bound on tr(Σ²), always reported.
  double top_eigenvalues_sq_sum = 0;
  /// tr(Σ)² / tr(Σ²); NaN when tr(Σ²) was not computed.
  double effective_rank = 0;
  /// tr(Σ)² / Σ_top λ²: an upper bound on effective_rank, always reported.
  double effective_rank_upper_bound = 0;
  std::int64_t passes = 0;               // data passes used by the eigensolver for Σ
  std::int64_t trace_sq_passes = 0;      // data passes used for tr(Σ²) (all layers at once)
  bool converged = false;
  struct Layer {
    std::string name;
    std::int64_t num_params = 0;
    std::vector<double> top_eigenvalues;  // descending, min(k, P_l); empty unless per_layer
    double trace_cov = 0;                 // tr Σ_ll
    double trace_cov_sq = 0;              // tr(Σ_ll²); NaN when not computed
    double top_eigenvalues_sq_sum = 0;
    double effective_rank = 0;            // tr(Σ_ll)² / tr(Σ_ll²); NaN when not computed
    double effective_rank_upper_bound = 0;
    std::int64_t passes = 0;              // eigensolver passes for Σ_ll (0 when shared with Σ)
    bool converged = false;
  };
  std::vector<Layer> layers;
  double elapsed_s = 0;
};

/// Top eigenpairs of Σ (block Krylov on CovarianceOperator), tr(Σ²), the
/// effective rank, and the same per layer. `profile` gives G (param_mean) and
/// tr Σ, per layer too. For a one-layer model Σ_11 = Σ and the layer reuses
/// the whole model's results.
/// `covariance`, when given, computes the whole model's Σ·V for its
/// eigensolver (a session's backend, on whatever device it runs); the
/// per-layer blocks and tr(Σ²) use the CPU operators.
CovarianceSpectrum covariance_spectrum(const Model& model, const DataSource& data, Loss loss,
                                       const Profile& profile, const SpectrumOptions& options = {},
                                       const ExternalOperator& covariance = {});

}  // namespace gradnoise
