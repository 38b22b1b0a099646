// Turning a Profile into what people read and what programs read back: the
// report JSON, the batch-size curve as CSV and a short human summary. Every
// key and column is named after docs/MATH.md, so a report can be checked against
// the definitions without a glossary.
#pragma once

#include <cstdint>
#include <span>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gradnoise/data.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/covariance.hpp"
#include "gradnoise/curvature.hpp"
#include "gradnoise/profile.hpp"
#include "gradnoise/sweep.hpp"

namespace gradnoise {

/// The version written into reports and printed by `gradnoise --version`.
const char* version();

/// Where the numbers came from, copied into the report as is.
struct ReportContext {
  Loss loss = Loss::squared;
  /// Model description: at least {"widths": [D, ..., K], "bias": [bool per
  /// layer]} (model_json), plus how it was made ("init", "seed", "files").
  nlohmann::ordered_json model = nlohmann::ordered_json::object();
  /// Data description: {"source": "fashion-mnist" | "files" | ..., "n", "d", "k", ...}.
  nlohmann::ordered_json data = nlohmann::ordered_json::object();
  /// Options that shaped the run (requested device, chunk rows, ...).
  nlohmann::ordered_json options = nlohmann::ordered_json::object();
};

/// {"widths": [D, H1, ..., K], "bias": [true/false per layer], "num_params": P}.
nlohmann::ordered_json model_json(const Model& model);

/// The report: n, num_params, loss, loss_var, grad_norm_sq, trace_cov,
/// mean_sample_grad_norm_sq, noise_scale_simple (null when not finite),
/// layers [{name, num_params, grad_norm_sq, trace_cov,
/// mean_sample_grad_norm_sq, noise_scale_simple}], device, elapsed_s, and the
/// context: gradnoise_version, loss_kind, model, data, options, and
/// curve_preview (the batch-size curve at b = 1, 2, 4, ..., N).
nlohmann::ordered_json report_json(const Profile& profile, const ReportContext& context);

/// report.json's closing keys: the processes that computed it ("ranks"),
/// the bytes they exchanged ("bytes_communicated": for the profile's merge
/// and in all) and how the products' sums travelled ("reduction": "host"
/// through MPI or the thread ranks' mailboxes, "nccl" GPU to GPU; docs/MPI.md).
/// One process: ranks 1, no bytes, reduction "none".
void add_ranks_json(nlohmann::ordered_json& report, int ranks, std::uint64_t profile_bytes = 0,
                    std::uint64_t total_bytes = 0, const std::string& reduction = "none");

/// report_json pretty-printed (2-space indent), ending in a newline. Doubles
/// are written so they read back bit for bit.
std::string report_json_text(const Profile& profile, const ReportContext& context);

/// The curve as CSV: header `batch_size,var_without_replacement,var_with_replacement`
/// (plus `,loss_var_without_replacement,loss_var_with_replacement` when
/// `with_loss_columns`), one row per point, doubles to 17 significant digits.
std::string curve_csv(std::span<const CurvePoint> curve, bool with_loss_columns = false);

/// At most `max_rows` batch sizes from the powers of two 1, 2, 4, ..., N,
/// always including 1 and N, spread evenly over the rest.
std::vector<std::int64_t> preview_batch_sizes(std::int64_t n, std::size_t max_rows = 8);

/// One sentence per thing the user should know about the numbers (e.g.
/// ‖G‖² = 0 so B_simple is undefined); empty when there is nothing to say.
std::vector<std::string> profile_warnings(const Profile& profile);

/// The size below which mean‖g_i‖² is rounding error of the forward pass,
/// not signal: (1e4 ε)² · mean‖y‖² · mean‖x̃‖² (mean‖y‖² = 1 for labels, where
/// |δ| ≤ 1). An exact fit (e.g. --init lstsq on noiseless targets) sits there.
/// One pass over the data (in chunks, so any DataSource will do).
double rounding_grad_norm_sq(const DataSource& data);
/// The same from the sums Σ‖x_i‖² and Σ‖y_i‖² (0 for labels) over n samples,
/// e.g. added up over MPI ranks.
double rounding_grad_norm_sq(double x_sq_sum, double y_sq_sum, std::int64_t n, bool real_targets);

/// When the per-sample gradients are at rounding level (mean‖g_i‖² ≤ `floor`),
/// tr Σ / ‖G‖² is a ratio of rounding errors: sets every noise_scale_simple to
/// NaN (reported as null) and returns the warning that says why; else empty.
std::string undefine_rounding_ratios(Profile& profile, double floor);

/// A few lines for stdout: n, P, loss, ‖G‖², tr Σ, B_simple, one line per
/// layer and a few rows of the curve (preview_batch_sizes).
std::string summary_text(const Profile& profile, const ReportContext& context);

// ---- The noise's shape (gradnoise profile --spectrum/--theta/--estimators) ---

/// Whatever shape analyses a run asked for; absent ones are left out.
struct ShapeResults {
  std::optional<CovarianceSpectrum> spectrum;
  std::string spectrum_device;  // where Σ's top eigenpairs were found
  std::optional<CurvatureReport> curvature;
  std::optional<BatchTests> tests;
  std::optional<EstimatorTruth> estimators;
};

/// Adds the shape keys to a report: cov_top_eigenvalues, trace_cov_sq and
/// effective_rank (null unless computed exactly; the eigenvalue bounds beside
/// them), cov_layers, hessian_top_eigenvalues, trace_hessian,
/// noise_scale_b_noise, cov_hessian_cosine, noise_curvature_ratio, theta,
/// min_batch_{norm,inner_product,orthogonality}_test, gsnr_mean,
/// grad_cov_grad, estimators. Non-finite values are written as null.
void add_shape_json(nlohmann::ordered_json& report, const ShapeResults& shape);

/// scope,rank,eigenvalue — scope "model", a layer name, or "hessian".
std::string spectrum_csv(const ShapeResults& shape);

/// batch_size,norm_test,inner_product_test,orthogonality_test.
std::string batch_tests_csv(const BatchTests& tests);

/// A few lines for stdout.
std::string shape_summary_text(const ShapeResults& shape);

// ---- Sweeps (gradnoise sweep --summary) ------------------------------------

/// What a sweep's summary records beside its result, as given.
struct SweepReportContext {
  nlohmann::ordered_json data = nlohmann::ordered_json::object();   // as ReportContext::data
  nlohmann::ordered_json model = nlohmann::ordered_json::object();  // as ReportContext::model
  bool test_data = false;            // whether test data were evaluated
  std::string device_requested = "cpu";
};

/// The summary JSON: gradnoise_version, command, loss, data, model,
/// num_params, config, start (the profile at θ₀), num_runs, run_steps,
/// elapsed_s, run_steps_per_s, grid [{batch_size, lr, ..., trajectory}],
/// divergences (docs/SWEEP.md). Non-finite values are written as null.
nlohmann::ordered_json sweep_summary_json(const SweepResult& result, const SweepConfig& config,
                                          const Profile& start, const SweepReportContext& context);

}  // namespace gradnoise
