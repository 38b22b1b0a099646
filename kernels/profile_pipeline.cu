// The CUDA profile: the CPU engine's algorithm (docs/DEFINITIONS.md
// "Numerics") on the GPU, chunk by chunk, with the same arithmetic from
// moments.hpp. Per chunk and layer: cuBLAS DGEMMs for the forward and backward
// products and for C = UᵀV/m (and the three per-slot products), small kernels
// for the output errors, the column means, the centring with its per-row
// scalars, and Chan's merge into running per-slot moments that stay on the
// device. Reductions are two-stage cub::BlockReduce with a grid fixed by the
// item count alone, so a report is bit-identical from run to run.
//
// Chunks come from the feeders of chunk_feeder.cuh: while the GPU works on
// chunk c the host fills the other pinned buffer with chunk c + 1 and its copy
// runs on a second stream. Here too: the plan of the chunk size and its retry
// on running out of memory, the fused kernel's place in the profile, the
// pipeline's forward and backward pass for other files (for_each_device_chunk,
// device_chunks.cuh, for H·V and Σ·V), and the public entry points
// profile_cuda and profile_cuda_device.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "block_product.cuh"
#include "chunk_feeder.cuh"
#include "cuda_support.hpp"
#include "device_chunks.cuh"
#include "cuda_entry.hpp"
#include "gradnoise/error.hpp"
#include "backend.hpp"
#include "linear_fused.cuh"
#include "forward_pass.hpp"
#include "losses.hpp"
#include "moments.hpp"
#include "plan.hpp"
#include "shifted_moments.hpp"
#include "policy.hpp"
#include "reduce.cuh"
#include "resident.cuh"

namespace gradnoise {
namespace cuda {
namespace {

using detail::ceil_div;
using detail::RowSums;

using detail::kColumnRowsPerBlock;
constexpr int kRowScalars = 6;  // ‖δ‖², ‖a‖², ‖u‖², δ̄·u, ‖v‖², ā·v

double noise_scale(double trace_cov, double grad_norm_sq) {
  return grad_norm_sq > 0 ? trace_cov / grad_norm_sq : std::numeric_limits<double>::infinity();
}

struct LoadCentredSquare {
  const double* values;
  const double* mean;
  __device__ double operator()(std::int64_t i) const {
    const double e = values[i] - *mean;
    return e * e;
  }
};

struct LoadShiftedLoss {
  const double* losses;
  const double* loss0;
  __device__ detail::ShiftedLoss operator()(std::int64_t i) const {
    const double e = losses[i] - *loss0;
    return {e, e * e};
  }
};

/// *total += *part, one thread: a chunk's reduced sums joining the running ones.
template <typename T>
__global__ void accumulate_kernel(T* total, const T* part) {
  *total += *part;
}

struct LoadRowSums {
  const double* scalars;  // m × kRowScalars
  bool bias;
  __device__ RowSums operator()(std::int64_t i) const {
    const double* s = scalars + i * kRowScalars;
    RowSums r;
    r.add_row(s[0], s[1], s[2], s[3], s[4], s[5], bias);
    return r;
  }
};

// ---- Element-wise and row kernels ------------------------------------------

/// Per-sample output error and loss by the loss L's own error row; flags the
/// first row with a target L rejects or a non-finite output (atomicMin keeps
/// the smallest index, so the message is deterministic).
template <class L>
__global__ void output_error_kernel(const double* z, const double* y,
                                    const std::int32_t* labels, std::int64_t m, std::int64_t k,
                                    std::int64_t first_row, double* delta, double* sample_loss,
                                    unsigned long long* first_bad_label,
                                    unsigned long long* first_non_finite) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < m;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double* zi = z + i * k;
    bool finite = true;
    for (std::int64_t c = 0; c < k; ++c) finite = finite && isfinite(zi[c]);
    if (!finite) {
      atomicMin(first_non_finite, static_cast<unsigned long long>(first_row + i));
      sample_loss[i] = 0;
      for (std::int64_t c = 0; c < k; ++c) delta[i * k + c] = 0;
      continue;
    }
    const double* yi = y != nullptr ? y + i * k : nullptr;
    const std::int32_t label = labels != nullptr ? labels[i] : 0;
    if (!L::target_ok(yi, label, k)) {
      atomicMin(first_bad_label, static_cast<unsigned long long>(first_row + i));
      sample_loss[i] = 0;
      for (std::int64_t c = 0; c < k; ++c) delta[i * k + c] = 0;
      continue;
    }
    sample_loss[i] = L::error_row(zi, yi, label, k, delta + i * k);
    if (!isfinite(sample_loss[i])) {  // a non-finite target (device data is not pre-validated)
      atomicMin(first_non_finite, static_cast<unsigned long long>(first_row + i));
      sample_loss[i] = 0;
      for (std::int64_t c = 0; c < k; ++c) delta[i * k + c] = 0;
    }
  }
}

/// partial[b][col] = Σ of column col over row block b (rows in order).
__global__ void column_partial_sums_kernel(const double* mat, std::int64_t m, std::int64_t cols,
                                           double* partial) {
  const std::int64_t blocks = detail::ceil_div(m, kColumnRowsPerBlock);
  for (std::int64_t rb = blockIdx.y; rb < blocks; rb += gridDim.y) {
    const std::int64_t first = rb * kColumnRowsPerBlock;
    const std::int64_t last = min(m, first + kColumnRowsPerBlock);
    for (std::int64_t col = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
         col < cols; col += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
      double acc = 0;
      for (std::int64_t i = first; i < last; ++i) acc += mat[i * cols + col];
      partial[rb * cols + col] = acc;
    }
  }
}

/// out[col] = scale · Σ_b partial[b][col], blocks in order.
__global__ void column_finish_kernel(const double* partial, std::int64_t blocks, std::int64_t cols,
                                     double scale, double* out) {
  for (std::int64_t col = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       col < cols; col += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    double acc = 0;
    for (std::int64_t b = 0; b < blocks; ++b) acc += partial[b * cols + col];
    out[col] = acc * scale;
  }
}

/// One warp per row: the row's six scalars around (delta_mean, act_mean)
/// (see moments.hpp RowSums::add_row); with `in_place`, δ_i and a_i are also
/// overwritten with their centred values (the centring pipeline), without it
/// only read (the shifted one).
__global__ void centre_rows_kernel(double* delta, double* act, std::int64_t m, std::int64_t out,
                                   std::int64_t in, const double* delta_mean,
                                   const double* act_mean, double* scalars, bool in_place) {
  const int lane = threadIdx.x % kWarp;
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (std::int64_t i = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / kWarp;
       i < m; i += warps) {
    detail::RowCentring errors, inputs;
    detail::centre_row(delta + i * out, in_place ? delta + i * out : nullptr, delta_mean, out, lane, kWarp,
                       errors);
    detail::centre_row(act + i * in, in_place ? act + i * in : nullptr, act_mean, in, lane, kWarp, inputs);
    const double delta_sq = warp_sum(errors.sq), u_sq = warp_sum(errors.centred_sq),
                 mean_dot_u = warp_sum(errors.mean_dot), act_sq = warp_sum(inputs.sq),
                 v_sq = warp_sum(inputs.centred_sq), mean_dot_v = warp_sum(inputs.mean_dot);
    if (lane == 0) {
      double* s = scalars + i * kRowScalars;
      s[0] = delta_sq;
      s[1] = act_sq;
      s[2] = u_sq;
      s[3] = mean_dot_u;
      s[4] = v_sq;
      s[5] = mean_dot_v;
    }
  }
}

__global__ void square_kernel(const double* src, std::int64_t count, double* dst) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    dst[j] = src[j] * src[j];
  }
}

/// Per-slot centred sums of one layer's chunk (moments.hpp chunk_slot_centred_sum).
__global__ void chunk_slot_kernel(std::int64_t out, std::int64_t in, bool bias, double m,
                                  const double* delta_mean, const double* act_mean, const double* c,
                                  const double* u_sq_sum, const double* v_sq_sum,
                                  const double* uu_vv, const double* u_vv, const double* uu_v,
                                  double* chunk_m2) {
  const std::int64_t weights = out * in;
  const std::int64_t slots = weights + (bias ? out : 0);
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < slots;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    if (j < weights) {
      const std::int64_t r = j / in, s = j % in;
      chunk_m2[j] = detail::chunk_slot_centred_sum(delta_mean[r], act_mean[s], c[j], u_sq_sum[r],
                                                   v_sq_sum[s], uu_vv[j], u_vv[j], uu_v[j], m);
    } else {
      chunk_m2[j] = u_sq_sum[j - weights];
    }
  }
}

/// Turns C into the chunk mean gradient: δ̄āᵀ + C, then δ̄ in the bias slots.
__global__ void chunk_mean_kernel(std::int64_t out, std::int64_t in, bool bias,
                                  const double* delta_mean, const double* act_mean, double* c) {
  const std::int64_t weights = out * in;
  const std::int64_t slots = weights + (bias ? out : 0);
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < slots;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    if (j < weights) {
      c[j] += delta_mean[j / in] * act_mean[j % in];
    } else {
      c[j] = delta_mean[j - weights];
    }
  }
}

/// Chan's merge of every slot; diff_sq[j] = (chunk mean − running mean)².
__global__ void merge_slots_kernel(std::int64_t slots, detail::MergeWeights w,
                                   const double* chunk_mean, const double* chunk_m2, double* mean,
                                   double* m2, double* diff_sq) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < slots;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    diff_sq[j] = detail::merge_slot(mean[j], chunk_m2 != nullptr ? m2 + j : nullptr, chunk_mean[j],
                                    chunk_m2 != nullptr ? chunk_m2[j] : 0.0, w);
  }
}

/// Running per-layer scalars, kept on the device between chunks.
struct LayerScalars {
  double m2_total;     // Σ_i ‖g_i − G‖²
  double sum_norm_sq;  // Σ_i ‖g_i‖²
};

/// Scalars a chunk contributes, reduced on the device.
struct ChunkScalars {
  RowSums rows;
  double c_norm_sq;
  double delta_mean_sq;
  double act_mean_sq;
  double diff_sq;
};

__global__ void finish_layer_chunk_kernel(LayerScalars* acc, const ChunkScalars* chunk,
                                          double cross, double m, bool bias) {
  acc->m2_total += detail::chunk_centred_sum(chunk->rows, chunk->delta_mean_sq, chunk->act_mean_sq,
                                             bias, m, chunk->c_norm_sq) +
                   chunk->diff_sq * cross;
  acc->sum_norm_sq += chunk->rows.sum_norm_sq;
}

/// Loss moments: (mean, M2) merged like the gradients; chunk sums on device.
struct LossScalars {
  double mean;
  double m2;
};

__global__ void finish_loss_chunk_kernel(LossScalars* acc, const double* chunk_sum,
                                         const double* chunk_m2, detail::MergeWeights w) {
  detail::merge_slot(acc->mean, &acc->m2, *chunk_sum, *chunk_m2, w);
}

__global__ void divide_kernel(double* value, double divisor) { *value /= divisor; }

// ---- The pipeline ------------------------------------------------------------

/// Row-major R (out×in) = alpha · Lᵀ Rt with L m×out and Rt m×in (Σ over rows).
void gemm_at_b(cublasHandle_t h, std::int64_t m, std::int64_t out, std::int64_t in, double alpha,
               const double* left, const double* right, double* result, double beta = 0.0) {
  GN_CUBLAS_CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(in),
                              static_cast<int>(out), static_cast<int>(m), &alpha, right,
                              static_cast<int>(in), left, static_cast<int>(out), &beta, result,
                              static_cast<int>(in)));
}

struct LayerState {
  DeviceBuffer<double> weight, bias;       // copies of the model
  DeviceBuffer<double> mean, m2;           // running per-slot moments (centring pipeline)
  DeviceBuffer<LayerScalars> scalars;
  // The shifted pipeline (core/shifted_moments.hpp): Σ δ aᵀ, Σ δ, the shift,
  // the row scalars around it.
  DeviceBuffer<double> g_sum, bias_sum, delta0, act0;
  DeviceBuffer<RowSums> rows;
  std::int64_t slots = 0;
};

class Pipeline {
 public:
  Pipeline(const Model& model, const ProfileOptions& options, std::int64_t chunk, bool labels,
           cudaStream_t stream)
      : model_(model), options_(options), chunk_(chunk), labels_(labels), stream_(stream),
        cublas_(stream), shifted_(!options.param_stats) {
    const std::int64_t d = model.input_dim(), k = model.output_dim();
    std::int64_t widest = d, max_slots = 0, max_weights = 0;
    for (const Layer& layer : model.layers) {
      widest = std::max(widest, layer.out);
      max_slots = std::max(max_slots, layer.num_params());
      max_weights = std::max(max_weights, layer.out * layer.in);
    }
    for (std::int64_t l = 0; l < model.num_layers(); ++l) {
      const Layer& layer = model.layers[l];
      if (l > 0) activations_.emplace_back(static_cast<std::size_t>(chunk * layer.in));
      errors_.emplace_back(static_cast<std::size_t>(chunk * layer.out));
      LayerState state;
      state.weight = upload(layer.weight, stream_);
      state.bias = upload(layer.bias, stream_);
      state.slots = layer.num_params();
      if (shifted_) {
        state.g_sum = zeros(layer.out * layer.in);
        state.bias_sum = zeros(layer.out);
        state.delta0 = DeviceBuffer<double>(static_cast<std::size_t>(layer.out));
        state.act0 = DeviceBuffer<double>(static_cast<std::size_t>(layer.in));
        state.rows = DeviceBuffer<RowSums>(1);
        GN_CUDA_CHECK(cudaMemsetAsync(state.rows.data(), 0, sizeof(RowSums), stream_));
      } else {
        state.mean = zeros(state.slots);
        if (options.param_stats) state.m2 = zeros(state.slots);
        state.scalars = DeviceBuffer<LayerScalars>(1);
        GN_CUDA_CHECK(cudaMemsetAsync(state.scalars.data(), 0, sizeof(LayerScalars), stream_));
      }
      layers_.push_back(std::move(state));
    }
    output_ = DeviceBuffer<double>(static_cast<std::size_t>(chunk * k));
    sample_loss_ = DeviceBuffer<double>(static_cast<std::size_t>(chunk));
    row_scalars_ = DeviceBuffer<double>(static_cast<std::size_t>(chunk * kRowScalars));
    delta_mean_ = DeviceBuffer<double>(static_cast<std::size_t>(widest));
    act_mean_ = DeviceBuffer<double>(static_cast<std::size_t>(widest));
    column_partial_ =
        DeviceBuffer<double>(static_cast<std::size_t>(ceil_div(chunk, kColumnRowsPerBlock) * widest));
    chunk_mean_ = DeviceBuffer<double>(static_cast<std::size_t>(max_slots));
    diff_sq_ = DeviceBuffer<double>(static_cast<std::size_t>(max_slots));
    if (options.param_stats) {
      chunk_m2_ = DeviceBuffer<double>(static_cast<std::size_t>(max_slots));
      u_sq_ = DeviceBuffer<double>(static_cast<std::size_t>(chunk * widest));
      v_sq_ = DeviceBuffer<double>(static_cast<std::size_t>(chunk * widest));
      u_sq_sum_ = DeviceBuffer<double>(static_cast<std::size_t>(widest));
      v_sq_sum_ = DeviceBuffer<double>(static_cast<std::size_t>(widest));
      for (auto& product : products_) product = DeviceBuffer<double>(static_cast<std::size_t>(max_weights));
    }
    partial_ = DeviceBuffer<double>(kMaxReduceBlocks);
    row_partial_ = DeviceBuffer<RowSums>(kMaxReduceBlocks);
    chunk_scalars_ = DeviceBuffer<ChunkScalars>(1);
    loss_chunk_ = DeviceBuffer<double>(2);
    loss_ = DeviceBuffer<LossScalars>(1);
    GN_CUDA_CHECK(cudaMemsetAsync(loss_.data(), 0, sizeof(LossScalars), stream_));
    if (shifted_) {
      ones_ = device_ones(chunk, stream_);
      chunk_rows_ = DeviceBuffer<RowSums>(1);
      shifted_loss_ = DeviceBuffer<detail::ShiftedLoss>(2);  // [0] running, [1] the chunk's
      shifted_loss_partial_ = DeviceBuffer<detail::ShiftedLoss>(kMaxReduceBlocks);
      GN_CUDA_CHECK(cudaMemsetAsync(shifted_loss_.data(), 0, 2 * sizeof(detail::ShiftedLoss), stream_));
    }
    flags_ = DeviceBuffer<unsigned long long>(2);
    const unsigned long long none[2] = {kNoRow, kNoRow};
    GN_CUDA_CHECK(cudaMemcpyAsync(flags_.data(), none, sizeof(none), cudaMemcpyHostToDevice, stream_));
    GN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;
  // Queued kernels may still use the buffers when an exception unwinds.
  ~Pipeline() { cudaStreamSynchronize(stream_); }

  /// Queues all work for the chunk's m rows (its inputs are centred in place).
  void process(const Chunk& chunk, std::int64_t m, std::int64_t count_before) {
    rows_seen_ = count_before + m;
    forward_backward(chunk, m, count_before);
    const std::int64_t num_layers = model_.num_layers();
    if (shifted_) {
      for (std::int64_t l = 0; l < num_layers; ++l) layer_chunk_shifted(l, chunk, m, count_before == 0);
      loss_chunk_shifted(m, count_before == 0);
      return;
    }
    const detail::MergeWeights w = detail::merge_weights(count_before, m);
    for (std::int64_t l = 0; l < num_layers; ++l) layer_chunk(l, chunk, m, w);
    // Loss: chunk mean, centred M2, merge.
    reduce(m, LoadArray<double>{sample_loss_.data()}, partial_.data(), loss_chunk_.data(), stream_);
    divide_kernel<<<1, 1, 0, stream_>>>(loss_chunk_.data(), static_cast<double>(m));
    GN_CUDA_CHECK(cudaGetLastError());
    reduce(m, LoadCentredSquare{sample_loss_.data(), loss_chunk_.data()}, partial_.data(),
           loss_chunk_.data() + 1, stream_);
    finish_loss_chunk_kernel<<<1, 1, 0, stream_>>>(loss_.data(), loss_chunk_.data(),
                                                   loss_chunk_.data() + 1, w);
    GN_CUDA_CHECK(cudaGetLastError());
  }

  /// Every layer's input and output error for the chunk's m rows.
  void forward_backward(const Chunk& chunk, std::int64_t m, std::int64_t first_row) {
    const std::int64_t num_layers = model_.num_layers();
    const std::int64_t k = model_.output_dim();
    const cublasHandle_t h = cublas_.get();
    // core/forward_pass.hpp's sequence on cuBLAS; the output errors between.
    std::vector<detail::ForwardLayerBuffers> buffers(static_cast<std::size_t>(num_layers));
    for (std::int64_t l = 0; l < num_layers; ++l) {
      buffers[l] = {layers_[l].weight.data(),
                    model_.layers[l].has_bias() ? layers_[l].bias.data() : nullptr, input(l, chunk),
                    (l + 1 < num_layers) ? activations_[l].data() : output_.data(), errors_[l].data()};
    }
    CublasExec exec{h, stream_};
    detail::forward_backward(exec, model_, buffers, m, [&] {
      losses::visit_loss(options_.loss, [&](auto loss) {
        output_error_kernel<decltype(loss)><<<grid_for(m), kThreads, 0, stream_>>>(
            output_.data(), chunk.y, chunk.labels, m, k, first_row, errors_[num_layers - 1].data(),
            sample_loss_.data(), flags_.data(), flags_.data() + 1);
      });
      GN_CUDA_CHECK(cudaGetLastError());
    });
  }

  /// After forward_backward: layer l's input (m×in) and output error (m×out).
  const double* layer_input(std::int64_t l, const Chunk& chunk) { return input(l, chunk); }
  const double* layer_error(std::int64_t l) const { return errors_[l].data(); }
  /// After forward_backward: the model's output f (m×K) and layer l's weights on the device.
  const double* model_output() const { return output_.data(); }
  const double* layer_weight(std::int64_t l) const { return layers_[l].weight.data(); }
  cublasHandle_t cublas() const { return cublas_.get(); }

  /// Throws an InputError naming the first bad row (bad label or non-finite value).
  void check_flags() {
    unsigned long long flags[2];
    GN_CUDA_CHECK(cudaMemcpyAsync(flags, flags_.data(), sizeof(flags), cudaMemcpyDeviceToHost, stream_));
    GN_CUDA_CHECK(cudaStreamSynchronize(stream_));
    throw_if_flagged(flags[0], flags[1], model_.output_dim(), options_.loss);
  }

  /// Copies the merged moments back and fills the report.
  void finish(Profile& result) {
    check_flags();
    result.n = rows_seen_;
    result.num_params = model_.num_params();
    if (shifted_) {
      finish_shifted(result);
      return;
    }
    const double inv_n = 1.0 / static_cast<double>(result.n);
    LossScalars loss{};
    GN_CUDA_CHECK(cudaMemcpy(&loss, loss_.data(), sizeof(loss), cudaMemcpyDeviceToHost));
    result.loss = loss.mean;
    result.loss_var = loss.m2 * inv_n;
    for (std::int64_t l = 0; l < model_.num_layers(); ++l) {
      const LayerState& state = layers_[l];
      std::vector<double> mean(static_cast<std::size_t>(state.slots));
      GN_CUDA_CHECK(cudaMemcpy(mean.data(), state.mean.data(), mean.size() * sizeof(double),
                               cudaMemcpyDeviceToHost));
      LayerScalars scalars{};
      GN_CUDA_CHECK(cudaMemcpy(&scalars, state.scalars.data(), sizeof(scalars), cudaMemcpyDeviceToHost));
      LayerProfile lp;
      lp.name = Model::layer_name(l);
      lp.num_params = state.slots;
      for (double g : mean) lp.grad_norm_sq += g * g;
      lp.trace_cov = scalars.m2_total * inv_n;
      lp.mean_sample_grad_norm_sq = scalars.sum_norm_sq * inv_n;
      result.param_mean.insert(result.param_mean.end(), mean.begin(), mean.end());
      if (options_.param_stats) {
        std::vector<double> m2(static_cast<std::size_t>(state.slots));
        GN_CUDA_CHECK(cudaMemcpy(m2.data(), state.m2.data(), m2.size() * sizeof(double),
                                 cudaMemcpyDeviceToHost));
        for (double v : m2) result.param_var.push_back(v * inv_n);
      }
      result.layers.push_back(std::move(lp));
    }
  }

 private:

  double* input(std::int64_t l, const Chunk& chunk) {
    return l == 0 ? chunk.x : activations_[l - 1].data();
  }

  DeviceBuffer<double> zeros(std::int64_t count) {
    DeviceBuffer<double> dev(static_cast<std::size_t>(count));
    GN_CUDA_CHECK(cudaMemsetAsync(dev.data(), 0, count * sizeof(double), stream_));
    return dev;
  }

  void column_means(const double* mat, std::int64_t m, std::int64_t cols, double scale, double* out) {
    const std::int64_t blocks = ceil_div(m, kColumnRowsPerBlock);
    const dim3 grid(static_cast<unsigned>(std::min(ceil_div(cols, kThreads), detail::kColumnGridX)),
                    static_cast<unsigned>(std::min(blocks, detail::kMaxGridY)));
    column_partial_sums_kernel<<<grid, kThreads, 0, stream_>>>(mat, m, cols, column_partial_.data());
    GN_CUDA_CHECK(cudaGetLastError());
    column_finish_kernel<<<grid_for(cols), kThreads, 0, stream_>>>(column_partial_.data(), blocks,
                                                                   cols, scale, out);
    GN_CUDA_CHECK(cudaGetLastError());
  }

  /// Without param stats (core/shifted_moments.hpp): the first chunk's means
  /// become the shift; every chunk adds Σ δ aᵀ (one GEMM), Σ δ (one GEMV)
  /// and its row scalars around the shift (one kernel, one reduction), with
  /// no centred copies and no per-slot merge.
  void layer_chunk_shifted(std::int64_t l, const Chunk& chunk, std::int64_t m, bool first_chunk) {
    const Layer& layer = model_.layers[l];
    LayerState& state = layers_[l];
    const std::int64_t out = layer.out, in = layer.in;
    const cublasHandle_t h = cublas_.get();
    double* delta = errors_[l].data();
    double* act = input(l, chunk);
    if (first_chunk) {
      column_means(delta, m, out, 1.0 / static_cast<double>(m), state.delta0.data());
      column_means(act, m, in, 1.0 / static_cast<double>(m), state.act0.data());
    }
    gemm_at_b(h, m, out, in, 1.0, delta, act, state.g_sum.data(), 1.0);
    if (layer.has_bias()) {
      // Σ_i δ_i: δ (m × out, row-major) is column-major out × m.
      const double one = 1.0;
      GN_CUBLAS_CHECK(cublasDgemv(h, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(m), &one, delta,
                                  static_cast<int>(out), ones_.data(), 1, &one, state.bias_sum.data(), 1));
    }
    const int warps_per_block = kThreads / kWarp;
    centre_rows_kernel<<<grid_for(m, warps_per_block), kThreads, 0, stream_>>>(
        delta, act, m, out, in, state.delta0.data(), state.act0.data(), row_scalars_.data(), false);
    GN_CUDA_CHECK(cudaGetLastError());
    reduce(m, LoadRowSums{row_scalars_.data(), layer.has_bias()}, row_partial_.data(), chunk_rows_.data(),
           stream_);
    accumulate_kernel<<<1, 1, 0, stream_>>>(state.rows.data(), chunk_rows_.data());
    GN_CUDA_CHECK(cudaGetLastError());
  }

  /// The loss around ℓ₀, the first chunk's mean loss.
  void loss_chunk_shifted(std::int64_t m, bool first_chunk) {
    double* loss0 = loss_chunk_.data();
    if (first_chunk) {
      reduce(m, LoadArray<double>{sample_loss_.data()}, partial_.data(), loss0, stream_);
      divide_kernel<<<1, 1, 0, stream_>>>(loss0, static_cast<double>(m));
      GN_CUDA_CHECK(cudaGetLastError());
    }
    detail::ShiftedLoss* sums = shifted_loss_.data();
    reduce(m, LoadShiftedLoss{sample_loss_.data(), loss0}, shifted_loss_partial_.data(), sums + 1, stream_);
    accumulate_kernel<<<1, 1, 0, stream_>>>(sums, sums + 1);
    GN_CUDA_CHECK(cudaGetLastError());
  }

  void finish_shifted(Profile& result) {
    const std::int64_t n = rows_seen_;
    const double inv_n = 1.0 / static_cast<double>(n);
    detail::ShiftedLoss loss_sums;
    double loss0 = 0;
    GN_CUDA_CHECK(cudaMemcpy(&loss_sums, shifted_loss_.data(), sizeof(loss_sums), cudaMemcpyDeviceToHost));
    GN_CUDA_CHECK(cudaMemcpy(&loss0, loss_chunk_.data(), sizeof(loss0), cudaMemcpyDeviceToHost));
    const detail::LossMoments loss = detail::shifted_loss_moments(loss_sums, loss0, n);
    result.loss = loss.mean;
    result.loss_var = loss.m2 * inv_n;
    for (std::int64_t l = 0; l < model_.num_layers(); ++l) {
      const Layer& layer = model_.layers[l];
      const LayerState& state = layers_[l];
      std::vector<double> g_sum(static_cast<std::size_t>(layer.out * layer.in)), bias_sum(layer.out),
          delta0(layer.out), act0(layer.in);
      download(state.g_sum, g_sum, stream_);
      download(state.bias_sum, bias_sum, stream_);
      download(state.delta0, delta0, stream_);
      download(state.act0, act0, stream_);
      RowSums rows;
      GN_CUDA_CHECK(cudaMemcpyAsync(&rows, state.rows.data(), sizeof(rows), cudaMemcpyDeviceToHost, stream_));
      GN_CUDA_CHECK(cudaStreamSynchronize(stream_));
      std::vector<double> mean(static_cast<std::size_t>(state.slots));
      const double m2 = detail::shifted_layer_moments(layer.out, layer.in, layer.has_bias(), n, g_sum.data(),
                                                      bias_sum.data(), delta0.data(), act0.data(), rows,
                                                      mean.data());
      LayerProfile lp;
      lp.name = Model::layer_name(l);
      lp.num_params = state.slots;
      for (double g : mean) lp.grad_norm_sq += g * g;
      lp.trace_cov = m2 * inv_n;
      lp.mean_sample_grad_norm_sq = rows.sum_norm_sq * inv_n;
      result.param_mean.insert(result.param_mean.end(), mean.begin(), mean.end());
      result.layers.push_back(std::move(lp));
    }
  }

  void layer_chunk(std::int64_t l, const Chunk& chunk, std::int64_t m, detail::MergeWeights w) {
    const Layer& layer = model_.layers[l];
    LayerState& state = layers_[l];
    const std::int64_t out = layer.out, in = layer.in;
    const bool bias = layer.has_bias();
    const double dm = static_cast<double>(m);
    const cublasHandle_t h = cublas_.get();
    double* delta = errors_[l].data();
    double* act = input(l, chunk);
    ChunkScalars* scalars = chunk_scalars_.data();

    column_means(delta, m, out, 1.0 / dm, delta_mean_.data());
    column_means(act, m, in, 1.0 / dm, act_mean_.data());
    const int warps_per_block = kThreads / kWarp;
    centre_rows_kernel<<<grid_for(m, warps_per_block), kThreads, 0, stream_>>>(
        delta, act, m, out, in, delta_mean_.data(), act_mean_.data(), row_scalars_.data(), true);
    GN_CUDA_CHECK(cudaGetLastError());
    reduce(m, LoadRowSums{row_scalars_.data(), bias}, row_partial_.data(), &scalars->rows, stream_);
    reduce(out, LoadSquare{delta_mean_.data()}, partial_.data(), &scalars->delta_mean_sq, stream_);
    reduce(in, LoadSquare{act_mean_.data()}, partial_.data(), &scalars->act_mean_sq, stream_);

    double* c = chunk_mean_.data();
    gemm_at_b(h, m, out, in, 1.0 / dm, delta, act, c);
    reduce(out * in, LoadSquare{c}, partial_.data(), &scalars->c_norm_sq, stream_);

    if (options_.param_stats) {
      square_kernel<<<grid_for(m * out), kThreads, 0, stream_>>>(delta, m * out, u_sq_.data());
      GN_CUDA_CHECK(cudaGetLastError());
      square_kernel<<<grid_for(m * in), kThreads, 0, stream_>>>(act, m * in, v_sq_.data());
      GN_CUDA_CHECK(cudaGetLastError());
      column_means(u_sq_.data(), m, out, 1.0, u_sq_sum_.data());
      column_means(v_sq_.data(), m, in, 1.0, v_sq_sum_.data());
      gemm_at_b(h, m, out, in, 1.0, u_sq_.data(), v_sq_.data(), products_[0].data());
      gemm_at_b(h, m, out, in, 1.0, delta, v_sq_.data(), products_[1].data());
      gemm_at_b(h, m, out, in, 1.0, u_sq_.data(), act, products_[2].data());
      chunk_slot_kernel<<<grid_for(state.slots), kThreads, 0, stream_>>>(
          out, in, bias, dm, delta_mean_.data(), act_mean_.data(), c, u_sq_sum_.data(),
          v_sq_sum_.data(), products_[0].data(), products_[1].data(), products_[2].data(),
          chunk_m2_.data());
      GN_CUDA_CHECK(cudaGetLastError());
    }
    chunk_mean_kernel<<<grid_for(state.slots), kThreads, 0, stream_>>>(
        out, in, bias, delta_mean_.data(), act_mean_.data(), c);
    GN_CUDA_CHECK(cudaGetLastError());
    merge_slots_kernel<<<grid_for(state.slots), kThreads, 0, stream_>>>(
        state.slots, w, c, options_.param_stats ? chunk_m2_.data() : nullptr, state.mean.data(),
        options_.param_stats ? state.m2.data() : nullptr, diff_sq_.data());
    GN_CUDA_CHECK(cudaGetLastError());
    reduce(state.slots, LoadArray<double>{diff_sq_.data()}, partial_.data(), &scalars->diff_sq, stream_);
    finish_layer_chunk_kernel<<<1, 1, 0, stream_>>>(state.scalars.data(), scalars, w.cross, dm, bias);
    GN_CUDA_CHECK(cudaGetLastError());
  }

  const Model& model_;
  const ProfileOptions& options_;
  std::int64_t rows_seen_ = 0;
  std::int64_t chunk_;
  bool labels_;
  cudaStream_t stream_;
  CublasHandle cublas_;
  bool shifted_;  // without param stats: core/shifted_moments.hpp's scheme
  DeviceBuffer<double> ones_;
  DeviceBuffer<RowSums> chunk_rows_;
  DeviceBuffer<detail::ShiftedLoss> shifted_loss_, shifted_loss_partial_;
  std::vector<DeviceBuffer<double>> activations_, errors_;
  std::vector<LayerState> layers_;
  DeviceBuffer<double> output_, sample_loss_, row_scalars_, delta_mean_, act_mean_, column_partial_;
  DeviceBuffer<double> chunk_mean_, chunk_m2_, diff_sq_, u_sq_, v_sq_, u_sq_sum_, v_sq_sum_;
  DeviceBuffer<double> products_[3];
  DeviceBuffer<double> partial_;
  DeviceBuffer<RowSums> row_partial_;
  DeviceBuffer<ChunkScalars> chunk_scalars_;
  DeviceBuffer<double> loss_chunk_;
  DeviceBuffer<LossScalars> loss_;
  DeviceBuffer<unsigned long long> flags_;
};

/// The fused linear kernel behind the pipeline's interface, for host-fed chunks.
struct FusedEngine {
  FusedLinear& fused;
  void process(const Chunk& chunk, std::int64_t m, std::int64_t first) {
    fused.accumulate(chunk.x, chunk.y, chunk.labels, m, first);
  }
  void finish(Profile& result) { fused.finish(result); }
};

/// Feeds n rows in chunks of `chunk` through the feeder's two buffers in
/// turn: use(fed, m, first) queues its work on `stream` before the buffer is
/// marked in use and refilled.
template <typename Feeder, typename Use>
void for_each_fed_chunk(Feeder& feeder, std::int64_t n, std::int64_t chunk, cudaStream_t stream,
                        Use&& use) {
  std::int64_t chunk_index = 0;
  for (std::int64_t first = 0; first < n; first += chunk, ++chunk_index) {
    const int b = static_cast<int>(chunk_index % 2);
    const std::int64_t m = std::min(chunk, n - first);
    use(feeder.feed(b, first, m, stream), m, first);
    feeder.consumed(b, stream);
  }
}

/// Streams n rows through `engine` in chunks of `chunk` rows.
template <typename Engine, typename MakeFeeder>
Profile run(Engine& engine, std::int64_t n, std::int64_t chunk, cudaStream_t stream,
            MakeFeeder make_feeder) {
  auto feeder = make_feeder(chunk);
  for_each_fed_chunk(feeder, n, chunk, stream, [&](const Chunk& fed, std::int64_t m, std::int64_t first) {
    engine.process(fed, m, first);
  });
  Profile result;
  engine.finish(result);
  return result;
}

}  // namespace

/// The GPU twin of host/chunk_pass.hpp's for_each_chunk (declared in
/// device_chunks.cuh): the pipeline's forward and backward per chunk, then
/// `visit`, whose work is queued on the same stream, so the next chunk's
/// forward pass (which reuses the buffers) runs after it.
namespace {

/// A pass served from a session's forward cache: the visitor sees slices of
/// the kept inputs, errors and outputs, chunk by chunk, as if the pipeline
/// had just produced them.
void visit_cached(const ForwardCache& cache, const Model& model, std::int64_t n, std::int64_t chunk,
                  cudaStream_t stream, const std::function<void(const DeviceChunkView&)>& visit) {
  GN_CUBLAS_CHECK(cublasSetStream(cache.cublas->get(), stream));
  DeviceChunkView view;
  view.cublas = cache.cublas->get();
  view.stream = stream;
  const auto layers = static_cast<std::size_t>(model.num_layers());
  view.inputs.resize(layers);
  view.errors.resize(layers);
  view.weights.resize(layers);
  for (std::int64_t first = 0; first < n; first += chunk) {
    view.first = first;
    view.rows = std::min(chunk, n - first);
    for (std::size_t l = 0; l < layers; ++l) {
      const Layer& layer = model.layers[l];
      view.inputs[l] = cache.inputs[l].data() + first * layer.in;
      view.errors[l] = cache.errors[l].data() + first * layer.out;
      view.weights[l] = cache.weights[l].data();
    }
    view.outputs = cache.outputs.data() + first * model.output_dim();
    visit(view);
  }
  GN_CUDA_CHECK(cudaStreamSynchronize(stream));
}

/// Queues the copy of `rows` rows of `width` doubles to row `first` of `dst`.
void keep_rows(cuda::DeviceBuffer<double>& dst, const double* src, std::int64_t first, std::int64_t rows,
               std::int64_t width, cudaStream_t stream) {
  GN_CUDA_CHECK(cudaMemcpyAsync(dst.data() + first * width, src,
                                static_cast<std::size_t>(rows * width) * sizeof(double),
                                cudaMemcpyDeviceToDevice, stream));
}

}  // namespace

void for_each_device_chunk(const Model& model, const DataSource& data, const ResidentData* resident,
                           Loss loss, std::int64_t chunk, cudaStream_t stream,
                           const std::function<void(const DeviceChunkView&)>& visit) {
  const std::int64_t n = data.num_samples();
  if (resident != nullptr && resident->forward.matches(model, loss)) {
    visit_cached(resident->forward, model, n, chunk, stream, visit);
    return;
  }
  const bool labels = loss_targets(loss) == TargetKind::labels;
  ProfileOptions options;
  options.loss = loss;
  Pipeline pipeline(model, options, chunk, labels, stream);
  // A session's pass also keeps what it computes, when that fits, so the
  // next pass at the same θ skips the pipeline.
  ForwardCache* keep = resident != nullptr && resident->forward.prepare(model, loss, n, stream)
                           ? &resident->forward
                           : nullptr;
  DeviceChunkView view;
  view.cublas = pipeline.cublas();
  view.stream = stream;
  view.inputs.resize(static_cast<std::size_t>(model.num_layers()));
  view.errors.resize(view.inputs.size());
  view.weights.resize(view.inputs.size());
  const auto pass = [&](auto& feeder) {
    for_each_fed_chunk(feeder, n, chunk, stream, [&](const Chunk& fed, std::int64_t m, std::int64_t first) {
      pipeline.forward_backward(fed, m, first);
      view.first = first;
      view.rows = m;
      for (std::int64_t l = 0; l < model.num_layers(); ++l) {
        view.inputs[l] = pipeline.layer_input(l, fed);
        view.errors[l] = pipeline.layer_error(l);
        view.weights[l] = pipeline.layer_weight(l);
      }
      view.outputs = pipeline.model_output();
      if (keep != nullptr) {
        for (std::int64_t l = 0; l < model.num_layers(); ++l) {
          const Layer& layer = model.layers[l];
          keep_rows(keep->inputs[l], view.inputs[l], first, m, layer.in, stream);
          keep_rows(keep->errors[l], view.errors[l], first, m, layer.out, stream);
          if (first == 0) keep_rows(keep->weights[l], view.weights[l], 0, layer.out, layer.in, stream);
        }
        keep_rows(keep->outputs, view.outputs, first, m, model.output_dim(), stream);
      }
      visit(view);
    });
  };
  try {
    if (resident == nullptr) {
      HostFeeder feeder(data, chunk, model.output_dim(), labels);
      pass(feeder);
    } else if (resident->dtype == GpuDtype::float32) {
      DeviceFeeder<float> feeder(resident->rows<float>(), chunk);
      pass(feeder);
    } else {
      DeviceFeeder<double> feeder(resident->rows<double>(), chunk);
      pass(feeder);
    }
    pipeline.check_flags();  // synchronises the stream: every visit's work has finished
  } catch (...) {
    if (keep != nullptr) {  // a pass that failed keeps nothing, not even the memory
      cudaStreamSynchronize(stream);
      keep->release();
    }
    throw;
  }
  if (keep != nullptr) keep->valid = true;
}

void release_stale_forward(const ResidentData* resident, const Model& model, Loss loss) {
  if (resident != nullptr && !resident->forward.matches(model, loss)) resident->forward.release();
}

namespace {

/// The shape of device-resident rows, for the shared input checks.
template <typename T>
class DeviceRowsShape final : public DataSource {
 public:
  explicit DeviceRowsShape(const DeviceRows<T>& data) : data_(data) {}
  std::int64_t num_samples() const override { return data_.n; }
  std::int64_t num_features() const override { return data_.d; }
  TargetKind target_kind() const override {
    return data_.labels != nullptr ? TargetKind::labels : TargetKind::real;
  }
  std::int64_t num_targets() const override { return data_.k; }
  void read(std::int64_t, std::int64_t, double*, double*, std::int32_t*) const override {
    throw RuntimeError("internal: device-resident data is not read through the host");
  }

 private:
  DeviceRows<T> data_;
};

/// Plans the chunk, runs, and on running out of memory halves the chunk and
/// runs again; then totals the layers. `direct`, when given, is
/// device-resident data that the fused kernel reads in place (no chunk copies
/// at all); the GEMM pipeline takes it through make_feeder's chunks.
/// `cache`, when given with `direct`, keeps the fused kernel's buffers
/// between calls (a session's).
template <typename MakeFeeder, typename T = float>
Profile plan_and_run(const Model& model, const DataSource& shape, const ProfileOptions& options,
                     cudaStream_t stream, MakeFeeder make_feeder,
                     const DeviceRows<T>* direct = nullptr, FusedCache* cache = nullptr) {
  const auto start = std::chrono::steady_clock::now();
  const bool labels = loss_targets(options.loss) == TargetKind::labels;
  const std::int64_t n = shape.num_samples();
  const bool fused = use_fused_linear(model, options);
  // Device-resident rows through the fused kernel: no chunks, so no chunk
  // plan and no query of free memory; a session keeps the kernel's buffers.
  const auto run_direct = [&] {
    FusedCache own;
    FusedCache& kept = cache != nullptr ? *cache : own;
    if (!kept.fused || !kept.fused->fits(model, options)) {
      kept.fused = std::make_unique<FusedLinear>(model, options, stream, false);
    }
    Profile profile;
    kept.fused->profile_rows(model, direct->x, direct->y, direct->labels, n, cache != nullptr, profile);
    return profile;
  };
  const detail::ChunkFootprint fp = detail::chunk_footprint(model, labels, options.param_stats);
  Profile result =
      fused && direct != nullptr
          ? run_direct()
          : with_halving_chunks(
                "this model's " + std::to_string(model.num_params()) + " parameters",
                [&](std::int64_t budget) { return detail::plan_chunk_rows(fp, budget, options.chunk_rows, n); },
                [&](std::int64_t chunk) {
                  if (!fused) {
                    Pipeline pipeline(model, options, chunk, labels, stream);
                    return run(pipeline, n, chunk, stream, make_feeder);
                  }
                  FusedLinear engine_state(model, options, stream);
                  FusedEngine engine{engine_state};
                  return run(engine, n, chunk, stream, make_feeder);
                });
  for (LayerProfile& lp : result.layers) {
    lp.noise_scale_simple = noise_scale(lp.trace_cov, lp.grad_norm_sq);
    result.grad_norm_sq += lp.grad_norm_sq;
    result.trace_cov += lp.trace_cov;
    result.mean_sample_grad_norm_sq += lp.mean_sample_grad_norm_sq;
  }
  result.noise_scale_simple = noise_scale(result.trace_cov, result.grad_norm_sq);
  result.device = cuda_device_name();
  result.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace

template <typename T>
Profile profile_device_rows(const Model& model, const DeviceRows<T>& data,
                            const ProfileOptions& options, cudaStream_t stream, FusedCache* cache) {
  const DeviceRowsShape<T> shape(data);
  check_profile_inputs(model, shape, options);
  require_device();
  if (data.x == nullptr || (data.y == nullptr) == (data.labels == nullptr)) {
    throw InputError("device data needs inputs and exactly one of real targets and labels");
  }
  return plan_and_run(
      model, shape, options, stream,
      [&](std::int64_t chunk) { return DeviceFeeder<T>(data, chunk); }, &data, cache);
}

template Profile profile_device_rows<float>(const Model&, const DeviceRows<float>&,
                                            const ProfileOptions&, cudaStream_t, FusedCache*);
template Profile profile_device_rows<double>(const Model&, const DeviceRows<double>&,
                                             const ProfileOptions&, cudaStream_t, FusedCache*);

}  // namespace cuda

Profile profile_cuda(const Model& model, const DataSource& data, const ProfileOptions& options,
                     CUstream_st* stream) {
  check_profile_inputs(model, data, options);
  cuda::require_device();
  const bool labels = loss_targets(options.loss) == TargetKind::labels;
  return cuda::plan_and_run(model, data, options, stream, [&](std::int64_t chunk) {
    return cuda::HostFeeder(data, chunk, model.output_dim(), labels);
  });
}

Profile profile_cuda_device(const Model& model, const DeviceData& data,
                            const ProfileOptions& options, CUstream_st* stream) {
  return cuda::profile_device_rows(model, cuda::device_rows(data), options, stream);
}

}  // namespace gradnoise
