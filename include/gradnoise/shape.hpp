// The noise's shape at one θ, from a session: the covariance and Hessian
// spectra (with tr(Σ²), B_noise, the Σ–H alignment), the population
// batch-size tests and the two-batch estimators' ground truth (docs/MATH.md
// "Beyond the mean"). What `gradnoise profile --spectrum/--theta/--estimators`
// and the Python module's Profiler.shape() compute, in one place.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gradnoise/krylov.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "gradnoise/report.hpp"
#include "gradnoise/session.hpp"

namespace gradnoise {

struct ShapeOptions {
  /// Top eigenvalues of Σ (whole model and per layer) and of the Hessian;
  /// 0 skips both spectra and the curvature report. Clamped to P.
  std::int64_t spectrum = 0;
  /// The Gauss–Newton matrix instead of the full Hessian.
  bool gauss_newton = false;
  /// tr(Σ²) exactly even when it costs many passes (else only when cheap).
  bool exact_trace_sq = false;
  /// θ of the batch-size tests; 0 skips them. Needs a profile with param_var.
  double theta = 0;
  /// The batch sizes the tests are tabled at; empty: 1, 2, 4, ..., N.
  std::vector<std::int64_t> batch_sizes;
  /// Two-batch estimators from `estimator_pairs` minibatch pairs of sizes
  /// b_small < b_big (with replacement, seeded by `seed`); 0: none.
  std::int64_t estimator_b_small = 0;
  std::int64_t estimator_b_big = 0;
  std::int64_t estimator_pairs = 100;
  std::uint64_t seed = 0;
  /// Rows per chunk of the passes that run on the CPU whatever the session's
  /// device (per-layer spectra, tr(Σ²), the tests' own pass); 0: the CPU default.
  std::int64_t chunk_rows = 0;
  /// Progress of each eigensolver, by stage ("covariance spectrum", "Hessian
  /// spectrum"); may be empty.
  std::function<EigenProgress(const std::string& stage)> progress;
  /// When the session's data are one part of a set split over processes (MPI
  /// ranks, docs/MPI.md): the Σ_ll products of the per-layer spectra, and the
  /// sum of a per-part value over the parts (tr H). Empty in one process.
  std::function<BlockOperator(std::int64_t layer)> layer_covariance;
  std::function<double(double)> sum_over_parts;
};

/// The analyses `options` asks for at `model`, whose profile on the session's
/// data is `profile` (session.profile(model, param_stats) with param_stats
/// when options.theta > 0). Σ·V, H·V and ĜᵀΣĜ run on the session's device.
/// Throws InputError for bad options (as the analyses they feed).
ShapeResults noise_shape(const Profiler& session, const Model& model, const Profile& profile,
                         const ShapeOptions& options);

}  // namespace gradnoise
