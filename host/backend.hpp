// The backend interface: what a device does with a session's data. Two
// implementations, the float64 CPU engine (host/backend.cpp) and the CUDA
// one (kernels/backend_cuda.cpp; a stub where the CUDA build is off).
// make_backend is the one place that turns a requested Device into a
// backend: the profile, the session, the shape analyses and the CLI all go
// through it and never look at device names.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

/// Throws InputError unless the model, the data and the options fit together:
/// N ≥ 2, D and K match the layers, the targets the loss takes, finite
/// weights, chunk_rows ≥ 1. Every backend calls it.
void check_profile_inputs(const Model& model, const DataSource& data, const ProfileOptions& options);

/// The float64 CPU engine itself (host/engine_cpu.cpp; what the CPU backend runs).
Profile profile_cpu(const Model& model, const DataSource& data, const ProfileOptions& options);

}  // namespace gradnoise

namespace gradnoise::detail {

/// Throws InputError unless every statistic of `profile` is finite. The
/// inputs and outputs are checked as they stream, so what is left is an
/// overflow of the float64 sums of squares: magnitudes beyond ~1e154.
void require_finite(const Profile& profile);

/// A device that works on one data set with one loss. Not thread-safe: one
/// session, one caller at a time.
class Backend {
 public:
  virtual ~Backend() = default;
  /// "cpu", or the GPU's name.
  virtual std::string device() const = 0;
  /// Rows per chunk of a pass, chosen for the device unless the caller fixed it.
  virtual std::int64_t chunk_rows() const = 0;
  /// The exact profile at `model` (options.loss, chunk_rows and device are the
  /// session's). Throws InputError, naming the cause, when a statistic is not
  /// finite: a result is never a NaN or an overflow.
  Profile profile(const Model& model, const ProfileOptions& options) {
    Profile result = compute_profile(model, options);
    require_finite(result);
    return result;
  }
  /// out = Σ·in for `cols` column-major vectors of length P at `model`, whose
  /// mean gradient is `mean_grad`: the centred all-columns-at-once product
  /// (docs/MATH.md "Beyond the mean"), one pass over the data.
  virtual void covariance_apply(const Model& model, const std::vector<double>& mean_grad,
                                const double* in, double* out, std::int64_t cols) = 0;
  /// out = H·in (or the Gauss–Newton matrix), one pass over the data.
  virtual void hessian_apply(const Model& model, bool gauss_newton, const double* in, double* out,
                             std::int64_t cols) = 0;
  /// The batch tests' product ĜᵀΣĜ = Var_i(g_iᵀĜ) for a unit vector Ĝ along G;
  /// by default Ĝᵀ(ΣĜ), one Σ product (a GPU's, or one summed over ranks,
  /// where per-part variances would sit around different means).
  virtual double grad_cov_grad(const Model& model, const std::vector<double>& mean_grad,
                               const std::vector<double>& unit) {
    std::vector<double> product(unit.size());
    covariance_apply(model, mean_grad, unit.data(), product.data(), 1);
    double total = 0;
    for (std::size_t j = 0; j < unit.size(); ++j) total += unit[j] * product[j];
    return total;
  }

 protected:
  virtual Profile compute_profile(const Model& model, const ProfileOptions& options) = 0;
};

/// What both backends keep: the data (shared, so it outlives every caller),
/// the loss and the rows per chunk.
class DataBackend : public Backend {
 public:
  std::int64_t chunk_rows() const override { return chunk_rows_; }

 protected:
  DataBackend(std::shared_ptr<const DataSource> data, Loss loss, std::int64_t chunk_rows)
      : data_(std::move(data)), loss_(loss), chunk_rows_(chunk_rows) {}
  /// `options` with the session's loss and chunk rows.
  ProfileOptions session_options(const ProfileOptions& options) const {
    ProfileOptions own = options;
    own.loss = loss_;
    own.chunk_rows = chunk_rows_;
    return own;
  }

  std::shared_ptr<const DataSource> data_;
  Loss loss_;
  std::int64_t chunk_rows_;
};

/// Var_i(g_iᵀ unit), chunk-centred and Chan-merged, in one CPU pass (the CPU
/// backend's batch-test product; host/curvature.cpp).
double projected_variance(const Model& model, const DataSource& data, Loss loss,
                          const std::vector<double>& unit, std::int64_t chunk_rows);

/// Where the work runs: Device::automatic is the GPU when one is usable.
/// Throws RuntimeError for Device::cuda without a CUDA build or a device.
enum class Place { cpu, cuda };
Place resolve_device(Device requested);

/// The backend for `requested`, working on `data` (kept alive by the backend).
/// `chunk_rows` 0 picks the device's default; `threads` 0 is one per core (CPU).
/// `gpu_resident` and `gpu_dtype` as in SessionOptions.
std::unique_ptr<Backend> make_backend(Device requested, std::shared_ptr<const DataSource> data,
                                      Loss loss, std::int64_t chunk_rows, int threads,
                                      bool fused_linear, bool gpu_resident = false,
                                      GpuDtype gpu_dtype = GpuDtype::float32);

/// The two implementations (make_backend chooses between them).
std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<const DataSource> data, Loss loss,
                                          std::int64_t chunk_rows, int threads);
std::unique_ptr<Backend> make_cuda_backend(std::shared_ptr<const DataSource> data, Loss loss,
                                           std::int64_t chunk_rows, bool fused_linear,
                                           bool resident, GpuDtype dtype);
/// kernels/policy.hpp's default (kernels/backend_cuda.cpp).
std::int64_t gpu_default_chunk_rows();

/// Default rows per chunk: cache-sized on the CPU (1024 rows ran
/// Fashion-MNIST 1.6–2× faster than 4096 on a 2-core EPYC); on a GPU,
/// kernels/policy.hpp's kDefaultGpuChunkRows, large enough to keep it busy.
inline constexpr std::int64_t kCpuChunkRows = 1024;
std::int64_t default_chunk_rows(Place place);

}  // namespace gradnoise::detail
