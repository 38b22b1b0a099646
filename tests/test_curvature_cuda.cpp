// The GPU's part of the noise's shape: Hessian-vector products
// (hessian_operator_cuda) and the GPU-backed curvature report and batch tests.
//
// On every machine: the exact sequence of column-major GEMM calls and row
// arithmetic that the GPU runs (core/hessian_pass.hpp) is executed through
// BLAS in column-major form, as cuBLAS would take it, and must reproduce the
// CPU HessianOperator; the external-operator paths of curvature() and
// batch_tests() are checked with CPU operators. On a GPU machine: the GPU
// operators against the CPU ones (tests named Gpu*, skipped without a device).
#include <gtest/gtest.h>
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "chunk_pass.hpp"
#include "gradnoise/covariance.hpp"
#include "cuda_entry.hpp"
#include "gradnoise/curvature.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "gradnoise/report.hpp"
#include "hessian_host.hpp"
#include "column_major_blas.hpp"
#include "hessian_pass.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::all_near;
using testing::max_abs;
using testing::random_dataset;
using testing::random_model;
using testing::relative_error;

#define GN_REQUIRE_GPU()                                                        \
  do {                                                                          \
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device present";     \
  } while (0)

std::vector<double> directions(std::int64_t p, std::int64_t cols, double phase) {
  std::vector<double> v(static_cast<std::size_t>(p * cols));
  for (std::size_t j = 0; j < v.size(); ++j) v[j] = std::sin(0.37 * static_cast<double>(j) + phase);
  return v;
}

// ---- The GPU's GEMM sequence through column-major BLAS ------------------------

/// hessian_pass.hpp's executor on the CPU as the GPU runs it: each row-major
/// GEMM turned into cblas_dgemm(CblasColMajor, …) with exactly the arguments
/// cublasDgemm gets, and the kernels' index arithmetic.
struct ColumnMajorBlasExec : detail::HostRowOps {
  void gemm(const detail::RowMajorGemm& row_major, const double* a, const double* b, double* c) {
    testing::column_major_dgemm(row_major, a, b, c);
  }
};

/// H·V as hessian_cuda.cu computes it (same packing, chunk steps, unpacking),
/// with host buffers and ColumnMajorBlasExec in place of the device.
void emulated_gpu_hessian(const Model& model, const DataSource& data, Loss loss, bool gauss_newton,
                          std::int64_t chunk, const double* in, double* out, std::int64_t cols) {
  ColumnMajorBlasExec exec;
  detail::hessian_apply_host(exec, model, data, loss, gauss_newton, chunk, in, out, cols);
}

TEST(HessianPass, ColumnMajorMappingMatchesRowMajorBlas) {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  const std::int64_t m = 5, n = 7, k = 3, pad = 2;
  for (const bool ta : {false, true}) {
    for (const bool tb : {false, true}) {
      // Stored row-major with padded leading dimensions.
      const std::int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
      const std::int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
      const std::int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = n + pad;
      std::vector<double> a(static_cast<std::size_t>(a_rows * lda)), b(static_cast<std::size_t>(b_rows * ldb));
      std::vector<double> c0(static_cast<std::size_t>(m * ldc));
      for (double& x : a) x = normal(rng);
      for (double& x : b) x = normal(rng);
      for (double& x : c0) x = normal(rng);
      std::vector<double> want = c0, got = c0;
      cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                  static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 0.5, a.data(),
                  static_cast<int>(lda), b.data(), static_cast<int>(ldb), 0.25, want.data(),
                  static_cast<int>(ldc));
      ColumnMajorBlasExec exec;
      detail::row_major_gemm(exec, ta, tb, m, n, k, 0.5, a.data(), lda, b.data(), ldb, 0.25, got.data(), ldc);
      EXPECT_TRUE(all_near(got, want, 1e-14, 1e-14)) << "trans_a " << ta << ", trans_b " << tb;
    }
  }
}

struct PassCase {
  std::vector<std::int64_t> widths;
  Loss loss;
  bool bias;
};

std::vector<PassCase> pass_cases() {
  std::vector<PassCase> cases;
  for (const auto& widths : std::vector<std::vector<std::int64_t>>{{9, 3}, {7, 5, 4}, {6, 4, 5, 3}}) {
    for (const Loss loss : all_losses()) {
      for (const bool bias : {true, false}) cases.push_back({widths, loss, bias});
    }
  }
  return cases;
}

std::string case_name(const PassCase& c, bool gauss_newton) {
  return std::to_string(c.widths.size() - 1) + " layers, " +
         loss_name(c.loss) + (c.bias ? ", bias" : ", no bias") +
         (gauss_newton ? ", gauss-newton" : ", full");
}

// The GPU's GEMM calls and kernels' index arithmetic, run through column-major
// BLAS, reproduce the CPU operator for every model kind, both Hessians, with
// several chunks (the last one short) and one-row chunks.
TEST(HessianPass, ColumnMajorEmulationMatchesCpuOperator) {
  for (const PassCase& c : pass_cases()) {
    for (const bool gauss_newton : {false, true}) {
      SCOPED_TRACE(case_name(c, gauss_newton));
      const Model model = random_model(c.widths, c.bias, 41);
      const Dataset data = random_dataset(211, c.widths.front(), c.widths.back(), c.loss, 42, 0.5);
      const std::int64_t p = model.num_params();
      for (const std::int64_t cols : {std::int64_t{1}, std::int64_t{4}}) {
        for (const std::int64_t chunk : {std::int64_t{50}, std::int64_t{1}, std::int64_t{4096}}) {
          const std::vector<double> v = directions(p, cols, 0.3 * static_cast<double>(cols));
          std::vector<double> want(v.size()), got(v.size(), NAN);
          HessianOperator(model, data, c.loss, gauss_newton, 64).apply(v.data(), want.data(), cols);
          emulated_gpu_hessian(model, data, c.loss, gauss_newton, chunk, v.data(), got.data(), cols);
          EXPECT_TRUE(all_near(got, want, 1e-11, 1e-13 * max_abs(want)))
              << cols << " columns, chunk " << chunk;
        }
      }
    }
  }
}

TEST(HessianPass, ChunkRowsRespectBudgetRequestAndN) {
  const Model model = random_model({20, 8, 3}, true, 1);
  EXPECT_EQ(detail::hessian_doubles_per_row(model, 5), 2 * 5 * (8 + 3));
  EXPECT_EQ(detail::hessian_chunk_rows(model, 5, 4096, 100000, 110 * 1000), 1000);
  EXPECT_EQ(detail::hessian_chunk_rows(model, 5, 300, 100000, 110 * 1000), 300);
  EXPECT_EQ(detail::hessian_chunk_rows(model, 5, 4096, 7, 110 * 1000), 7);
  EXPECT_EQ(detail::hessian_chunk_rows(model, 5, 4096, 100000, 10), 1);  // always at least a row
  EXPECT_EQ(detail::hessian_chunk_rows(model, 5, std::int64_t{1} << 40, std::int64_t{1} << 40,
                                       std::int64_t{1} << 50),
            detail::kMaxChunkRows);
  const detail::ChunkFootprint base = detail::chunk_footprint(model, true, false);
  const detail::ChunkFootprint fp = detail::hessian_chunk_footprint(model, Loss::cross_entropy, 5);
  EXPECT_EQ(fp.per_row, base.per_row + 8 * (110 + 3 + 1));
  EXPECT_EQ(fp.fixed, base.fixed + 8 * 4 * 5 * model.num_params());
}

// ---- External operators in curvature() and batch_tests(), on the CPU ----------

TEST(Curvature, ExternalHessianOperatorIsUsedAndRecorded) {
  const Model model = random_model({6, 4, 3}, true, 7);
  const Dataset data = random_dataset(300, 6, 3, Loss::cross_entropy, 8, 0.3);
  ProfileOptions po;
  po.loss = Loss::cross_entropy;
  const Profile prof = profile_cpu(model, data, po);
  CurvatureOptions options;
  options.k = 4;
  const CurvatureReport want = curvature(model, data, po.loss, prof, options);
  EXPECT_EQ(want.hessian_device, "cpu");
  const HessianOperator op(model, data, po.loss, false, 37);
  std::int64_t calls = 0;
  ExternalOperator hessian;
  hessian.apply = [&](const double* in, double* out, std::int64_t cols) {
    ++calls;
    op.apply(in, out, cols);
  };
  hessian.device = "emulated device";
  const CurvatureReport got = curvature(model, data, po.loss, prof, options, {}, hessian);
  EXPECT_EQ(got.hessian_device, "emulated device");
  EXPECT_EQ(calls, got.hessian_eigen_passes + 1 + 1);  // eigensolver, GᵀHG, dense H (P ≤ 256)
  ASSERT_EQ(got.hessian_top_eigenvalues.size(), want.hessian_top_eigenvalues.size());
  EXPECT_TRUE(all_near(got.hessian_top_eigenvalues, want.hessian_top_eigenvalues, 1e-9, 0.0));
  EXPECT_LT(relative_error(got.grad_hessian_grad, want.grad_hessian_grad), 1e-12);
  ASSERT_TRUE(got.trace_hessian_cov && want.trace_hessian_cov);
  EXPECT_LT(relative_error(*got.trace_hessian_cov, *want.trace_hessian_cov), 1e-12);
  EXPECT_EQ(got.trace_hessian, want.trace_hessian);
}

TEST(BatchTests, GradCovGradFromACovarianceOperatorMatchesThePass) {
  const Model model = random_model({5, 4, 2}, true, 9);
  const Dataset data = random_dataset(400, 5, 2, Loss::squared, 10, 0.8);
  ProfileOptions po;
  po.param_stats = true;
  const Profile prof = profile_cpu(model, data, po);
  const std::vector<std::int64_t> sizes = {1, 2, 8, 64, 400};
  const BatchTests want = batch_tests(model, data, po.loss, prof, 0.5, sizes);
  EXPECT_EQ(want.grad_cov_grad_device, "cpu");
  const CovarianceOperator sigma(model, data, po.loss, prof.param_mean, 64);
  const BatchTests got =
      batch_tests(model, data, po.loss, prof, 0.5, sizes, 4096, {sigma.as_block_operator(), "sigma"});
  EXPECT_EQ(got.grad_cov_grad_device, "sigma");
  ASSERT_TRUE(got.grad_cov_grad && want.grad_cov_grad);
  EXPECT_LT(relative_error(*got.grad_cov_grad, *want.grad_cov_grad), 1e-12);
  EXPECT_EQ(got.min_batch_norm_test, want.min_batch_norm_test);
  EXPECT_EQ(got.min_batch_inner_product_test, want.min_batch_inner_product_test);
  EXPECT_EQ(got.min_batch_orthogonality_test, want.min_batch_orthogonality_test);
  EXPECT_TRUE(all_near(got.inner_product, want.inner_product, 1e-12, 0.0));
}

TEST(ShapeReport, SaysWhereHessianProductsAndGradCovGradRan) {
  ShapeResults shape;
  shape.curvature.emplace();
  shape.curvature->hessian_device = "NVIDIA H100 80GB HBM3";
  shape.tests.emplace();
  shape.tests->theta = 0.5;
  nlohmann::ordered_json report;
  add_shape_json(report, shape);
  EXPECT_EQ(report["hessian_device"], "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(report["grad_cov_grad_device"], "cpu");
}

TEST(CudaAvailability, HessianOperatorFailsClearlyWithoutADevice) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  const Model model = random_model({3, 2}, true, 1);
  const Dataset data = random_dataset(10, 3, 2, Loss::squared, 1);
  EXPECT_THROW(hessian_operator_cuda(model, data, Loss::squared, false), RuntimeError);
}

// ---- On the GPU -------------------------------------------------------------------

// H·V on the GPU against the CPU HessianOperator: every model kind, both
// Hessians, one and several columns, several chunks with a short last one.
TEST(GpuHessian, ProductMatchesTheCpuOperator) {
  GN_REQUIRE_GPU();
  for (const PassCase& c : pass_cases()) {
    for (const bool gauss_newton : {false, true}) {
      SCOPED_TRACE(case_name(c, gauss_newton));
      const Model model = random_model(c.widths, c.bias, 31);
      const Dataset data = random_dataset(777, c.widths.front(), c.widths.back(), c.loss, 32, 0.7);
      const std::int64_t p = model.num_params();
      const BlockOperator gpu = hessian_operator_cuda(model, data, c.loss, gauss_newton, 100);
      for (const std::int64_t cols : {std::int64_t{1}, std::int64_t{3}}) {
        const std::vector<double> v = directions(p, cols, 1.0);
        std::vector<double> want(v.size()), got(v.size(), NAN);
        HessianOperator(model, data, c.loss, gauss_newton, 100).apply(v.data(), want.data(), cols);
        gpu(v.data(), got.data(), cols);
        EXPECT_TRUE(all_near(got, want, 1e-10, 1e-12 * max_abs(want))) << cols << " columns";
      }
    }
  }
}

// A wide block (the dense route's identity columns) and one chunk for all rows.
TEST(GpuHessian, DenseMatrixMatchesTheCpuOperator) {
  GN_REQUIRE_GPU();
  const Model model = random_model({12, 8, 5}, true, 3);
  const Dataset data = random_dataset(1500, 12, 5, Loss::cross_entropy, 4, 0.2);
  const std::int64_t p = model.num_params();
  std::vector<double> identity(static_cast<std::size_t>(p * p), 0.0);
  for (std::int64_t j = 0; j < p; ++j) identity[j * p + j] = 1.0;
  std::vector<double> want(identity.size()), got(identity.size(), NAN);
  HessianOperator(model, data, Loss::cross_entropy, false).apply(identity.data(), want.data(), p);
  hessian_operator_cuda(model, data, Loss::cross_entropy, false)(identity.data(), got.data(), p);
  EXPECT_TRUE(all_near(got, want, 1e-10, 1e-12 * max_abs(want)));
}

// DGEMMs without atomics and per-thread kernels: the same product bit for bit.
TEST(GpuHessian, RunsAreBitIdentical) {
  GN_REQUIRE_GPU();
  const Model model = random_model({9, 7, 4}, true, 5);
  const Dataset data = random_dataset(5000, 9, 4, Loss::cross_entropy, 6, 0.3);
  const BlockOperator gpu = hessian_operator_cuda(model, data, Loss::cross_entropy, false, 1024);
  const std::vector<double> v = directions(model.num_params(), 6, 0.5);
  std::vector<double> first(v.size()), second(v.size());
  gpu(v.data(), first.data(), 6);
  gpu(v.data(), second.data(), 6);
  EXPECT_EQ(first, second);
}

TEST(GpuHessian, BadLabelsAreInputErrors) {
  GN_REQUIRE_GPU();
  const Model model = random_model({4, 3}, true, 1);
  Dataset data = random_dataset(300, 4, 3, Loss::cross_entropy, 2);
  const BlockOperator gpu = hessian_operator_cuda(model, data, Loss::cross_entropy, true, 64);
  data.labels[200] = 7;
  const std::vector<double> v = directions(model.num_params(), 1, 0.0);
  std::vector<double> out(v.size());
  EXPECT_THROW(gpu(v.data(), out.data(), 1), InputError);
}

// The curvature report with GPU Hessian-vector products against the CPU one.
TEST(GpuCurvature, ReportMatchesTheCpuReport) {
  GN_REQUIRE_GPU();
  for (const Loss loss : all_losses()) {
    for (const bool gauss_newton : {false, true}) {
      SCOPED_TRACE(loss_name(loss) + (gauss_newton ? ", gn" : ", full"));
      const Model model = random_model({10, 6, 4}, true, 21);
      const Dataset data = random_dataset(2000, 10, 4, loss, 22, 0.4);
      ProfileOptions po;
      po.loss = loss;
      const Profile prof = profile_cpu(model, data, po);
      CurvatureOptions options;
      options.k = 5;
      options.gauss_newton = gauss_newton;
      const CurvatureReport want = curvature(model, data, loss, prof, options);
      const ExternalOperator hessian{hessian_operator_cuda(model, data, loss, gauss_newton),
                                     cuda_device_name()};
      const CurvatureReport got = curvature(model, data, loss, prof, options, {}, hessian);
      EXPECT_EQ(got.hessian_device, cuda_device_name());
      EXPECT_TRUE(got.hessian_eigen_converged);
      EXPECT_TRUE(all_near(got.hessian_top_eigenvalues, want.hessian_top_eigenvalues, 1e-9,
                           1e-12 * max_abs(want.hessian_top_eigenvalues)));
      EXPECT_LT(relative_error(got.grad_hessian_grad, want.grad_hessian_grad), 1e-10);
      ASSERT_TRUE(got.trace_hessian_cov && want.trace_hessian_cov);
      EXPECT_LT(relative_error(*got.trace_hessian_cov, *want.trace_hessian_cov), 1e-10);
      ASSERT_TRUE(got.hessian_frobenius_sq && want.hessian_frobenius_sq);
      EXPECT_LT(relative_error(*got.hessian_frobenius_sq, *want.hessian_frobenius_sq), 1e-10);
      ASSERT_TRUE(got.noise_scale_b_noise && want.noise_scale_b_noise);
      EXPECT_LT(relative_error(*got.noise_scale_b_noise, *want.noise_scale_b_noise), 1e-9);
    }
  }
}

// ĜᵀΣĜ from one GPU Σ product against the CPU pass, and the tests built on it.
TEST(GpuBatchTests, MatchTheCpuTests) {
  GN_REQUIRE_GPU();
  for (const Loss loss : all_losses()) {
    SCOPED_TRACE(loss_name(loss));
    const Model model = random_model({8, 5, 3}, true, 11);
    const Dataset data = random_dataset(1234, 8, 3, loss, 12, 0.6);
    ProfileOptions po;
    po.loss = loss;
    po.param_stats = true;
    const Profile prof = profile_cpu(model, data, po);
    const std::vector<std::int64_t> sizes = {1, 2, 16, 100, 1234};
    const BatchTests want = batch_tests(model, data, loss, prof, 0.3, sizes);
    const ExternalOperator sigma{covariance_operator_cuda(model, data, loss, prof.param_mean, 200),
                                 cuda_device_name()};
    const BatchTests got = batch_tests(model, data, loss, prof, 0.3, sizes, 4096, sigma);
    EXPECT_EQ(got.grad_cov_grad_device, cuda_device_name());
    ASSERT_TRUE(got.grad_cov_grad && want.grad_cov_grad);
    EXPECT_LT(relative_error(*got.grad_cov_grad, *want.grad_cov_grad), 1e-10);
    EXPECT_TRUE(all_near(got.inner_product, want.inner_product, 1e-10, 0.0));
    EXPECT_TRUE(all_near(got.orthogonality, want.orthogonality, 1e-10, 0.0));
    // The smallest passing b may move by one only where a value sits on θ² to rounding.
    EXPECT_LE(std::abs(got.min_batch_inner_product_test - want.min_batch_inner_product_test), 1);
    EXPECT_LE(std::abs(got.min_batch_orthogonality_test - want.min_batch_orthogonality_test), 1);
    EXPECT_EQ(got.min_batch_norm_test, want.min_batch_norm_test);
  }
}

}  // namespace
}  // namespace gradnoise
