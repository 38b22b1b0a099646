// A profiling session: the data and a device's state, kept between calls.
// Inside a training loop the data stays while θ changes every few hundred
// steps; a session answers profile(model), Σ·V and H·V repeatedly without
// re-reading or re-uploading the data, and the operators it hands out share
// its state (they keep it alive, so they cannot dangle).
//
//   gradnoise::Profiler session(std::move(dataset), {.loss = gradnoise::Loss::cross_entropy});
//   for (...) {
//     train(model);
//     const gradnoise::Profile p = session.profile(model);
//     std::cout << p.noise_scale_simple << "\n";
//   }
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/krylov.hpp"
#include "gradnoise/loss.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

namespace detail {
class Backend;
}

struct SessionOptions {
  Loss loss = Loss::squared;
  /// automatic: the GPU when one is usable, else the CPU.
  Device device = Device::automatic;
  /// Rows per chunk of a pass; 0 picks the device's default (1024 on the CPU,
  /// 65536 on a GPU).
  std::int64_t chunk_rows = 0;
  /// CPU threads over chunks (0: one per hardware thread).
  int threads = 0;
  /// GPU only: linear models with K ≤ 16 by the fused one-read kernel.
  bool fused_linear = true;
  /// GPU only: copy the data onto the device at the first pass and keep it
  /// there for the session's lifetime (when it fits in half the free device
  /// memory; otherwise every pass streams it from the host).
  bool gpu_resident = true;
  /// GPU only: the precision of that resident copy.
  GpuDtype gpu_dtype = GpuDtype::float32;
};

class Profiler {
 public:
  /// Throws InputError for an empty data source, RuntimeError when
  /// options.device is cuda and no GPU can be used.
  Profiler(std::shared_ptr<const DataSource> data, const SessionOptions& options = {});
  /// Takes the data set over.
  explicit Profiler(Dataset data, const SessionOptions& options = {});
  /// A session over a backend the caller built (the tool's MPI ranks:
  /// host/distributed.hpp); `options` must be the ones it was built with.
  Profiler(std::shared_ptr<const DataSource> data, const SessionOptions& options,
           std::shared_ptr<detail::Backend> backend);
  ~Profiler();
  Profiler(Profiler&&) noexcept;
  Profiler& operator=(Profiler&&) noexcept;

  /// "cpu", or the GPU's name.
  std::string device() const;
  Loss loss() const { return options_.loss; }
  const DataSource& data() const { return *data_; }
  std::int64_t chunk_rows() const;

  /// The exact profile at `model` (with the per-parameter variances when asked).
  Profile profile(const Model& model, bool param_stats = false);

  /// out = Σ·in for `cols` column-major vectors of length P, at `model` whose
  /// mean gradient G is `mean_grad` (Profile::param_mean). One data pass.
  void cov_apply(const Model& model, const std::vector<double>& mean_grad, const double* in,
                 double* out, std::int64_t cols);
  /// out = H·in (full Hessian, or Gauss–Newton when asked). One data pass.
  void hessian_apply(const Model& model, bool gauss_newton, const double* in, double* out,
                     std::int64_t cols);

  /// The same products as operators for the eigensolvers; each holds a copy
  /// of the model and shares the session's state.
  BlockOperator covariance_operator(const Model& model, std::vector<double> mean_grad) const;
  BlockOperator hessian_operator(const Model& model, bool gauss_newton) const;
  /// ĜᵀΣĜ for a unit vector Ĝ (the batch-size tests' product) at `model`.
  std::function<double(const std::vector<double>& unit)> grad_cov_grad_operator(
      const Model& model, std::vector<double> mean_grad) const;

 private:
  std::shared_ptr<const DataSource> data_;
  SessionOptions options_;
  std::shared_ptr<detail::Backend> backend_;
};

}  // namespace gradnoise
