// The session: data plus one backend, chosen once by make_backend.
#include "gradnoise/session.hpp"

#include "backend.hpp"
#include "gradnoise/error.hpp"

namespace gradnoise {

Profiler::Profiler(std::shared_ptr<const DataSource> data, const SessionOptions& options)
    : data_(std::move(data)), options_(options) {
  if (!data_) throw InputError("a profiling session needs data; got none");
  backend_ = detail::make_backend(options.device, data_, options.loss, options.chunk_rows,
                                  options.threads, options.fused_linear, options.gpu_resident,
                                  options.gpu_dtype);
}

Profiler::Profiler(std::shared_ptr<const DataSource> data, const SessionOptions& options,
                   std::shared_ptr<detail::Backend> backend)
    : data_(std::move(data)), options_(options), backend_(std::move(backend)) {
  if (!data_) throw InputError("a profiling session needs data; got none");
}

Profiler::Profiler(Dataset data, const SessionOptions& options)
    : Profiler(std::make_shared<const Dataset>(std::move(data)), options) {}

Profiler::~Profiler() = default;
Profiler::Profiler(Profiler&&) noexcept = default;
Profiler& Profiler::operator=(Profiler&&) noexcept = default;

std::string Profiler::device() const { return backend_->device(); }
std::int64_t Profiler::chunk_rows() const { return backend_->chunk_rows(); }

Profile Profiler::profile(const Model& model, bool param_stats) {
  ProfileOptions options;
  options.loss = options_.loss;
  options.device = options_.device;
  options.chunk_rows = backend_->chunk_rows();
  options.param_stats = param_stats;
  options.threads = options_.threads;
  options.fused_linear = options_.fused_linear;
  return backend_->profile(model, options);
}

void Profiler::cov_apply(const Model& model, const std::vector<double>& mean_grad, const double* in,
                         double* out, std::int64_t cols) {
  backend_->covariance_apply(model, mean_grad, in, out, cols);
}

void Profiler::hessian_apply(const Model& model, bool gauss_newton, const double* in, double* out,
                             std::int64_t cols) {
  backend_->hessian_apply(model, gauss_newton, in, out, cols);
}

BlockOperator Profiler::covariance_operator(const Model& model, std::vector<double> mean_grad) const {
  return [backend = backend_, model, mean_grad = std::move(mean_grad)](
             const double* in, double* out, std::int64_t cols) {
    backend->covariance_apply(model, mean_grad, in, out, cols);
  };
}

BlockOperator Profiler::hessian_operator(const Model& model, bool gauss_newton) const {
  return [backend = backend_, model, gauss_newton](const double* in, double* out, std::int64_t cols) {
    backend->hessian_apply(model, gauss_newton, in, out, cols);
  };
}

std::function<double(const std::vector<double>&)> Profiler::grad_cov_grad_operator(
    const Model& model, std::vector<double> mean_grad) const {
  return [backend = backend_, model, mean_grad = std::move(mean_grad)](
             const std::vector<double>& unit) { return backend->grad_cov_grad(model, mean_grad, unit); };
}

}  // namespace gradnoise
