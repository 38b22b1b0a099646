// A GPU session keeps its data on the device (SessionOptions::gpu_resident):
// every pass after the first reads the resident copy. These tests compare it,
// call after call, with the float64 CPU session on data that float32 holds
// exactly, so the only differences are the order of the float64 sums.
// They skip without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "gradnoise/cuda.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/session.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::all_near;
using testing::random_dataset;
using testing::random_model;
using testing::relative_error;

/// `data` with every input and real target rounded to float32, so a float32
/// resident copy holds exactly the values the CPU reads.
Dataset rounded_to_float32(Dataset data) {
  for (double& value : data.x) value = static_cast<double>(static_cast<float>(value));
  for (double& value : data.y) value = static_cast<double>(static_cast<float>(value));
  return data;
}

SessionOptions session_options(Loss loss, Device device, GpuDtype dtype) {
  SessionOptions options;
  options.loss = loss;
  options.device = device;
  options.chunk_rows = 64;  // several chunks for the pipeline's resident feeder
  options.threads = 2;
  options.gpu_dtype = dtype;
  return options;
}

void expect_close(const Profile& got, const Profile& want, double tol) {
  EXPECT_LE(relative_error(got.loss, want.loss), tol);
  EXPECT_LE(relative_error(got.loss_var, want.loss_var), tol);
  EXPECT_LE(relative_error(got.grad_norm_sq, want.grad_norm_sq), tol);
  EXPECT_LE(relative_error(got.trace_cov, want.trace_cov), tol);
  EXPECT_LE(relative_error(got.mean_sample_grad_norm_sq, want.mean_sample_grad_norm_sq), tol);
  EXPECT_TRUE(all_near(got.param_mean, want.param_mean, tol, tol * testing::max_abs(want.param_mean)));
  EXPECT_TRUE(all_near(got.param_var, want.param_var, tol, tol * testing::max_abs(want.param_var)));
}

TEST(GpuSession, ResidentProfilesMatchTheCpuSessionCallAfterCall) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (const Loss loss : all_losses()) {
    for (const GpuDtype dtype : {GpuDtype::float32, GpuDtype::float64}) {
      // One layer with K ≤ 16 (the fused kernel reads the resident rows in
      // place) and two layers (the pipeline's chunks are copied from them).
      for (const std::vector<std::int64_t>& widths :
           {std::vector<std::int64_t>{7, 3}, std::vector<std::int64_t>{7, 5, 3}}) {
        SCOPED_TRACE(std::string(loss_name(loss)) + (dtype == GpuDtype::float32 ? " f32 " : " f64 ") +
                     std::to_string(widths.size() - 1) + " layers");
        const auto data = std::make_shared<const Dataset>(
            rounded_to_float32(random_dataset(301, 7, 3, loss, 11)));
        Profiler cpu(data, session_options(loss, Device::cpu, dtype));
        Profiler gpu(data, session_options(loss, Device::cuda, dtype));
        // θ changes, the data stays on the device. From the second fused call
        // on, a profile replays the CUDA graph captured then (new weights go in
        // through the pinned buffer the graph copies from): the later seeds'
        // profiles are replays checked against the CPU.
        for (unsigned seed = 1; seed <= 3; ++seed) {
          const Model model = random_model(widths, true, seed);
          const Profile want = cpu.profile(model, true);
          const Profile first = gpu.profile(model, true);
          const Profile again = gpu.profile(model, true);
          expect_close(first, want, 1e-9);
          EXPECT_EQ(again.trace_cov, first.trace_cov);  // bit-identical run to run
          EXPECT_EQ(again.param_mean, first.param_mean);
          EXPECT_EQ(again.param_var, first.param_var);
        }
      }
    }
  }
}

// The session keeps the fused kernel's buffers between calls; a call with
// another shape, bias or param_stats must not reuse what does not fit.
TEST(GpuSession, KeptBuffersFollowTheModelFromCallToCall) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const Loss loss = Loss::cross_entropy;
  const auto data = std::make_shared<const Dataset>(
      rounded_to_float32(random_dataset(300, 7, 3, loss, 4)));
  Profiler cpu(data, session_options(loss, Device::cpu, GpuDtype::float32));
  Profiler gpu(data, session_options(loss, Device::cuda, GpuDtype::float32));
  struct Step {
    std::vector<std::int64_t> widths;
    bool bias, param_stats;
  };
  for (const Step& step : {Step{{7, 3}, true, false}, Step{{7, 3}, false, false},
                           Step{{7, 3}, true, true}, Step{{7, 5, 3}, true, false},
                           Step{{7, 3}, true, false}}) {
    const Model model = random_model(step.widths, step.bias, 9);
    SCOPED_TRACE(std::to_string(step.widths.size() - 1) + " layers" + (step.bias ? " bias" : "") +
                 (step.param_stats ? " param stats" : ""));
    expect_close(gpu.profile(model, step.param_stats), cpu.profile(model, step.param_stats), 1e-9);
  }
}

TEST(GpuSession, ResidentProductsMatchTheCpuSession) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const Loss loss = Loss::cross_entropy;
  const Model model = random_model({6, 5, 4}, true, 3);
  const auto data = std::make_shared<const Dataset>(
      rounded_to_float32(random_dataset(257, 6, 4, loss, 5)));
  Profiler cpu(data, session_options(loss, Device::cpu, GpuDtype::float32));
  Profiler gpu(data, session_options(loss, Device::cuda, GpuDtype::float32));
  const std::vector<double> mean_grad = cpu.profile(model).param_mean;
  std::vector<double> v(3 * model.num_params());
  for (std::size_t j = 0; j < v.size(); ++j) v[j] = std::sin(0.7 * static_cast<double>(j));
  std::vector<double> want(v.size()), got(v.size()), again(v.size());
  cpu.cov_apply(model, mean_grad, v.data(), want.data(), 3);
  gpu.cov_apply(model, mean_grad, v.data(), got.data(), 3);
  EXPECT_TRUE(all_near(got, want, 1e-9, 1e-12 * testing::max_abs(want)));
  // The second pass at the same θ reads the session's forward cache: the same bits.
  gpu.cov_apply(model, mean_grad, v.data(), again.data(), 3);
  EXPECT_EQ(again, got);
  cpu.hessian_apply(model, false, v.data(), want.data(), 3);
  gpu.hessian_apply(model, false, v.data(), got.data(), 3);
  EXPECT_TRUE(all_near(got, want, 1e-9, 1e-12 * testing::max_abs(want)));
  gpu.hessian_apply(model, false, v.data(), again.data(), 3);
  EXPECT_EQ(again, got);
  // Another θ must not be served from the cache of the first.
  Model moved = model;
  for (double& w : moved.layers[0].weight) w *= 1.5;
  const std::vector<double> moved_grad = cpu.profile(moved).param_mean;
  cpu.cov_apply(moved, moved_grad, v.data(), want.data(), 3);
  gpu.cov_apply(moved, moved_grad, v.data(), got.data(), 3);
  EXPECT_TRUE(all_near(got, want, 1e-9, 1e-12 * testing::max_abs(want)));
  cpu.hessian_apply(moved, true, v.data(), want.data(), 3);
  gpu.hessian_apply(moved, true, v.data(), got.data(), 3);
  EXPECT_TRUE(all_near(got, want, 1e-9, 1e-12 * testing::max_abs(want)));
}

// Wide layers take the fused kernel's other layouts (policy.hpp
// fused_layout): K = 16 at D = 1024 keeps its sums in the block's slab of
// device memory, D = 4099 has rows that are not a multiple of 16 bytes (the
// tiles are staged value by value), D = 9001 has one- or two-row tiles. Each
// is profiled twice (the second call replays the captured graph).
TEST(GpuSession, WideLayersTakeEveryLayoutOfTheFusedKernel) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  struct Shape {
    std::int64_t d, k;
    Loss loss;
  };
  for (const Shape& shape : {Shape{1024, 16, Loss::cross_entropy}, Shape{1000, 5, Loss::squared},
                             Shape{4099, 3, Loss::binary_cross_entropy}, Shape{9001, 1, Loss::squared}}) {
    SCOPED_TRACE("D=" + std::to_string(shape.d) + " K=" + std::to_string(shape.k));
    const auto data = std::make_shared<const Dataset>(
        rounded_to_float32(random_dataset(700, shape.d, shape.k, shape.loss, 8, 0.3)));
    Profiler cpu(data, session_options(shape.loss, Device::cpu, GpuDtype::float32));
    Profiler gpu(data, session_options(shape.loss, Device::cuda, GpuDtype::float32));
    const Model model = random_model({shape.d, shape.k}, true, 5);
    const Profile want = cpu.profile(model, false);
    expect_close(gpu.profile(model, false), want, 1e-9);
    expect_close(gpu.profile(model, false), want, 1e-9);
  }
}

// ‖G‖²/tr Σ ≥ 1e6 on a float32 resident copy: tr Σ stays within docs/MATH.md's
// 1e-6 of the float64 CPU engine on the same (float32-exact) values.
TEST(GpuSession, IllConditionedResidentFloat32StaysWithinTheContract) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  auto problem = testing::ill_conditioned_problem(4000, 20, 3, 1e-4, 1e-4, 5, 6);
  const auto data = std::make_shared<const Dataset>(rounded_to_float32(std::move(problem.data)));
  Profiler cpu(data, session_options(Loss::squared, Device::cpu, GpuDtype::float32));
  Profiler gpu(data, session_options(Loss::squared, Device::cuda, GpuDtype::float32));
  const Profile want = cpu.profile(problem.model);
  ASSERT_GE(want.grad_norm_sq / want.trace_cov, 1e6);
  const Profile got = gpu.profile(problem.model);
  EXPECT_LE(relative_error(got.trace_cov, want.trace_cov), 1e-6);
  EXPECT_LE(relative_error(got.grad_norm_sq, want.grad_norm_sq), 1e-9);
}

TEST(GpuSession, Float32OverflowIsAnInputErrorThatNamesTheFix) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  Dataset data = random_dataset(40, 3, 1, Loss::squared, 2);
  data.x[5 * 3 + 2] = 1e39;  // finite in float64, not in float32
  const Model model = random_model({3, 1}, true, 1);
  Profiler f32(data, session_options(Loss::squared, Device::cuda, GpuDtype::float32));
  try {
    f32.profile(model);
    ADD_FAILURE() << "expected an InputError";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("row 5, column 2"), std::string::npos) << what;
    EXPECT_NE(what.find("--gpu-dtype float64"), std::string::npos) << what;
  }
  Profiler f64(data, session_options(Loss::squared, Device::cuda, GpuDtype::float64));
  Profiler cpu(data, session_options(Loss::squared, Device::cpu, GpuDtype::float64));
  expect_close(f64.profile(model, true), cpu.profile(model, true), 1e-9);
}

}  // namespace
}  // namespace gradnoise
