// The deliberately simple reference: materialise every per-sample gradient
// g_i (N×P doubles) by plain loops, no BLAS, no rank-one tricks, then take
// two-pass centred moments. Tests and benchmarks only.
#pragma once

#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

/// Per-sample losses ℓ_i and gradients g_i (row i of an N×P matrix, docs/MATH.md
/// flattening), by a direct forward/backward per sample.
struct PerSample {
  std::int64_t n = 0;
  std::int64_t p = 0;
  std::vector<double> loss;   // N
  std::vector<double> grads;  // N×P
};
PerSample per_sample_gradients(const Model& model, const DataSource& data, Loss loss);

/// The full loss L(θ) = mean_i ℓ_i, for finite differences.
double full_loss(const Model& model, const DataSource& data, Loss loss);

/// The profile from materialised gradients (elapsed_s and device "brute-force").
Profile profile_brute_force(const Model& model, const DataSource& data, Loss loss,
                            bool param_stats);

}  // namespace gradnoise
