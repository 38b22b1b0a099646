// The CUDA backend behind a session: the GPU profile and the Σ·V and H·V
// products of kernels/, on the session's data. Plain C++ (the kernels sit
// behind the entry points of gradnoise/cuda.hpp); where the CUDA build is off,
// host/cuda_stub.cpp's entry points refuse with one sentence.
#include "backend.hpp"

#include "cuda_entry.hpp"
#include "policy.hpp"

namespace gradnoise::detail {
namespace {

class CudaBackend final : public DataBackend {
 public:
  CudaBackend(std::shared_ptr<const DataSource> data, Loss loss, std::int64_t chunk_rows,
              bool fused_linear, bool resident, GpuDtype dtype)
      : DataBackend(std::move(data), loss, chunk_rows), fused_linear_(fused_linear),
        want_resident_(resident), dtype_(dtype), name_(cuda_device_name()) {}

  std::string device() const override { return name_; }

  Profile compute_profile(const Model& model, const ProfileOptions& options) override {
    ProfileOptions gpu = session_options(options);
    gpu.fused_linear = fused_linear_;
    if (ResidentData* resident = resident_data()) return profile_resident(*resident, model, gpu);
    return profile_cuda(model, *data_, gpu);
  }

  void covariance_apply(const Model& model, const std::vector<double>& mean_grad, const double* in,
                        double* out, std::int64_t cols) override {
    covariance_operator_cuda(model, *data_, loss_, mean_grad, chunk_rows_, resident_data())(in, out,
                                                                                           cols);
  }

  void hessian_apply(const Model& model, bool gauss_newton, const double* in, double* out,
                     std::int64_t cols) override {
    hessian_operator_cuda(model, *data_, loss_, gauss_newton, chunk_rows_, resident_data())(in, out,
                                                                                            cols);
  }

  // grad_cov_grad: the base's Ĝᵀ(ΣĜ), one Σ product on the GPU.

 private:
  /// The data on the device, copied at the first pass that can use it; null
  /// when the session streams (not asked for, or too large to keep).
  ResidentData* resident_data() {
    if (want_resident_ && !resident_tried_) {
      resident_ = make_resident(*data_, loss_, dtype_);  // a refusal is thrown again next call
      resident_tried_ = true;
    }
    return resident_.get();
  }

  bool fused_linear_;
  bool want_resident_;
  GpuDtype dtype_;
  bool resident_tried_ = false;
  ResidentDataPtr resident_;
  std::string name_;
};

}  // namespace

std::int64_t gpu_default_chunk_rows() { return kDefaultGpuChunkRows; }

std::unique_ptr<Backend> make_cuda_backend(std::shared_ptr<const DataSource> data, Loss loss,
                                           std::int64_t chunk_rows, bool fused_linear,
                                           bool resident, GpuDtype dtype) {
  return std::make_unique<CudaBackend>(std::move(data), loss, chunk_rows, fused_linear, resident,
                                       dtype);
}

}  // namespace gradnoise::detail
