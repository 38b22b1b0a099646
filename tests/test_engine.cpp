// The CPU engine against independent references: materialised per-sample
// gradients (brute force), finite differences of the loss, and an
// ill-conditioned case where the naive tr Σ formula would fail.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <tuple>

#include "brute_force.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::all_near;
using testing::max_abs;
using testing::loss_label;
using testing::random_dataset;
using testing::random_model;
using testing::relative_error;

constexpr double kRtol = 1e-10;

struct Case {
  std::string name;
  std::vector<std::int64_t> widths;  // {D, ..., K}
  Loss loss;
  bool bias;
  std::int64_t n;
  std::int64_t chunk_rows;
};

// gtest prints parameters in test listings; a name reads better than bytes.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

class EngineVsBruteForce : public ::testing::TestWithParam<Case> {};

TEST_P(EngineVsBruteForce, EveryStatisticMatches) {
  const Case& c = GetParam();
  const Model model = random_model(c.widths, c.bias, 11);
  const Dataset data = random_dataset(c.n, c.widths.front(), c.widths.back(), c.loss, 7, 0.5);
  ProfileOptions options;
  options.loss = c.loss;
  options.chunk_rows = c.chunk_rows;
  options.param_stats = true;
  const Profile got = profile_cpu(model, data, options);
  const Profile want = profile_brute_force(model, data, c.loss, true);

  EXPECT_EQ(got.n, c.n);
  EXPECT_EQ(got.num_params, model.num_params());
  EXPECT_LE(relative_error(got.loss, want.loss), kRtol);
  EXPECT_LE(relative_error(got.loss_var, want.loss_var), kRtol);
  EXPECT_LE(relative_error(got.grad_norm_sq, want.grad_norm_sq), kRtol);
  EXPECT_LE(relative_error(got.trace_cov, want.trace_cov), kRtol);
  EXPECT_LE(relative_error(got.mean_sample_grad_norm_sq, want.mean_sample_grad_norm_sq), kRtol);
  EXPECT_LE(relative_error(got.noise_scale_simple, want.noise_scale_simple), kRtol);
  ASSERT_EQ(got.layers.size(), want.layers.size());
  for (std::size_t l = 0; l < got.layers.size(); ++l) {
    SCOPED_TRACE(got.layers[l].name);
    EXPECT_EQ(got.layers[l].name, want.layers[l].name);
    EXPECT_EQ(got.layers[l].num_params, want.layers[l].num_params);
    EXPECT_LE(relative_error(got.layers[l].grad_norm_sq, want.layers[l].grad_norm_sq), kRtol);
    EXPECT_LE(relative_error(got.layers[l].trace_cov, want.layers[l].trace_cov), kRtol);
    EXPECT_LE(relative_error(got.layers[l].mean_sample_grad_norm_sq,
                             want.layers[l].mean_sample_grad_norm_sq),
              kRtol);
  }
  // Per slot: relative, with a floor at 1e-13 of the largest entry for slots
  // whose value is a near-cancellation of its neighbours' sizes.
  EXPECT_TRUE(all_near(got.param_mean, want.param_mean, kRtol, 1e-13 * max_abs(want.param_mean)));
  EXPECT_TRUE(all_near(got.param_var, want.param_var, kRtol, 1e-13 * max_abs(want.param_var)));
  // The per-slot variances add up to tr Σ.
  double var_sum = 0;
  for (double v : got.param_var) var_sum += v;
  EXPECT_LE(relative_error(var_sum, got.trace_cov), 1e-12);
}

std::vector<Case> engine_cases() {
  std::vector<Case> cases;
  const std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes = {
      {"Linear", {7, 3}},           {"LinearK1", {5, 1}},
      {"TwoLayer", {6, 4, 3}},      {"Deep", {5, 4, 6, 3, 2}},
  };
  for (const auto& [shape_name, widths] : shapes) {
    for (const Loss loss : all_losses()) {
      if (loss == Loss::cross_entropy && widths.back() < 2) continue;
      for (const bool bias : {true, false}) {
        // 37 rows in chunks of 8 exercises the merge and a short last chunk.
        for (const std::int64_t chunk : {std::int64_t{8}, std::int64_t{4096}}) {
          cases.push_back({shape_name + loss_label(loss) +
                               (bias ? "Bias" : "NoBias") + "Chunk" + std::to_string(chunk),
                           widths, loss, bias, 37, chunk});
        }
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Models, EngineVsBruteForce, ::testing::ValuesIn(engine_cases()), case_name);

TEST(EngineFiniteDifferences, MeanGradientIsTheLossGradient) {
  for (const Loss loss : all_losses()) {
    SCOPED_TRACE(loss_name(loss));
    Model model = random_model({4, 3, 3}, true, 5);
    const Dataset data = random_dataset(20, 4, 3, loss, 9);
    ProfileOptions options;
    options.loss = loss;
    const Profile prof = profile_cpu(model, data, options);
    std::vector<double> theta = model.flatten();
    const double h = 1e-5;
    for (std::size_t j = 0; j < theta.size(); ++j) {
      const double saved = theta[j];
      theta[j] = saved + h;
      model.unflatten(theta);
      const double up = full_loss(model, data, loss);
      theta[j] = saved - h;
      model.unflatten(theta);
      const double down = full_loss(model, data, loss);
      theta[j] = saved;
      const double numeric = (up - down) / (2 * h);
      // Central differences: O(h²) truncation plus O(ε/h) rounding.
      EXPECT_NEAR(prof.param_mean[j], numeric, 1e-7 * (1 + std::abs(numeric))) << "slot " << j;
    }
    model.unflatten(theta);
  }
}

// ‖G‖²/tr Σ ≈ 1e8: inputs far from the origin with tiny spread, weights far from
// the fit. The expanded formula mean‖g_i‖² − ‖G‖² loses about 8 of 16 digits
// here; the engine must keep tr Σ to the brute force's accuracy.
TEST(EngineNumerics, TinyNoiseUnderLargeMeanGradient) {
  const auto [model, data] = testing::ill_conditioned_problem(200, 6, 2, 1e-4, 1e-4, 3, 4);

  ProfileOptions options;
  options.chunk_rows = 64;
  options.param_stats = true;
  const Profile got = profile_cpu(model, data, options);
  const Profile want = profile_brute_force(model, data, Loss::squared, true);
  const double ratio = got.grad_norm_sq / got.trace_cov;
  ASSERT_GE(ratio, 1e6) << "the case must be ill-conditioned to test anything";
  EXPECT_LE(relative_error(got.trace_cov, want.trace_cov), 1e-9) << "‖G‖²/tr Σ = " << ratio;
  EXPECT_LE(relative_error(got.grad_norm_sq, want.grad_norm_sq), 1e-12);
  EXPECT_TRUE(all_near(got.param_var, want.param_var, 1e-8, 1e-12 * max_abs(want.param_var)));
  // The naive difference is visibly worse: this is what the test guards against.
  const double naive = got.mean_sample_grad_norm_sq - got.grad_norm_sq;
  EXPECT_GT(relative_error(naive, want.trace_cov), 100 * relative_error(got.trace_cov, want.trace_cov));
}

TEST(EngineDeterminism, SameInputGivesBitIdenticalResults) {
  const Model model = random_model({30, 8, 5}, true, 1);
  const Dataset data = random_dataset(3000, 30, 5, Loss::cross_entropy, 2);
  ProfileOptions options;
  options.loss = Loss::cross_entropy;
  options.param_stats = true;
  options.chunk_rows = 512;
  const Profile a = profile_cpu(model, data, options);
  const Profile b = profile_cpu(model, data, options);
  testing::expect_bit_identical(a, b);
  // A different chunking changes only the rounding.
  options.chunk_rows = 999;
  const Profile c = profile_cpu(model, data, options);
  EXPECT_LE(relative_error(c.trace_cov, a.trace_cov), 1e-12);
  EXPECT_LE(relative_error(c.grad_norm_sq, a.grad_norm_sq), 1e-12);
}

TEST(EngineEdgeCases, ZeroGradientGivesInfiniteNoiseScale) {
  // Zero weights and zero targets: every δ_i is 0, so G = 0 and tr Σ = 0.
  Model model = random_model({3, 2}, true, 1, 0.0);
  Dataset data = random_dataset(10, 3, 2, Loss::squared, 1);
  for (double& y : data.y) y = 0.0;
  const Profile prof = profile_cpu(model, data, {});
  EXPECT_EQ(prof.grad_norm_sq, 0.0);
  EXPECT_EQ(prof.trace_cov, 0.0);
  EXPECT_TRUE(std::isinf(prof.noise_scale_simple));
}

TEST(EngineEdgeCases, TwoSamplesAreEnoughAndOneIsNot) {
  const Model model = random_model({3, 2}, true, 1);
  const Dataset two = random_dataset(2, 3, 2, Loss::squared, 1);
  const Profile got = profile_cpu(model, two, {});
  const Profile want = profile_brute_force(model, two, Loss::squared, false);
  EXPECT_LE(relative_error(got.trace_cov, want.trace_cov), kRtol);
  const Dataset one = random_dataset(1, 3, 2, Loss::squared, 1);
  EXPECT_THROW(profile_cpu(model, one, {}), InputError);
}

TEST(EngineInputChecks, MismatchesAreInputErrors) {
  const Model model = random_model({3, 2}, true, 1);
  const Dataset wrong_d = random_dataset(10, 4, 2, Loss::squared, 1);
  EXPECT_THROW(profile_cpu(model, wrong_d, {}), InputError);
  const Dataset wrong_k = random_dataset(10, 3, 3, Loss::squared, 1);
  EXPECT_THROW(profile_cpu(model, wrong_k, {}), InputError);
  const Dataset labels = random_dataset(10, 3, 2, Loss::cross_entropy, 1);
  EXPECT_THROW(profile_cpu(model, labels, {}), InputError);  // squared loss, label data
  Dataset out_of_range = labels;
  out_of_range.labels[4] = 2;
  ProfileOptions ce;
  ce.loss = Loss::cross_entropy;
  try {
    profile_cpu(model, out_of_range, ce);
    FAIL() << "a label beyond the outputs must be rejected";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("sample 4"), std::string::npos) << e.what();
  }
  Model bad_weights = model;
  bad_weights.layers[0].weight[1] = std::nan("");
  EXPECT_THROW(profile_cpu(bad_weights, wrong_k, {}), InputError);
  Dataset nan_data = random_dataset(10, 3, 2, Loss::squared, 1);
  nan_data.x[7] = std::numeric_limits<double>::infinity();
  EXPECT_THROW(profile_cpu(model, nan_data, {}), InputError);
}

}  // namespace
}  // namespace gradnoise
