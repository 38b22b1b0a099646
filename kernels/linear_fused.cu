// The fused linear-model profile (see linear_fused.cuh and linear_fused.hpp).
//
// A persistent grid of up to kFusedBlocksPerSm blocks per SM (as many as the
// shared-memory layout lets fit, policy.hpp fused_layout); block b takes a
// contiguous run of tiles per launch. Tiles of X are staged into shared
// memory with asynchronous copies, the next one in flight while the current
// one is worked on, so X is read from device memory exactly once, in 16-byte
// transactions. Per launch the block's first tile gives the shift (a₀, δ₀,
// ℓ₀, linear_fused.hpp); per tile:
//   A  forward: each warp takes RW rows at once (every weight read from shared
//      memory serves RW rows): z = W x + b, ‖x‖², ‖v‖², a₀·v; then lane l of
//      the warp runs the loss for the warp's l-th row (the rows' losses run
//      side by side, not one after another): δ, u = δ − δ₀, the row scalars
//   B  one thread per feature column: Σ v, S = Σ u vᵀ (Q = Σ h² with param
//      stats), added in registers over the tile, then once into the block's
//      sums (shared memory, or the block's slab in L2 when they do not fit)
// with two barriers per tile. At the end of the launch every slot is closed
// and merged into the block's running moments once, the per-thread row sums
// are reduced once, and thread 0 closes the block's scalars. A final pair of
// kernels merges the blocks in index order. All additions happen in an order
// fixed by the data, the layout and the grid, so runs are bit-identical on
// the same GPU.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_pipeline_primitives.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "gradnoise/error.hpp"
#include "linear_fused.cuh"
#include "losses.hpp"
#include "reduce.cuh"

namespace gradnoise::cuda {
namespace {

using detail::BlockScalars;
using detail::FusedLayout;
using detail::FusedTotals;
using detail::kTotalsDoubles;
using detail::kFusedMaxOutputs;
using detail::kFusedRowFields;
using detail::LaunchSums;
using detail::MergeWeights;
using detail::ShiftedErrors;

constexpr int kFusedWarps = kThreads / kWarp;
// A tile row's fields after z (layout.rows), and the small area's parts (doubles).
constexpr int kXSq = kFusedMaxOutputs, kVSq = kXSq + 1, kShiftDotV = kXSq + 2, kRowLoss = kXSq + 3;
static_assert(kRowLoss < kFusedRowFields);
constexpr int kDelta0 = 0, kBiasVec = kFusedMaxOutputs, kUSum = 2 * kFusedMaxOutputs,
              kUSq = 3 * kFusedMaxOutputs, kLoss0 = 4 * kFusedMaxOutputs;

struct FusedArgs {
  std::int64_t d;
  int k;
  bool bias;
  const double* weight;  // K×D
  const double* bias_vec;
  std::int64_t rows;       // rows in this launch
  std::int64_t first_row;  // global index of the launch's first row
  std::int64_t tiles_per_block;
  std::int64_t slots;
  bool fresh;  // the profile's first launch: the blocks' running moments start empty
  FusedLayout layout;
  double* sums;  // grid × fused_sums_rows × D, when the layout keeps the sums out of shared memory
  double* block_mean;  // grid × slots
  double* block_m2;    // grid × slots, or null
  BlockScalars* block_scalars;
  unsigned long long* first_bad_label;
  unsigned long long* first_non_finite;
};

/// This thread's share of the copy of `count` values at src (device memory)
/// to dst (shared memory, 16-byte aligned), queued asynchronously and
/// committed as one group: 16-byte copies when src is 16-byte aligned (always
/// for whole tiles of resident data whose rows are a multiple of 16 bytes),
/// the values one by one otherwise.
template <typename T>
__device__ void stage_tile(T* dst, const T* src, std::int64_t count) {
  std::int64_t done = 0;
  if (reinterpret_cast<std::uintptr_t>(src) % 16 == 0) {
    constexpr int kPer = 16 / sizeof(T);
    const std::int64_t vectors = count / kPer;
    for (std::int64_t i = threadIdx.x; i < vectors; i += kThreads) {
      __pipeline_memcpy_async(dst + i * kPer, src + i * kPer, 16);
    }
    done = vectors * kPer;
  }
  for (std::int64_t i = done + threadIdx.x; i < count; i += kThreads) {
    __pipeline_memcpy_async(dst + i, src + i, sizeof(T));
  }
  __pipeline_commit();
}

/// Step A for a tile of `rows` rows whose first row is launch row `first`.
/// With `pilot`, leaves δ in `errors` and the loss in the row fields (the
/// shift is not known yet); otherwise writes u = δ − δ₀ over δ and adds the
/// row scalars and the shifted loss to `mine`.
template <typename T, class L, int KB>
__device__ void forward_rows(const T* tile, int rows, std::int64_t first, const T* y,
                             const std::int32_t* labels, const FusedArgs& a, const double* weight,
                             const double* shift, double* small, double* errors, double* fields,
                             bool pilot, LaunchSums& mine) {
  constexpr int RW = detail::kFusedRowsAtOnce;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int g = warp; g * RW < rows; g += kFusedWarps) {
    const int in_group = min(RW, rows - g * RW);
    double z[RW][KB] = {};
    double x_sq[RW] = {}, v_sq[RW] = {}, shift_dot_v[RW] = {};
    detail::partial_rows<KB, RW>(tile + g * RW * a.d, in_group, weight, shift, a.d, a.k, lane, kWarp, z,
                                 x_sq, v_sq, shift_dot_v);
#pragma unroll
    for (int r = 0; r < RW; ++r) {
      if (r >= in_group) continue;  // uniform over the warp: every lane takes part in the sums
#pragma unroll
      for (int c = 0; c < KB; ++c) {
        if (c < a.k) z[r][c] = warp_sum(z[r][c]);
      }
      x_sq[r] = warp_sum(x_sq[r]);
      v_sq[r] = warp_sum(v_sq[r]);
      shift_dot_v[r] = warp_sum(shift_dot_v[r]);
      if (lane == 0) {
        double* f = fields + (g * RW + r) * kFusedRowFields;
#pragma unroll
        for (int c = 0; c < KB; ++c) {
          if (c < a.k) f[c] = z[r][c];
        }
        f[kXSq] = x_sq[r];
        f[kVSq] = v_sq[r];
        f[kShiftDotV] = shift_dot_v[r];
      }
    }
  }
  __syncwarp();

  // The loss: lane l takes the warp's l-th row (group warp + (l / RW)·warps).
  const int i = detail::loss_lane_row(warp, lane, rows, kFusedWarps, RW);
  if (i < 0) return;
  double* f = fields + i * kFusedRowFields;
  double* delta = errors + i * kFusedMaxOutputs;
  double z[KB];
  bool finite = true;
#pragma unroll
  for (int c = 0; c < KB; ++c) {
    z[c] = c < a.k ? f[c] + small[kBiasVec + c] : 0.0;
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
  if (!ok) {  // a flagged row: the run ends in an InputError
    loss = 0;
    for (int c = 0; c < a.k; ++c) delta[c] = 0;
  }
  if (pilot) {
    f[kRowLoss] = loss;
    return;
  }
  const ShiftedErrors e = detail::shift_errors(delta, small + kDelta0, a.k);
  mine.rows.add_row(e.delta_sq, f[kXSq], e.u_sq, e.shift_dot_u, f[kVSq], f[kShiftDotV], a.bias);
  const double shifted_loss = loss - small[kLoss0];
  mine.loss_sum += shifted_loss;
  mine.loss_sq += shifted_loss * shifted_loss;
}

/// L: the loss type (core/losses.hpp), whose error row a lane runs per
/// sample; KB: the output bucket (K ≤ KB); PS: whether the per-parameter
/// variances are computed. Without param stats and for K ≤ 8 the kernel must
/// fit kFusedBlocksPerSm blocks per SM (at most 128 registers a thread); the
/// widest bucket and param stats take the registers they need (one block per
/// SM; their layouts rarely fit two anyway). The grid takes the smaller of the
/// layout's blocks per SM and what the occupancy calculator allows.
template <typename T, class L, int KB, bool PS>
__global__ void __launch_bounds__(kThreads, PS || KB > 8 ? 1 : detail::kFusedBlocksPerSm)
    fused_linear_kernel(const T* x, const T* y, const std::int32_t* labels, FusedArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  using Reduce = cub::BlockReduce<LaunchSums, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  static_assert(sizeof(typename Reduce::TempStorage) <= detail::kFusedStaticSharedBytes);

  const std::int64_t tiles_all = detail::ceil_div(a.rows, a.layout.tile_rows);
  const std::int64_t tile_begin = blockIdx.x * a.tiles_per_block;
  const std::int64_t tile_end = min(tiles_all, tile_begin + a.tiles_per_block);
  if (tile_begin >= tile_end) {  // an idle block: its moments stay as they are (none, when fresh)
    if (a.fresh && threadIdx.x == 0) a.block_scalars[blockIdx.x] = BlockScalars{};
    return;
  }

  const FusedLayout& lay = a.layout;
  const int tid = threadIdx.x, k = a.k;
  const std::int64_t d = a.d, tile_rows = lay.tile_rows;
  T* stage[2] = {reinterpret_cast<T*>(smem + lay.stage[0]), reinterpret_cast<T*>(smem + lay.stage[1])};
  double* shift = reinterpret_cast<double*>(smem + lay.shift);
  double* errors = reinterpret_cast<double*>(smem + lay.errors);
  double* fields = reinterpret_cast<double*>(smem + lay.rows);
  double* small = reinterpret_cast<double*>(smem + lay.small);
  const std::int64_t sums_rows = detail::fused_sums_rows(k, PS);
  double* sums = lay.sums_shared ? reinterpret_cast<double*>(smem + lay.sums)
                                 : a.sums + blockIdx.x * sums_rows * d;
  const auto rows_of = [&](std::int64_t t) {
    return static_cast<int>(min(tile_rows, a.rows - t * tile_rows));
  };

  // The first tile's copy overlaps the set-up.
  stage_tile(stage[0], x + tile_begin * tile_rows * d, rows_of(tile_begin) * d);
  const double* weight = a.weight;
  if (lay.weights_shared) {
    double* weight_shared = reinterpret_cast<double*>(smem + lay.weights);
    for (std::int64_t i = tid; i < k * d; i += kThreads) weight_shared[i] = a.weight[i];
    weight = weight_shared;
  }
  if (tid < kFusedMaxOutputs) {
    small[kBiasVec + tid] = a.bias && tid < k ? a.bias_vec[tid] : 0.0;
    small[kDelta0 + tid] = 0;
  }
  // Each thread owns feature columns j ≡ tid (mod kThreads) of the sums.
  for (std::int64_t j = tid; j < d; j += kThreads) {
    shift[j] = 0;
    for (std::int64_t r = 0; r < sums_rows; ++r) sums[r * d + j] = 0;
  }
  LaunchSums mine;
  double u_sum = 0, u_sq = 0;  // output tid's Σu and Σu² (threads < K)
  __syncthreads();

  for (std::int64_t t = tile_begin, it = 0; t < tile_end; ++t, ++it) {
    const T* tile = stage[it & 1];
    if (t + 1 < tile_end) {
      stage_tile(stage[(it + 1) & 1], x + (t + 1) * tile_rows * d, rows_of(t + 1) * d);
    } else {
      __pipeline_commit();  // an empty group keeps the count of groups in flight the same
    }
    __pipeline_wait_prior(1);
    __syncthreads();
    const int rows = rows_of(t);
    const std::int64_t first = t * tile_rows;

    if (it == 0) {  // the shift: this tile's means
      forward_rows<T, L, KB>(tile, rows, first, y, labels, a, weight, shift, small, errors, fields, true,
                             mine);
      __syncthreads();
      for (std::int64_t j = tid; j < d; j += kThreads) shift[j] = detail::column_mean(tile + j, d, rows);
      if (tid < k) {
        double total = 0;
        for (int i = 0; i < rows; ++i) total += errors[i * kFusedMaxOutputs + tid];
        small[kDelta0 + tid] = total / rows;
      }
      if (tid == kThreads - 1) {
        double total = 0;
        for (int i = 0; i < rows; ++i) total += fields[i * kFusedRowFields + kRowLoss];
        small[kLoss0] = total / rows;
      }
      __syncthreads();
    }

    forward_rows<T, L, KB>(tile, rows, first, y, labels, a, weight, shift, small, errors, fields, false,
                           mine);
    __syncthreads();

    for (std::int64_t j = tid; j < d; j += kThreads) {
      detail::column_tile<KB, PS>(tile + j, d, rows, shift[j], errors, small + kDelta0, k, sums + j, d);
    }
    if (tid < k) {
      for (int i = 0; i < rows; ++i) {
        const double u = errors[i * kFusedMaxOutputs + tid];
        u_sum += u;
        u_sq += u * u;
      }
    }
    __syncthreads();
  }

  // Close the launch: every slot merged into the block's running moments.
  if (tid < k) {
    small[kUSum + tid] = u_sum;
    small[kUSq + tid] = u_sq;
  }
  __syncthreads();
  const std::int64_t n = min(tile_end * tile_rows, a.rows) - tile_begin * tile_rows;
  const double m = static_cast<double>(n);
  // A block's first rows of the profile (the first launch, or an earlier
  // launch left it idle) start its moments from zero.
  const std::int64_t count_before = a.fresh ? 0 : a.block_scalars[blockIdx.x].count;
  const MergeWeights w = detail::merge_weights(count_before, n);
  double* my_mean = a.block_mean + blockIdx.x * a.slots;
  double* my_m2 = PS ? a.block_m2 + blockIdx.x * a.slots : nullptr;
  const auto start_slot = [&](std::int64_t slot) {
    if (count_before > 0) return;
    my_mean[slot] = 0;
    if (PS) my_m2[slot] = 0;
  };
  const std::int64_t v_row = sums_rows - 1;
  for (std::int64_t j = tid; j < d; j += kThreads) {
    const double a0 = shift[j];
    mine.shift_sq += a0 * a0;
#pragma unroll
    for (int c = 0; c < KB; ++c) {
      if (c >= k) continue;
      const std::int64_t slot = c * d + j;
      start_slot(slot);
      detail::finish_slot(sums[c * d + j], PS ? sums[(k + c) * d + j] : 0.0, sums[v_row * d + j],
                          small[kUSum + c], a0, small[kDelta0 + c], m, w, my_mean[slot],
                          PS ? my_m2 + slot : nullptr, mine);
    }
  }
  if (a.bias && tid < k) {
    const std::int64_t slot = k * d + tid;
    start_slot(slot);
    detail::finish_bias_slot(small[kUSum + tid], small[kUSq + tid], small[kDelta0 + tid], m, w,
                             my_mean[slot], PS ? my_m2 + slot : nullptr, mine);
  }
  const LaunchSums total = Reduce(temp).Reduce(mine, Plus{});
  if (tid == 0) {
    double delta0_sq = 0;
    for (int c = 0; c < k; ++c) delta0_sq += small[kDelta0 + c] * small[kDelta0 + c];
    BlockScalars scalars = count_before > 0 ? a.block_scalars[blockIdx.x] : BlockScalars{};
    detail::finish_launch(scalars, total, delta0_sq, a.bias, n, small[kLoss0]);
    a.block_scalars[blockIdx.x] = scalars;
  }
}

/// Most blocks a fused grid may have (the merge stages the blocks' counts,
/// weights and scalars in shared memory): two per SM on up to 256 SMs.
constexpr int kMaxFusedGrid = 512;
constexpr int kMergeItems = kMaxFusedGrid / kThreads;

/// The blocks merged in index order, in one launch. First every launch block
/// stages the blocks' counts and, from their prefix (one block scan), the
/// weights of each block's step in the fold — the same for every slot, so no
/// slot waits on a division or a dependent load per block. Per slot (a thread
/// each): mean and M2 over the blocks, and Σ_b d²·cross for the total M2,
/// summed over the launch block's slots into partial[block]. The last block to
/// finish (a counter, after a fence) adds the partials in block order, merges
/// the blocks' scalars (staged in shared memory first), copies the flags
/// beside them and re-arms the flags and the counter for the next profile.
/// Every order is fixed by the slot and block counts, so the result is
/// bit-identical run to run.
__global__ void __launch_bounds__(kThreads)
    merge_blocks_kernel(int num_blocks, std::int64_t slots, const double* block_mean,
                        const double* block_m2, const BlockScalars* block_scalars, FusedTotals* totals,
                        double* mean, double* m2, double* partial, unsigned int* done,
                        unsigned long long* flags) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  using Scan = cub::BlockScan<std::int64_t, kThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } temp;
  __shared__ MergeWeights weights[kMaxFusedGrid];
  __shared__ bool present[kMaxFusedGrid];
  __shared__ BlockScalars staged[kMaxFusedGrid];
  __shared__ bool last;

  // The fold's weights: block b joins the blocks before it (their count, a
  // prefix over the blocks in index order); a block without rows is skipped.
  std::int64_t counts[kMergeItems], before[kMergeItems];
  for (int i = 0; i < kMergeItems; ++i) {
    const int b = threadIdx.x * kMergeItems + i;
    counts[i] = b < num_blocks ? block_scalars[b].count : 0;
  }
  Scan(temp.scan).ExclusiveSum(counts, before);
  for (int i = 0; i < kMergeItems; ++i) {
    const int b = threadIdx.x * kMergeItems + i;
    if (b >= num_blocks) continue;
    present[b] = counts[i] > 0;
    weights[b] = counts[i] > 0 ? detail::merge_weights(before[i], counts[i]) : MergeWeights{0, 0};
  }
  __syncthreads();

  double shift = 0;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; j < slots;
       j += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    double mean_j = 0, m2_j = 0;
#pragma unroll 4
    for (int b = 0; b < num_blocks; ++b) {
      if (!present[b]) continue;
      shift += detail::merge_block_slot(mean_j, block_m2 != nullptr ? &m2_j : nullptr,
                                        block_mean[b * slots + j],
                                        block_m2 != nullptr ? block_m2[b * slots + j] : 0.0, weights[b]);
    }
    mean[j] = mean_j;
    if (m2 != nullptr) m2[j] = m2_j;
  }
  __syncthreads();  // temp is reused by the reduction
  const double block_shift = Reduce(temp.reduce).Sum(shift);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = block_shift;
    __threadfence();
    last = atomicAdd(done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int b = threadIdx.x; b < num_blocks; b += kThreads) staged[b] = block_scalars[b];
  __syncthreads();
  if (threadIdx.x != 0) return;
  double shift_total = 0;
  for (unsigned int b = 0; b < gridDim.x; ++b) shift_total += __ldcg(partial + b);
  BlockScalars acc;
  for (int b = 0; b < num_blocks; ++b) {
    if (present[b]) detail::merge_block_scalars(acc, staged[b], 0.0);
  }
  acc.m2_total += shift_total;
  totals->scalars = acc;
  totals->flags[0] = flags[0];
  totals->flags[1] = flags[1];
  flags[0] = kNoRow;
  flags[1] = kNoRow;
  *done = 0;
}

int device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  GN_CUDA_CHECK(cudaGetDevice(&device));
  GN_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

int max_shared_optin() { return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin); }

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
  return detail::use_fused_linear(model, options, max_shared_optin(),
                                  device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor));
}

FusedLinear::FusedLinear(const Model& model, const ProfileOptions& options, cudaStream_t stream,
                         bool upload_now)
    : model_(&model), options_(options), stream_(stream) {
  const Layer& layer = model.layers.at(0);
  d_ = layer.in;
  k_ = layer.out;
  bias_used_ = layer.has_bias();
  sms_ = device_attribute(cudaDevAttrMultiProcessorCount);
  const std::int64_t per_block = max_shared_optin();
  const std::int64_t per_sm = device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor);
  layout_float_ = detail::fused_layout(d_, k_, options.param_stats, sizeof(float), per_block, per_sm);
  layout_double_ = detail::fused_layout(d_, k_, options.param_stats, sizeof(double), per_block, per_sm);
  if (layout_float_.tile_rows == 0 || layout_double_.tile_rows == 0) {
    throw RuntimeError("internal: the fused kernel was chosen for a layer whose tiles do not fit");
  }
  // Each kernel may take its layout's shared memory, and runs as many blocks
  // per SM as both the layout and its registers allow (a persistent grid
  // must be resident at once, or its second wave doubles the time).
  const auto prepare = [&](detail::FusedLayout& layout) {
    return [&](auto kernel) {
      // The attribute belongs to the kernel, for the whole process, and
      // other FusedLinear objects (other shapes) launch the same kernel: allow
      // all the device offers, never just this layout, so setting it here
      // cannot shrink what a kept object launches with.
      cudaFuncAttributes attributes{};
      GN_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
      const int allowed = static_cast<int>(per_block) - static_cast<int>(attributes.sharedSizeBytes);
      if (layout.shared_bytes > allowed) {
        throw RuntimeError("internal: the fused kernel's layout needs more shared memory than the device has");
      }
      GN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, allowed));
      int resident = 0;
      GN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kThreads,
                                                                  static_cast<std::size_t>(layout.shared_bytes)));
      if (resident < 1) throw RuntimeError("internal: the fused kernel cannot run one block per SM");
      layout.blocks_per_sm = std::min(layout.blocks_per_sm, resident);
    };
  };
  with_fused_kernel<float>(options.loss, layer.out, options.param_stats, prepare(layout_float_));
  with_fused_kernel<double>(options.loss, layer.out, options.param_stats, prepare(layout_double_));
  num_blocks_ = std::max(layout_float_.blocks_per_sm, layout_double_.blocks_per_sm) * sms_;
  if (num_blocks_ > kMaxFusedGrid) {
    throw RuntimeError("internal: the fused grid has " + std::to_string(num_blocks_) +
                       " blocks; the merge stages at most " + std::to_string(kMaxFusedGrid));
  }
  slots_ = layer.num_params();
  // W then b, uploaded from one pinned buffer in one copy.
  weight_ = DeviceBuffer<double>(static_cast<std::size_t>(k_ * d_ + k_));
  upload_ = PinnedBuffer<double>(weight_.size());
  if (!layout_float_.sums_shared || !layout_double_.sums_shared) {
    sums_ = DeviceBuffer<double>(static_cast<std::size_t>(num_blocks_) *
                                 static_cast<std::size_t>(detail::fused_sums_rows(k_, options.param_stats) * d_));
  }
  const auto per_grid = static_cast<std::size_t>(num_blocks_) * static_cast<std::size_t>(slots_);
  block_mean_ = DeviceBuffer<double>(per_grid);
  if (options.param_stats) block_m2_ = DeviceBuffer<double>(per_grid);
  block_scalars_ = DeviceBuffer<BlockScalars>(static_cast<std::size_t>(num_blocks_));
  flags_ = DeviceBuffer<unsigned long long>(2);
  // The totals, the slots' means and (with param stats) M2s, downloaded in one copy.
  const std::size_t results = kTotalsDoubles + static_cast<std::size_t>(slots_) * (options.param_stats ? 2 : 1);
  results_ = DeviceBuffer<double>(results);
  download_ = PinnedBuffer<double>(results);
  partial_ = DeviceBuffer<double>(static_cast<std::size_t>(grid_for(slots_)));
  done_ = DeviceBuffer<unsigned int>(1);
  static_assert(kNoRow == ~0ull, "kNoRow is all bits set: a byte fill of 0xFF");
  GN_CUDA_CHECK(cudaMemsetAsync(flags_.data(), 0xFF, 2 * sizeof(unsigned long long), stream_));
  GN_CUDA_CHECK(cudaMemsetAsync(done_.data(), 0, sizeof(unsigned int), stream_));
  if (upload_now) reset(model);
}

FusedLinear::~FusedLinear() {
  // Queued copies may still read or write the pinned buffers when an
  // exception unwinds: let them finish before the buffers go.
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
}

bool FusedLinear::fits(const Model& model, const ProfileOptions& options) const {
  if (model.num_layers() != 1) return false;
  const Layer& layer = model.layers[0];
  return layer.in == d_ && layer.out == k_ && layer.has_bias() == bias_used_ &&
         options.loss == options_.loss && options.param_stats == options_.param_stats;
}

void FusedLinear::reset(const Model& model) {
  stage(model);
  enqueue_upload();
}

void FusedLinear::stage(const Model& model) {
  model_ = &model;
  const Layer& layer = model.layers.at(0);
  // The pinned buffer may be refilled once its last copy has left: collect()
  // synchronises the stream; a profile that did not get there waits here.
  // The blocks' moments need no zeroing: the first launch writes them
  // (fresh_), and the flags were re-armed by the last merge.
  if (pending_) GN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  pending_ = true;
  std::copy(layer.weight.begin(), layer.weight.end(), upload_.data());
  std::fill_n(upload_.data() + k_ * d_, k_, 0.0);
  if (layer.has_bias()) std::copy(layer.bias.begin(), layer.bias.end(), upload_.data() + k_ * d_);
  fresh_ = true;
  launched_blocks_ = 0;
}

void FusedLinear::enqueue_upload() {
  GN_CUDA_CHECK(cudaMemcpyAsync(weight_.data(), upload_.data(), upload_.size() * sizeof(double),
                                cudaMemcpyHostToDevice, stream_));
}

template <typename T>
void FusedLinear::profile_rows(const Model& model, const T* x, const T* y, const std::int32_t* labels,
                               std::int64_t rows, bool replay, Profile& result) {
  stage(model);
  const auto enqueue = [&] {
    enqueue_upload();
    accumulate(x, y, labels, rows, 0);
    enqueue_merge();
  };
  // A session's second call on the same rows captures the call's four stream
  // operations once; every later one is one graph launch (the weights change
  // in the pinned buffer the graph copies from, never in the graph).
  const GraphKey key{x, y, labels, rows, sizeof(T)};
  const bool same_rows = replay && key == graph_key_;
  if (!same_rows) graph_ = CapturedGraph();
  if (same_rows && !graph_ && !(key == uncapturable_)) {
    try {
      graph_ = CapturedGraph(stream_, enqueue);
    } catch (const RuntimeError&) {
      // Capture is an optimisation: where the driver refuses it, these rows
      // run launch by launch from now on (a real fault shows there).
      uncapturable_ = key;
      stage(model);
    }
  }
  if (graph_) {
    graph_.launch(stream_);
  } else {
    enqueue();
  }
  if (replay) graph_key_ = key;
  collect(result);
}

template void FusedLinear::profile_rows<float>(const Model&, const float*, const float*, const std::int32_t*,
                                               std::int64_t, bool, Profile&);
template void FusedLinear::profile_rows<double>(const Model&, const double*, const double*,
                                                const std::int32_t*, std::int64_t, bool, Profile&);

template <typename T>
void FusedLinear::accumulate(const T* x, const T* y, const std::int32_t* labels, std::int64_t rows,
                             std::int64_t first_row) {
  if (rows <= 0) return;
  const Layer& layer = model_->layers[0];
  const detail::FusedLayout& layout = std::is_same_v<T, float> ? layout_float_ : layout_double_;
  // No more blocks than tiles: a small profile's merge then folds only the
  // blocks that have rows.
  const int grid = static_cast<int>(std::min<std::int64_t>(layout.blocks_per_sm * sms_,
                                                           detail::ceil_div(rows, layout.tile_rows)));
  FusedArgs args{};
  args.d = layer.in;
  args.k = static_cast<int>(layer.out);
  args.bias = layer.has_bias();
  args.weight = weight_.data();
  args.bias_vec = weight_.data() + k_ * d_;
  args.rows = rows;
  args.first_row = first_row;
  args.tiles_per_block = detail::ceil_div(detail::ceil_div(rows, layout.tile_rows), grid);
  args.slots = slots_;
  args.fresh = fresh_;
  args.layout = layout;
  args.sums = sums_.data();
  args.block_mean = block_mean_.data();
  args.block_m2 = block_m2_.data();
  args.block_scalars = block_scalars_.data();
  args.first_bad_label = flags_.data();
  args.first_non_finite = flags_.data() + 1;
  with_fused_kernel<T>(options_.loss, layer.out, options_.param_stats, [&](auto kernel) {
    kernel<<<grid, kThreads, layout.shared_bytes, stream_>>>(x, y, labels, args);
  });
  GN_CUDA_CHECK(cudaGetLastError());
  fresh_ = false;
  launched_blocks_ = std::max(launched_blocks_, grid);
}

template void FusedLinear::accumulate<float>(const float*, const float*, const std::int32_t*,
                                             std::int64_t, std::int64_t);
template void FusedLinear::accumulate<double>(const double*, const double*, const std::int32_t*,
                                              std::int64_t, std::int64_t);

void FusedLinear::finish(Profile& result) {
  enqueue_merge();
  collect(result);
}

void FusedLinear::enqueue_merge() {
  if (launched_blocks_ == 0) throw RuntimeError("internal: a fused profile finished without rows");
  auto* totals = reinterpret_cast<FusedTotals*>(results_.data());
  double* mean = results_.data() + kTotalsDoubles;
  double* m2 = options_.param_stats ? mean + slots_ : nullptr;
  merge_blocks_kernel<<<static_cast<int>(partial_.size()), kThreads, 0, stream_>>>(
      launched_blocks_, slots_, block_mean_.data(), block_m2_.data(), block_scalars_.data(), totals, mean,
      m2, partial_.data(), done_.data(), flags_.data());
  GN_CUDA_CHECK(cudaGetLastError());
  GN_CUDA_CHECK(cudaMemcpyAsync(download_.data(), results_.data(), results_.size() * sizeof(double),
                                cudaMemcpyDeviceToHost, stream_));
}

void FusedLinear::collect(Profile& result) {
  GN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  pending_ = false;
  FusedTotals host_totals;
  std::memcpy(&host_totals, download_.data(), sizeof(host_totals));
  const BlockScalars& scalars = host_totals.scalars;
  throw_if_flagged(host_totals.flags[0], host_totals.flags[1], model_->output_dim(), options_.loss);
  const double* host_mean = download_.data() + kTotalsDoubles;

  const double inv_n = 1.0 / static_cast<double>(scalars.count);
  result.n = scalars.count;
  result.num_params = slots_;
  result.loss = scalars.loss_mean;
  result.loss_var = scalars.loss_m2 * inv_n;
  LayerProfile lp;
  lp.name = Model::layer_name(0);
  lp.num_params = slots_;
  for (std::int64_t j = 0; j < slots_; ++j) lp.grad_norm_sq += host_mean[j] * host_mean[j];
  lp.trace_cov = scalars.m2_total * inv_n;
  lp.mean_sample_grad_norm_sq = scalars.sum_norm_sq * inv_n;
  result.layers.push_back(lp);
  result.param_mean.assign(host_mean, host_mean + slots_);
  if (options_.param_stats) {
    const double* host_m2 = host_mean + slots_;
    result.param_var.resize(static_cast<std::size_t>(slots_));
    for (std::int64_t j = 0; j < slots_; ++j) result.param_var[j] = host_m2[j] * inv_n;
  }
}

}  // namespace gradnoise::cuda
