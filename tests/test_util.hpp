// Shared helpers for the tests: random problems and relative comparisons.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise::testing {

/// A model of the given widths with N(0, scale²/in) weights and N(0, scale²) biases.
inline Model random_model(const std::vector<std::int64_t>& widths, bool bias, unsigned seed,
                          double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Model model;
  for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
    Layer layer;
    layer.in = widths[l];
    layer.out = widths[l + 1];
    for (std::int64_t j = 0; j < layer.in * layer.out; ++j) {
      layer.weight.push_back(scale * normal(rng) / std::sqrt(static_cast<double>(layer.in)));
    }
    if (bias) {
      for (std::int64_t r = 0; r < layer.out; ++r) layer.bias.push_back(scale * normal(rng));
    }
    model.layers.push_back(std::move(layer));
  }
  return model;
}

/// "Mse", "Ce", "Bce": a loss's name as test names spell it.
inline std::string loss_label(Loss loss) {
  std::string name = loss_name(loss);
  name[0] = static_cast<char>(name[0] - 'a' + 'A');
  return name;
}

/// N samples with x ~ offset + N(0, I); real targets N(0, 1) (squared), labels
/// uniform in [0, k) (cross-entropy), or targets in [0, 1] for BCE: uniform,
/// with those below 0.3 set to 0 and above 0.7 to 1 (multi-label, some soft).
inline Dataset random_dataset(std::int64_t n, std::int64_t d, std::int64_t k, Loss loss,
                              unsigned seed, double offset = 0.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Dataset data;
  data.n = n;
  data.d = d;
  data.k = k;
  for (std::int64_t j = 0; j < n * d; ++j) data.x.push_back(offset + normal(rng));
  if (loss == Loss::squared) {
    for (std::int64_t j = 0; j < n * k; ++j) data.y.push_back(normal(rng));
  } else if (loss == Loss::binary_cross_entropy) {
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    for (std::int64_t j = 0; j < n * k; ++j) {
      const double u = uniform(rng);
      data.y.push_back(u < 0.3 ? 0.0 : u > 0.7 ? 1.0 : u);
    }
  } else {
    std::uniform_int_distribution<std::int32_t> label(0, static_cast<std::int32_t>(k - 1));
    for (std::int64_t i = 0; i < n; ++i) data.labels.push_back(label(rng));
  }
  return data;
}

/// A linear squared-loss problem where ‖G‖² ≫ tr Σ: inputs `offset` + `spread`·N(0, 1),
/// targets `target_spread`·N(0, 1), and weights |N(0, 1/d)| + 1 far from the fit.
struct IllConditioned {
  Model model;
  Dataset data;
};

inline IllConditioned ill_conditioned_problem(std::int64_t n, std::int64_t d, std::int64_t k,
                                              double spread, double target_spread,
                                              unsigned data_seed, unsigned model_seed) {
  IllConditioned p{random_model({d, k}, true, model_seed), random_dataset(n, d, k, Loss::squared, data_seed)};
  for (double& x : p.data.x) x = 3.0 + spread * x;
  for (double& y : p.data.y) y *= target_spread;
  for (double& w : p.model.layers[0].weight) w = std::abs(w) + 1.0;
  return p;
}

/// Two profiles of the same input must agree bit for bit.
inline void expect_bit_identical(const Profile& a, const Profile& b) {
  EXPECT_EQ(a.trace_cov, b.trace_cov);
  EXPECT_EQ(a.grad_norm_sq, b.grad_norm_sq);
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.loss_var, b.loss_var);
  EXPECT_EQ(a.param_mean, b.param_mean);
  EXPECT_EQ(a.param_var, b.param_var);
}

inline double relative_error(double got, double want) {
  if (got == want) return 0.0;
  return std::abs(got - want) / std::max(std::abs(want), std::abs(got));
}

/// |got − want| ≤ rtol·|want| + atol, elementwise, with the first failure reported.
inline ::testing::AssertionResult all_near(const std::vector<double>& got,
                                           const std::vector<double>& want, double rtol,
                                           double atol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << want.size();
  }
  for (std::size_t j = 0; j < got.size(); ++j) {
    if (!(std::abs(got[j] - want[j]) <= rtol * std::abs(want[j]) + atol)) {
      return ::testing::AssertionFailure() << "slot " << j << ": got " << got[j] << ", want "
                                           << want[j];
    }
  }
  return ::testing::AssertionSuccess();
}

inline double max_abs(const std::vector<double>& values) {
  double m = 0;
  for (double v : values) m = std::max(m, std::abs(v));
  return m;
}

/// Every field of two profiles of one problem within `rtol` (G and diag Σ
/// elementwise, with an absolute floor of `atol_fraction` of their largest).
inline void expect_profiles_match(const Profile& got, const Profile& want, double rtol,
                                  double atol_fraction = 1e-12) {
  EXPECT_EQ(got.n, want.n);
  EXPECT_EQ(got.num_params, want.num_params);
  EXPECT_LE(relative_error(got.loss, want.loss), rtol);
  EXPECT_LE(relative_error(got.loss_var, want.loss_var), rtol);
  EXPECT_LE(relative_error(got.grad_norm_sq, want.grad_norm_sq), rtol);
  EXPECT_LE(relative_error(got.trace_cov, want.trace_cov), rtol);
  EXPECT_LE(relative_error(got.mean_sample_grad_norm_sq, want.mean_sample_grad_norm_sq), rtol);
  ASSERT_EQ(got.layers.size(), want.layers.size());
  for (std::size_t l = 0; l < got.layers.size(); ++l) {
    EXPECT_LE(relative_error(got.layers[l].trace_cov, want.layers[l].trace_cov), rtol);
    EXPECT_LE(relative_error(got.layers[l].grad_norm_sq, want.layers[l].grad_norm_sq), rtol);
  }
  EXPECT_TRUE(all_near(got.param_mean, want.param_mean, rtol, atol_fraction * max_abs(want.param_mean)));
  EXPECT_TRUE(all_near(got.param_var, want.param_var, rtol, atol_fraction * max_abs(want.param_var)));
}

}  // namespace gradnoise::testing
