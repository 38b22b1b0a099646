#include <gtest/gtest.h>

#include <cmath>

#include "gradnoise/error.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "cli/inputs.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::random_dataset;
using testing::random_model;

TEST(Model, FlatteningFollowsMathMdOrder) {
  Model model = random_model({2, 3, 1}, true, 1);
  model.layers[1].bias.clear();  // a missing bias takes no slot
  ASSERT_EQ(model.num_params(), 2 * 3 + 3 + 3 * 1);
  const std::vector<double> theta = model.flatten();
  EXPECT_EQ(theta[0], model.layers[0].weight[0]);
  EXPECT_EQ(theta[1], model.layers[0].weight[1]);  // W_1 row-major: (0, 1)
  EXPECT_EQ(theta[6], model.layers[0].bias[0]);
  EXPECT_EQ(theta[9], model.layers[1].weight[0]);
  EXPECT_EQ(model.param_offset(1), 9);
  Model copy = model;
  std::vector<double> shifted = theta;
  for (double& v : shifted) v += 1.0;
  copy.unflatten(shifted);
  EXPECT_EQ(copy.flatten(), shifted);
  EXPECT_THROW(copy.unflatten(std::vector<double>(3)), InputError);
}

TEST(Model, ValidateRejectsBrokenChains) {
  Model model = random_model({2, 3, 1}, true, 1);
  model.layers[1].in = 4;
  model.layers[1].weight.resize(4);
  EXPECT_THROW(model.validate(), InputError);
  Model nan_bias = random_model({2, 3}, true, 1);
  nan_bias.layers[0].bias[2] = std::nan("");
  EXPECT_THROW(nan_bias.validate(), InputError);
  EXPECT_THROW(Model{}.validate(), InputError);
}

TEST(Model, GaussianInitIsSeededAndScaled) {
  const std::vector<std::int64_t> widths = {400, 300, 10};
  const Model a = make_model(widths, true, Init::gaussian, 42);
  const Model b = make_model(widths, true, Init::gaussian, 42);
  const Model c = make_model(widths, true, Init::gaussian, 43);
  EXPECT_EQ(a.flatten(), b.flatten());
  EXPECT_NE(a.flatten(), c.flatten());
  // Var(W_1) = 1/400 over 120000 draws: relative standard error ≈ 0.4 %.
  double sum_sq = 0;
  for (double w : a.layers[0].weight) sum_sq += w * w;
  const double var = sum_sq / static_cast<double>(a.layers[0].weight.size());
  EXPECT_NEAR(var * 400.0, 1.0, 0.02);
  for (double v : a.layers[0].bias) EXPECT_EQ(v, 0.0);
  const Model zeros = make_model(widths, false, Init::zeros, 0);
  EXPECT_FALSE(zeros.layers[0].has_bias());
  for (double w : zeros.flatten()) EXPECT_EQ(w, 0.0);
  EXPECT_THROW(make_model(widths, true, Init::lstsq, 0), InputError);
  EXPECT_THROW(cli::parse_init("he"), InputError);  // the CLI's name parser
}

TEST(Model, LeastSquaresFitZeroesTheGradient) {
  const Dataset data = random_dataset(200, 5, 3, Loss::squared, 5, 0.7);
  for (const bool bias : {true, false}) {
    SCOPED_TRACE(bias ? "bias" : "no bias");
    const Model fitted = fit_least_squares(data, bias);
    ASSERT_EQ(fitted.num_layers(), 1);
    EXPECT_EQ(fitted.layers[0].has_bias(), bias);
    const Profile at_min = profile_cpu(fitted, data, {});
    const Profile at_zero = profile_cpu(make_model(std::vector<std::int64_t>{5, 3}, bias, Init::zeros, 0), data, {});
    // The normal equations hold: G = (1/N) X̃ᵀ(X̃W − Y) = 0 up to rounding.
    EXPECT_LE(at_min.grad_norm_sq, 1e-24 * at_zero.grad_norm_sq);
    EXPECT_LT(at_min.loss, at_zero.loss);
    EXPECT_GT(at_min.trace_cov, 0.0);
  }
  const Dataset labelled = random_dataset(20, 5, 3, Loss::cross_entropy, 5);
  EXPECT_THROW(fit_least_squares(labelled, true), InputError);
}

}  // namespace
}  // namespace gradnoise
