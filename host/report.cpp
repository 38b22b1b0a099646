// Reports: JSON for programs, CSV for the curve, a few lines for people.
// Everything is built in memory so the caller can write all outputs at the
// end of a run, or none of them.
#include "parallel_scan.hpp"
#include "gradnoise/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

// The build may pass the project version; this default must follow
// project(... VERSION ...) in CMakeLists.txt.
#ifndef GRADNOISE_VERSION
#define GRADNOISE_VERSION "0.1.0"
#endif

namespace gradnoise {
namespace {

/// null for NaN/inf, the number otherwise (JSON has no infinity).
nlohmann::ordered_json finite_or_null(double value) {
  if (std::isfinite(value)) return value;
  return nullptr;
}

/// printf-style formatting of one double.
std::string format_double(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

/// Short numbers for the human summary; "undefined" for NaN/inf.
std::string short_number(double value) {
  if (!std::isfinite(value)) return "undefined";
  return format_double("%.6g", value);
}

std::string pad_left(const std::string& text, std::size_t width) {
  return text.size() >= width ? text : std::string(width - text.size(), ' ') + text;
}

std::string pad_right(const std::string& text, std::size_t width) {
  return text.size() >= width ? text : text + std::string(width - text.size(), ' ');
}

std::vector<std::int64_t> powers_of_two_and_n(std::int64_t n) {
  std::vector<std::int64_t> sizes;
  for (std::int64_t b = 1; b < n; b *= 2) sizes.push_back(b);
  if (n >= 1) sizes.push_back(n);
  return sizes;
}

}  // namespace

const char* version() { return GRADNOISE_VERSION; }

nlohmann::ordered_json model_json(const Model& model) {
  nlohmann::ordered_json widths = nlohmann::ordered_json::array();
  nlohmann::ordered_json bias = nlohmann::ordered_json::array();
  if (!model.layers.empty()) widths.push_back(model.layers.front().in);
  for (const Layer& layer : model.layers) {
    widths.push_back(layer.out);
    bias.push_back(layer.has_bias());
  }
  std::int64_t num_params = 0;
  for (const Layer& layer : model.layers) num_params += layer.num_params();
  return {{"widths", widths}, {"bias", bias}, {"num_params", num_params}};
}

std::vector<std::int64_t> preview_batch_sizes(std::int64_t n, std::size_t max_rows) {
  std::vector<std::int64_t> all = powers_of_two_and_n(n);
  if (max_rows < 2 || all.size() <= max_rows) {
    if (max_rows < all.size()) all.resize(max_rows);
    return all;
  }
  // Evenly spaced indices into the powers of two, first and last kept.
  std::vector<std::int64_t> picked;
  const std::size_t last = all.size() - 1;
  for (std::size_t row = 0; row < max_rows; ++row) {
    const std::size_t index = (row * last + (max_rows - 1) / 2) / (max_rows - 1);
    if (picked.empty() || picked.back() != all[index]) picked.push_back(all[index]);
  }
  return picked;
}

nlohmann::ordered_json report_json(const Profile& profile, const ReportContext& context) {
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const LayerProfile& layer : profile.layers) {
    layers.push_back({
        {"name", layer.name},
        {"num_params", layer.num_params},
        {"grad_norm_sq", layer.grad_norm_sq},
        {"trace_cov", layer.trace_cov},
        {"mean_sample_grad_norm_sq", layer.mean_sample_grad_norm_sq},
        {"noise_scale_simple", finite_or_null(layer.noise_scale_simple)},
    });
  }

  nlohmann::ordered_json preview = nlohmann::ordered_json::array();
  const std::vector<std::int64_t> sizes = powers_of_two_and_n(profile.n);
  if (profile.n >= 2) {
    for (const CurvePoint& point : batch_size_curve(profile, sizes)) {
      preview.push_back({
          {"batch_size", point.batch_size},
          {"var_without_replacement", point.var_without_replacement},
          {"var_with_replacement", point.var_with_replacement},
          {"loss_var_without_replacement", point.loss_var_without_replacement},
          {"loss_var_with_replacement", point.loss_var_with_replacement},
      });
    }
  }

  // nlohmann::ordered_json keeps keys sorted; the order below is for the reader of
  // this file only.
  nlohmann::ordered_json report = {
      {"gradnoise_version", version()},
      {"n", profile.n},
      {"num_params", profile.num_params},
      {"loss_kind", loss_name(context.loss)},
      {"loss", profile.loss},
      {"loss_var", profile.loss_var},
      {"grad_norm_sq", profile.grad_norm_sq},
      {"trace_cov", profile.trace_cov},
      {"mean_sample_grad_norm_sq", profile.mean_sample_grad_norm_sq},
      {"noise_scale_simple", finite_or_null(profile.noise_scale_simple)},
      {"layers", layers},
      {"device", profile.device},
      {"elapsed_s", profile.elapsed_s},
      {"model", context.model},
      {"data", context.data},
      {"options", context.options},
      {"curve_preview", preview},
  };
  return report;
}

std::string report_json_text(const Profile& profile, const ReportContext& context) {
  // dump() writes doubles in the shortest form that reads back exactly.
  return report_json(profile, context).dump(2) + "\n";
}

std::string curve_csv(std::span<const CurvePoint> curve, bool with_loss_columns) {
  std::string text = "batch_size,var_without_replacement,var_with_replacement";
  if (with_loss_columns) text += ",loss_var_without_replacement,loss_var_with_replacement";
  text += "\n";
  text.reserve(text.size() + curve.size() * (with_loss_columns ? 110 : 60));
  for (const CurvePoint& point : curve) {
    text += std::to_string(point.batch_size);
    text += ',';
    text += format_double("%.17g", point.var_without_replacement);
    text += ',';
    text += format_double("%.17g", point.var_with_replacement);
    if (with_loss_columns) {
      text += ',';
      text += format_double("%.17g", point.loss_var_without_replacement);
      text += ',';
      text += format_double("%.17g", point.loss_var_with_replacement);
    }
    text += '\n';
  }
  return text;
}

std::vector<std::string> profile_warnings(const Profile& profile) {
  std::vector<std::string> warnings;
  if (!(profile.grad_norm_sq > 0)) {
    warnings.push_back(
        "the mean gradient is zero (grad_norm_sq = 0), so noise_scale_simple = tr Sigma / "
        "|G|^2 is undefined and reported as null");
  } else {
    for (const LayerProfile& layer : profile.layers) {
      if (!(layer.grad_norm_sq > 0)) {
        warnings.push_back("the mean gradient of " + layer.name +
                           " is zero, so its noise_scale_simple is undefined and reported "
                           "as null");
      }
    }
  }
  // Below this ratio G is rounding error of a stationary point (e.g. --init
  // lstsq), and tr Σ / ‖G‖² measures the rounding, not the noise.
  if (profile.grad_norm_sq > 0 && profile.grad_norm_sq < 1e-20 * profile.mean_sample_grad_norm_sq) {
    warnings.push_back("the mean gradient is at rounding level (grad_norm_sq = " +
                       short_number(profile.grad_norm_sq) +
                       "): the model sits at a stationary point, so noise_scale_simple is not "
                       "meaningful there");
  }
  return warnings;
}

void add_ranks_json(nlohmann::ordered_json& report, int ranks, std::uint64_t profile_bytes,
                    std::uint64_t total_bytes, const std::string& reduction) {
  report["ranks"] = ranks;
  report["bytes_communicated"] = {{"profile", profile_bytes}, {"total", total_bytes}};
  report["reduction"] = reduction;
}

double rounding_grad_norm_sq(const DataSource& data) {
  const std::int64_t n = data.num_samples(), d = data.num_features(), k = data.num_targets();
  if (n <= 0) return 0;
  const bool real = data.target_kind() == TargetKind::real;
  const auto square = [](double v) { return v * v; };
  // Rows in memory (float64, or float32 widened value by value): every core,
  // in fixed blocks (the same bits on any machine).
  const double* all = data.inputs_in_place(0, n);
  const float* all32 = all != nullptr ? nullptr : data.inputs_in_place_float32(0, n);
  const bool in_memory = all != nullptr || all32 != nullptr;
  constexpr std::int64_t kChunkRows = 1024;
  std::vector<double> x(in_memory ? 0 : static_cast<std::size_t>(std::min(n, kChunkRows) * d));
  std::vector<double> y(real ? static_cast<std::size_t>(std::min(n, kChunkRows) * k) : 0);
  double x_sq = all != nullptr     ? detail::blocked_sum(all, n * d, square)
                : all32 != nullptr ? detail::blocked_sum(all32, n * d, square)
                                   : 0.0;
  double y_sq = 0;
  if (in_memory && !real) return rounding_grad_norm_sq(x_sq, y_sq, n, real);
  for (std::int64_t first = 0; first < n; first += kChunkRows) {
    const std::int64_t rows = std::min(kChunkRows, n - first);
    if (!in_memory) {
      const double* in_place = data.inputs_in_place(first, rows);
      data.read(first, rows, in_place ? nullptr : x.data(), real ? y.data() : nullptr, nullptr);
      const double* inputs = in_place ? in_place : x.data();
      for (std::int64_t j = 0; j < rows * d; ++j) x_sq += inputs[j] * inputs[j];
    } else {
      data.read(first, rows, nullptr, y.data(), nullptr);  // the targets alone
    }
    if (real) {
      for (std::int64_t j = 0; j < rows * k; ++j) y_sq += y[j] * y[j];
    }
  }
  return rounding_grad_norm_sq(x_sq, y_sq, n, real);
}

double rounding_grad_norm_sq(double x_sq, double y_sq, std::int64_t samples, bool real_targets) {
  if (samples <= 0) return 0;
  const double count = static_cast<double>(samples);
  const double targets = real_targets ? y_sq / count : 1.0;
  const double inputs = x_sq / count + 1.0;
  const double relative = 1e4 * std::numeric_limits<double>::epsilon();
  return relative * relative * targets * inputs;
}

std::string undefine_rounding_ratios(Profile& profile, double floor) {
  if (!(profile.mean_sample_grad_norm_sq <= floor)) return {};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  profile.noise_scale_simple = nan;
  for (LayerProfile& layer : profile.layers) layer.noise_scale_simple = nan;
  return "the per-sample gradients are at rounding level (mean |g_i|^2 = " +
         short_number(profile.mean_sample_grad_norm_sq) + ", below " + short_number(floor) +
         " for data of this size): the model fits the data exactly, so grad_norm_sq and "
         "trace_cov measure rounding, and noise_scale_simple is reported as null";
}

std::string summary_text(const Profile& profile, const ReportContext& context) {
  std::string text;
  auto line = [&text](const std::string& s) { text += s + "\n"; };

  // Header: what was profiled, where and how long it took.
  std::string data_line = "data   ";
  if (context.data.contains("description") && context.data["description"].is_string()) {
    data_line += " " + context.data["description"].get<std::string>() + ",";
  }
  data_line += " n = " + std::to_string(profile.n) + ", loss " + loss_name(context.loss);
  line(data_line);

  std::string model_line = "model   ";
  if (context.model.contains("widths") && context.model["widths"].is_array()) {
    const auto& widths = context.model["widths"];
    const nlohmann::ordered_json bias = context.model.value("bias", nlohmann::ordered_json::array());
    for (std::size_t i = 0; i < widths.size(); ++i) {
      if (i > 0) model_line += " -> ";
      model_line += std::to_string(widths[i].get<std::int64_t>());
    }
    std::size_t with_bias = 0;
    for (const auto& b : bias) with_bias += b.is_boolean() && b.get<bool>() ? 1 : 0;
    model_line += with_bias == bias.size()   ? " (bias)"
                  : with_bias == 0           ? " (no bias)"
                                             : " (bias on " + std::to_string(with_bias) + " of " +
                                                   std::to_string(bias.size()) + " layers)";
    model_line += ", ";
  }
  model_line += "P = " + std::to_string(profile.num_params);
  if (context.model.contains("init") && context.model["init"].is_string()) {
    model_line += ", init " + context.model["init"].get<std::string>();
    if (context.model.contains("seed")) model_line += " (seed " + context.model["seed"].dump() + ")";
  }
  line(model_line);
  line("device  " + profile.device + ", " + format_double("%.3f", profile.elapsed_s) + " s");
  line("");

  const std::size_t label_width = 30;
  line(pad_right("loss", label_width) + short_number(profile.loss));
  line(pad_right("loss_var", label_width) + short_number(profile.loss_var));
  line(pad_right("grad_norm_sq    |G|^2", label_width) + short_number(profile.grad_norm_sq));
  line(pad_right("trace_cov       tr Sigma", label_width) + short_number(profile.trace_cov));
  line(pad_right("noise_scale_simple B_simple", label_width) +
       short_number(profile.noise_scale_simple));
  line("");

  // One line per layer.
  std::size_t name_width = 5;
  for (const LayerProfile& layer : profile.layers) name_width = std::max(name_width, layer.name.size());
  line(pad_right("layer", name_width) + pad_left("params", 10) + pad_left("grad_norm_sq", 14) +
       pad_left("trace_cov", 14) + pad_left("B_simple", 14));
  for (const LayerProfile& layer : profile.layers) {
    line(pad_right(layer.name, name_width) + pad_left(std::to_string(layer.num_params), 10) +
         pad_left(short_number(layer.grad_norm_sq), 14) +
         pad_left(short_number(layer.trace_cov), 14) +
         pad_left(short_number(layer.noise_scale_simple), 14));
  }

  // A few rows of the curve E‖g_B − G‖².
  if (profile.n >= 2) {
    line("");
    line("minibatch gradient variance E|g_B - G|^2");
    line(pad_left("batch_size", 12) + pad_left("without_repl", 16) + pad_left("with_repl", 16));
    const std::vector<std::int64_t> sizes = preview_batch_sizes(profile.n);
    for (const CurvePoint& point : batch_size_curve(profile, sizes)) {
      line(pad_left(std::to_string(point.batch_size), 12) +
           pad_left(short_number(point.var_without_replacement), 16) +
           pad_left(short_number(point.var_with_replacement), 16));
    }
  }
  return text;
}

}  // namespace gradnoise
