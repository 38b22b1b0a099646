// The arithmetic shared by the CPU engine and the CUDA kernels: the
// chunk-centred sums of squares and Chan's merge. Written
// once as __host__ __device__ functions so the CPU tests exercise exactly the
// formulas the GPU runs (docs/DEFINITIONS.md "Numerics" derives them).
// Plain C++: compiles with and without nvcc, includes no CUDA header.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.hpp"

namespace gradnoise::detail {

/// Sums over a chunk's samples of the centred per-sample scalars of one layer,
/// with δ_i = δ̄ + u_i and a_i = ā + v_i around the chunk means.
struct RowSums {
  double sum_norm_sq = 0;  // Σ ‖δ_i‖² (‖a_i‖² + [bias]): uncentred, for mean‖g_i‖²
  double su = 0;           // Σ ‖u_i‖²
  double sv = 0;           // Σ ‖v_i‖²
  double du_av = 0;        // Σ (δ̄·u_i)(ā·v_i)
  double du_sv = 0;        // Σ (δ̄·u_i) ‖v_i‖²
  double su_av = 0;        // Σ ‖u_i‖² (ā·v_i)
  double su_sv = 0;        // Σ ‖u_i‖² ‖v_i‖²

  /// Adds one sample from its row scalars: ‖δ_i‖², ‖a_i‖², ‖u_i‖², δ̄·u_i,
  /// ‖v_i‖², ā·v_i.
  GN_HOST_DEVICE void add_row(double delta_sq, double act_sq, double u_sq, double mean_dot_u,
                              double v_sq, double mean_dot_v, bool bias) {
    sum_norm_sq += delta_sq * (act_sq + (bias ? 1.0 : 0.0));
    su += u_sq;
    sv += v_sq;
    du_av += mean_dot_u * mean_dot_v;
    du_sv += mean_dot_u * v_sq;
    su_av += u_sq * mean_dot_v;
    su_sv += u_sq * v_sq;
  }

  GN_HOST_DEVICE RowSums& operator+=(const RowSums& o) {
    sum_norm_sq += o.sum_norm_sq;
    su += o.su;
    sv += o.sv;
    du_av += o.du_av;
    du_sv += o.du_sv;
    su_av += o.su_av;
    su_sv += o.su_sv;
    return *this;
  }
};

/// One row's centring over entries j = start, start + stride, ... < len:
/// dst_j = src_j − mean_j (dst may be src; null: only the sums), accumulating
/// ‖src‖², ‖src − mean‖² and mean·(src − mean). The CPU calls it with (0, 1),
/// a GPU warp with (lane, 32).
struct RowCentring {
  double sq = 0;          // ‖src‖²
  double centred_sq = 0;  // ‖src − mean‖²
  double mean_dot = 0;    // mean · (src − mean)
};

GN_HOST_DEVICE inline void centre_row(const double* src, double* dst, const double* mean,
                                      std::int64_t len, std::int64_t start, std::int64_t stride,
                                      RowCentring& sums) {
  for (std::int64_t j = start; j < len; j += stride) {
    const double value = src[j];
    const double centred = value - mean[j];
    if (dst != nullptr) dst[j] = centred;
    sums.sq += value * value;
    sums.centred_sq += centred * centred;
    sums.mean_dot += mean[j] * centred;
  }
}

/// Σ_i ‖g_i − G_chunk‖² for one layer over a chunk of m samples:
///   ‖δ̄‖² Σ‖v‖² + ‖ã‖² Σ‖u‖² + 2Σ(δ̄·u)(ā·v) + 2Σ(δ̄·u)‖v‖² + 2Σ‖u‖²(ā·v)
///   + Σ‖u‖²‖v‖² − m‖C‖²,   ‖ã‖² = ‖ā‖² + [bias],  C = (1/m) Σ u_i v_iᵀ.
GN_HOST_DEVICE inline double chunk_centred_sum(const RowSums& rows, double delta_mean_sq,
                                               double act_mean_sq, bool bias, double m,
                                               double c_norm_sq) {
  return delta_mean_sq * rows.sv + (act_mean_sq + (bias ? 1.0 : 0.0)) * rows.su +
         2.0 * (rows.du_av + rows.du_sv + rows.su_av) + rows.su_sv - m * c_norm_sq;
}

/// Σ_i (g_i,rs − G_chunk,rs)² for weight slot (r, s) over a chunk of m samples:
///   δ̄_r² Σv_s² + ā_s² Σu_r² + [(U∘U)ᵀ(V∘V)]_rs − m C_rs² + 2m δ̄_r ā_s C_rs
///   + 2 δ̄_r [Uᵀ(V∘V)]_rs + 2 ā_s [(U∘U)ᵀV]_rs.
/// (A bias slot r is simply Σ_i u_ir².)
GN_HOST_DEVICE inline double chunk_slot_centred_sum(double delta_mean_r, double act_mean_s,
                                                    double c_rs, double u_sq_sum_r,
                                                    double v_sq_sum_s, double uu_vv_rs,
                                                    double u_vv_rs, double uu_v_rs, double m) {
  return delta_mean_r * delta_mean_r * v_sq_sum_s + act_mean_s * act_mean_s * u_sq_sum_r +
         uu_vv_rs - m * c_rs * c_rs + 2.0 * m * delta_mean_r * act_mean_s * c_rs +
         2.0 * delta_mean_r * u_vv_rs + 2.0 * act_mean_s * uu_v_rs;
}

/// Chan et al.'s pairwise update of (count n, mean, M2) with a chunk of m
/// samples: mean += d·m/(n+m), M2 += M2_chunk + d²·n·m/(n+m), d = mean_chunk − mean.
struct MergeWeights {
  double weight;  // m / (n + m): the chunk's share of the merged mean
  double cross;   // n·m / (n + m)
};

GN_HOST_DEVICE inline MergeWeights merge_weights(std::int64_t n_old, std::int64_t m) {
  const double n_new = static_cast<double>(n_old) + static_cast<double>(m);
  const double weight = static_cast<double>(m) / n_new;
  return {weight, static_cast<double>(n_old) * weight};
}

/// Merges one slot; returns d² so callers can add d²·cross to the total M2.
GN_HOST_DEVICE inline double merge_slot(double& mean, double* m2, double chunk_mean,
                                        double chunk_m2, MergeWeights w) {
  const double diff = chunk_mean - mean;
  mean += diff * w.weight;
  if (m2 != nullptr) *m2 += chunk_m2 + diff * diff * w.cross;
  return diff * diff;
}

/// Blocks of `block` items covering `count` items (64-bit: N·D can pass 2³¹).
GN_HOST_DEVICE inline std::int64_t ceil_div(std::int64_t count, std::int64_t block) {
  return (count + block - 1) / block;
}

}  // namespace gradnoise::detail
