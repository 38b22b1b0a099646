// The noise's shape from a session (include/gradnoise/shape.hpp): each
// analysis takes the session's operators, so its products run where the
// session's profile ran.
#include "gradnoise/shape.hpp"

#include <algorithm>

#include "backend.hpp"
#include "gradnoise/covariance.hpp"
#include "gradnoise/curvature.hpp"

namespace gradnoise {

ShapeResults noise_shape(const Profiler& session, const Model& model, const Profile& profile,
                         const ShapeOptions& options) {
  const DataSource& data = session.data();
  const Loss loss = session.loss();
  const std::int64_t cpu_chunk_rows = options.chunk_rows > 0 ? options.chunk_rows : detail::kCpuChunkRows;
  const auto progress = [&](const char* stage) {
    return options.progress ? options.progress(stage) : EigenProgress{};
  };

  ShapeResults shape;
  if (options.spectrum > 0) {
    SpectrumOptions spectrum_options;
    spectrum_options.k = std::min(options.spectrum, model.num_params());
    spectrum_options.chunk_rows = cpu_chunk_rows;
    spectrum_options.keep_vectors = false;
    spectrum_options.exact_trace_sq = options.exact_trace_sq;
    spectrum_options.progress = progress("covariance spectrum");
    spectrum_options.layer_covariance = options.layer_covariance;
    shape.spectrum = covariance_spectrum(
        model, data, loss, profile, spectrum_options,
        {session.covariance_operator(model, profile.param_mean), session.device()});
    shape.spectrum_device = session.device();

    CurvatureOptions curvature_options;
    curvature_options.k = std::min(options.spectrum, model.num_params());
    curvature_options.gauss_newton = options.gauss_newton;
    curvature_options.chunk_rows = cpu_chunk_rows;
    curvature_options.progress = progress("Hessian spectrum");
    curvature_options.sum_over_parts = options.sum_over_parts;
    std::optional<double> trace_sq;
    if (shape.spectrum->trace_cov_sq_exact) trace_sq = shape.spectrum->trace_cov_sq;
    const ExternalOperator hessian{session.hessian_operator(model, options.gauss_newton),
                                   session.device()};
    shape.curvature = curvature(model, data, loss, profile, curvature_options, trace_sq, hessian);
  }
  if (options.theta > 0) {
    const std::vector<std::int64_t> sizes = options.batch_sizes.empty()
                                                ? parse_batch_sizes("pow2", data.whole_samples())
                                                : options.batch_sizes;
    const ExternalProjection product{session.grad_cov_grad_operator(model, profile.param_mean),
                                     session.device()};
    shape.tests = batch_tests(model, data, loss, profile, options.theta, sizes, cpu_chunk_rows, product);
  }
  if (options.estimator_b_small > 0 || options.estimator_b_big > 0) {
    shape.estimators = two_batch_estimators(model, data, loss, profile, options.estimator_b_small,
                                            options.estimator_b_big, options.estimator_pairs,
                                            options.seed, cpu_chunk_rows);
  }
  return shape;
}

}  // namespace gradnoise
