// The GPU sweep engine's arithmetic and the engine itself.
//
// SweepStepOnCpu.*: the __host__ __device__ step functions of
// core/sweep_step.hpp (what every GPU thread runs for its run) run here on
// the CPU, in segments as the GPU runs them — one run at a time, and all runs
// interleaved as in device memory through the kernel's per-thread body — and
// must give the CPU engine's final weights bit for bit (this file is built with -ffp-contract=off, and
// the host build of the step functions calls glibc's exp/log/sin/cos as
// host/sweep.cpp does). Always run.
//
// GpuSweep.*: the whole sweep with SweepConfig::device = cuda against the same
// sweep on the CPU. The squared loss without label noise uses only +, ×, /
// (and the GPU file is built with -fmad=false), so it must match bit for bit,
// momentum, weight decay and every sampling included; cross-entropy and label
// noise go through CUDA's exp/log/sin/cos and must match to 1e-12 relative.
// Skipped without a device; written on a machine without one and not yet run.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cuda_entry.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "gradnoise/sweep.hpp"
#include "sweep_cases.hpp"
#include "sweep_step.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::random_dataset;
using testing::random_model;

using StepCase = testing::SweepCase;
const auto& step_cases = testing::sweep_cases;
const auto& config_for = testing::sweep_case_config;

std::uint64_t bits_of(double value) { return std::bit_cast<std::uint64_t>(value); }

/// One run through core/sweep_step.hpp on the CPU, in segments of
/// log_every steps, as on the GPU.
struct StepRun {
  std::vector<double> theta;
  sweep_step::Outcome outcome;  // of the segment that stopped it, or the last
  std::int64_t steps = 0;
};

StepRun run_step_functions(const Model& model, const Dataset& data, const SweepConfig& c,
                           double divergence_limit, std::int64_t b, double lr,
                           std::uint32_t replica) {
  const sweep_step::Problem p = sweep_step::make_problem(model, data, c, divergence_limit);
  const sweep_step::ModelDims& dims = p.model;
  EXPECT_EQ(dims.num_params, model.num_params());

  StepRun run;
  run.theta = model.flatten();
  std::vector<double> velocity(c.momentum > 0 ? run.theta.size() : 0, 0.0);
  std::vector<double> acts(static_cast<std::size_t>(dims.act_size));
  std::vector<double> delta(static_cast<std::size_t>(dims.widest));
  std::vector<double> previous(static_cast<std::size_t>(dims.widest));
  std::vector<double> grad(static_cast<std::size_t>(dims.num_params));
  sweep_step::RunScratch s;
  s.acts = {acts.data(), 1};
  s.delta = {delta.data(), 1};
  s.delta_prev = {previous.data(), 1};
  s.grad = {grad.data(), 1};
  const sweep_step::RunSpec spec{b, lr, replica};
  for (std::int64_t from = 0; from < c.steps; from += c.log_every) {
    const std::int64_t to = std::min(from + c.log_every, c.steps);
    run.outcome = sweep_step::advance_run(p, spec, {run.theta.data(), 1},
                                          {velocity.empty() ? nullptr : velocity.data(), 1}, from,
                                          to, s);
    run.steps += run.outcome.steps;
    if (run.outcome.why != sweep_step::Stop::none) break;
  }
  return run;
}

/// The CPU engine's divergence limit: factor × (L(θ₀) + Kσ²/2).
double divergence_limit(const Model& model, const Dataset& data, const SweepConfig& c) {
  ProfileOptions options;
  options.loss = c.loss;
  options.device = Device::cpu;
  const double start = profile_cpu(model, data, options).loss +
                       0.5 * static_cast<double>(data.k) * c.label_noise * c.label_noise;
  return start > 0 ? c.divergence_factor * start : std::numeric_limits<double>::infinity();
}

// ---- The step functions on the CPU ---------------------------------------------------

class SweepStepOnCpu : public ::testing::TestWithParam<StepCase> {};

TEST_P(SweepStepOnCpu, MatchesTheCpuEngineBitForBit) {
  const StepCase& test = GetParam();
  const std::int64_t n = 37, k = test.widths.back();
  const Dataset data = random_dataset(n, test.widths.front(), k, test.loss, 5);
  const Model model = random_model(test.widths, test.bias, 6, 0.5);
  const SweepConfig config = config_for(test);
  Sweep sweep(model, data, nullptr, config);
  EXPECT_EQ(sweep.device(), "cpu");
  sweep.run();
  const SweepResult result = sweep.result();
  ASSERT_TRUE(result.divergences.empty());
  const double limit = divergence_limit(model, data, config);
  for (std::int64_t run = 0; run < sweep.num_runs(); ++run) {
    const std::int64_t grid = run / config.replicas;
    const std::int64_t b = config.batch_sizes[static_cast<std::size_t>(grid / 2)];
    const double lr = config.lrs[static_cast<std::size_t>(grid % 2)];
    const auto replica = static_cast<std::uint32_t>(config.first_replica + run % config.replicas);
    const StepRun got = run_step_functions(model, data, config, limit, b, lr, replica);
    EXPECT_EQ(got.outcome.why, sweep_step::Stop::none);
    EXPECT_EQ(got.steps, config.steps);
    const std::vector<double>& want = result.final_weights[static_cast<std::size_t>(run)];
    ASSERT_EQ(got.theta.size(), want.size());
    for (std::size_t q = 0; q < want.size(); ++q) {
      ASSERT_EQ(bits_of(got.theta[q]), bits_of(want[q])) << test.name << " run " << run << " parameter " << q;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, SweepStepOnCpu, ::testing::ValuesIn(step_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(SweepStepOnCpu, StopsWhereTheCpuEngineDoes) {
  // Logged only at 0 and T, so the CPU engine finds every divergence inside
  // its one segment, by the same rule as the step functions.
  const Dataset data = random_dataset(64, 4, 1, Loss::squared, 21);
  const Model model = random_model({4, 1}, true, 22);
  SweepConfig config;
  config.batch_sizes = {8};
  config.lrs = {0.05, 5.0};  // 5.0 is far past 2/λ_max of X̃ᵀX̃/N
  config.replicas = 3;
  config.steps = 200;
  config.log_every = 200;
  Sweep sweep(model, data, nullptr, config);
  sweep.run();
  const SweepResult result = sweep.result();
  ASSERT_EQ(result.divergences.size(), 3u);
  const double limit = divergence_limit(model, data, config);
  for (std::int64_t run = 0; run < sweep.num_runs(); ++run) {
    const double lr = config.lrs[static_cast<std::size_t>(run / config.replicas)];
    const auto replica = static_cast<std::uint32_t>(run % config.replicas);
    const StepRun got = run_step_functions(model, data, config, limit, 8, lr, replica);
    const std::vector<double>& want = result.final_weights[static_cast<std::size_t>(run)];
    for (std::size_t q = 0; q < want.size(); ++q) {
      ASSERT_EQ(bits_of(got.theta[q]), bits_of(want[q])) << "run " << run << " parameter " << q;
    }
    const Divergence* found = nullptr;
    for (const Divergence& d : result.divergences) {
      if (d.run == run) found = &d;
    }
    if (found == nullptr) {
      EXPECT_EQ(got.outcome.why, sweep_step::Stop::none) << "run " << run;
      continue;
    }
    ASSERT_NE(got.outcome.why, sweep_step::Stop::none) << "run " << run;
    EXPECT_EQ(got.outcome.step, found->step) << "run " << run;
    EXPECT_EQ(found->reason.rfind(got.outcome.why == sweep_step::Stop::weights ? "the weights"
                                                                               : "the minibatch loss",
                                  0),
              0u)
        << found->reason;
  }
}

TEST(SweepStepOnCpu, PermutationsAndDrawsFollowTheDocumentedStreams) {
  // Without replacement the ⌊n/b⌋ batches of an epoch are disjoint, so they
  // visit ⌊n/b⌋·b distinct rows; the epoch's permutation (all n positions)
  // visits every row once, and the next epoch draws another order.
  const std::int64_t n = 11, b = 3;
  sweep_step::Problem p;
  p.n = n;
  p.seed = 42;
  p.sampling = Sampling::without_replacement;
  const sweep_step::RunSpec spec{b, 0.1, 7};
  std::vector<std::vector<std::int64_t>> orders;
  for (std::uint32_t epoch = 0; epoch < 4; ++epoch) {
    std::vector<std::int64_t> rows;
    for (std::int64_t step = epoch * (n / b); step < (epoch + 1) * (n / b); ++step) {
      for (std::int64_t slot = 0; slot < b; ++slot) rows.push_back(sweep_step::batch_row(p, spec, step, slot));
    }
    const detail::EpochPermutation permutation(p.seed, spec.replica, epoch, n);
    std::vector<std::int64_t> order;
    for (std::int64_t i = 0; i < n; ++i) order.push_back(permutation(i));
    EXPECT_TRUE(std::equal(rows.begin(), rows.end(), order.begin()));
    std::sort(order.begin(), order.end());
    for (std::int64_t i = 0; i < n; ++i) EXPECT_EQ(order[static_cast<std::size_t>(i)], i);
    orders.push_back(rows);
  }
  EXPECT_NE(orders[0], orders[1]);
  p.sampling = Sampling::fixed;
  EXPECT_EQ(sweep_step::batch_row(p, spec, 5, 2), (5 * b + 2) % n);
  p.sampling = Sampling::with_replacement;
  for (std::int64_t slot = 0; slot < 6; ++slot) {
    const std::int64_t row = sweep_step::batch_row(p, spec, 3, slot);
    EXPECT_GE(row, 0);
    EXPECT_LT(row, n);
  }
}

/// The GPU engine's host loop and kernel, emulated on the CPU: all runs of
/// the grid interleaved as in device memory, advanced segment by segment by
/// sweep_step::advance_interleaved (the kernel's per-thread body), stopped
/// runs flagged between segments. Returns θ run major and each run's stop.
struct EmulatedSweep {
  std::vector<double> theta;
  std::vector<sweep_step::Outcome> stops;
  std::int64_t run_steps = 0;
};

EmulatedSweep emulate_gpu_engine(const Model& model, const Dataset& data, const SweepConfig& c,
                                 double limit) {
  const sweep_step::Problem p = sweep_step::make_problem(model, data, c, limit);
  const auto runs = static_cast<std::int64_t>(c.batch_sizes.size() * c.lrs.size()) * c.replicas;
  const std::int64_t params = p.model.num_params;
  std::vector<sweep_step::RunSpec> specs;
  for (std::int64_t run = 0; run < runs; ++run) {
    const std::int64_t grid = run / c.replicas;
    const auto lrs = static_cast<std::int64_t>(c.lrs.size());
    specs.push_back({c.batch_sizes[static_cast<std::size_t>(grid / lrs)],
                     c.lrs[static_cast<std::size_t>(grid % lrs)],
                     static_cast<std::uint32_t>(c.first_replica + run % c.replicas)});
  }
  const std::vector<double> theta0 = model.flatten();
  EmulatedSweep out;
  for (std::int64_t run = 0; run < runs; ++run) out.theta.insert(out.theta.end(), theta0.begin(), theta0.end());
  std::vector<double> velocity(c.momentum > 0 ? out.theta.size() : 0, 0.0);
  std::vector<double> theta_device(out.theta.size()), velocity_device(velocity.size());
  std::vector<double> scratch(static_cast<std::size_t>(runs * sweep_step::scratch_per_run(p.model)), -1.0);
  std::vector<std::uint8_t> diverged(static_cast<std::size_t>(runs), 0);
  std::vector<sweep_step::Outcome> outcomes(static_cast<std::size_t>(runs));
  out.stops.resize(static_cast<std::size_t>(runs));
  sweep_step::InterleavedRuns all;
  all.specs = specs.data();
  all.runs = runs;
  all.theta = theta_device.data();
  all.velocity = velocity.empty() ? nullptr : velocity_device.data();
  all.scratch = scratch.data();
  all.diverged = diverged.data();
  all.outcomes = outcomes.data();
  for (std::int64_t from = 0; from < c.steps; from += c.log_every) {
    const std::int64_t to = std::min(from + c.log_every, c.steps);
    sweep_step::interleave(out.theta.data(), theta_device.data(), runs, params);
    if (!velocity.empty()) sweep_step::interleave(velocity.data(), velocity_device.data(), runs, params);
    // Runs in reverse, as threads run in no particular order.
    for (std::int64_t run = runs; run-- > 0;) sweep_step::advance_interleaved(p, all, run, from, to);
    sweep_step::deinterleave(theta_device.data(), out.theta.data(), runs, params);
    if (!velocity.empty()) sweep_step::deinterleave(velocity_device.data(), velocity.data(), runs, params);
    for (std::int64_t run = 0; run < runs; ++run) {
      if (diverged[static_cast<std::size_t>(run)] != 0) continue;
      const sweep_step::Outcome& outcome = outcomes[static_cast<std::size_t>(run)];
      out.run_steps += outcome.steps;
      if (outcome.why != sweep_step::Stop::none) {
        diverged[static_cast<std::size_t>(run)] = 1;
        out.stops[static_cast<std::size_t>(run)] = outcome;
      }
    }
  }
  return out;
}

TEST(SweepStepOnCpu, InterleavedRunsAreEachTheirCpuRun) {
  for (const StepCase& test : step_cases()) {
    const Dataset data = random_dataset(37, test.widths.front(), test.widths.back(), test.loss, 5);
    const Model model = random_model(test.widths, test.bias, 6, 0.5);
    SweepConfig config = config_for(test);
    config.replicas = 5;
    config.log_every = 7;
    config.profile = false;
    Sweep sweep(model, data, nullptr, config);
    sweep.run();
    const SweepResult want = sweep.result();
    ASSERT_TRUE(want.divergences.empty());
    const EmulatedSweep got = emulate_gpu_engine(model, data, config, divergence_limit(model, data, config));
    EXPECT_EQ(got.run_steps, want.run_steps) << test.name;
    const auto params = static_cast<std::size_t>(model.num_params());
    for (std::size_t run = 0; run < want.final_weights.size(); ++run) {
      EXPECT_EQ(got.stops[run].why, sweep_step::Stop::none);
      for (std::size_t q = 0; q < params; ++q) {
        ASSERT_EQ(bits_of(got.theta[run * params + q]), bits_of(want.final_weights[run][q]))
            << test.name << " run " << run << " parameter " << q;
      }
    }
  }
}

TEST(SweepStepOnCpu, InterleavedRunsStopWhereTheCpuEngineDoes) {
  const Dataset data = random_dataset(64, 4, 1, Loss::squared, 21);
  const Model model = random_model({4, 1}, true, 22);
  SweepConfig config;
  config.batch_sizes = {8};
  config.lrs = {0.05, 5.0};
  config.replicas = 3;
  config.steps = 200;
  config.log_every = 200;  // one segment: every stop is found inside it
  config.momentum = 0.3;
  Sweep sweep(model, data, nullptr, config);
  sweep.run();
  const SweepResult want = sweep.result();
  ASSERT_EQ(want.divergences.size(), 3u);
  const EmulatedSweep got = emulate_gpu_engine(model, data, config, divergence_limit(model, data, config));
  EXPECT_EQ(got.run_steps, want.run_steps);
  for (const Divergence& d : want.divergences) {
    EXPECT_EQ(got.stops[static_cast<std::size_t>(d.run)].step, d.step) << "run " << d.run;
  }
  const auto params = static_cast<std::size_t>(model.num_params());
  for (std::size_t run = 0; run < want.final_weights.size(); ++run) {
    for (std::size_t q = 0; q < params; ++q) {
      ASSERT_EQ(bits_of(got.theta[run * params + q]), bits_of(want.final_weights[run][q]))
          << "run " << run << " parameter " << q;
    }
  }
}

// ---- Without a device -----------------------------------------------------------------

TEST(SweepDevice, CudaWithoutADeviceIsOneClearError) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  const Dataset data = random_dataset(20, 3, 1, Loss::squared, 1);
  const Model model = random_model({3, 1}, true, 2);
  SweepConfig config;
  config.batch_sizes = {4};
  config.lrs = {0.1};
  config.steps = 5;
  config.log_every = 5;
  config.device = Device::cuda;
  try {
    Sweep sweep(model, data, nullptr, config);
    FAIL() << "expected a RuntimeError";
  } catch (const RuntimeError& error) {
    EXPECT_NE(std::string(error.what()).find("--device cuda"), std::string::npos) << error.what();
  }
  config.device = Device::automatic;
  Sweep automatic(model, data, nullptr, config);
  EXPECT_EQ(automatic.device(), "cpu");
}

// ---- On the GPU -------------------------------------------------------------------------

#define GN_REQUIRE_GPU()                                                    \
  do {                                                                      \
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device present"; \
  } while (0)

SweepResult run_sweep_on(const Model& model, const Dataset& data, SweepConfig config, Device device,
                         std::string* device_name = nullptr) {
  config.device = device;
  Sweep sweep(model, data, nullptr, config);
  if (device_name != nullptr) *device_name = sweep.device();
  sweep.run();
  return sweep.result();
}

/// |got − want| ≤ rtol · max(1, |want|) for every weight of every run.
void expect_weights_close(const SweepResult& got, const SweepResult& want, double rtol,
                          const std::string& what) {
  ASSERT_EQ(got.final_weights.size(), want.final_weights.size());
  for (std::size_t run = 0; run < want.final_weights.size(); ++run) {
    ASSERT_EQ(got.final_weights[run].size(), want.final_weights[run].size());
    for (std::size_t q = 0; q < want.final_weights[run].size(); ++q) {
      const double g = got.final_weights[run][q], w = want.final_weights[run][q];
      if (rtol == 0) {
        ASSERT_EQ(bits_of(g), bits_of(w)) << what << " run " << run << " parameter " << q;
      } else {
        ASSERT_LE(std::abs(g - w), rtol * std::max(1.0, std::abs(w)))
            << what << " run " << run << " parameter " << q << ": " << g << " vs " << w;
      }
    }
  }
}

TEST(GpuSweep, SquaredLossWithoutLabelNoiseIsBitIdentical) {
  GN_REQUIRE_GPU();
  for (const StepCase& test : step_cases()) {
    if (test.loss != Loss::squared || test.label_noise != 0) continue;
    const Dataset data = random_dataset(37, test.widths.front(), test.widths.back(), test.loss, 5);
    const Model model = random_model(test.widths, test.bias, 6, 0.5);
    const SweepConfig config = config_for(test);
    std::string device;
    const SweepResult gpu = run_sweep_on(model, data, config, Device::cuda, &device);
    const SweepResult cpu = run_sweep_on(model, data, config, Device::cpu);
    EXPECT_EQ(device.rfind("cuda", 0), 0u) << device;
    EXPECT_EQ(gpu.device, device);
    ASSERT_TRUE(cpu.divergences.empty());
    EXPECT_TRUE(gpu.divergences.empty());
    expect_weights_close(gpu, cpu, 0, test.name);
    // The logging runs on the CPU from the same θ, so every row matches too.
    EXPECT_EQ(sweep_rows_csv(gpu), sweep_rows_csv(cpu)) << test.name;
    EXPECT_EQ(gpu.run_steps, cpu.run_steps);
  }
}

TEST(GpuSweep, CrossEntropyAndLabelNoiseAgreeToRounding) {
  GN_REQUIRE_GPU();
  for (const StepCase& test : step_cases()) {
    if (test.loss == Loss::squared && test.label_noise == 0) continue;
    const Dataset data = random_dataset(37, test.widths.front(), test.widths.back(), test.loss, 5);
    const Model model = random_model(test.widths, test.bias, 6, 0.5);
    const SweepConfig config = config_for(test);
    const SweepResult gpu = run_sweep_on(model, data, config, Device::cuda);
    const SweepResult cpu = run_sweep_on(model, data, config, Device::cpu);
    ASSERT_TRUE(cpu.divergences.empty());
    EXPECT_TRUE(gpu.divergences.empty());
    expect_weights_close(gpu, cpu, 1e-12, test.name);
  }
}

TEST(GpuSweep, ManyRunsAcrossBlocksAreEachTheirCpuRun) {
  GN_REQUIRE_GPU();
  // 4 grid points × 100 replicas: several blocks of 128 threads, interleaved
  // runs, a partial last block.
  const Dataset data = random_dataset(50, 3, 2, Loss::squared, 8);
  const Model model = random_model({3, 4, 2}, true, 9, 0.5);
  SweepConfig config;
  config.batch_sizes = {2, 7};
  config.lrs = {0.1, 0.02};
  config.replicas = 100;
  config.steps = 30;
  config.log_every = 7;
  config.sampling = Sampling::without_replacement;
  config.momentum = 0.5;
  config.weight_decay = 0.01;
  config.seed = 3;
  config.profile = false;
  const SweepResult gpu = run_sweep_on(model, data, config, Device::cuda);
  const SweepResult cpu = run_sweep_on(model, data, config, Device::cpu);
  expect_weights_close(gpu, cpu, 0, "many runs");
}

TEST(GpuSweep, DivergenceIsFoundAtTheSameStep) {
  GN_REQUIRE_GPU();
  const Dataset data = random_dataset(64, 4, 1, Loss::squared, 21);
  const Model model = random_model({4, 1}, true, 22);
  SweepConfig config;
  config.batch_sizes = {8};
  config.lrs = {0.05, 5.0};
  config.replicas = 3;
  config.steps = 200;
  config.log_every = 20;
  for (const std::int64_t log_every : {std::int64_t{20}, std::int64_t{200}}) {
    config.log_every = log_every;
    const SweepResult gpu = run_sweep_on(model, data, config, Device::cuda);
    const SweepResult cpu = run_sweep_on(model, data, config, Device::cpu);
    ASSERT_EQ(cpu.divergences.size(), 3u);
    ASSERT_EQ(gpu.divergences.size(), cpu.divergences.size());
    for (std::size_t i = 0; i < cpu.divergences.size(); ++i) {
      EXPECT_EQ(gpu.divergences[i].run, cpu.divergences[i].run);
      EXPECT_EQ(gpu.divergences[i].step, cpu.divergences[i].step);
      EXPECT_EQ(gpu.divergences[i].reason, cpu.divergences[i].reason);
    }
    EXPECT_EQ(gpu.run_steps, cpu.run_steps);
    EXPECT_EQ(sweep_rows_csv(gpu), sweep_rows_csv(cpu));
  }
}

TEST(GpuSweep, RunsAreBitIdenticalAndResumeFromCheckpoints) {
  GN_REQUIRE_GPU();
  const Dataset data = random_dataset(40, 4, 3, Loss::cross_entropy, 4);
  const Model model = random_model({4, 3}, true, 5);
  SweepConfig config;
  config.loss = Loss::cross_entropy;
  config.batch_sizes = {2, 7};
  config.lrs = {0.1, 0.02};
  config.replicas = 3;
  config.steps = 40;
  config.log_every = 8;
  config.sampling = Sampling::without_replacement;
  config.momentum = 0.5;
  config.seed = 99;
  config.device = Device::cuda;
  const SweepResult once = run_sweep_on(model, data, config, Device::cuda);
  const SweepResult twice = run_sweep_on(model, data, config, Device::cuda);
  expect_weights_close(twice, once, 0, "run to run");

  Sweep first(model, data, nullptr, config);
  first.advance();
  first.advance();
  first.advance();
  const std::string bytes = first.checkpoint();
  Sweep resumed(model, data, nullptr, config);
  resumed.restore(bytes);
  resumed.run();
  const SweepResult after = resumed.result();
  expect_weights_close(after, once, 0, "resumed");
  EXPECT_EQ(sweep_rows_csv(after), sweep_rows_csv(once));
}

TEST(GpuSweep, AutomaticPicksTheGpuForSmallModels) {
  GN_REQUIRE_GPU();
  const Dataset data = random_dataset(20, 3, 1, Loss::squared, 1);
  SweepConfig config;
  config.batch_sizes = {4};
  config.lrs = {0.1};
  config.steps = 5;
  config.log_every = 5;
  config.device = Device::automatic;
  Sweep small(random_model({3, 1}, true, 2), data, nullptr, config);
  EXPECT_EQ(small.device().rfind("cuda", 0), 0u) << small.device();
  Sweep large(random_model({3, 2000, 1}, true, 2), data, nullptr, config);  // P > 4096
  EXPECT_EQ(large.device(), "cpu");
}

}  // namespace
}  // namespace gradnoise
