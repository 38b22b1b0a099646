// The one place that chooses a device (resolve_device) and builds its
// backend (make_backend), and the CPU backend.
#include "backend.hpp"

#include "gradnoise/covariance.hpp"
#include "gradnoise/cuda.hpp"
#include "gradnoise/curvature.hpp"
#include "gradnoise/error.hpp"

#include <cmath>
#include <utility>

namespace gradnoise::detail {

Place resolve_device(Device requested) {
  switch (requested) {
    case Device::cpu:
      return Place::cpu;
    case Device::cuda:
      if (!cuda_built()) {
        throw RuntimeError(
            "--device cuda was asked for, but this gradnoise was built without the CUDA backend "
            "(no nvcc at configure time); use --device cpu or --device auto");
      }
      if (cuda_device_count() == 0) {
        throw RuntimeError("--device cuda was asked for, but no CUDA device is present; "
                           "use --device cpu or --device auto");
      }
      return Place::cuda;
    case Device::automatic:
      break;
  }
  return cuda_device_count() > 0 ? Place::cuda : Place::cpu;
}

void require_finite(const Profile& profile) {
  std::vector<std::pair<const char*, double>> sums = {
      {"loss", profile.loss},
      {"loss_var", profile.loss_var},
      {"grad_norm_sq", profile.grad_norm_sq},
      {"trace_cov", profile.trace_cov},
      {"mean_sample_grad_norm_sq", profile.mean_sample_grad_norm_sq}};
  for (const LayerProfile& layer : profile.layers) {
    sums.emplace_back("a layer's trace_cov", layer.trace_cov);
    sums.emplace_back("a layer's grad_norm_sq", layer.grad_norm_sq);
  }
  for (const double g : profile.param_mean) sums.emplace_back("param_mean", g);
  for (const double v : profile.param_var) sums.emplace_back("param_var", v);
  for (const auto& [name, value] : sums) {
    if (!std::isfinite(value)) {
      throw InputError("the profile's " + std::string(name) + " came out " + (std::isnan(value) ? "NaN" : "infinite") +
                       ": the data or the weights are too large in magnitude for float64 sums "
                       "of their squares (beyond ~1e154); standardise the inputs and targets "
                       "(zero mean, unit variance) and profile again");
    }
  }
}

std::int64_t default_chunk_rows(Place place) {
  return place == Place::cuda ? gpu_default_chunk_rows() : kCpuChunkRows;
}

std::unique_ptr<Backend> make_backend(Device requested, std::shared_ptr<const DataSource> data,
                                      Loss loss, std::int64_t chunk_rows, int threads,
                                      bool fused_linear, bool gpu_resident, GpuDtype gpu_dtype) {
  const Place place = resolve_device(requested);
  const std::int64_t rows = chunk_rows > 0 ? chunk_rows : default_chunk_rows(place);
  if (place == Place::cuda) {
    return make_cuda_backend(std::move(data), loss, rows, fused_linear, gpu_resident, gpu_dtype);
  }
  return make_cpu_backend(std::move(data), loss, rows, threads);
}

namespace {

/// The float64 reference: the streaming engine and the exact matrix-free
/// operators of host/covariance.cpp and host/curvature.cpp.
class CpuBackend final : public DataBackend {
 public:
  CpuBackend(std::shared_ptr<const DataSource> data, Loss loss, std::int64_t chunk_rows, int threads)
      : DataBackend(std::move(data), loss, chunk_rows), threads_(threads) {}

  std::string device() const override { return "cpu"; }

  Profile compute_profile(const Model& model, const ProfileOptions& options) override {
    ProfileOptions cpu = session_options(options);
    cpu.threads = threads_;
    return profile_cpu(model, *data_, cpu);
  }

  void covariance_apply(const Model& model, const std::vector<double>& mean_grad, const double* in,
                        double* out, std::int64_t cols) override {
    CovarianceOperator(model, *data_, loss_, mean_grad, chunk_rows_).apply(in, out, cols);
  }

  void hessian_apply(const Model& model, bool gauss_newton, const double* in, double* out,
                     std::int64_t cols) override {
    HessianOperator(model, *data_, loss_, gauss_newton, chunk_rows_).apply(in, out, cols);
  }

  double grad_cov_grad(const Model& model, const std::vector<double>& /*mean_grad*/,
                       const std::vector<double>& unit) override {
    return projected_variance(model, *data_, loss_, unit, chunk_rows_);
  }

 private:
  int threads_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<const DataSource> data, Loss loss,
                                          std::int64_t chunk_rows, int threads) {
  return std::make_unique<CpuBackend>(std::move(data), loss, chunk_rows, threads);
}

}  // namespace gradnoise::detail
