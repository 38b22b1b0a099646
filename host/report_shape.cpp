// Report pieces for the noise's shape: JSON keys, the spectrum and batch-test
// CSVs, and the stdout lines.
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>

#include "gradnoise/report.hpp"

namespace gradnoise {
namespace {

using Json = nlohmann::ordered_json;

Json number(double value) { return std::isfinite(value) ? Json(value) : Json(nullptr); }

Json number(const std::optional<double>& value) {
  return value.has_value() ? number(*value) : Json(nullptr);
}

Json numbers(const std::vector<double>& values) {
  Json list = Json::array();
  for (double v : values) list.push_back(number(v));
  return list;
}

Json stats_json(const EstimatorStats& s) {
  return Json{{"exact", number(s.exact)}, {"mean", number(s.mean)}, {"std", number(s.std)},
              {"std_error", number(s.std_error)}, {"bias", number(s.bias)}, {"pairs", s.count}};
}

std::string format(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

std::string short_format(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.6g", value);
  return text;
}

}  // namespace

void add_shape_json(Json& report, const ShapeResults& shape) {
  if (shape.spectrum) {
    const CovarianceSpectrum& sp = *shape.spectrum;
    report["cov_top_eigenvalues"] = numbers(sp.top_eigenvalues);
    report["trace_cov_sq"] = sp.trace_cov_sq_exact ? number(sp.trace_cov_sq) : Json(nullptr);
    report["effective_rank"] = sp.trace_cov_sq_exact ? number(sp.effective_rank) : Json(nullptr);
    report["trace_cov_sq_lower_bound"] = number(sp.top_eigenvalues_sq_sum);
    report["effective_rank_upper_bound"] = number(sp.effective_rank_upper_bound);
    report["cov_eigen_residuals"] = numbers(sp.residuals);
    report["cov_eigen_passes"] = sp.passes;
    report["cov_eigen_converged"] = sp.converged;
    report["cov_eigen_device"] = shape.spectrum_device;
    report["cov_spectrum_elapsed_s"] = sp.elapsed_s;
    Json layers = Json::array();
    for (const CovarianceSpectrum::Layer& layer : sp.layers) {
      layers.push_back(Json{{"name", layer.name},
                            {"cov_top_eigenvalues", numbers(layer.top_eigenvalues)},
                            {"trace_cov_sq", number(layer.trace_cov_sq)},
                            {"effective_rank", number(layer.effective_rank)},
                            {"trace_cov_sq_lower_bound", number(layer.top_eigenvalues_sq_sum)},
                            {"effective_rank_upper_bound", number(layer.effective_rank_upper_bound)}});
    }
    report["cov_layers"] = layers;
  }
  if (shape.curvature) {
    const CurvatureReport& c = *shape.curvature;
    report["hessian"] = c.hessian;
    report["hessian_top_eigenvalues"] = numbers(c.hessian_top_eigenvalues);
    report["hessian_eigen_passes"] = c.hessian_eigen_passes;
    report["hessian_eigen_converged"] = c.hessian_eigen_converged;
    report["hessian_device"] = c.hessian_device;
    report["trace_hessian"] = number(c.trace_hessian);
    report["grad_hessian_grad"] = number(c.grad_hessian_grad);
    report["trace_hessian_cov"] = number(c.trace_hessian_cov);
    report["noise_scale_b_noise"] = number(c.noise_scale_b_noise);
    report["cov_hessian_cosine"] = number(c.cov_hessian_cosine);
    report["noise_curvature_ratio"] = number(c.noise_curvature_ratio);
    Json notes = Json::array();
    for (const std::string& note : c.notes) notes.push_back(note);
    report["curvature_notes"] = notes;
    report["curvature_elapsed_s"] = c.elapsed_s;
  }
  if (shape.tests) {
    const BatchTests& t = *shape.tests;
    report["theta"] = t.theta;
    report["grad_cov_grad"] = number(t.grad_cov_grad);
    report["grad_cov_grad_device"] = t.grad_cov_grad_device;
    report["min_batch_norm_test"] = t.min_batch_norm_test;
    report["min_batch_inner_product_test"] = t.min_batch_inner_product_test;
    report["min_batch_orthogonality_test"] = t.min_batch_orthogonality_test;
    report["gsnr_mean"] = number(t.gsnr_mean);
    report["gsnr_zero_variance_params"] = t.gsnr_zero_variance_params;
  }
  if (shape.estimators) {
    const EstimatorTruth& e = *shape.estimators;
    report["estimators"] = Json{{"b_small", e.b_small},
                                {"b_big", e.b_big},
                                {"pairs", e.pairs},
                                {"seed", e.seed},
                                {"sampling", "with replacement"},
                                {"grad_norm_sq", stats_json(e.grad_norm_sq)},
                                {"trace_cov", stats_json(e.trace_cov)},
                                {"noise_scale_simple_per_pair", stats_json(e.noise_scale_per_pair)},
                                {"nonpositive_grad_norm_pairs", e.nonpositive_grad_norm_pairs},
                                {"noise_scale_simple_ratio_of_means", number(e.noise_scale_ratio_of_means)},
                                {"noise_scale_simple_ratio_of_means_bias",
                                 number(e.noise_scale_ratio_of_means_bias)}};
  }
}

std::string spectrum_csv(const ShapeResults& shape) {
  std::string text = "scope,rank,eigenvalue\n";
  const auto rows = [&text](const std::string& scope, const std::vector<double>& values) {
    for (std::size_t r = 0; r < values.size(); ++r) {
      text += scope + "," + std::to_string(r + 1) + "," + format(values[r]) + "\n";
    }
  };
  if (shape.spectrum) {
    rows("model", shape.spectrum->top_eigenvalues);
    if (shape.spectrum->layers.size() > 1) {
      for (const CovarianceSpectrum::Layer& layer : shape.spectrum->layers) rows(layer.name, layer.top_eigenvalues);
    }
  }
  if (shape.curvature) rows("hessian", shape.curvature->hessian_top_eigenvalues);
  return text;
}

std::string batch_tests_csv(const BatchTests& tests) {
  std::string text = "batch_size,norm_test,inner_product_test,orthogonality_test\n";
  for (std::size_t j = 0; j < tests.batch_sizes.size(); ++j) {
    text += std::to_string(tests.batch_sizes[j]) + "," + format(tests.norm[j]) + "," +
            format(tests.inner_product[j]) + "," + format(tests.orthogonality[j]) + "\n";
  }
  return text;
}

std::string shape_summary_text(const ShapeResults& shape) {
  std::ostringstream out;
  if (shape.spectrum) {
    const CovarianceSpectrum& sp = *shape.spectrum;
    out << "\ncovariance spectrum (top " << sp.top_eigenvalues.size() << ", " << sp.passes
        << " passes" << (sp.converged ? "" : ", NOT converged") << ")\n  ";
    for (double v : sp.top_eigenvalues) out << short_format(v) << " ";
    out << "\n";
    if (sp.trace_cov_sq_exact) {
      out << "trace_cov_sq    tr(Sigma^2)   " << short_format(sp.trace_cov_sq) << "\n"
          << "effective_rank                " << short_format(sp.effective_rank) << "\n";
    } else {
      out << "trace_cov_sq    >= " << short_format(sp.top_eigenvalues_sq_sum)
          << " (top eigenvalues; exact with --exact-trace-sq)\n"
          << "effective_rank  <= " << short_format(sp.effective_rank_upper_bound) << "\n";
    }
  }
  if (shape.curvature) {
    const CurvatureReport& c = *shape.curvature;
    out << "hessian (" << c.hessian << ") top eigenvalues\n  ";
    for (double v : c.hessian_top_eigenvalues) out << short_format(v) << " ";
    out << "\ntrace_hessian                 " << short_format(c.trace_hessian) << "\n";
    out << "noise_scale_b_noise B_noise   "
        << (c.noise_scale_b_noise ? short_format(*c.noise_scale_b_noise) : std::string("n/a")) << "\n";
    if (c.noise_curvature_ratio) {
      out << "tr Sigma / (2 L tr H)         " << short_format(*c.noise_curvature_ratio) << "\n";
    }
  }
  if (shape.tests) {
    const BatchTests& t = *shape.tests;
    out << "\nbatch-size tests at theta = " << short_format(t.theta)
        << ": smallest passing b: norm " << t.min_batch_norm_test << ", inner product "
        << t.min_batch_inner_product_test << ", orthogonality " << t.min_batch_orthogonality_test
        << "\ngsnr_mean                     " << short_format(t.gsnr_mean) << "\n";
  }
  if (shape.estimators) {
    const EstimatorTruth& e = *shape.estimators;
    out << "\ntwo-batch estimators (B_small " << e.b_small << ", B_big " << e.b_big << ", " << e.pairs
        << " pairs): estimate mean +- std vs exact\n"
        << "  |G|^2     " << short_format(e.grad_norm_sq.mean) << " +- " << short_format(e.grad_norm_sq.std)
        << " vs " << short_format(e.grad_norm_sq.exact) << "\n"
        << "  tr Sigma  " << short_format(e.trace_cov.mean) << " +- " << short_format(e.trace_cov.std)
        << " vs " << short_format(e.trace_cov.exact) << "\n"
        << "  B_simple  " << short_format(e.noise_scale_per_pair.mean) << " +- "
        << short_format(e.noise_scale_per_pair.std) << " vs " << short_format(e.noise_scale_per_pair.exact)
        << "\n";
  }
  return out.str();
}

}  // namespace gradnoise
