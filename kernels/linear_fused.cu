// The fused linear-model profile (see linear_fused.cuh and linear_fused.hpp).
//
// A persistent grid of kFusedBlocksPerSm blocks per SM (policy.hpp); block b
// owns a contiguous run of tiles of kTileRows rows and keeps its own running
// moments (per-slot mean and M2 in device memory, scalars in shared memory).
// Per tile:
//   A  one warp per row: z = W x + b, δ, ℓ, ‖x‖²     (the only read of x from DRAM)
//   B  tile means of δ, centring, per-output sums of u²; then one thread per
//      feature column: ā_j, C_kj and the per-slot sums, merged at once into
//      the block's slots (each slot has one owner thread, so no atomics)
//   C  one warp per row: ‖v‖², ā·v                     (x again, from L1/L2)
// and thread 0 closes the tile (finish_tile). A final pair of kernels merges
// the blocks in index order. All additions happen in an order fixed by the
// data and the grid, so runs are bit-identical on the same GPU.
#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <string>
#include <vector>

#include "gradnoise/error.hpp"
#include "linear_fused.cuh"
#include "losses.hpp"
#include "reduce.cuh"

namespace gradnoise::cuda {
namespace {

using detail::BlockScalars;
using detail::ColumnSums;
using detail::kFusedMaxOutputs;
using detail::MergeWeights;
using detail::RowSums;

constexpr int kTileRows = detail::kFusedTileRows;
constexpr int kFusedWarps = kThreads / kWarp;

struct FusedArgs {
  std::int64_t d;
  int k;
  bool bias;
  bool param_stats;
  const double* weight;  // K×D
  const double* bias_vec;
  std::int64_t rows;       // rows in this launch
  std::int64_t first_row;  // global index of the launch's first row
  std::int64_t tiles_per_block;
  std::int64_t slots;
  double* block_mean;  // grid × slots
  double* block_m2;    // grid × slots, or null
  BlockScalars* block_scalars;
  unsigned long long* first_bad_label;
  unsigned long long* first_non_finite;
};

/// L: the loss type (core/losses.hpp), whose error row lane 0 runs per sample;
/// KB: the output bucket (K ≤ KB); PS: whether the per-parameter variances
/// are computed.
/// Without param stats the kernel must fit kFusedBlocksPerSm blocks per SM
/// (at most 128 registers a thread); with them it takes what it needs.
template <typename T, class L, int KB, bool PS>
__global__ void __launch_bounds__(kThreads, PS ? 1 : detail::kFusedBlocksPerSm) fused_linear_kernel(const T* x, const T* y,
                                                                const std::int32_t* labels,
                                                                FusedArgs a) {
  extern __shared__ double act_mean[];  // D column means of the current tile
  __shared__ double u[kTileRows * kFusedMaxOutputs];
  __shared__ double loss_s[kTileRows], delta_sq_s[kTileRows], x_sq_s[kTileRows];
  __shared__ double u_sq_s[kTileRows], mean_dot_u_s[kTileRows], v_sq_s[kTileRows],
      mean_dot_v_s[kTileRows];
  __shared__ double delta_mean[kFusedMaxOutputs], u_sq_sum[kFusedMaxOutputs];
  __shared__ double tile_loss[2];
  __shared__ BlockScalars scalars;
  using RowReduce = cub::BlockReduce<RowSums, kThreads>;
  using DoubleReduce = cub::BlockReduce<double, kThreads>;
  __shared__ union {
    typename RowReduce::TempStorage rows;
    typename DoubleReduce::TempStorage value;
  } temp;

  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  double* my_mean = a.block_mean + blockIdx.x * a.slots;
  double* my_m2 = PS ? a.block_m2 + blockIdx.x * a.slots : nullptr;
  if (tid == 0) scalars = a.block_scalars[blockIdx.x];
  __syncthreads();

  const std::int64_t tiles = detail::ceil_div(a.rows, kTileRows);
  const std::int64_t tile_begin = blockIdx.x * a.tiles_per_block;
  const std::int64_t tile_end = min(tiles, tile_begin + a.tiles_per_block);
  for (std::int64_t t = tile_begin; t < tile_end; ++t) {
    const std::int64_t first = t * kTileRows;
    const int rows = static_cast<int>(min(static_cast<std::int64_t>(kTileRows), a.rows - first));
    const T* xt = x + first * a.d;

    // A: forward, output errors, losses.
    for (int i = warp; i < rows; i += kFusedWarps) {
      // Indexed by compile-time constants only, so it stays in registers for
      // the loop over the row; the loss's error row gets its own copy.
      double acc[KB] = {};
      double x_sq = 0;
      detail::partial_row_dots<KB>(xt + i * a.d, a.weight, a.d, a.k, lane, kWarp, acc, x_sq);
#pragma unroll
      for (int c = 0; c < KB; ++c) {
        if (c < a.k) acc[c] = warp_sum(acc[c]);  // a.k is uniform: every lane takes part
      }
      x_sq = warp_sum(x_sq);
      if (lane == 0) {
        double* delta = u + i * kFusedMaxOutputs;
        double z[KB];
        bool finite = true;
#pragma unroll
        for (int c = 0; c < KB; ++c) {
          z[c] = acc[c] + (a.bias && c < a.k ? a.bias_vec[c] : 0.0);
          finite = finite && (c >= a.k || isfinite(z[c]));
        }
        const std::int64_t row = a.first_row + first + i;
        double loss = 0;
        bool ok = finite;
        if (!finite) {
          atomicMin(a.first_non_finite, static_cast<unsigned long long>(row));
        } else {
          double target[KB];
          std::int32_t label = 0;
          if constexpr (L::targets == TargetKind::real) {
            for (int c = 0; c < a.k; ++c) target[c] = static_cast<double>(y[(first + i) * a.k + c]);
          } else {
            label = labels[first + i];
          }
          ok = L::target_ok(target, label, a.k);
          if (ok) {
            loss = L::error_row(z, target, label, a.k, delta);
          } else {
            atomicMin(a.first_bad_label, static_cast<unsigned long long>(row));
          }
        }
        if (ok && !isfinite(loss)) {  // a non-finite target (device data is not pre-validated)
          atomicMin(a.first_non_finite, static_cast<unsigned long long>(row));
          ok = false;
        }
        if (!ok) loss = 0;
        double delta_sq = 0;
        for (int c = 0; c < a.k; ++c) {
          if (!ok) delta[c] = 0;  // a flagged row: the run ends in an InputError
          delta_sq += delta[c] * delta[c];
        }
        loss_s[i] = loss;
        delta_sq_s[i] = delta_sq;
        x_sq_s[i] = x_sq;
      }
    }
    __syncthreads();

    // B: error means and centring, loss moments, per-output Σ u².
    if (tid < a.k) {
      double total = 0;
      for (int i = 0; i < rows; ++i) total += u[i * kFusedMaxOutputs + tid];
      delta_mean[tid] = total / rows;
    }
    __syncthreads();
    if (tid < rows) {
      double u_sq = 0, mean_dot_u = 0;
      for (int c = 0; c < a.k; ++c) {
        double& value = u[tid * kFusedMaxOutputs + c];
        value -= delta_mean[c];
        u_sq += value * value;
        mean_dot_u += delta_mean[c] * value;
      }
      u_sq_s[tid] = u_sq;
      mean_dot_u_s[tid] = mean_dot_u;
    }
    if (tid == kThreads - 1) {
      double total = 0;
      for (int i = 0; i < rows; ++i) total += loss_s[i];
      const double mean = total / rows;
      double m2 = 0;
      for (int i = 0; i < rows; ++i) m2 += (loss_s[i] - mean) * (loss_s[i] - mean);
      tile_loss[0] = mean;
      tile_loss[1] = m2;
    }
    __syncthreads();
    if (tid < a.k) {
      double total = 0;
      for (int i = 0; i < rows; ++i) total += u[i * kFusedMaxOutputs + tid] * u[i * kFusedMaxOutputs + tid];
      u_sq_sum[tid] = total;
    }
    __syncthreads();

    // B, per column: merged straight into this block's slots.
    const MergeWeights w = detail::merge_weights(scalars.count, rows);
    double shift = 0, c_norm_sq = 0, act_mean_sq = 0;
    for (std::int64_t j = tid; j < a.d; j += kThreads) {
      ColumnSums<KB, PS> sums;
      detail::column_tile_sums(xt + j, a.d, rows, u, a.k, sums);
      act_mean[j] = sums.act_mean;
      act_mean_sq += sums.act_mean * sums.act_mean;
      shift += detail::merge_column(sums, j, a.d, a.k, rows, delta_mean, u_sq_sum, w, my_mean, my_m2,
                                    c_norm_sq);
    }
    if (a.bias && tid == 0) {
      shift += detail::merge_bias(a.d, a.k, delta_mean, u_sq_sum, w, my_mean, my_m2);
    }
    __syncthreads();

    // C: centred row sums.
    for (int i = warp; i < rows; i += kFusedWarps) {
      double v_sq = 0, mean_dot_v = 0;
      detail::partial_row_centred(xt + i * a.d, act_mean, a.d, lane, kWarp, v_sq, mean_dot_v);
      v_sq = warp_sum(v_sq);
      mean_dot_v = warp_sum(mean_dot_v);
      if (lane == 0) {
        v_sq_s[i] = v_sq;
        mean_dot_v_s[i] = mean_dot_v;
      }
    }
    __syncthreads();

    // Close the tile.
    RowSums mine;
    if (tid < rows) {
      mine.add_row(delta_sq_s[tid], x_sq_s[tid], u_sq_s[tid], mean_dot_u_s[tid], v_sq_s[tid],
                   mean_dot_v_s[tid], a.bias);
    }
    const RowSums row_total = RowReduce(temp.rows).Reduce(mine, Plus{});
    __syncthreads();
    const double shift_total = DoubleReduce(temp.value).Sum(shift);
    __syncthreads();
    const double c_norm_total = DoubleReduce(temp.value).Sum(c_norm_sq);
    __syncthreads();
    const double act_mean_sq_total = DoubleReduce(temp.value).Sum(act_mean_sq);
    if (tid == 0) {
      double delta_mean_sq = 0;
      for (int c = 0; c < a.k; ++c) delta_mean_sq += delta_mean[c] * delta_mean[c];
      detail::finish_tile(scalars, row_total, delta_mean_sq, act_mean_sq_total, a.bias, rows,
                          c_norm_total, shift_total, tile_loss[0], tile_loss[1]);
    }
    __syncthreads();
  }
  if (tid == 0) a.block_scalars[blockIdx.x] = scalars;
}

/// Per slot: the blocks' moments merged in index order; shift[j] collects
/// Σ_b d²·cross for the total M2.
__global__ void merge_block_slots_kernel(int num_blocks, std::int64_t slots, const double* block_mean,
                                         const double* block_m2, const BlockScalars* block_scalars,
                                         double* mean, double* m2, double* shift) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < slots;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t count = 0;
    double mean_j = 0, m2_j = 0, shift_j = 0;
    for (int b = 0; b < num_blocks; ++b) {
      const std::int64_t block_count = block_scalars[b].count;
      if (block_count == 0) continue;
      const MergeWeights w = detail::merge_weights(count, block_count);
      shift_j += detail::merge_block_slot(mean_j, block_m2 != nullptr ? &m2_j : nullptr,
                                          block_mean[b * slots + j],
                                          block_m2 != nullptr ? block_m2[b * slots + j] : 0.0, w);
      count += block_count;
    }
    mean[j] = mean_j;
    if (m2 != nullptr) m2[j] = m2_j;
    shift[j] = shift_j;
  }
}

__global__ void merge_block_scalars_kernel(int num_blocks, const BlockScalars* block_scalars,
                                           const double* shift_total, BlockScalars* total) {
  BlockScalars acc;
  for (int b = 0; b < num_blocks; ++b) {
    if (block_scalars[b].count > 0) detail::merge_block_scalars(acc, block_scalars[b], 0.0);
  }
  acc.m2_total += *shift_total;
  *total = acc;
}

int max_shared_optin() {
  int device = 0, bytes = 0;
  GN_CUDA_CHECK(cudaGetDevice(&device));
  GN_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

/// Calls use(kernel) with the fused kernel compiled for `loss`, K ≤ bucket
/// and param_stats (detail::fused_output_bucket).
template <typename T, typename Use>
void with_fused_kernel(Loss loss, std::int64_t k, bool param_stats, Use&& use) {
  losses::visit_loss(loss, [&](auto l) {
    using L = decltype(l);
    if (param_stats) {
      use(fused_linear_kernel<T, L, kFusedMaxOutputs, true>);
      return;
    }
    switch (detail::fused_output_bucket(k, false)) {
      case 1: use(fused_linear_kernel<T, L, 1, false>); break;
      case 2: use(fused_linear_kernel<T, L, 2, false>); break;
      case 4: use(fused_linear_kernel<T, L, 4, false>); break;
      case 8: use(fused_linear_kernel<T, L, 8, false>); break;
      case kFusedMaxOutputs: use(fused_linear_kernel<T, L, kFusedMaxOutputs, false>); break;
      default: throw RuntimeError("internal: the fused kernel takes 1 to 16 outputs");
    }
  });
}

}  // namespace

bool use_fused_linear(const Model& model, const ProfileOptions& options) {
  return detail::use_fused_linear(model, options, max_shared_optin());
}

FusedLinear::FusedLinear(const Model& model, const ProfileOptions& options, cudaStream_t stream)
    : model_(model), options_(options), stream_(stream) {
  const Layer& layer = model.layers.at(0);
  int device = 0, sms = 0;
  GN_CUDA_CHECK(cudaGetDevice(&device));
  GN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  num_blocks_ = detail::kFusedBlocksPerSm * sms;
  slots_ = layer.num_params();
  shared_bytes_ = static_cast<std::size_t>(layer.in) * sizeof(double);
  if (shared_bytes_ > (48u << 10)) {
    const auto allow = [&](auto kernel) {
      GN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(shared_bytes_)));
    };
    with_fused_kernel<float>(options.loss, layer.out, options.param_stats, allow);
    with_fused_kernel<double>(options.loss, layer.out, options.param_stats, allow);
  }
  weight_ = DeviceBuffer<double>(layer.weight.size());
  GN_CUDA_CHECK(cudaMemcpyAsync(weight_.data(), layer.weight.data(),
                                layer.weight.size() * sizeof(double), cudaMemcpyHostToDevice, stream));
  if (layer.has_bias()) {
    bias_ = DeviceBuffer<double>(layer.bias.size());
    GN_CUDA_CHECK(cudaMemcpyAsync(bias_.data(), layer.bias.data(), layer.bias.size() * sizeof(double),
                                  cudaMemcpyHostToDevice, stream));
  }
  const auto per_grid = static_cast<std::size_t>(num_blocks_) * static_cast<std::size_t>(slots_);
  block_mean_ = DeviceBuffer<double>(per_grid);
  GN_CUDA_CHECK(cudaMemsetAsync(block_mean_.data(), 0, per_grid * sizeof(double), stream));
  if (options.param_stats) {
    block_m2_ = DeviceBuffer<double>(per_grid);
    GN_CUDA_CHECK(cudaMemsetAsync(block_m2_.data(), 0, per_grid * sizeof(double), stream));
  }
  block_scalars_ = DeviceBuffer<BlockScalars>(static_cast<std::size_t>(num_blocks_));
  GN_CUDA_CHECK(cudaMemsetAsync(block_scalars_.data(), 0, num_blocks_ * sizeof(BlockScalars), stream));
  flags_ = DeviceBuffer<unsigned long long>(2);
  const unsigned long long none[2] = {kNoRow, kNoRow};
  GN_CUDA_CHECK(cudaMemcpyAsync(flags_.data(), none, sizeof(none), cudaMemcpyHostToDevice, stream));
  // The host arrays above are pageable and `none` lives on this stack frame.
  GN_CUDA_CHECK(cudaStreamSynchronize(stream));
}

template <typename T>
void FusedLinear::accumulate(const T* x, const T* y, const std::int32_t* labels, std::int64_t rows,
                             std::int64_t first_row) {
  if (rows <= 0) return;
  const Layer& layer = model_.layers[0];
  FusedArgs args{};
  args.d = layer.in;
  args.k = static_cast<int>(layer.out);
  args.bias = layer.has_bias();
  args.param_stats = options_.param_stats;
  args.weight = weight_.data();
  args.bias_vec = bias_.data();
  args.rows = rows;
  args.first_row = first_row;
  args.tiles_per_block = detail::ceil_div(detail::ceil_div(rows, kTileRows), num_blocks_);
  args.slots = slots_;
  args.block_mean = block_mean_.data();
  args.block_m2 = block_m2_.data();
  args.block_scalars = block_scalars_.data();
  args.first_bad_label = flags_.data();
  args.first_non_finite = flags_.data() + 1;
  with_fused_kernel<T>(options_.loss, layer.out, options_.param_stats, [&](auto kernel) {
    kernel<<<num_blocks_, kThreads, shared_bytes_, stream_>>>(x, y, labels, args);
  });
  GN_CUDA_CHECK(cudaGetLastError());
}

template void FusedLinear::accumulate<float>(const float*, const float*, const std::int32_t*,
                                             std::int64_t, std::int64_t);
template void FusedLinear::accumulate<double>(const double*, const double*, const std::int32_t*,
                                              std::int64_t, std::int64_t);

void FusedLinear::finish(Profile& result) {
  DeviceBuffer<double> mean(static_cast<std::size_t>(slots_)), shift(static_cast<std::size_t>(slots_));
  DeviceBuffer<double> m2;
  if (options_.param_stats) m2 = DeviceBuffer<double>(static_cast<std::size_t>(slots_));
  merge_block_slots_kernel<<<grid_for(slots_), kThreads, 0, stream_>>>(
      num_blocks_, slots_, block_mean_.data(), block_m2_.data(), block_scalars_.data(), mean.data(),
      m2.data(), shift.data());
  GN_CUDA_CHECK(cudaGetLastError());
  DeviceBuffer<double> partial(kMaxReduceBlocks), shift_total(1);
  reduce(slots_, LoadArray<double>{shift.data()}, partial.data(), shift_total.data(), stream_);
  DeviceBuffer<BlockScalars> total(1);
  merge_block_scalars_kernel<<<1, 1, 0, stream_>>>(num_blocks_, block_scalars_.data(),
                                                   shift_total.data(), total.data());
  GN_CUDA_CHECK(cudaGetLastError());

  unsigned long long flags[2];
  BlockScalars scalars;
  std::vector<double> host_mean(static_cast<std::size_t>(slots_)), host_m2;
  GN_CUDA_CHECK(cudaMemcpyAsync(flags, flags_.data(), sizeof(flags), cudaMemcpyDeviceToHost, stream_));
  GN_CUDA_CHECK(cudaMemcpyAsync(&scalars, total.data(), sizeof(scalars), cudaMemcpyDeviceToHost, stream_));
  GN_CUDA_CHECK(cudaMemcpyAsync(host_mean.data(), mean.data(), host_mean.size() * sizeof(double),
                                cudaMemcpyDeviceToHost, stream_));
  if (options_.param_stats) {
    host_m2.resize(static_cast<std::size_t>(slots_));
    GN_CUDA_CHECK(cudaMemcpyAsync(host_m2.data(), m2.data(), host_m2.size() * sizeof(double),
                                  cudaMemcpyDeviceToHost, stream_));
  }
  GN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  throw_if_flagged(flags[0], flags[1], model_.output_dim(), options_.loss);

  const double inv_n = 1.0 / static_cast<double>(scalars.count);
  result.n = scalars.count;
  result.num_params = slots_;
  result.loss = scalars.loss_mean;
  result.loss_var = scalars.loss_m2 * inv_n;
  LayerProfile lp;
  lp.name = Model::layer_name(0);
  lp.num_params = slots_;
  for (double g : host_mean) lp.grad_norm_sq += g * g;
  lp.trace_cov = scalars.m2_total * inv_n;
  lp.mean_sample_grad_norm_sq = scalars.sum_norm_sq * inv_n;
  result.layers.push_back(lp);
  result.param_mean = std::move(host_mean);
  for (double v : host_m2) result.param_var.push_back(v * inv_n);
}

}  // namespace gradnoise::cuda
