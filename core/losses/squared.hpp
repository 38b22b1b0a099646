// Squared loss ℓ = ½‖z − y‖² on real targets (docs/MATH.md "Data and models").
// One home: every engine (CPU profile, GPU kernels, curvature, sweep steps on
// both devices) calls these functions; core/losses.hpp registers the type.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.hpp"
#include "gradnoise/loss.hpp"

namespace gradnoise::losses {

struct Squared {
  static constexpr Loss id = Loss::squared;
  static constexpr const char* name = "mse";
  static constexpr const char* summary = "squared error";
  static constexpr TargetKind targets = TargetKind::real;
  /// H_ℓ = I: curvature code skips the per-row state and applies nothing.
  static constexpr bool unit_hessian = true;

  /// δ = z − y and ℓ = ½‖δ‖² for one row of K outputs. Z, Y and Delta index
  /// like arrays (pointers or strided views), so every memory layout shares
  /// this arithmetic; `label` is unused.
  template <class Z, class Y, class Delta>
  GN_HOST_DEVICE static double error_row(const Z& z, const Y& y, std::int32_t /*label*/,
                                         std::int64_t k, Delta&& delta) {
    double sq = 0;
    for (std::int64_t c = 0; c < k; ++c) {
      const double e = z[c] - y[c];
      delta[c] = e;
      sq += e * e;
    }
    return 0.5 * sq;
  }

  /// Per-row state of H_ℓ (none) and H_ℓ r = r on one column.
  GN_HOST_DEVICE static void hessian_state(const double* /*z*/, std::int64_t /*k*/,
                                           double* /*state*/) {}
  GN_HOST_DEVICE static void hessian_row(const double* /*state*/, const double* r, std::int64_t k,
                                         double* out) {
    for (std::int64_t c = 0; c < k; ++c) out[c] = r[c];
  }
  /// ⟨H_ℓ, Q⟩ = tr Q for a K×K row-major Q.
  GN_HOST_DEVICE static double hessian_inner(const double* /*state*/, const double* q,
                                             std::int64_t k) {
    double trace = 0;
    for (std::int64_t c = 0; c < k; ++c) trace += q[c * k + c];
    return trace;
  }

  /// Any finite target is valid (finiteness is checked with the data).
  template <class Y>
  GN_HOST_DEVICE static bool target_ok(const Y& /*y*/, std::int32_t /*label*/, std::int64_t /*k*/) {
    return true;
  }
  static constexpr const char* expected_targets = "finite real targets";
};

}  // namespace gradnoise::losses
