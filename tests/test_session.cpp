// The session (gradnoise::Profiler) against the one-shot functions it
// replaces: the same bits for the profile and the products, call after call,
// with the data kept alive by the session and its operators.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "gradnoise/covariance.hpp"
#include "gradnoise/curvature.hpp"
#include "gradnoise/cuda.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/session.hpp"
#include "backend.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::random_dataset;
using testing::random_model;

SessionOptions cpu_session(Loss loss, std::int64_t chunk_rows) {
  SessionOptions options;
  options.loss = loss;
  options.device = Device::cpu;
  options.chunk_rows = chunk_rows;
  options.threads = 2;
  return options;
}

TEST(Session, RepeatedProfilesEqualTheOneShotProfileBitForBit) {
  for (const Loss loss : all_losses()) {
    SCOPED_TRACE(loss_name(loss));
    const Dataset data = random_dataset(97, 5, 3, loss, 3);
    Profiler session(data, cpu_session(loss, 16));
    EXPECT_EQ(session.device(), "cpu");
    EXPECT_EQ(session.chunk_rows(), 16);
    for (unsigned seed = 1; seed <= 3; ++seed) {  // θ changes between calls, the data stays
      const Model model = random_model({5, 4, 3}, true, seed);
      ProfileOptions options;
      options.loss = loss;
      options.device = Device::cpu;
      options.chunk_rows = 16;
      options.threads = 2;
      options.param_stats = true;
      const Profile want = profile(model, data, options);
      const Profile got = session.profile(model, true);
      EXPECT_EQ(got.trace_cov, want.trace_cov);
      EXPECT_EQ(got.grad_norm_sq, want.grad_norm_sq);
      EXPECT_EQ(got.loss, want.loss);
      EXPECT_EQ(got.param_mean, want.param_mean);
      EXPECT_EQ(got.param_var, want.param_var);
    }
  }
}

TEST(Session, ProductsEqualTheCpuOperatorsAndOutliveTheCallersData) {
  const Loss loss = Loss::cross_entropy;
  const Model model = random_model({6, 4}, true, 7);
  std::vector<double> v(2 * model.num_params());
  for (std::size_t j = 0; j < v.size(); ++j) v[j] = 0.01 * static_cast<double>(j % 13) - 0.05;
  BlockOperator sigma, hessian;
  std::vector<double> want_sigma(v.size()), want_h(v.size()), mean_grad;
  {
    auto data = std::make_shared<Dataset>(random_dataset(60, 6, 4, loss, 9));
    Profiler session(data, cpu_session(loss, 8));
    mean_grad = session.profile(model).param_mean;
    CovarianceOperator(model, *data, loss, mean_grad, 8).apply(v.data(), want_sigma.data(), 2);
    HessianOperator(model, *data, loss, false, 8).apply(v.data(), want_h.data(), 2);
    std::vector<double> got(v.size());
    session.cov_apply(model, mean_grad, v.data(), got.data(), 2);
    EXPECT_EQ(got, want_sigma);
    session.hessian_apply(model, false, v.data(), got.data(), 2);
    EXPECT_EQ(got, want_h);
    sigma = session.covariance_operator(model, mean_grad);
    hessian = session.hessian_operator(model, false);
  }  // the caller's pointer and the session are gone; the operators keep the data
  std::vector<double> got(v.size());
  sigma(v.data(), got.data(), 2);
  EXPECT_EQ(got, want_sigma);
  hessian(v.data(), got.data(), 2);
  EXPECT_EQ(got, want_h);
}

// ĜᵀΣĜ, the batch tests' product, is Ĝᵀ(ΣĜ) whichever way a backend forms it.
TEST(Session, GradCovGradIsTheQuadraticFormOfSigma) {
  const Loss loss = Loss::binary_cross_entropy;
  const Model model = random_model({5, 3, 2}, true, 2);
  const Dataset data = random_dataset(80, 5, 2, loss, 4);
  Profiler session(data, cpu_session(loss, 32));
  const Profile prof = session.profile(model);
  std::vector<double> unit = prof.param_mean;
  double norm = 0;
  for (double g : unit) norm += g * g;
  for (double& g : unit) g /= std::sqrt(norm);
  std::vector<double> sigma_unit(unit.size());
  session.cov_apply(model, prof.param_mean, unit.data(), sigma_unit.data(), 1);
  double quadratic = 0;
  for (std::size_t j = 0; j < unit.size(); ++j) quadratic += unit[j] * sigma_unit[j];
  EXPECT_NEAR(session.grad_cov_grad_operator(model, prof.param_mean)(unit), quadratic,
              1e-12 * quadratic);
}

TEST(Session, DeviceChoiceIsMadeOnceAndRefusedClearly) {
  const Dataset data = random_dataset(10, 2, 1, Loss::squared, 1);
  EXPECT_THROW(Profiler(std::shared_ptr<const DataSource>(), {}), InputError);
  EXPECT_EQ(detail::resolve_device(Device::cpu), detail::Place::cpu);
  if (cuda_device_count() > 0) {
    EXPECT_EQ(detail::resolve_device(Device::automatic), detail::Place::cuda);
  } else {
    EXPECT_EQ(detail::resolve_device(Device::automatic), detail::Place::cpu);
    SessionOptions cuda;
    cuda.device = Device::cuda;
    try {
      Profiler session(data, cuda);
      FAIL() << "--device cuda without a GPU must be refused";
    } catch (const RuntimeError& e) {
      EXPECT_NE(std::string(e.what()).find("--device cuda"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace gradnoise

namespace gradnoise {
namespace {

// Inputs near 1e200 overflow the float64 sums of squares: the profile is an
// error that names the cause, never a report of NaNs (issue 14, item 3).
TEST(Session, OverflowingSumsAreAnErrorNotAResult) {
  for (const Loss loss : all_losses()) {
    SCOPED_TRACE(loss_name(loss));
    const Dataset data = testing::random_dataset(40, 3, 2, loss, 1, 1e200);
    const Model model = testing::random_model({3, 2}, true, 2);
    ProfileOptions options;
    options.loss = loss;
    options.device = Device::cpu;
    try {
      profile(model, data, options);
      FAIL() << "an overflowing profile must be refused";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("standardise"), std::string::npos) << e.what();
    }
    Profiler session(data, cpu_session(loss, 16));
    EXPECT_THROW(session.profile(model), InputError);
  }
}

}  // namespace
}  // namespace gradnoise
