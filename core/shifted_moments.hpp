// A layer's gradient moments from sums around a fixed shift, the GPU GEMM
// pipeline's scheme without --param-stats (kernels/profile_pipeline.cu; the
// fused linear kernel uses the same idea per launch, linear_fused.hpp).
//
// The shift (a₀, δ₀) is a chunk's column means, taken once per profile from
// its first chunk. Every row of every chunk then only adds:
//   G_sum += Σ_i δ_i a_iᵀ and Σ_i δ_i    (one GEMM and one GEMV a chunk, uncentred)
//   the six row scalars of ‖h_i‖² around the shift (RowSums, centre_row with
//   no output), h_i = g_i − δ₀a₀ᵀ = δ₀v_iᵀ + u_iã₀ᵀ + u_iv_iᵀ,
// so a chunk needs no column means, no centred copies, no per-slot merge.
// At the end G = G_sum/n, h̄ = G − δ₀a₀ᵀ and
//   Σ_i ‖g_i − G‖² = Σ_i ‖h_i‖² − n‖h̄‖²                  (chunk_centred_sum)
// Only h̄ comes from the uncentred sums, and it is small (of the order of
// the spread of the h_i over √rows of the first chunk), so the rounding of G
// (ε‖G‖ per entry) reaches tr Σ only through 2h̄·δG: a relative error of
// about ε·√(‖G‖²/tr Σ)·√n, 1e-10 at ‖G‖²/tr Σ = 10⁶ and n = 10⁶, inside the
// contract's 1e-6 (tests/test_shifted_moments.cpp holds the scheme to the
// float64 engine and to brute force on an ill-conditioned problem).
// Plain C++: compiles with and without nvcc.
#pragma once

#include <cstdint>

#include "moments.hpp"

namespace gradnoise::detail {

/// Fills `mean` (out·in weights, then out biases when `bias`) with G and
/// returns Σ_i ‖g_i − G‖² for one layer of n rows from its sums around the
/// shift: g_sum (out × in, row-major) = Σ δ_i a_iᵀ, bias_sum (out) = Σ δ_i,
/// `rows` the row scalars around (delta0, act0).
inline double shifted_layer_moments(std::int64_t out, std::int64_t in, bool bias, std::int64_t n,
                                    const double* g_sum, const double* bias_sum, const double* delta0,
                                    const double* act0, const RowSums& rows, double* mean) {
  const double dn = static_cast<double>(n);
  double delta0_sq = 0, act0_sq = 0, mean_h_sq = 0;
  for (std::int64_t r = 0; r < out; ++r) delta0_sq += delta0[r] * delta0[r];
  for (std::int64_t s = 0; s < in; ++s) act0_sq += act0[s] * act0[s];
  for (std::int64_t r = 0; r < out; ++r) {
    for (std::int64_t s = 0; s < in; ++s) {
      const double g = g_sum[r * in + s] / dn;
      mean[r * in + s] = g;
      const double h = g - delta0[r] * act0[s];
      mean_h_sq += h * h;
    }
  }
  if (bias) {
    for (std::int64_t r = 0; r < out; ++r) {
      const double g = bias_sum[r] / dn;
      mean[out * in + r] = g;
      const double h = g - delta0[r];
      mean_h_sq += h * h;
    }
  }
  return chunk_centred_sum(rows, delta0_sq, act0_sq, bias, dn, mean_h_sq);
}

/// The loss's sums around its shift ℓ₀ (the first chunk's mean loss).
struct ShiftedLoss {
  double sum = 0;  // Σ (ℓ_i − ℓ₀)
  double sq = 0;   // Σ (ℓ_i − ℓ₀)²

  GN_HOST_DEVICE ShiftedLoss& operator+=(const ShiftedLoss& o) {
    sum += o.sum;
    sq += o.sq;
    return *this;
  }
};

/// Mean and M2 of n losses from their sums around ℓ₀.
struct LossMoments {
  double mean = 0;
  double m2 = 0;
};

inline LossMoments shifted_loss_moments(const ShiftedLoss& s, double loss0, std::int64_t n) {
  const double dn = static_cast<double>(n);
  return {loss0 + s.sum / dn, s.sq - s.sum * s.sum / dn};
}

}  // namespace gradnoise::detail
