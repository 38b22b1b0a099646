// Tile arithmetic of the fused linear-model kernel (kernels/linear_fused.cu),
// as __host__ __device__ functions that tests/test_linear_fused.cpp runs on
// the CPU in the kernel's own decomposition.
//
// One pass over X, centred on a shift instead of on running means. A block
// takes a contiguous run of tiles per launch; the means of its first tile
// give the shift (a₀ for the inputs, δ₀ for the output errors, ℓ₀ for the
// loss), and every row i of the launch is written around it:
//   v_i = x_i − a₀,  u_i = δ_i − δ₀,
//   g_i − δ₀a₀ᵀ = h_i = δ₀ v_iᵀ + u_i a₀ᵀ + u_i v_iᵀ   (bias part: u_i).
// The block only adds: per row the six scalars of ‖h_i‖² (RowSums, with
// δ₀, a₀ in the places of the chunk means), per feature column Σ v_j and
// S_kj = Σ u_ik v_ij (with param stats also Q_kj = Σ h_ikj²), per output
// Σ u_k and Σ u_k². At the end of the launch
//   h̄ = (δ₀ Σvᵀ + Σu a₀ᵀ + S)/n,  mean = δ₀a₀ᵀ + h̄,
//   Σ_i ‖g_i − ḡ‖² = Σ_i ‖h_i‖² − n‖h̄‖²,  per slot Q − n h̄²,
// which cancels nothing much: a₀ and δ₀ are a tile's means, so h̄ is of the
// order of the spread of the h_i, never of ‖G‖ (the ill-conditioned case,
// ‖G‖² ≫ tr Σ, keeps its digits: DEFINITIONS.md "Numerics"). The launch's
// moments then join the block's running ones with Chan's merge (once per
// launch, not per tile), and the blocks are merged in index order at the end.
#pragma once

#include <cstddef>
#include <cstdint>

#include "moments.hpp"
#include "policy.hpp"

namespace gradnoise::detail {

/// The kernel is compiled for K ≤ KB outputs, KB one of kFusedOutputBuckets
/// (policy.hpp), so per-thread arrays have compile-time sizes and stay in
/// registers; outputs c with k ≤ c < KB are skipped.

/// A warp's forward pass over RW rows at once (row r at x + r·d, rows ≥
/// `rows` skipped), over features j = start, start + stride, … < d:
/// z_rc += W_cj x_rj, ‖x_r‖², ‖v_r‖² and a₀·v_r with v = x − a₀.
template <int KB, int RW, typename T>
GN_HOST_DEVICE inline void partial_rows(const T* x, int rows, const double* weight, const double* shift,
                                        std::int64_t d, int k, std::int64_t start, std::int64_t stride,
                                        double (&z)[RW][KB], double (&x_sq)[RW], double (&v_sq)[RW],
                                        double (&shift_dot_v)[RW]) {
  for (std::int64_t j = start; j < d; j += stride) {
    const double a0 = shift[j];
    double value[RW];
    for (int r = 0; r < RW; ++r) {
      value[r] = r < rows ? static_cast<double>(x[r * d + j]) : 0.0;
      const double v = value[r] - a0;
      x_sq[r] += value[r] * value[r];
      v_sq[r] += v * v;
      shift_dot_v[r] += a0 * v;
    }
    // One weight at a time, used by every row: registers hold RW·KB sums, not a row of W.
    for (int c = 0; c < KB; ++c) {
      if (c >= k) continue;
      const double w = weight[c * d + j];
      for (int r = 0; r < RW; ++r) z[r][c] += w * value[r];
    }
  }
}

/// Step A's share of a tile of `rows` rows among `warps` warps: warp w takes
/// the groups of RW consecutive rows g = w, w + warps, … (forward pass), and
/// then lane l of warp w runs the loss of the warp's l-th row. Returns that
/// row, or −1 when the warp has fewer than l + 1 rows.
GN_HOST_DEVICE inline int loss_lane_row(int warp, int lane, int rows, int warps, int rows_at_once) {
  const int i = (warp + (lane / rows_at_once) * warps) * rows_at_once + lane % rows_at_once;
  return i < rows ? i : -1;
}

/// One row's errors around the shift: u = δ − δ₀ written over δ, and the
/// row's ‖δ‖², ‖u‖², δ₀·u.
struct ShiftedErrors {
  double delta_sq = 0;
  double u_sq = 0;
  double shift_dot_u = 0;
};

GN_HOST_DEVICE inline ShiftedErrors shift_errors(double* delta, const double* delta0, int k) {
  ShiftedErrors e;
  for (int c = 0; c < k; ++c) {
    const double u = delta[c] - delta0[c];
    e.delta_sq += delta[c] * delta[c];
    e.u_sq += u * u;
    e.shift_dot_u += delta0[c] * u;
    delta[c] = u;
  }
  return e;
}

/// The mean of a tile's column (x_col[i·d] is x_ij): a₀_j.
template <typename T>
GN_HOST_DEVICE inline double column_mean(const T* x_col, std::int64_t d, int rows) {
  double total = 0;
  for (int i = 0; i < rows; ++i) total += static_cast<double>(x_col[i * d]);
  return total / rows;
}

/// Per feature column j, over a tile's rows (x_col[i·d] is x_ij, u row i at
/// u + i·kFusedMaxOutputs): adds Σ v_ij to sums[q·stride], S_cj += Σ u_ic v_ij
/// to sums[c·stride] and, with PS, Q_cj += Σ h_icj² to sums[(k + c)·stride],
/// h = δ x − δ₀a₀ = u x + δ₀ v (one rounding from centred values), where
/// q = fused_sums_rows(k, PS) − 1. The tile's part is added in registers, then
/// once into `sums`.
template <int KB, bool PS, typename T>
GN_HOST_DEVICE inline void column_tile(const T* x_col, std::int64_t d, int rows, double a0,
                                       const double* u, const double* delta0, int k, double* sums,
                                       std::int64_t stride) {
  double v_sum = 0;
  double s[KB] = {};
  double q[PS ? KB : 1] = {};
  for (int i = 0; i < rows; ++i) {
    const double value = static_cast<double>(x_col[i * d]);
    const double v = value - a0;
    v_sum += v;
    const double* ui = u + i * kFusedMaxOutputs;
    for (int c = 0; c < KB; ++c) {
      if (c >= k) continue;
      s[c] += ui[c] * v;
      if constexpr (PS) {
        const double h = ui[c] * value + delta0[c] * v;
        q[c] += h * h;
      }
    }
  }
  for (int c = 0; c < KB; ++c) {
    if (c >= k) continue;
    sums[c * stride] += s[c];
    if constexpr (PS) sums[(k + c) * stride] += q[c];
  }
  sums[(fused_sums_rows(k, PS) - 1) * stride] += v_sum;
}

/// What a block adds up over a launch besides the per-column sums; reduced
/// over the block's threads once, at the launch's end.
struct LaunchSums {
  RowSums rows;              // the row scalars of ‖h_i‖² (δ₀, a₀ for the means)
  double loss_sum = 0;       // Σ (ℓ_i − ℓ₀)
  double loss_sq = 0;        // Σ (ℓ_i − ℓ₀)²
  double slot_shift_sq = 0;  // Σ_slots d² of the merge into the block's running means
  double mean_h_sq = 0;      // ‖h̄‖², weights and biases
  double shift_sq = 0;       // ‖a₀‖²

  GN_HOST_DEVICE LaunchSums& operator+=(const LaunchSums& o) {
    rows += o.rows;
    loss_sum += o.loss_sum;
    loss_sq += o.loss_sq;
    slot_shift_sq += o.slot_shift_sq;
    mean_h_sq += o.mean_h_sq;
    shift_sq += o.shift_sq;
    return *this;
  }
};

/// Closes weight slot (c, j) of a launch of n rows: h̄ from the sums, the
/// launch's mean and (with `m2`) its M2 Q − n h̄², merged into the block's
/// running moments (`mean`, `m2`) with weights w. Adds h̄² to sums.mean_h_sq
/// and the merge's d² to sums.slot_shift_sq.
GN_HOST_DEVICE inline void finish_slot(double s_cj, double q_cj, double v_sum_j, double u_sum_c,
                                       double a0_j, double delta0_c, double n, MergeWeights w,
                                       double& mean, double* m2, LaunchSums& sums) {
  const double mean_h = (delta0_c * v_sum_j + u_sum_c * a0_j + s_cj) / n;
  sums.mean_h_sq += mean_h * mean_h;
  const double launch_m2 = m2 != nullptr ? q_cj - n * mean_h * mean_h : 0.0;
  sums.slot_shift_sq += merge_slot(mean, m2, delta0_c * a0_j + mean_h, launch_m2, w);
}

/// The bias slot of output c: h = u, so h̄ = Σu/n, mean δ₀ + h̄, M2 Σu² − n h̄².
GN_HOST_DEVICE inline void finish_bias_slot(double u_sum_c, double u_sq_c, double delta0_c, double n,
                                            MergeWeights w, double& mean, double* m2,
                                            LaunchSums& sums) {
  const double mean_h = u_sum_c / n;
  sums.mean_h_sq += mean_h * mean_h;
  sums.slot_shift_sq += merge_slot(mean, m2, delta0_c + mean_h, u_sq_c - n * mean_h * mean_h, w);
}

/// A block's running scalars; blocks are merged in index order at the end.
struct BlockScalars {
  std::int64_t count = 0;
  double m2_total = 0;     // Σ ‖g_i − G_block‖²
  double sum_norm_sq = 0;  // Σ ‖g_i‖²
  double loss_mean = 0;
  double loss_m2 = 0;
};

/// What the final merge leaves for the host, ahead of the slots' means (and
/// M2s), so one transfer brings a profile back: the flagged rows (bad label,
/// non-finite value; kNoRow when none) and the merged scalars.
struct FusedTotals {
  unsigned long long flags[2] = {};
  BlockScalars scalars;
};
/// FusedTotals rounded up to whole doubles.
inline constexpr std::size_t kTotalsDoubles = (sizeof(FusedTotals) + sizeof(double) - 1) / sizeof(double);

/// Closes a launch of n rows into its block's scalars: Σ‖h_i‖² − n‖h̄‖²
/// (moments.hpp chunk_centred_sum with the shift for the means and h̄ for
/// C) plus the shift of the block's means (Σ_slots d² · cross), Σ‖g_i‖², and
/// the loss's mean ℓ₀ + Σ(ℓ − ℓ₀)/n and M2 Σ(ℓ − ℓ₀)² − (Σ(ℓ − ℓ₀))²/n.
GN_HOST_DEVICE inline void finish_launch(BlockScalars& block, const LaunchSums& sums, double delta0_sq,
                                         bool bias, std::int64_t n, double loss0) {
  const double m = static_cast<double>(n);
  const MergeWeights w = merge_weights(block.count, n);
  block.m2_total += chunk_centred_sum(sums.rows, delta0_sq, sums.shift_sq, bias, m, sums.mean_h_sq) +
                    sums.slot_shift_sq * w.cross;
  block.sum_norm_sq += sums.rows.sum_norm_sq;
  const double loss_mean = loss0 + sums.loss_sum / m;
  const double loss_m2 = sums.loss_sq - sums.loss_sum * sums.loss_sum / m;
  merge_slot(block.loss_mean, &block.loss_m2, loss_mean, loss_m2, w);
  block.count += n;
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
