// Tile arithmetic of the fused linear-model kernel (kernels/linear_fused.cu),
// as __host__ __device__ functions. The kernel reads each tile of T rows of X
// from device memory once (later passes hit L1/L2) and, per tile,
//   A  row-wise:    z_i = W x_i + b, δ_i, ℓ_i, ‖x_i‖²           (partial_row_dots)
//   B  per column:  ā_j, then C_kj and the per-slot sums          (column_tile_sums)
//                   merged into the block's running moments      (merge_column)
//   C  row-wise:    ‖v_i‖², ā·v_i with v_i = x_i − ā              (partial_row_centred)
// then the tile's scalar sum of squares (moments.hpp chunk_centred_sum) joins
// the block's running total. Blocks are merged in a fixed order at the end.
// tests/test_linear_fused.cpp runs this same decomposition on the CPU against
// the float64 engine; the kernel only spreads the loops over threads.
#pragma once

#include <cstdint>

#include "moments.hpp"
#include "policy.hpp"

namespace gradnoise::detail {

/// The kernel is compiled for K ≤ KB outputs, KB one of kFusedOutputBuckets
/// (policy.hpp), so per-thread arrays have compile-time sizes and stay in
/// registers; outputs c with k ≤ c < KB are skipped.

/// Partial sums over features j = start, start + stride, ... < d of one row:
/// z_k += W_kj x_j for every output k < K ≤ KB, and ‖x‖².
template <int KB, typename T>
GN_HOST_DEVICE inline void partial_row_dots(const T* x, const double* weight, std::int64_t d,
                                            int k, std::int64_t start, std::int64_t stride,
                                            double* z, double& x_sq) {
  // Four rows' loads in flight for K ≤ 8; wider buckets have no registers to spare.
  GN_UNROLL((KB <= 8 ? 4 : 1))
  for (std::int64_t j = start; j < d; j += stride) {
    const double value = static_cast<double>(x[j]);
    x_sq += value * value;
    for (int c = 0; c < KB; ++c) {
      if (c < k) z[c] += weight[c * d + j] * value;
    }
  }
}

/// Partial centred sums of one row over j = start, start + stride, ...:
/// ‖v‖² and ā·v with v = x − ā.
template <typename T>
GN_HOST_DEVICE inline void partial_row_centred(const T* x, const double* act_mean, std::int64_t d,
                                               std::int64_t start, std::int64_t stride,
                                               double& v_sq, double& mean_dot_v) {
  for (std::int64_t j = start; j < d; j += stride) {
    const double v = static_cast<double>(x[j]) - act_mean[j];
    v_sq += v * v;
    mean_dot_v += act_mean[j] * v;
  }
}

/// Sums over the tile's rows for one feature column j (x_col[i·d] is x_ij):
/// the column mean ā_j, Σ v², and per output k: Σ u_k v (→ C), and with
/// param_stats Σ u_k² v², Σ u_k v², Σ u_k² v. `u` is the tile's centred
/// errors, rows × K, row-major with row stride kFusedMaxOutputs.
/// The param_stats sums exist only when PS (param_stats) is compiled in.
template <int KB, bool PS>
struct ColumnSums {
  static constexpr int kStats = PS ? KB : 1;
  double act_mean = 0;
  double v_sq = 0;
  double uv[KB] = {};
  double uu_vv[kStats] = {};
  double u_vv[kStats] = {};
  double uu_v[kStats] = {};
};

template <int KB, bool PS, typename T>
GN_HOST_DEVICE inline void column_tile_sums(const T* x_col, std::int64_t d, int rows, const double* u,
                                            int k, ColumnSums<KB, PS>& s) {
  double total = 0;
  for (int i = 0; i < rows; ++i) total += static_cast<double>(x_col[i * d]);
  s.act_mean = total / rows;
  for (int i = 0; i < rows; ++i) {
    const double v = static_cast<double>(x_col[i * d]) - s.act_mean;
    s.v_sq += v * v;
    const double* ui = u + i * kFusedMaxOutputs;
    for (int c = 0; c < KB; ++c) {
      if (c >= k) continue;
      s.uv[c] += ui[c] * v;
      if constexpr (PS) {
        const double uu = ui[c] * ui[c];
        s.uu_vv[c] += uu * v * v;
        s.u_vv[c] += ui[c] * v * v;
        s.uu_v[c] += uu * v;
      }
    }
  }
}

/// Merges one column's K weight slots of a tile of `rows` rows into a block's
/// running moments (slot c·d + j of `mean`/`m2`, the docs/MATH.md flattening).
/// Returns Σ_c d_c² (the merge's squared mean shifts) and adds Σ_c C_cj² to
/// c_norm_sq, both for the tile's scalar sum of squares.
/// `m2` is null exactly when PS is false.
template <int KB, bool PS>
GN_HOST_DEVICE inline double merge_column(const ColumnSums<KB, PS>& s, std::int64_t j, std::int64_t d,
                                          int k, int rows, const double* delta_mean,
                                          const double* u_sq_sum, MergeWeights w, double* mean,
                                          double* m2, double& c_norm_sq) {
  double diff_sq = 0;
  const double m = rows;
  for (int c = 0; c < KB; ++c) {
    if (c >= k) continue;
    const double c_cj = s.uv[c] / m;
    c_norm_sq += c_cj * c_cj;
    const double tile_mean = delta_mean[c] * s.act_mean + c_cj;
    double tile_m2 = 0;
    if constexpr (PS) {
      tile_m2 = chunk_slot_centred_sum(delta_mean[c], s.act_mean, c_cj, u_sq_sum[c], s.v_sq,
                                       s.uu_vv[c], s.u_vv[c], s.uu_v[c], m);
    }
    const std::int64_t slot = c * d + j;
    diff_sq += merge_slot(mean[slot], m2 != nullptr ? m2 + slot : nullptr, tile_mean, tile_m2, w);
  }
  return diff_sq;
}

/// The bias slots (after the K·d weights): tile mean δ̄_c, tile M2 Σ_i u_ic².
GN_HOST_DEVICE inline double merge_bias(std::int64_t d, int k, const double* delta_mean,
                                        const double* u_sq_sum, MergeWeights w, double* mean,
                                        double* m2) {
  double diff_sq = 0;
  for (int c = 0; c < k; ++c) {
    const std::int64_t slot = k * d + c;
    diff_sq += merge_slot(mean[slot], m2 != nullptr ? m2 + slot : nullptr, delta_mean[c],
                          u_sq_sum[c], w);
  }
  return diff_sq;
}

/// A block's running scalars; blocks are merged in index order at the end.
struct BlockScalars {
  std::int64_t count = 0;
  double m2_total = 0;     // Σ ‖g_i − G_block‖²
  double sum_norm_sq = 0;  // Σ ‖g_i‖²
  double loss_mean = 0;
  double loss_m2 = 0;
};

/// Closes a tile of `rows` rows into its block's scalars: the tile's centred
/// sum of squares plus the shift of the block mean (Σ_slots d² · cross, where
/// slot_shift_sq = Σ_slots d² from merge_column/merge_bias), Σ‖g_i‖², and the
/// loss moments (tile mean and centred M2).
GN_HOST_DEVICE inline void finish_tile(BlockScalars& block, const RowSums& rows_sums,
                                       double delta_mean_sq, double act_mean_sq, bool bias, int rows,
                                       double c_norm_sq, double slot_shift_sq, double tile_loss_mean,
                                       double tile_loss_m2) {
  const MergeWeights w = merge_weights(block.count, rows);
  block.m2_total += chunk_centred_sum(rows_sums, delta_mean_sq, act_mean_sq, bias, rows, c_norm_sq) +
                    slot_shift_sq * w.cross;
  block.sum_norm_sq += rows_sums.sum_norm_sq;
  merge_slot(block.loss_mean, &block.loss_m2, tile_loss_mean, tile_loss_m2, w);
  block.count += rows;
}

/// Final merge, blocks in index order. Per slot: folds block b's (mean, M2)
/// into the running total and returns d²·cross, whose sum over slots joins
/// the total M2 in merge_block_scalars.
GN_HOST_DEVICE inline double merge_block_slot(double& mean, double* m2, double block_mean,
                                              double block_m2, MergeWeights w) {
  return merge_slot(mean, m2, block_mean, m2 != nullptr ? block_m2 : 0.0, w) * w.cross;
}

GN_HOST_DEVICE inline void merge_block_scalars(BlockScalars& total, const BlockScalars& block,
                                               double slot_shift_total) {
  const MergeWeights w = merge_weights(total.count, block.count);
  total.m2_total += block.m2_total + slot_shift_total;
  total.sum_norm_sq += block.sum_norm_sq;
  merge_slot(total.loss_mean, &total.loss_m2, block.loss_mean, block.loss_m2, w);
  total.count += block.count;
}

}  // namespace gradnoise::detail
