// Σ·V as the GPU computes it (kernels/covariance_cuda.cu), on every machine:
// core/covariance_pass.hpp's GEMMs, the column sums among them, turned into
// exactly the arguments cublasDgemm gets and run through column-major BLAS
// (which rejects an illegal leading dimension as cuBLAS does), with the
// kernels' per-entry arithmetic, must reproduce the CPU CovarianceOperator.
// On a GPU machine: the GPU operator itself (tests named Gpu*, skipped
// without a device).
#include <gtest/gtest.h>
#include <cblas.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "chunk_pass.hpp"
#include "column_major_blas.hpp"
#include "covariance_pass.hpp"
#include "gradnoise/covariance.hpp"
#include "cuda_entry.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

double blas_dot(std::int64_t count, const double* x, const double* y) {
  return cblas_ddot(static_cast<int>(count), x, 1, y, 1);
}

using testing::all_near;
using testing::max_abs;

/// covariance_pass.hpp's executor as the GPU runs it: every GEMM through
/// column_major() into cblas_dgemm(CblasColMajor, …) with cublasDgemm's
/// arguments (cuda::gemm, kernels/cublas_gemm.cuh: first = b, second = a),
/// the column sums as GEMMs against ones, the row operations as the kernels'
/// per-entry functions over the same index.
struct ColumnMajorCovarianceExec : detail::CovarianceHostOps {
  const double* ones = nullptr;

  void gemm(const detail::RowMajorGemm& row_major, const double* a, const double* b, double* c) {
    testing::column_major_dgemm(row_major, a, b, c);
  }
  void column_sums(const double* rows, std::int64_t m, std::int64_t width, double* sums) {
    detail::column_sums_by_gemm(*this, ones, rows, m, width, sums);
  }
};

/// Σ·V as covariance_cuda.cu computes it (every layer, chunks in order, the
/// same packing, steps and unpacking), with host buffers and
/// ColumnMajorCovarianceExec in place of the device. The scratch starts as
/// NaN, so a GEMM that reads it before writing it (a wrong beta) or one BLAS
/// refuses shows in the result.
void emulated_gpu_covariance(const Model& model, const DataSource& data, Loss loss,
                             const std::vector<double>& mean_grad, std::int64_t chunk,
                             const double* in, double* out, std::int64_t cols) {
  const detail::CovarianceLayers layers = detail::covariance_layers(model, -1);
  const detail::CovarianceBlock block =
      detail::pack_covariance_block(model, layers, mean_grad, in, cols, blas_dot);
  detail::CovarianceSums sums = detail::zero_covariance_sums(model, layers, cols);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> s(static_cast<std::size_t>(chunk * cols), nan);
  std::vector<double> z(static_cast<std::size_t>(chunk * cols * layers.widest), nan);
  const std::vector<double> ones(static_cast<std::size_t>(chunk), 1.0);
  detail::CovarianceBuffers buffers = detail::covariance_buffers(layers, block, sums, s.data(), z.data());
  ColumnMajorCovarianceExec exec;
  exec.ones = ones.data();
  detail::for_each_chunk(model, data, loss, chunk, [&](const detail::ChunkView& view) {
    for (std::int64_t l = layers.first; l < layers.end; ++l) {
      buffers.layers[l].input = view.inputs[l];
      buffers.layers[l].error = view.errors[l];
    }
    detail::covariance_chunk(exec, model, layers, buffers, view.rows, cols);
  });
  detail::unpack_covariance_block(model, layers, sums, mean_grad, cols,
                                  1.0 / static_cast<double>(data.num_samples()), out);
}

/// `cols` directions of length p, column-major, none of them special.
std::vector<double> block_of_directions(std::int64_t p, std::int64_t cols) {
  std::vector<double> v(static_cast<std::size_t>(p * cols));
  for (std::size_t j = 0; j < v.size(); ++j) v[j] = std::cos(0.53 * static_cast<double>(j) + 0.1 * cols);
  return v;
}

Profile profile_of(const Model& model, const Dataset& data, Loss loss) {
  ProfileOptions options;
  options.loss = loss;
  return profile_cpu(model, data, options);
}

// The column sums as the GPU forms them, a GEMM against ones, against the
// CPU's loop over the rows.
TEST(CovariancePass, ColumnSumsAsAGemmMatchTheLoop) {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  const std::int64_t m = 37, width = 11;
  std::vector<double> rows(static_cast<std::size_t>(m * width)), start(static_cast<std::size_t>(width));
  for (double& x : rows) x = normal(rng);
  for (double& x : start) x = normal(rng);
  std::vector<double> want = start, got = start;
  detail::CovarianceHostOps{}.column_sums(rows.data(), m, width, want.data());
  const std::vector<double> ones(static_cast<std::size_t>(m), 1.0);
  ColumnMajorCovarianceExec exec;
  exec.ones = ones.data();
  exec.column_sums(rows.data(), m, width, got.data());
  EXPECT_TRUE(all_near(got, want, 1e-14, 1e-14));
}

/// Layer widths, loss, biases.
using PassModel = std::tuple<std::vector<std::int64_t>, Loss, bool>;

class CovariancePassVsCpu : public ::testing::TestWithParam<PassModel> {};

// The GPU's GEMM calls and kernels' index arithmetic, run through column-major
// BLAS, reproduce the CPU operator, with several chunks (the last one short),
// one-row chunks and one chunk for all rows, for one and several columns.
TEST_P(CovariancePassVsCpu, ColumnMajorEmulationMatchesCpuOperator) {
  const auto& [widths, loss, bias] = GetParam();
  const Model model = testing::random_model(widths, bias, 41);
  const Dataset data = testing::random_dataset(211, widths.front(), widths.back(), loss, 42, 0.5);
  const Profile prof = profile_of(model, data, loss);
  for (const std::int64_t cols : {std::int64_t{1}, std::int64_t{4}}) {
    const std::vector<double> v = block_of_directions(model.num_params(), cols);
    std::vector<double> want(v.size());
    CovarianceOperator(model, data, loss, prof.param_mean, 64).apply(v.data(), want.data(), cols);
    for (const std::int64_t chunk : {std::int64_t{50}, std::int64_t{1}, std::int64_t{4096}}) {
      std::vector<double> got(v.size(), NAN);
      emulated_gpu_covariance(model, data, loss, prof.param_mean, chunk, v.data(), got.data(), cols);
      EXPECT_TRUE(all_near(got, want, 1e-11, 1e-13 * max_abs(want)))
          << cols << " columns, chunk " << chunk;
    }
  }
}

std::string pass_model_name(const ::testing::TestParamInfo<PassModel>& info) {
  const auto& [widths, loss, bias] = info.param;
  return std::to_string(widths.size() - 1) + "Layers" + testing::loss_label(loss) +
         (bias ? "Bias" : "NoBias");
}

INSTANTIATE_TEST_SUITE_P(
    Models, CovariancePassVsCpu,
    ::testing::Combine(::testing::Values(std::vector<std::int64_t>{9, 3}, std::vector<std::int64_t>{7, 5, 4},
                                         std::vector<std::int64_t>{6, 4, 5, 3}),
                       ::testing::ValuesIn(all_losses()), ::testing::Bool()),
    pass_model_name);

TEST(CovariancePass, LayersAndChunkFootprint) {
  const Model model = testing::random_model({20, 8, 3}, true, 1);
  const detail::CovarianceLayers all = detail::covariance_layers(model, -1);
  EXPECT_EQ(all.first, 0);
  EXPECT_EQ(all.end, 2);
  EXPECT_EQ(all.dim, model.num_params());
  EXPECT_EQ(all.widest, 8);
  EXPECT_EQ(all.offset, (std::vector<std::int64_t>{0, model.param_offset(1)}));
  const detail::CovarianceLayers second = detail::covariance_layers(model, 1);
  EXPECT_EQ(second.first, 1);
  EXPECT_EQ(second.end, 2);
  EXPECT_EQ(second.dim, model.layers[1].num_params());
  EXPECT_EQ(second.widest, 3);
  EXPECT_EQ(second.offset, (std::vector<std::int64_t>{0, 0}));

  EXPECT_EQ(detail::covariance_doubles_per_row(all, 5), 5 * (1 + 8));
  const detail::ChunkFootprint base = detail::chunk_footprint(model, true, false);
  const detail::ChunkFootprint fp = detail::covariance_chunk_footprint(model, true, 5);
  EXPECT_EQ(fp.per_row, base.per_row + 8 * (45 + 1));
  EXPECT_EQ(fp.fixed, base.fixed + 8 * (2 * 5 * model.num_params() + 2 * 5));
}

// ---- On the GPU (skipped without a device) ---------------------------------------

// A wide block with one chunk for all rows and with several chunks, with and
// without biases; each product twice, which DGEMMs without atomics and
// per-thread kernels make the same bits.
TEST(GpuCovariance, WideBlocksMatchTheCpuOperatorBitForBitEachTime) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device present";
  const std::int64_t cols = 40;
  for (const bool bias : {true, false}) {
    const Model model = testing::random_model({12, 8, 5}, bias, 3);
    const Dataset data = testing::random_dataset(1500, 12, 5, Loss::cross_entropy, 4, 0.2);
    const Profile prof = profile_of(model, data, Loss::cross_entropy);
    const std::vector<double> v = block_of_directions(model.num_params(), cols);
    std::vector<double> want(v.size());
    CovarianceOperator(model, data, Loss::cross_entropy, prof.param_mean).apply(v.data(), want.data(), cols);
    for (const std::int64_t chunk : {std::int64_t{1} << 16, std::int64_t{97}}) {
      const BlockOperator gpu = covariance_operator_cuda(model, data, Loss::cross_entropy, prof.param_mean, chunk);
      std::vector<double> first(v.size(), NAN), again(v.size(), NAN);
      gpu(v.data(), first.data(), cols);
      gpu(v.data(), again.data(), cols);
      EXPECT_TRUE(all_near(first, want, 1e-10, 1e-12 * max_abs(want)))
          << (bias ? "bias" : "no bias") << ", chunk " << chunk;
      EXPECT_EQ(first, again);
    }
  }
}

// A bad label late in the data is an InputError naming it, as on the CPU.
TEST(GpuCovariance, BadLabelIsAnInputError) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device present";
  const Model model = testing::random_model({4, 3}, true, 1);
  Dataset data = testing::random_dataset(300, 4, 3, Loss::cross_entropy, 2);
  const std::vector<double> mean_grad = profile_of(model, data, Loss::cross_entropy).param_mean;
  data.labels[250] = 3;
  const std::vector<double> v = block_of_directions(model.num_params(), 2);
  std::vector<double> out(v.size());
  try {
    covariance_operator_cuda(model, data, Loss::cross_entropy, mean_grad, 64)(v.data(), out.data(), 2);
    ADD_FAILURE() << "no InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("sample 250"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace gradnoise
