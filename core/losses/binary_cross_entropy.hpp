// Binary cross-entropy with logits, ℓ = Σ_k softplus(z_k) − y_k z_k, on real
// targets in [0, 1] (multi-label or soft targets; docs/MATH.md "Data and
// models"). One home for every engine; registered in core/losses.hpp.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.hpp"
#include "gradnoise/loss.hpp"

namespace gradnoise::losses {

struct BinaryCrossEntropy {
  static constexpr Loss id = Loss::binary_cross_entropy;
  static constexpr const char* name = "bce";
  static constexpr const char* summary = "binary cross-entropy with logits";
  static constexpr TargetKind targets = TargetKind::real;
  static constexpr bool unit_hessian = false;

  /// σ(z) = 1/(1 + e^{−z}) without overflow for any z.
  GN_HOST_DEVICE static double sigmoid(double z) {
    if (z >= 0) return 1.0 / (1.0 + exp(-z));
    const double e = exp(z);
    return e / (1.0 + e);
  }
  /// softplus(z) = log(1 + e^z) = max(z, 0) + log1p(e^{−|z|}), stable for any z.
  GN_HOST_DEVICE static double softplus(double z) {
    return (z > 0 ? z : 0.0) + log1p(exp(-fabs(z)));
  }

  /// δ = σ(z) − y elementwise, ℓ = Σ_k softplus(z_k) − y_k z_k.
  template <class Z, class Y, class Delta>
  GN_HOST_DEVICE static double error_row(const Z& z, const Y& y, std::int32_t /*label*/,
                                         std::int64_t k, Delta&& delta) {
    double loss = 0;
    for (std::int64_t c = 0; c < k; ++c) {
      const double zc = z[c], yc = y[c];
      delta[c] = sigmoid(zc) - yc;
      loss += softplus(zc) - yc * zc;
    }
    return loss;
  }

  /// Per-row state s = σ(z)(1 − σ(z)); H_ℓ r = s ∘ r (a diagonal Hessian).
  GN_HOST_DEVICE static void hessian_state(const double* z, std::int64_t k, double* s) {
    for (std::int64_t c = 0; c < k; ++c) {
      const double p = sigmoid(z[c]);
      s[c] = p * (1.0 - p);
    }
  }
  GN_HOST_DEVICE static void hessian_row(const double* s, const double* r, std::int64_t k,
                                         double* out) {
    for (std::int64_t c = 0; c < k; ++c) out[c] = s[c] * r[c];
  }
  /// ⟨diag(s), Q⟩ = Σ_c s_c Q_cc.
  GN_HOST_DEVICE static double hessian_inner(const double* s, const double* q, std::int64_t k) {
    double inner = 0;
    for (std::int64_t c = 0; c < k; ++c) inner += s[c] * q[c * k + c];
    return inner;
  }

  template <class Y>
  GN_HOST_DEVICE static bool target_ok(const Y& y, std::int32_t /*label*/, std::int64_t k) {
    for (std::int64_t c = 0; c < k; ++c) {
      if (!(y[c] >= 0.0 && y[c] <= 1.0)) return false;
    }
    return true;
  }
  static constexpr const char* expected_targets = "real targets in [0, 1]";
};

}  // namespace gradnoise::losses
