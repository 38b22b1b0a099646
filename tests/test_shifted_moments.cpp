// The GPU GEMM pipeline's shifted scheme (core/shifted_moments.hpp), run on
// the CPU over the CPU engine's own chunks: the shift from the first chunk's
// means, per chunk the uncentred sums Σ δ aᵀ, Σ δ and the row scalars around
// the shift, one close at the end. It must give the float64 engine's profile
// for linear, two-layer and deep models, every loss and any chunking, and
// keep tr Σ when ‖G‖²/tr Σ ≥ 10⁶ (against brute force).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "backend.hpp"
#include "brute_force.hpp"
#include "chunk_pass.hpp"
#include "gradnoise/profile.hpp"
#include "shifted_moments.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using namespace detail;
using testing::all_near;
using testing::max_abs;
using testing::random_dataset;
using testing::random_model;
using testing::relative_error;

/// What profile_pipeline.cu's shifted path computes, with its GEMMs and
/// kernels written as loops over the CPU engine's chunks.
Profile emulate(const Model& model, const DataSource& data, Loss loss, std::int64_t chunk_rows) {
  struct LayerSums {
    std::vector<double> g_sum, bias_sum, delta0, act0;
    RowSums rows;
  };
  std::vector<LayerSums> layers(static_cast<std::size_t>(model.num_layers()));
  ShiftedLoss loss_sums;
  double loss0 = 0;
  std::int64_t n = 0;
  for_each_chunk(model, data, loss, chunk_rows, [&](const ChunkView& view) {
    const std::int64_t m = view.rows;
    for (std::int64_t l = 0; l < model.num_layers(); ++l) {
      const Layer& layer = model.layers[l];
      const std::int64_t out = layer.out, in = layer.in;
      const double* delta = view.errors[l];
      const double* act = view.inputs[l];
      LayerSums& s = layers[l];
      if (view.first == 0) {  // the shift: the first chunk's column means
        s.g_sum.assign(out * in, 0.0);
        s.bias_sum.assign(out, 0.0);
        s.delta0.assign(out, 0.0);
        s.act0.assign(in, 0.0);
        for (std::int64_t i = 0; i < m; ++i) {
          for (std::int64_t r = 0; r < out; ++r) s.delta0[r] += delta[i * out + r] / m;
          for (std::int64_t c = 0; c < in; ++c) s.act0[c] += act[i * in + c] / m;
        }
      }
      for (std::int64_t i = 0; i < m; ++i) {
        const double* di = delta + i * out;
        const double* ai = act + i * in;
        for (std::int64_t r = 0; r < out; ++r) {
          for (std::int64_t c = 0; c < in; ++c) s.g_sum[r * in + c] += di[r] * ai[c];
          s.bias_sum[r] += di[r];
        }
        RowCentring errors, inputs;
        centre_row(di, nullptr, s.delta0.data(), out, 0, 1, errors);
        centre_row(ai, nullptr, s.act0.data(), in, 0, 1, inputs);
        s.rows.add_row(errors.sq, inputs.sq, errors.centred_sq, errors.mean_dot, inputs.centred_sq,
                       inputs.mean_dot, layer.has_bias());
      }
    }
    if (view.first == 0) {
      for (std::int64_t i = 0; i < m; ++i) loss0 += view.losses[i] / m;
    }
    for (std::int64_t i = 0; i < m; ++i) {
      const double shifted = view.losses[i] - loss0;
      loss_sums.sum += shifted;
      loss_sums.sq += shifted * shifted;
    }
    n += m;
  });
  Profile p;
  p.n = n;
  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    const Layer& layer = model.layers[l];
    const LayerSums& s = layers[l];
    std::vector<double> mean(layer.num_params());
    const double m2 = shifted_layer_moments(layer.out, layer.in, layer.has_bias(), n, s.g_sum.data(),
                                            s.bias_sum.data(), s.delta0.data(), s.act0.data(), s.rows,
                                            mean.data());
    LayerProfile lp;
    lp.trace_cov = m2 / n;
    lp.mean_sample_grad_norm_sq = s.rows.sum_norm_sq / n;
    p.trace_cov += lp.trace_cov;
    p.layers.push_back(lp);
    p.param_mean.insert(p.param_mean.end(), mean.begin(), mean.end());
  }
  const LossMoments lm = shifted_loss_moments(loss_sums, loss0, n);
  p.loss = lm.mean;
  p.loss_var = lm.m2 / n;
  return p;
}

struct ShiftedCase {
  std::vector<std::int64_t> widths;
  Loss loss;
  std::int64_t chunk_rows;
};

class ShiftedMoments : public ::testing::TestWithParam<ShiftedCase> {};

TEST_P(ShiftedMoments, EqualTheFloat64Engine) {
  const ShiftedCase& c = GetParam();
  const std::int64_t n = 203;
  const Model model = random_model(c.widths, true, 17);
  const Dataset data = random_dataset(n, c.widths.front(), c.widths.back(), c.loss, 19, 0.7);
  ProfileOptions options;
  options.loss = c.loss;
  const Profile want = profile_cpu(model, data, options);
  const Profile got = emulate(model, data, c.loss, c.chunk_rows);
  ASSERT_EQ(got.layers.size(), want.layers.size());
  for (std::size_t l = 0; l < want.layers.size(); ++l) {
    SCOPED_TRACE("layer " + std::to_string(l));
    EXPECT_LE(relative_error(got.layers[l].trace_cov, want.layers[l].trace_cov), 1e-10);
    EXPECT_LE(relative_error(got.layers[l].mean_sample_grad_norm_sq, want.layers[l].mean_sample_grad_norm_sq),
              1e-12);
  }
  EXPECT_TRUE(all_near(got.param_mean, want.param_mean, 1e-10, 1e-13 * max_abs(want.param_mean)));
  EXPECT_LE(relative_error(got.loss, want.loss), 1e-12);
  EXPECT_LE(relative_error(got.loss_var, want.loss_var), 1e-10);
}

INSTANTIATE_TEST_SUITE_P(
    ModelsAndChunks, ShiftedMoments,
    ::testing::Values(ShiftedCase{{9, 3}, Loss::squared, 64}, ShiftedCase{{9, 3}, Loss::cross_entropy, 7},
                      ShiftedCase{{9, 5, 3}, Loss::cross_entropy, 64},
                      ShiftedCase{{9, 5, 3}, Loss::binary_cross_entropy, 1},  // one-row chunks
                      ShiftedCase{{9, 6, 5, 3}, Loss::squared, 50},
                      ShiftedCase{{9, 6, 5, 3}, Loss::cross_entropy, 1000}),  // one chunk
    [](const auto& info) {
      const ShiftedCase& c = info.param;
      return std::to_string(c.widths.size() - 1) + "Layers" + testing::loss_label(c.loss) + "Chunk" +
             std::to_string(c.chunk_rows);
    });

// ‖G‖²/tr Σ ≥ 10⁶: the uncentred G reaches tr Σ only through the small h̄.
TEST(ShiftedMomentsNumerics, IllConditionedTraceStaysAccurate) {
  const std::int64_t n = 300;
  const auto [model, data] = testing::ill_conditioned_problem(n, 8, 3, 1e-4, 1e-4, 3, 4);
  const Profile want = profile_brute_force(model, data, Loss::squared, false);
  ASSERT_GE(want.grad_norm_sq / want.trace_cov, 1e6);
  for (const std::int64_t chunk : {300, 64, 7}) {
    SCOPED_TRACE("chunks of " + std::to_string(chunk));
    const Profile got = emulate(model, data, Loss::squared, chunk);
    EXPECT_LE(relative_error(got.trace_cov, want.trace_cov), 1e-8);
  }
}

}  // namespace
}  // namespace gradnoise
