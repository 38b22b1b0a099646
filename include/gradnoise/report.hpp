// Turning a Profile into what people read and what programs read back: the
// report JSON, the batch-size curve as CSV and a short human summary. Every
// key and column is named after MATH.md, so a report can be checked against
// the definitions without a glossary.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gradnoise/data.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

/// The version written into reports and printed by `gradnoise --version`.
const char* version();

/// "mse" for squared loss, "ce" for softmax cross-entropy (the CLI's names).
const char* loss_kind_name(Loss loss);

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

/// A few lines for stdout: n, P, loss, ‖G‖², tr Σ, B_simple, one line per
/// layer and a few rows of the curve (preview_batch_sizes).
std::string summary_text(const Profile& profile, const ReportContext& context);

}  // namespace gradnoise
