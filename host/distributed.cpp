// The distributed backend and the merge of partial profiles (host/distributed.hpp).
#include "distributed.hpp"

#include <chrono>
#include <limits>

#include "cuda_entry.hpp"
#include "gradnoise/covariance.hpp"
#include "moments.hpp"

namespace gradnoise::detail {
namespace {

constexpr std::size_t kHead = 3;  // N, loss mean, loss M2
constexpr std::size_t kPerLayer = 2;  // M2 total, Σ‖g_i‖²

std::size_t mean_offset(const Model& model) {
  return kHead + kPerLayer * static_cast<std::size_t>(model.num_layers());
}

double noise_scale(double trace_cov, double grad_norm_sq) {
  return grad_norm_sq > 0 ? trace_cov / grad_norm_sq : std::numeric_limits<double>::infinity();
}

}  // namespace

std::vector<double> profile_moments(const Profile& profile, bool param_stats) {
  const auto n = static_cast<double>(profile.n);
  std::vector<double> moments{n, profile.loss, profile.loss_var * n};
  for (const LayerProfile& layer : profile.layers) {
    moments.push_back(layer.trace_cov * n);
    moments.push_back(layer.mean_sample_grad_norm_sq * n);
  }
  moments.insert(moments.end(), profile.param_mean.begin(), profile.param_mean.end());
  if (param_stats) {
    for (const double v : profile.param_var) moments.push_back(v * n);
  }
  return moments;
}

void merge_profile_moments(std::vector<double>& left, const std::vector<double>& right,
                           const Model& model, bool param_stats) {
  const auto n_left = static_cast<std::int64_t>(left[0]);
  const auto n_right = static_cast<std::int64_t>(right[0]);
  const MergeWeights w = merge_weights(n_left, n_right);
  merge_slot(left[1], &left[2], right[1], right[2], w);
  const std::size_t means = mean_offset(model);
  const std::size_t p = static_cast<std::size_t>(model.num_params());
  std::size_t slot = 0;
  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    double diff_sq = 0;
    const auto slots = static_cast<std::size_t>(model.layers[l].num_params());
    for (std::size_t j = slot; j < slot + slots; ++j) {
      diff_sq += merge_slot(left[means + j], param_stats ? &left[means + p + j] : nullptr,
                            right[means + j], param_stats ? right[means + p + j] : 0.0, w);
    }
    const std::size_t at = kHead + kPerLayer * static_cast<std::size_t>(l);
    left[at] += right[at] + diff_sq * w.cross;
    left[at + 1] += right[at + 1];
    slot += slots;
  }
  left[0] = static_cast<double>(n_left + n_right);
}

Profile profile_from_moments(const std::vector<double>& moments, const Model& model,
                             bool param_stats) {
  Profile result;
  result.n = static_cast<std::int64_t>(moments[0]);
  result.num_params = model.num_params();
  const double inv_n = 1.0 / moments[0];
  result.loss = moments[1];
  result.loss_var = moments[2] * inv_n;
  const std::size_t means = mean_offset(model);
  const auto p = static_cast<std::size_t>(result.num_params);
  std::size_t slot = 0;
  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    LayerProfile layer;
    layer.name = Model::layer_name(l);
    layer.num_params = model.layers[l].num_params();
    const auto slots = static_cast<std::size_t>(layer.num_params);
    for (std::size_t j = slot; j < slot + slots; ++j) layer.grad_norm_sq += moments[means + j] * moments[means + j];
    const std::size_t at = kHead + kPerLayer * static_cast<std::size_t>(l);
    layer.trace_cov = moments[at] * inv_n;
    layer.mean_sample_grad_norm_sq = moments[at + 1] * inv_n;
    layer.noise_scale_simple = noise_scale(layer.trace_cov, layer.grad_norm_sq);
    result.grad_norm_sq += layer.grad_norm_sq;
    result.trace_cov += layer.trace_cov;
    result.mean_sample_grad_norm_sq += layer.mean_sample_grad_norm_sq;
    result.layers.push_back(std::move(layer));
    slot += slots;
  }
  result.param_mean.assign(moments.begin() + static_cast<std::ptrdiff_t>(means),
                           moments.begin() + static_cast<std::ptrdiff_t>(means + p));
  if (param_stats) {
    for (std::size_t j = 0; j < p; ++j) result.param_var.push_back(moments[means + p + j] * inv_n);
  }
  result.noise_scale_simple = noise_scale(result.trace_cov, result.grad_norm_sq);
  return result;
}

void average_over_parts(Communicator& comm, double* values, std::int64_t count,
                        std::int64_t part_rows, std::int64_t whole_rows, DeviceSum* device_sum) {
  // N_r · (the part's average), summed in the tree's order, over N.
  std::vector<double> sums(values, values + count);
  for (double& v : sums) v *= static_cast<double>(part_rows);
  if (device_sum != nullptr) {
    device_sum->sum(sums.data(), sums.size());
  } else {
    comm.sum(sums);
  }
  const double inv_whole = 1.0 / static_cast<double>(whole_rows);
  for (std::int64_t j = 0; j < count; ++j) values[j] = sums[static_cast<std::size_t>(j)] * inv_whole;
}

namespace {

class DistributedBackend final : public Backend {
 public:
  DistributedBackend(Communicator& comm, std::unique_ptr<Backend> local, std::int64_t part_rows,
                     std::int64_t whole_rows, std::unique_ptr<DeviceSum> device_sum)
      : comm_(comm), local_(std::move(local)), part_rows_(part_rows), whole_rows_(whole_rows),
        device_sum_(std::move(device_sum)) {}

  std::string device() const override { return local_->device(); }
  std::int64_t chunk_rows() const override { return local_->chunk_rows(); }

  void covariance_apply(const Model& model, const std::vector<double>& mean_grad, const double* in,
                        double* out, std::int64_t cols) override {
    comm_.together([&] { local_->covariance_apply(model, mean_grad, in, out, cols); });
    average_over_parts(comm_, out, model.num_params() * cols, part_rows_, whole_rows_, device_sum_.get());
  }

  void hessian_apply(const Model& model, bool gauss_newton, const double* in, double* out,
                     std::int64_t cols) override {
    comm_.together([&] { local_->hessian_apply(model, gauss_newton, in, out, cols); });
    average_over_parts(comm_, out, model.num_params() * cols, part_rows_, whole_rows_, device_sum_.get());
  }

  // grad_cov_grad: the base's Ĝᵀ(ΣĜ). The per-rank variances of g_iᵀĜ sit
  // around different means, while Σ·Ĝ is centred on the global G and sums
  // exactly.

 protected:
  Profile compute_profile(const Model& model, const ProfileOptions& options) override {
    const auto start = std::chrono::steady_clock::now();
    const Profile part = comm_.together([&] { return local_->profile(model, options); });
    std::vector<double> moments = profile_moments(part, options.param_stats);
    comm_.reduce(moments, [&](std::vector<double>& left, const std::vector<double>& right) {
      merge_profile_moments(left, right, model, options.param_stats);
    });
    Profile whole = profile_from_moments(moments, model, options.param_stats);
    whole.device = part.device;
    whole.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return whole;
  }

 private:
  Communicator& comm_;
  std::unique_ptr<Backend> local_;
  std::int64_t part_rows_;
  std::int64_t whole_rows_;
  std::unique_ptr<DeviceSum> device_sum_;
};

}  // namespace

std::unique_ptr<Backend> make_distributed_backend(Communicator& comm, std::unique_ptr<Backend> local,
                                                  std::int64_t part_rows, std::int64_t whole_rows,
                                                  std::unique_ptr<DeviceSum> device_sum) {
  return std::make_unique<DistributedBackend>(comm, std::move(local), part_rows, whole_rows,
                                              std::move(device_sum));
}

void select_rank_device(Communicator& comm, Device device) {
  if (device != Device::cpu && resolve_device(device) == Place::cuda) select_cuda_device(comm.local_rank());
}

RankBackend make_rank_backend(Communicator& comm, const SessionOptions& options,
                              std::shared_ptr<const DataPart> part, Reduction reduction) {
  const std::int64_t part_rows = part->num_samples(), whole_rows = part->whole_samples();
  bool gpu_engine = false;
  std::unique_ptr<Backend> local = comm.together([&] {
    select_rank_device(comm, options.device);
    gpu_engine = options.device != Device::cpu && resolve_device(options.device) == Place::cuda;
    return make_backend(options.device, std::move(part), options.loss, options.chunk_rows, options.threads,
                        options.fused_linear, options.gpu_resident, options.gpu_dtype);
  });
  std::unique_ptr<DeviceSum> device_sum = make_device_sum(comm, gpu_engine, reduction);
  if (comm.size() == 1) return {std::move(local), "none"};
  const std::string path = device_sum ? "nccl" : "host";
  return {make_distributed_backend(comm, std::move(local), part_rows, whole_rows, std::move(device_sum)), path};
}

BlockOperator distributed_layer_covariance(Communicator& comm, const Model& model,
                                           const DataSource& part, Loss loss,
                                           const std::vector<double>& mean_grad,
                                           std::int64_t chunk_rows, std::int64_t layer) {
  auto op = std::make_shared<const CovarianceOperator>(model, part, loss, mean_grad, chunk_rows, layer);
  const std::int64_t part_rows = part.num_samples(), whole_rows = part.whole_samples();
  return [&comm, op, part_rows, whole_rows](const double* in, double* out, std::int64_t cols) {
    comm.together([&] { op->apply(in, out, cols); });
    average_over_parts(comm, out, op->dim() * cols, part_rows, whole_rows);
  };
}

}  // namespace gradnoise::detail
