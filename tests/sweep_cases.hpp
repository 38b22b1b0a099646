// The model/sampling configurations every sweep test runs (the CPU engine
// against the reference loop, the step functions on the CPU, the GPU engine
// against the CPU), and the small grid they run them on.
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/sweep.hpp"

namespace gradnoise::testing {

struct SweepCase {
  const char* name;
  std::vector<std::int64_t> widths;
  bool bias;
  Loss loss;
  Sampling sampling;
  double label_noise, weight_decay, momentum;
};

inline void PrintTo(const SweepCase& test, std::ostream* out) { *out << test.name; }

/// Linear, two-layer and deep; squared, cross-entropy and BCE; all three
/// samplings; label noise, weight decay and momentum.
inline const std::vector<SweepCase>& sweep_cases() {
  static const std::vector<SweepCase> cases = {
      {"linear_mse_with", {4, 3}, true, Loss::squared, Sampling::with_replacement, 0, 0, 0},
      {"linear_mse_without_decay_momentum", {4, 2}, true, Loss::squared,
       Sampling::without_replacement, 0, 0.01, 0.9},
      {"deep_mse_fixed", {3, 4, 5, 2}, false, Loss::squared, Sampling::fixed, 0, 0, 0},
      {"linear_mse_noise_decay", {4, 2}, true, Loss::squared, Sampling::without_replacement, 0.7, 0.01, 0},
      {"linear_ce_fixed_momentum", {5, 4}, false, Loss::cross_entropy, Sampling::fixed, 0, 0, 0.9},
      {"two_layer_ce_without", {4, 6, 3}, true, Loss::cross_entropy, Sampling::without_replacement,
       0, 0.001, 0.5},
      {"deep_mse_with_noise", {3, 4, 5, 2}, false, Loss::squared, Sampling::with_replacement, 0.3, 0, 0},
      {"two_layer_bce_with_decay", {4, 5, 3}, true, Loss::binary_cross_entropy,
       Sampling::with_replacement, 0, 0.001, 0},
  };
  return cases;
}

/// 2 batch sizes × 2 learning rates × 2 replicas (starting at replica 3),
/// 23 steps (several epochs without replacement), logged every 10.
inline SweepConfig sweep_case_config(const SweepCase& test) {
  SweepConfig config;
  config.loss = test.loss;
  config.batch_sizes = {1, 5};
  config.lrs = {0.05, 0.01};
  config.replicas = 2;
  config.first_replica = 3;
  config.steps = 23;
  config.log_every = 10;
  config.sampling = test.sampling;
  config.label_noise = test.label_noise;
  config.weight_decay = test.weight_decay;
  config.momentum = test.momentum;
  config.seed = 0x1234567890abcdefULL;
  config.threads = 2;
  return config;
}

}  // namespace gradnoise::testing
