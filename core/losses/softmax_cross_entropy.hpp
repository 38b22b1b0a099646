// Softmax cross-entropy ℓ = −log softmax(z)_label on integer class labels
// (docs/MATH.md "Data and models"). One home for every engine; registered in
// core/losses.hpp.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.hpp"
#include "gradnoise/loss.hpp"

namespace gradnoise::losses {

struct SoftmaxCrossEntropy {
  static constexpr Loss id = Loss::cross_entropy;
  static constexpr const char* name = "ce";
  static constexpr const char* summary = "softmax cross-entropy";
  static constexpr TargetKind targets = TargetKind::labels;
  static constexpr bool unit_hessian = false;

  /// p = softmax(z), shifted by max z so any z is safe; returns Σ exp(z − max)
  /// and the max through `z_max` (the loss needs both).
  template <class Z, class P>
  GN_HOST_DEVICE static double probabilities(const Z& z, std::int64_t k, P&& p, double& z_max) {
    z_max = z[0];
    for (std::int64_t c = 1; c < k; ++c) z_max = z[c] > z_max ? z[c] : z_max;
    double total = 0;
    for (std::int64_t c = 0; c < k; ++c) {
      p[c] = exp(z[c] - z_max);
      total += p[c];
    }
    const double inv = 1.0 / total;
    for (std::int64_t c = 0; c < k; ++c) p[c] *= inv;
    return total;
  }

  /// δ = softmax(z) − onehot(label), ℓ = log Σ exp(z − max z) + max z − z_label.
  template <class Z, class Y, class Delta>
  GN_HOST_DEVICE static double error_row(const Z& z, const Y& /*y*/, std::int32_t label,
                                         std::int64_t k, Delta&& delta) {
    double z_max = 0;
    const double total = probabilities(z, k, delta, z_max);
    delta[label] -= 1.0;
    return log(total) + z_max - z[label];
  }

  /// Per-row state p = softmax(z); H_ℓ r = (diag(p) − ppᵀ) r = p ∘ (r − pᵀr)
  /// (out must not alias r).
  GN_HOST_DEVICE static void hessian_state(const double* z, std::int64_t k, double* p) {
    double z_max = 0;
    probabilities(z, k, p, z_max);
  }
  GN_HOST_DEVICE static void hessian_row(const double* p, const double* r, std::int64_t k,
                                         double* out) {
    double pr = 0;
    for (std::int64_t c = 0; c < k; ++c) pr += p[c] * r[c];
    for (std::int64_t c = 0; c < k; ++c) out[c] = p[c] * (r[c] - pr);
  }
  /// ⟨diag(p) − ppᵀ, Q⟩ = Σ_c p_c Q_cc − pᵀ Q p for a K×K row-major Q.
  GN_HOST_DEVICE static double hessian_inner(const double* p, const double* q, std::int64_t k) {
    double inner = 0;
    for (std::int64_t r = 0; r < k; ++r) {
      double qp = 0;
      for (std::int64_t c = 0; c < k; ++c) qp += q[r * k + c] * p[c];
      inner -= p[r] * qp;
    }
    for (std::int64_t c = 0; c < k; ++c) inner += p[c] * q[c * k + c];
    return inner;
  }

  template <class Y>
  GN_HOST_DEVICE static bool target_ok(const Y& /*y*/, std::int32_t label, std::int64_t k) {
    return label >= 0 && label < k;
  }
  static constexpr const char* expected_targets = "integer class labels in [0, K)";
};

}  // namespace gradnoise::losses
