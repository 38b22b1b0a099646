// The sweep engine against independent references: a plain textbook SGD loop
// written here from the documented random-stream layout (bit for bit), the
// exact profile (a full-batch step is a gradient-descent step), closed forms
// for one step's variance across replicas (Monte-Carlo), and Ziyin et al.'s
// stationary one-dimensional linear regression (Monte-Carlo).
#include <gtest/gtest.h>

#include <Random123/philox.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <numbers>
#include <numeric>
#include <random>
#include <vector>

#include "gradnoise/error.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "gradnoise/sweep.hpp"
#include "sweep_cases.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::random_dataset;
using testing::random_model;

// ---- A plain reference loop ------------------------------------------------------

/// Philox words as sweep.hpp documents them: key = seed, counter =
/// {replica, 0x5357 << 16 | stream, step or epoch, block}.
std::uint64_t philox_word(std::uint64_t seed, std::uint32_t replica, std::uint32_t stream,
                          std::uint32_t step, std::uint64_t draw) {
  const r123::Philox4x32 generator;
  const r123::Philox4x32::key_type key = {
      {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
  const r123::Philox4x32::ctr_type counter = {
      {replica, 0x53570000u | stream, step, static_cast<std::uint32_t>(draw / 2)}};
  const auto bits = generator(counter, key);
  const int half = static_cast<int>(draw % 2);
  return std::uint64_t{bits[2 * half]} << 32 | bits[2 * half + 1];
}

std::int64_t uniform_below(std::uint64_t bits, std::int64_t n) {
  __extension__ using uint128 = unsigned __int128;
  return static_cast<std::int64_t>((static_cast<uint128>(bits) * static_cast<std::uint64_t>(n)) >> 64);
}

/// Position `i` of the order of epoch `epoch` (docs/SWEEP.md): six Feistel
/// rounds on m = max(⌈log₂ n⌉, 8) bits, (high ⌊m/2⌋ bits, low ⌈m/2⌉) →
/// (low, high xor F_r(low)) with F_r(v) the high 32 bits of the first word
/// of stream r·256 + 2 at block v; repeated until the value is below n.
std::int64_t reference_order(std::uint64_t seed, std::uint32_t replica, std::int64_t epoch,
                             std::int64_t i, std::int64_t n) {
  if (n == 1) return 0;
  int m = 8;
  while ((std::int64_t{1} << m) < n) ++m;
  auto x = static_cast<std::uint64_t>(i);
  do {
    int high_bits = m / 2, low_bits = m - m / 2;
    std::uint64_t high = x >> low_bits, low = x % (std::uint64_t{1} << low_bits);
    for (std::uint32_t r = 0; r < 6; ++r) {
      const std::uint64_t f = philox_word(seed, replica, r * 256 + 2, static_cast<std::uint32_t>(epoch), 2 * low) >> 32;
      const std::uint64_t next = (high ^ f) % (std::uint64_t{1} << high_bits);
      high = low;
      low = next;
      std::swap(high_bits, low_bits);
    }
    x = high * (std::uint64_t{1} << low_bits) + low;
  } while (x >= static_cast<std::uint64_t>(n));
  return static_cast<std::int64_t>(x);
}

/// The rows of batch `step` for one replica.
std::vector<std::int64_t> reference_batch(Sampling sampling, std::uint64_t seed, std::uint32_t replica,
                                          std::int64_t step, std::int64_t b, std::int64_t n) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(b));
  if (sampling == Sampling::with_replacement) {
    for (std::int64_t s = 0; s < b; ++s) {
      rows[static_cast<std::size_t>(s)] =
          uniform_below(philox_word(seed, replica, 1, static_cast<std::uint32_t>(step), static_cast<std::uint64_t>(s)), n);
    }
  } else if (sampling == Sampling::fixed) {
    for (std::int64_t s = 0; s < b; ++s) rows[static_cast<std::size_t>(s)] = (step * b + s) % n;
  } else {
    const std::int64_t per_epoch = n / b, epoch = step / per_epoch;
    for (std::int64_t s = 0; s < b; ++s) {
      rows[static_cast<std::size_t>(s)] = reference_order(seed, replica, epoch, (step % per_epoch) * b + s, n);
    }
  }
  return rows;
}

/// Label noise normal m of a step: Box–Muller on the words of block m/2.
double reference_noise(std::uint64_t seed, std::uint32_t replica, std::int64_t step, std::int64_t m) {
  const std::uint64_t pair = static_cast<std::uint64_t>(m / 2) * 2;
  const double radius_u = static_cast<double>((philox_word(seed, replica, 3, static_cast<std::uint32_t>(step), pair) >> 11) + 1) / 9007199254740992.0;
  const double angle_u = static_cast<double>(philox_word(seed, replica, 3, static_cast<std::uint32_t>(step), pair + 1) >> 11) / 9007199254740992.0;
  const double radius = std::sqrt(-2.0 * std::log(radius_u));
  const double angle = 2.0 * std::numbers::pi * angle_u;
  return m % 2 == 0 ? radius * std::cos(angle) : radius * std::sin(angle);
}

/// One textbook SGD run: per sample forward, loss gradient, backward,
/// accumulate; mean; update. Returns θ after `steps` updates.
std::vector<double> reference_run(Model model, const Dataset& data, const SweepConfig& c,
                                  std::int64_t b, double lr, std::uint32_t replica) {
  const std::size_t layers = model.layers.size();
  std::vector<double> velocity(static_cast<std::size_t>(model.num_params()), 0.0);
  for (std::int64_t step = 0; step < c.steps; ++step) {
    const std::vector<std::int64_t> rows = reference_batch(c.sampling, c.seed, replica, step, b, data.n);
    std::vector<std::vector<double>> gw(layers), gb(layers);
    for (std::size_t l = 0; l < layers; ++l) {
      gw[l].assign(model.layers[l].weight.size(), 0.0);
      gb[l].assign(model.layers[l].bias.size(), 0.0);
    }
    for (std::int64_t s = 0; s < b; ++s) {
      const std::int64_t row = rows[static_cast<std::size_t>(s)];
      std::vector<std::vector<double>> a(layers + 1);
      a[0].assign(data.x.begin() + row * data.d, data.x.begin() + (row + 1) * data.d);
      for (std::size_t l = 0; l < layers; ++l) {
        const Layer& layer = model.layers[l];
        a[l + 1].assign(static_cast<std::size_t>(layer.out), 0.0);
        for (std::int64_t o = 0; o < layer.out; ++o) {
          double z = 0;
          for (std::int64_t j = 0; j < layer.in; ++j) z += layer.weight[static_cast<std::size_t>(o * layer.in + j)] * a[l][static_cast<std::size_t>(j)];
          if (layer.has_bias()) z += layer.bias[static_cast<std::size_t>(o)];
          a[l + 1][static_cast<std::size_t>(o)] = z;
        }
      }
      const std::vector<double>& f = a[layers];
      std::vector<double> delta(f.size());
      if (c.loss == Loss::squared) {
        for (std::size_t o = 0; o < f.size(); ++o) {
          double target = data.y[static_cast<std::size_t>(row * data.k) + o];
          if (c.label_noise > 0) {
            target += c.label_noise * reference_noise(c.seed, replica, step, s * data.k + static_cast<std::int64_t>(o));
          }
          delta[o] = f[o] - target;
        }
      } else if (c.loss == Loss::binary_cross_entropy) {
        for (std::size_t o = 0; o < f.size(); ++o) {
          // σ(z) without overflow, as core/losses/ computes it.
          const double e = std::exp(-std::abs(f[o]));
          const double sigma = f[o] >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
          delta[o] = sigma - data.y[static_cast<std::size_t>(row * data.k) + o];
        }
      } else {
        const double top = *std::max_element(f.begin(), f.end());
        double total = 0;
        for (std::size_t o = 0; o < f.size(); ++o) total += (delta[o] = std::exp(f[o] - top));
        const double inv = 1.0 / total;  // softmax as e·(1/Σe), as core/losses/ computes it
        for (double& p : delta) p *= inv;
        delta[static_cast<std::size_t>(data.labels[static_cast<std::size_t>(row)])] -= 1.0;
      }
      for (std::size_t l = layers; l-- > 0;) {
        const Layer& layer = model.layers[l];
        for (std::int64_t o = 0; o < layer.out; ++o) {
          for (std::int64_t j = 0; j < layer.in; ++j) {
            gw[l][static_cast<std::size_t>(o * layer.in + j)] += delta[static_cast<std::size_t>(o)] * a[l][static_cast<std::size_t>(j)];
          }
          if (layer.has_bias()) gb[l][static_cast<std::size_t>(o)] += delta[static_cast<std::size_t>(o)];
        }
        std::vector<double> previous(static_cast<std::size_t>(layer.in), 0.0);
        for (std::int64_t j = 0; j < layer.in; ++j) {
          for (std::int64_t o = 0; o < layer.out; ++o) {
            previous[static_cast<std::size_t>(j)] += layer.weight[static_cast<std::size_t>(o * layer.in + j)] * delta[static_cast<std::size_t>(o)];
          }
        }
        delta = previous;
      }
    }
    std::vector<double> theta = model.flatten(), grad;
    for (std::size_t l = 0; l < layers; ++l) {
      for (double g : gw[l]) grad.push_back(g / static_cast<double>(b));
      for (double g : gb[l]) grad.push_back(g / static_cast<double>(b));
    }
    for (std::size_t p = 0; p < theta.size(); ++p) {
      double g = grad[p];
      if (c.weight_decay != 0) g += c.weight_decay * theta[p];
      if (c.momentum > 0) {
        velocity[p] = c.momentum * velocity[p] + g;
        theta[p] -= lr * velocity[p];
      } else {
        theta[p] -= lr * g;
      }
    }
    model.unflatten(theta);
  }
  return model.flatten();
}

using LoopCase = testing::SweepCase;

class SweepAgainstReferenceLoop : public ::testing::TestWithParam<LoopCase> {};

TEST_P(SweepAgainstReferenceLoop, EveryRunIsBitIdentical) {
  const LoopCase& test = GetParam();
  const std::int64_t n = 37, k = test.widths.back();
  const Dataset data = random_dataset(n, test.widths.front(), k, test.loss, 5);
  const Model model = random_model(test.widths, test.bias, 6, 0.5);
  const SweepConfig config = testing::sweep_case_config(test);
  Sweep sweep(model, data, nullptr, config);
  sweep.run();
  const SweepResult result = sweep.result();
  ASSERT_TRUE(result.divergences.empty());
  for (std::int64_t run = 0; run < sweep.num_runs(); ++run) {
    const std::int64_t grid = run / config.replicas;
    const std::int64_t b = config.batch_sizes[static_cast<std::size_t>(grid / 2)];
    const double lr = config.lrs[static_cast<std::size_t>(grid % 2)];
    const auto replica = static_cast<std::uint32_t>(config.first_replica + run % config.replicas);
    const std::vector<double> want = reference_run(model, data, config, b, lr, replica);
    const std::vector<double>& got = result.final_weights[static_cast<std::size_t>(run)];
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t p = 0; p < got.size(); ++p) {
      ASSERT_EQ(got[p], want[p]) << test.name << " run " << run << " parameter " << p;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, SweepAgainstReferenceLoop, ::testing::ValuesIn(testing::sweep_cases()),
    [](const auto& info) { return std::string(info.param.name); });

// ---- Reproducibility -------------------------------------------------------------

SweepConfig small_config() {
  SweepConfig config;
  config.batch_sizes = {2, 7};
  config.lrs = {0.1, 0.02};
  config.replicas = 3;
  config.steps = 40;
  config.log_every = 8;
  config.sampling = Sampling::without_replacement;
  config.label_noise = 0.2;
  config.seed = 99;
  return config;
}

void expect_same_rows(const SweepRow& a, const SweepRow& b) {
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.diverged, b.diverged);
  EXPECT_EQ(a.train_loss, b.train_loss);
  EXPECT_EQ(a.trace_cov, b.trace_cov);
  EXPECT_EQ(a.grad_norm_sq, b.grad_norm_sq);
  EXPECT_EQ(a.test_loss, b.test_loss);
  EXPECT_EQ(a.minibatch_loss, b.minibatch_loss);
  EXPECT_EQ(a.minibatch_grad_norm_sq, b.minibatch_grad_norm_sq);
  EXPECT_EQ(a.weight_norm_sq, b.weight_norm_sq);
}

TEST(Sweep, ARunReplaysAloneOnOneThread) {
  const Dataset data = random_dataset(50, 3, 2, Loss::squared, 1);
  const Dataset test = random_dataset(20, 3, 2, Loss::squared, 2);
  const Model model = random_model({3, 4, 2}, true, 3, 0.5);
  SweepConfig config = small_config();
  config.threads = 2;
  Sweep grid(model, data, &test, config);
  grid.run();
  const SweepResult all = grid.result();

  // Batch size 7, lr 0.02, replica 2 alone.
  SweepConfig alone_config = config;
  alone_config.batch_sizes = {7};
  alone_config.lrs = {0.02};
  alone_config.first_replica = 2;
  alone_config.replicas = 1;
  alone_config.threads = 1;
  Sweep alone(model, data, &test, alone_config);
  alone.run();
  const SweepResult one = alone.result();
  const std::int64_t run = (1 * 2 + 1) * 3 + 2;
  EXPECT_EQ(one.final_weights[0], all.final_weights[static_cast<std::size_t>(run)]);
  std::vector<SweepRow> rows;
  for (const SweepRow& row : all.rows) {
    if (row.run == run) rows.push_back(row);
  }
  ASSERT_EQ(rows.size(), one.rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(one.rows[i].replica, 2);
    expect_same_rows(rows[i], one.rows[i]);
  }
}

TEST(Sweep, ResumingFromACheckpointGivesTheSameBits) {
  const Dataset data = random_dataset(40, 4, 3, Loss::cross_entropy, 4);
  const Model model = random_model({4, 3}, true, 5);
  SweepConfig config = small_config();
  config.loss = Loss::cross_entropy;
  config.label_noise = 0;
  config.momentum = 0.5;
  Sweep whole(model, data, nullptr, config);
  whole.run();
  const SweepResult want = whole.result();

  Sweep first(model, data, nullptr, config);
  first.advance();
  first.advance();
  first.advance();
  const std::string bytes = first.checkpoint();
  Sweep resumed(model, data, nullptr, config);
  resumed.restore(bytes);
  EXPECT_EQ(resumed.logs_done(), 3);
  resumed.run();
  const SweepResult got = resumed.result();
  EXPECT_EQ(got.final_weights, want.final_weights);
  ASSERT_EQ(got.rows.size(), want.rows.size());
  for (std::size_t i = 0; i < got.rows.size(); ++i) expect_same_rows(got.rows[i], want.rows[i]);
  EXPECT_EQ(got.run_steps, want.run_steps);

  SweepConfig other = config;
  other.lrs = {0.1, 0.03};
  Sweep mismatched(model, data, nullptr, other);
  EXPECT_THROW(mismatched.restore(bytes), InputError);
  EXPECT_THROW(mismatched.restore("not a checkpoint"), InputError);
}

/// `bytes` (a checkpoint) with its version field replaced.
std::string with_version(const std::string& bytes, int version) {
  nlohmann::json state = nlohmann::json::from_cbor(bytes);
  state["version"] = version;
  const std::vector<std::uint8_t> cbor = nlohmann::json::to_cbor(state);
  return {cbor.begin(), cbor.end()};
}

TEST(Sweep, VersionOneCheckpointsResumeWhereTheirDrawsAreStillDrawn) {
  // Version 1 stored no permutation either, but drew it by a Fisher–Yates
  // shuffle: refused without replacement, read with replacement and in order.
  const Dataset data = random_dataset(30, 3, 2, Loss::squared, 8);
  const Model model = random_model({3, 2}, true, 9);
  for (const Sampling sampling : {Sampling::with_replacement, Sampling::fixed, Sampling::without_replacement}) {
    SweepConfig config = small_config();
    config.sampling = sampling;
    Sweep whole(model, data, nullptr, config);
    whole.run();
    Sweep first(model, data, nullptr, config);
    first.advance();
    first.advance();
    const std::string old = with_version(first.checkpoint(), 1);
    Sweep resumed(model, data, nullptr, config);
    if (sampling == Sampling::without_replacement) {
      try {
        resumed.restore(old);
        ADD_FAILURE() << "a version-1 checkpoint without replacement was read";
      } catch (const InputError& error) {
        EXPECT_NE(std::string(error.what()).find("version 1"), std::string::npos) << error.what();
      }
      continue;
    }
    resumed.restore(old);
    resumed.run();
    EXPECT_EQ(resumed.result().final_weights, whole.result().final_weights);
  }
  Sweep later(model, data, nullptr, small_config());
  later.advance();
  EXPECT_THROW(Sweep(model, data, nullptr, small_config()).restore(with_version(later.checkpoint(), 3)),
               InputError);
}

// ---- Against the exact profile and closed forms -----------------------------------

TEST(Sweep, AFullFixedBatchStepIsGradientDescent) {
  const Dataset data = random_dataset(30, 5, 2, Loss::squared, 7);
  const Model model = random_model({5, 3, 2}, true, 8);
  SweepConfig config;
  config.batch_sizes = {30};
  config.lrs = {0.1};
  config.steps = 1;
  config.log_every = 1;
  config.sampling = Sampling::fixed;
  Sweep sweep(model, data, nullptr, config);
  sweep.run();
  const SweepResult result = sweep.result();
  const Profile exact = profile_cpu(model, data, {});
  const std::vector<double> theta0 = model.flatten();
  ASSERT_EQ(result.rows.size(), 2u);
  double g_sq = 0;
  for (std::size_t p = 0; p < theta0.size(); ++p) {
    const double want = theta0[p] - 0.1 * exact.param_mean[p];
    EXPECT_NEAR(result.final_weights[0][p], want, 1e-13 * (1 + std::abs(want)));
    g_sq += exact.param_mean[p] * exact.param_mean[p];
  }
  EXPECT_NEAR(result.rows[0].minibatch_grad_norm_sq, g_sq, 1e-12 * g_sq);
  EXPECT_NEAR(result.rows[0].minibatch_loss, exact.loss, 1e-13 * exact.loss);
  EXPECT_DOUBLE_EQ(*result.rows[0].trace_cov, exact.trace_cov);
  EXPECT_DOUBLE_EQ(result.rows[0].train_loss, exact.loss);
}

/// One step from a common start: E‖θ₁ − E θ₁‖² = λ² c(b) tr Σ (without
/// replacement) or λ² tr Σ / b (with); checked by Monte-Carlo over replicas
/// against the exact profile, within five standard errors.
void check_one_step_variance(Sampling sampling) {
  const Dataset data = random_dataset(24, 3, 2, Loss::squared, 11);
  const Model model = random_model({3, 2}, true, 12);
  const double lr = 0.3;
  const std::int64_t b = 5;
  SweepConfig config;
  config.batch_sizes = {b};
  config.lrs = {lr};
  config.replicas = 20000;
  config.steps = 1;
  config.log_every = 1;
  config.sampling = sampling;
  config.seed = 2024;
  Sweep sweep(model, data, nullptr, config);
  sweep.run();
  const SweepResult result = sweep.result();
  const Profile exact = profile_cpu(model, data, {});
  const double factor = sampling == Sampling::with_replacement
                            ? 1.0 / static_cast<double>(b)
                            : without_replacement_factor(data.n, b);
  const double want = lr * lr * factor * exact.trace_cov;

  // The sample variance and its standard error from the per-replica terms.
  const std::size_t p_count = result.final_weights[0].size();
  std::vector<double> mean(p_count, 0.0);
  for (const auto& w : result.final_weights) {
    for (std::size_t p = 0; p < p_count; ++p) mean[p] += w[p] / static_cast<double>(config.replicas);
  }
  std::vector<double> squares;
  for (const auto& w : result.final_weights) {
    double sq = 0;
    for (std::size_t p = 0; p < p_count; ++p) sq += (w[p] - mean[p]) * (w[p] - mean[p]);
    squares.push_back(sq);
  }
  const double r = static_cast<double>(config.replicas);
  const double got = std::accumulate(squares.begin(), squares.end(), 0.0) / (r - 1);
  double spread = 0;
  for (double sq : squares) spread += (sq - got) * (sq - got);
  const double standard_error = std::sqrt(spread / (r - 1) / r);
  EXPECT_NEAR(got, want, 5 * standard_error) << "standard error " << standard_error;
  EXPECT_LT(standard_error, 0.05 * want);  // the test has power
  // The engine's own across-replica statistics say the same.
  const GridPointSummary& point = result.grid[0];
  EXPECT_NEAR(*point.weight_var, got, 1e-10 * got);
  EXPECT_NEAR(*point.trajectory[0].grad_var * lr * lr, want, 5 * standard_error);
  EXPECT_NEAR(*point.trajectory[0].expected_minibatch_noise * lr * lr, want, 1e-12 * want);
}

TEST(Sweep, OneStepVarianceWithoutReplacementIsCbTimesTraceCov) {
  check_one_step_variance(Sampling::without_replacement);
}

TEST(Sweep, OneStepVarianceWithReplacementIsTraceCovOverB) {
  check_one_step_variance(Sampling::with_replacement);
}

/// Ziyin et al.'s one-dimensional check: a = 1, λ = 0.5, S = 2, σ² = 1 gives
/// Var(w) = 0.25 and training loss 0.625. On a finite sample the exact
/// stationary variance uses its moments a = mean x², m₄ = mean x⁴:
/// v = λ²σ²a/S / (2λa − λ²(a² + (m₄ − a²)/S)), which is 0.25 when m₄ = 3a².
TEST(Sweep, ZiyinOneDimensionalStationaryVarianceAndLoss) {
  const std::int64_t n = 8192;
  Dataset data;
  data.n = n;
  data.d = 1;
  data.k = 1;
  std::mt19937_64 rng(17);
  std::normal_distribution<double> normal;
  for (std::int64_t i = 0; i < n; ++i) data.x.push_back(normal(rng));
  data.y.assign(static_cast<std::size_t>(n), 0.0);  // w* = 0; the noise is the label noise
  double a = 0, m4 = 0;
  for (double x : data.x) a += x * x / static_cast<double>(n);
  for (double& x : data.x) x /= std::sqrt(a);  // a = 1 exactly (up to rounding)
  for (double x : data.x) m4 += x * x * x * x / static_cast<double>(n);
  const double lambda = 0.5, s = 2, sigma = 1;
  const double v = lambda * lambda * sigma * sigma / s /
                   (2 * lambda - lambda * lambda * (1 + (m4 - 1) / s));

  Model model;
  model.layers.push_back({1, 1, {0.0}, {}});
  SweepConfig config;
  config.batch_sizes = {2};
  config.lrs = {lambda};
  config.replicas = 128;
  config.steps = 4000;
  config.log_every = 20;  // about independent draws of w: the chain contracts by 0.5 a step
  config.label_noise = sigma;
  config.profile = false;
  Sweep sweep(model, data, nullptr, config);
  sweep.run();
  const SweepResult result = sweep.result();
  double w_sq = 0;
  std::int64_t count = 0;
  for (const SweepRow& row : result.rows) {
    if (2 * row.step >= config.steps) {
      w_sq += row.weight_norm_sq;
      ++count;
    }
  }
  w_sq /= static_cast<double>(count);
  EXPECT_NEAR(v, 0.25, 0.02);            // this sample is close to Gaussian
  EXPECT_NEAR(w_sq, v, 0.05 * v);        // Monte-Carlo error ≈ 1.3%
  EXPECT_NEAR(*result.grid[0].train_loss_mean, 0.5 * (sigma * sigma + v), 0.02 * 0.625);
  EXPECT_NEAR(*result.grid[0].train_loss_mean, 0.625, 0.03 * 0.625);
}

// ---- Divergence and bad input -------------------------------------------------------

TEST(Sweep, DivergingRunsAreReportedNotPropagated) {
  const Dataset data = random_dataset(64, 4, 1, Loss::squared, 21);
  const Model model = random_model({4, 1}, true, 22);
  SweepConfig config;
  config.batch_sizes = {8};
  config.lrs = {0.05, 5.0};  // 5.0 is far past 2/λ_max of X̃ᵀX̃/N
  config.replicas = 3;
  config.steps = 200;
  config.log_every = 20;
  Sweep sweep(model, data, nullptr, config);
  sweep.run();
  const SweepResult result = sweep.result();
  ASSERT_EQ(result.divergences.size(), 3u);
  for (const Divergence& d : result.divergences) {
    EXPECT_GE(d.run, 3);
    EXPECT_LT(d.step, 200);
    EXPECT_FALSE(d.reason.empty());
  }
  EXPECT_EQ(result.grid[0].diverged_fraction, 0.0);
  EXPECT_EQ(result.grid[1].diverged_fraction, 1.0);
  EXPECT_FALSE(result.grid[1].train_loss_mean.has_value());
  EXPECT_TRUE(result.grid[0].train_loss_mean.has_value());
  std::int64_t diverged_rows = 0;
  for (const SweepRow& row : result.rows) {
    diverged_rows += row.diverged;
    if (!row.diverged) EXPECT_TRUE(std::isfinite(row.train_loss) && std::isfinite(row.weight_norm_sq));
  }
  EXPECT_EQ(diverged_rows, 3);
  const std::string csv = sweep_rows_csv(result);
  EXPECT_EQ(csv.find("nan"), std::string::npos);
  EXPECT_EQ(csv.find("inf"), std::string::npos);
}

TEST(Sweep, BadConfigurationsAreInputErrors) {
  const Dataset data = random_dataset(10, 2, 1, Loss::squared, 1);
  const Dataset labels = random_dataset(10, 2, 3, Loss::cross_entropy, 1);
  const Model model = random_model({2, 1}, true, 2);
  const auto make = [&](auto edit) {
    SweepConfig config;
    config.batch_sizes = {2};
    config.lrs = {0.1};
    config.steps = 5;
    config.log_every = 1;
    edit(config);
    return config;
  };
  EXPECT_THROW(Sweep(model, data, nullptr, make([](SweepConfig& c) { c.batch_sizes = {11}; })), InputError);
  EXPECT_THROW(Sweep(model, data, nullptr, make([](SweepConfig& c) { c.lrs = {-0.1}; })), InputError);
  EXPECT_THROW(Sweep(model, data, nullptr, make([](SweepConfig& c) { c.lrs = {NAN}; })), InputError);
  EXPECT_THROW(Sweep(model, data, nullptr, make([](SweepConfig& c) { c.replicas = 0; })), InputError);
  EXPECT_THROW(Sweep(model, data, nullptr, make([](SweepConfig& c) { c.steps = 0; })), InputError);
  EXPECT_THROW(Sweep(model, data, nullptr, make([](SweepConfig& c) { c.momentum = 1; })), InputError);
  EXPECT_THROW(Sweep(model, data, nullptr, make([](SweepConfig& c) { c.log_every = 0; })), InputError);
  const Model classifier = random_model({2, 3}, true, 2);
  EXPECT_THROW(Sweep(classifier, labels, nullptr, make([](SweepConfig& c) {
                 c.loss = Loss::cross_entropy;
                 c.label_noise = 0.1;
               })),
               InputError);
  EXPECT_THROW(Sweep(classifier, data, nullptr, make([](SweepConfig&) {})), InputError);
}

}  // namespace
}  // namespace gradnoise
