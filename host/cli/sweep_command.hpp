// `gradnoise sweep`: its options and entry points (kept apart from cli.hpp
// because they build on the shared data and model options of inputs.hpp).
#pragma once

#include <cstdint>
#include <string>

#include "cli/cli.hpp"
#include "cli/inputs.hpp"

namespace gradnoise::cli {

/// Options of `gradnoise sweep`, as parsed.
struct SweepArgs {
  DataModelArgs inputs;
  std::string batch_sizes;
  std::string lrs;
  std::int64_t replicas = 1;
  std::int64_t first_replica = 0;
  std::int64_t steps = 0;
  std::string sampling = "with";
  double label_noise = 0;
  double weight_decay = 0;
  double momentum = 0;
  std::int64_t log_every = 0;  // 0: steps/20
  bool test = false;           // --eval-test: the fashion-mnist test split
  std::int64_t test_limit = 0;
  std::string test_x_path;
  std::string test_y_path;
  std::string out_path;
  std::string summary_path;
  std::string weights_path;
  std::string checkpoint_path;
  double checkpoint_every = 60;
  bool no_profile = false;
  double divergence_factor = 1e6;
  int threads = 0;
  bool quiet = false;
};

CLI::App* add_sweep_command(CLI::App& app, SweepArgs& args);
int run_sweep(const SweepArgs& args);

}  // namespace gradnoise::cli
