// The closed-form batch-size curve against actual minibatches: exhaustive
// enumeration of every b-subset on a tiny problem, and Monte-Carlo sampling
// with and without replacement on a larger one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "brute_force.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::random_dataset;
using testing::random_model;
using testing::relative_error;

/// ‖g_B − G‖² and L_B for the minibatch with the given sample indices.
struct BatchDraw {
  double grad_dev_sq;
  double loss;
};
BatchDraw draw(const PerSample& ps, const std::vector<double>& mean_grad,
               const std::vector<std::int64_t>& batch) {
  const double inv_b = 1.0 / static_cast<double>(batch.size());
  double dev_sq = 0, loss = 0;
  for (std::int64_t j = 0; j < ps.p; ++j) {
    double g = 0;
    for (std::int64_t i : batch) g += ps.grads[i * ps.p + j];
    const double e = g * inv_b - mean_grad[j];
    dev_sq += e * e;
  }
  for (std::int64_t i : batch) loss += ps.loss[i];
  return {dev_sq, loss * inv_b};
}

TEST(CurveExhaustive, EveryBatchOfEverySizeAveragesToTheClosedForm) {
  const std::int64_t n = 9;
  const Model model = random_model({3, 2, 2}, true, 3);
  const Dataset data = random_dataset(n, 3, 2, Loss::cross_entropy, 4);
  ProfileOptions options;
  options.loss = Loss::cross_entropy;
  const Profile prof = profile_cpu(model, data, options);
  const PerSample ps = per_sample_gradients(model, data, Loss::cross_entropy);
  const std::vector<std::int64_t> sizes = parse_batch_sizes("all", n);
  const std::vector<CurvePoint> curve = batch_size_curve(prof, sizes);

  for (std::int64_t b = 1; b <= n; ++b) {
    SCOPED_TRACE("b = " + std::to_string(b));
    // Enumerate all C(n, b) subsets with a selection mask.
    std::vector<bool> mask(static_cast<std::size_t>(n), false);
    std::fill(mask.begin(), mask.begin() + b, true);
    double dev_sum = 0, loss_sq_dev = 0;
    std::int64_t count = 0;
    do {
      std::vector<std::int64_t> batch;
      for (std::int64_t i = 0; i < n; ++i) {
        if (mask[i]) batch.push_back(i);
      }
      const BatchDraw bd = draw(ps, prof.param_mean, batch);
      dev_sum += bd.grad_dev_sq;
      loss_sq_dev += (bd.loss - prof.loss) * (bd.loss - prof.loss);
      ++count;
    } while (std::prev_permutation(mask.begin(), mask.end()));
    const CurvePoint& point = curve[b - 1];
    EXPECT_EQ(point.batch_size, b);
    const double expected = dev_sum / static_cast<double>(count);
    if (b == n) {
      EXPECT_EQ(point.var_without_replacement, 0.0);
      EXPECT_EQ(point.loss_var_without_replacement, 0.0);
      EXPECT_LE(expected, 1e-20 * prof.mean_sample_grad_norm_sq);
    } else {
      EXPECT_LE(relative_error(point.var_without_replacement, expected), 1e-10);
      EXPECT_LE(relative_error(point.loss_var_without_replacement,
                               loss_sq_dev / static_cast<double>(count)),
                1e-10);
    }
  }
}

TEST(CurveMonteCarlo, SampledMinibatchesMatchWithinStandardErrors) {
  const std::int64_t n = 50;
  const Model model = random_model({4, 3}, true, 8);
  const Dataset data = random_dataset(n, 4, 3, Loss::squared, 9, 1.0);
  const Profile prof = profile_cpu(model, data, {});
  const PerSample ps = per_sample_gradients(model, data, Loss::squared);
  const std::vector<std::int64_t> sizes = {1, 5, 17, 49};
  const std::vector<CurvePoint> curve = batch_size_curve(prof, sizes);

  std::mt19937_64 rng(2024);
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::uniform_int_distribution<std::int64_t> uniform(0, n - 1);
  const int draws = 4000;
  for (std::size_t s = 0; s < sizes.size(); ++s) {
    const std::int64_t b = sizes[s];
    SCOPED_TRACE("b = " + std::to_string(b));
    for (const bool replace : {false, true}) {
      double sum = 0, sum_sq = 0;
      for (int r = 0; r < draws; ++r) {
        std::vector<std::int64_t> batch;
        if (replace) {
          for (std::int64_t i = 0; i < b; ++i) batch.push_back(uniform(rng));
        } else {
          std::iota(order.begin(), order.end(), 0);
          std::shuffle(order.begin(), order.end(), rng);
          batch.assign(order.begin(), order.begin() + b);
        }
        const double v = draw(ps, prof.param_mean, batch).grad_dev_sq;
        sum += v;
        sum_sq += v * v;
      }
      const double mean = sum / draws;
      const double std_err = std::sqrt((sum_sq / draws - mean * mean) / draws);
      const double predicted =
          replace ? curve[s].var_with_replacement : curve[s].var_without_replacement;
      EXPECT_NEAR(mean, predicted, 4.0 * std_err) << (replace ? "with" : "without") << " replacement";
    }
  }
}

TEST(CurveFactor, ClosedFormValues) {
  EXPECT_DOUBLE_EQ(without_replacement_factor(10, 1), 1.0);
  EXPECT_EQ(without_replacement_factor(10, 10), 0.0);
  EXPECT_DOUBLE_EQ(without_replacement_factor(10, 4), 6.0 / 36.0);
  EXPECT_THROW(without_replacement_factor(10, 0), InputError);
  EXPECT_THROW(without_replacement_factor(10, 11), InputError);
}

TEST(CurveBatchSizes, ParsesAllPow2AndLists) {
  EXPECT_EQ(parse_batch_sizes("all", 4), (std::vector<std::int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(parse_batch_sizes("pow2", 10), (std::vector<std::int64_t>{1, 2, 4, 8, 10}));
  EXPECT_EQ(parse_batch_sizes("pow2", 8), (std::vector<std::int64_t>{1, 2, 4, 8}));
  EXPECT_EQ(parse_batch_sizes("3,1,10", 10), (std::vector<std::int64_t>{3, 1, 10}));
  EXPECT_THROW(parse_batch_sizes("0,2", 10), InputError);
  EXPECT_THROW(parse_batch_sizes("11", 10), InputError);
  EXPECT_THROW(parse_batch_sizes("2,,3", 10), InputError);
  EXPECT_THROW(parse_batch_sizes("10,2,10", 10), InputError);  // a duplicate row otherwise
  EXPECT_THROW(parse_batch_sizes("two", 10), InputError);
  EXPECT_THROW(parse_batch_sizes("", 10), InputError);
}

}  // namespace
}  // namespace gradnoise
