// The fused linear kernel's decomposition, run on the CPU: tiles of T rows,
// blocks owning contiguous runs of tiles, per-tile merges into per-block
// moments and a final merge of the blocks in order — with exactly the
// __host__ __device__ steps the kernel calls (kernels/linear_fused.hpp). Its
// result must equal the float64 engine's, for every tile size and block count
// the kernel may use, including ragged last tiles and idle blocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <ostream>
#include <string>
#include <vector>

#include "brute_force.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "linear_fused.hpp"
#include "losses.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using namespace detail;
using testing::all_near;
using testing::max_abs;
using testing::loss_label;
using testing::random_dataset;
using testing::random_model;
using testing::relative_error;

struct Emulated {
  std::vector<double> mean, m2;
  BlockScalars total;
};

/// What linear_fused.cu computes, with its thread loops written as plain
/// loops, compiled like the kernel for K ≤ KB outputs and param stats PS.
template <int KB, bool PS>
Emulated emulate_bucket(const Model& model, const Dataset& data, Loss loss, int tile_rows,
                        int num_blocks) {
  constexpr bool param_stats = PS;
  const Layer& layer = model.layers.at(0);
  const std::int64_t n = data.n, d = data.d;
  const int k = static_cast<int>(layer.out);
  const bool bias = layer.has_bias();
  const std::int64_t slots = layer.num_params();
  const std::int64_t tiles = (n + tile_rows - 1) / tile_rows;
  const std::int64_t tiles_per_block = (tiles + num_blocks - 1) / num_blocks;

  std::vector<std::vector<double>> block_mean(num_blocks, std::vector<double>(slots, 0.0));
  std::vector<std::vector<double>> block_m2(num_blocks, std::vector<double>(param_stats ? slots : 0, 0.0));
  std::vector<BlockScalars> block_scalars(num_blocks);

  for (int b = 0; b < num_blocks; ++b) {
    for (std::int64_t t = b * tiles_per_block; t < std::min(tiles, (b + 1) * tiles_per_block); ++t) {
      const std::int64_t first = t * tile_rows;
      const int rows = static_cast<int>(std::min<std::int64_t>(tile_rows, n - first));
      const double* x = data.x.data() + first * d;
      // A: forward, errors, losses, ‖x_i‖².
      std::vector<double> u(static_cast<std::size_t>(rows * kFusedMaxOutputs), 0.0);
      std::vector<double> loss_i(rows), delta_sq(rows), x_sq(rows, 0.0);
      for (int i = 0; i < rows; ++i) {
        double z[KB] = {};
        partial_row_dots<KB>(x + i * d, layer.weight.data(), d, k, 0, 1, z, x_sq[i]);
        for (int c = 0; c < k; ++c) z[c] += bias ? layer.bias[c] : 0.0;
        double* delta = u.data() + i * kFusedMaxOutputs;
        const double* y = data.y.empty() ? nullptr : data.y.data() + (first + i) * k;
        const std::int32_t label = data.labels.empty() ? 0 : data.labels[first + i];
        loss_i[i] = losses::visit_loss(
            loss, [&](auto l) { return decltype(l)::error_row(z, y, label, k, delta); });
        delta_sq[i] = 0;
        for (int c = 0; c < k; ++c) delta_sq[i] += delta[c] * delta[c];
      }
      // B1: error means, centring, per-row and per-output sums of u.
      double delta_mean[kFusedMaxOutputs] = {}, u_sq_sum[kFusedMaxOutputs] = {};
      for (int c = 0; c < k; ++c) {
        for (int i = 0; i < rows; ++i) delta_mean[c] += u[i * kFusedMaxOutputs + c];
        delta_mean[c] /= rows;
      }
      std::vector<double> u_sq(rows, 0.0), mean_dot_u(rows, 0.0);
      for (int i = 0; i < rows; ++i) {
        for (int c = 0; c < k; ++c) {
          double& value = u[i * kFusedMaxOutputs + c];
          value -= delta_mean[c];
          u_sq[i] += value * value;
          mean_dot_u[i] += delta_mean[c] * value;
          u_sq_sum[c] += value * value;
        }
      }
      double loss_mean = 0, loss_m2 = 0;
      for (int i = 0; i < rows; ++i) loss_mean += loss_i[i];
      loss_mean /= rows;
      for (int i = 0; i < rows; ++i) loss_m2 += (loss_i[i] - loss_mean) * (loss_i[i] - loss_mean);
      // B2: per column, merged straight into the block's moments.
      const MergeWeights w = merge_weights(block_scalars[b].count, rows);
      std::vector<double> act_mean(static_cast<std::size_t>(d));
      double shift_sq = 0, c_norm_sq = 0, act_mean_sq = 0;
      for (std::int64_t j = 0; j < d; ++j) {
        ColumnSums<KB, PS> sums;
        column_tile_sums(x + j, d, rows, u.data(), k, sums);
        act_mean[j] = sums.act_mean;
        act_mean_sq += sums.act_mean * sums.act_mean;
        shift_sq += merge_column(sums, j, d, k, rows, delta_mean, u_sq_sum, w, block_mean[b].data(),
                                 param_stats ? block_m2[b].data() : nullptr, c_norm_sq);
      }
      if (bias) {
        shift_sq += merge_bias(d, k, delta_mean, u_sq_sum, w, block_mean[b].data(),
                               param_stats ? block_m2[b].data() : nullptr);
      }
      // C: centred row sums, then close the tile.
      RowSums row_sums;
      for (int i = 0; i < rows; ++i) {
        double v_sq = 0, mean_dot_v = 0;
        partial_row_centred(x + i * d, act_mean.data(), d, 0, 1, v_sq, mean_dot_v);
        row_sums.add_row(delta_sq[i], x_sq[i], u_sq[i], mean_dot_u[i], v_sq, mean_dot_v, bias);
      }
      double delta_mean_sq = 0;
      for (int c = 0; c < k; ++c) delta_mean_sq += delta_mean[c] * delta_mean[c];
      finish_tile(block_scalars[b], row_sums, delta_mean_sq, act_mean_sq, bias, rows, c_norm_sq,
                  shift_sq, loss_mean, loss_m2);
    }
  }
  // Final merge of the blocks, in order, skipping idle ones.
  Emulated out;
  out.mean.assign(slots, 0.0);
  if (param_stats) out.m2.assign(slots, 0.0);
  for (int b = 0; b < num_blocks; ++b) {
    if (block_scalars[b].count == 0) continue;
    const MergeWeights w = merge_weights(out.total.count, block_scalars[b].count);
    double shift = 0;
    for (std::int64_t s = 0; s < slots; ++s) {
      shift += merge_block_slot(out.mean[s], param_stats ? &out.m2[s] : nullptr, block_mean[b][s],
                                param_stats ? block_m2[b][s] : 0.0, w);
    }
    merge_block_scalars(out.total, block_scalars[b], shift);
  }
  return out;
}

/// The kernel's dispatch: the bucket fused_output_bucket picks.
Emulated emulate(const Model& model, const Dataset& data, Loss loss, int tile_rows, int num_blocks,
                 bool param_stats) {
  if (param_stats) return emulate_bucket<kFusedMaxOutputs, true>(model, data, loss, tile_rows, num_blocks);
  switch (fused_output_bucket(model.output_dim(), false)) {
    case 1: return emulate_bucket<1, false>(model, data, loss, tile_rows, num_blocks);
    case 2: return emulate_bucket<2, false>(model, data, loss, tile_rows, num_blocks);
    case 4: return emulate_bucket<4, false>(model, data, loss, tile_rows, num_blocks);
    case 8: return emulate_bucket<8, false>(model, data, loss, tile_rows, num_blocks);
    default: return emulate_bucket<kFusedMaxOutputs, false>(model, data, loss, tile_rows, num_blocks);
  }
}

TEST(LinearFusedBuckets, EachKRunsTheSmallestBucketThatHoldsIt) {
  EXPECT_EQ(fused_output_bucket(1, false), 1);
  EXPECT_EQ(fused_output_bucket(2, false), 2);
  EXPECT_EQ(fused_output_bucket(3, false), 4);
  EXPECT_EQ(fused_output_bucket(7, false), 8);
  EXPECT_EQ(fused_output_bucket(10, false), 16);
  EXPECT_EQ(fused_output_bucket(16, false), 16);
  EXPECT_EQ(fused_output_bucket(3, true), kFusedMaxOutputs);
  EXPECT_EQ(fused_output_bucket(0, false), 0);
  EXPECT_EQ(fused_output_bucket(17, false), 0);
  for (std::int64_t k = 1; k <= kFusedMaxOutputs; ++k) {
    EXPECT_GE(fused_output_bucket(k, false), k);
    EXPECT_GE(fused_output_bucket(k, true), k);
  }
}

// The outputs a bucket holds beyond K are skipped, not computed as zeros:
// a model runs to the same bits in its own bucket and in the widest one.
TEST(LinearFusedBuckets, ABucketGivesTheSameBitsAsTheWidest) {
  for (const std::int64_t k : {1, 2, 3, 7}) {
    SCOPED_TRACE(k);
    const Model model = random_model({9, k}, true, 5);
    const Dataset data = random_dataset(77, 9, k, Loss::cross_entropy, 6, 0.8);
    const Emulated own = emulate(model, data, Loss::cross_entropy, 32, 3, false);
    const Emulated widest =
        emulate_bucket<kFusedMaxOutputs, false>(model, data, Loss::cross_entropy, 32, 3);
    EXPECT_EQ(own.mean, widest.mean);
    EXPECT_EQ(own.total.m2_total, widest.total.m2_total);
    EXPECT_EQ(own.total.sum_norm_sq, widest.total.sum_norm_sq);
    EXPECT_EQ(own.total.loss_m2, widest.total.loss_m2);
  }
}

struct FusedCase {
  Loss loss;
  bool bias;
  int tile_rows;
  int num_blocks;
};

void PrintTo(const FusedCase& c, std::ostream* os) {
  *os << loss_name(c.loss) << (c.bias ? " bias" : " no bias") << ", tiles of "
      << c.tile_rows << ", " << c.num_blocks << " blocks";
}

class LinearFusedDecomposition : public ::testing::TestWithParam<FusedCase> {};

TEST_P(LinearFusedDecomposition, EqualsTheFloat64Engine) {
  const FusedCase& c = GetParam();
  const std::int64_t n = 203, d = 37, k = 7;  // ragged last tile for every tile size used
  const Model model = random_model({d, k}, c.bias, 31);
  const Dataset data = random_dataset(n, d, k, c.loss, 32, 0.8);
  ProfileOptions options;
  options.loss = c.loss;
  options.param_stats = true;
  const Profile want = profile_cpu(model, data, options);
  const Emulated got = emulate(model, data, c.loss, c.tile_rows, c.num_blocks, true);
  const double inv_n = 1.0 / static_cast<double>(n);
  EXPECT_EQ(got.total.count, n);
  EXPECT_LE(relative_error(got.total.m2_total * inv_n, want.trace_cov), 1e-10);
  EXPECT_LE(relative_error(got.total.sum_norm_sq * inv_n, want.mean_sample_grad_norm_sq), 1e-10);
  EXPECT_LE(relative_error(got.total.loss_mean, want.loss), 1e-12);
  EXPECT_LE(relative_error(got.total.loss_m2 * inv_n, want.loss_var), 1e-10);
  EXPECT_TRUE(all_near(got.mean, want.param_mean, 1e-10, 1e-13 * max_abs(want.param_mean)));
  std::vector<double> var(got.m2);
  for (double& v : var) v *= inv_n;
  EXPECT_TRUE(all_near(var, want.param_var, 1e-10, 1e-13 * max_abs(want.param_var)));
  // Without per-slot moments the scalars are unchanged.
  const Emulated lean = emulate(model, data, c.loss, c.tile_rows, c.num_blocks, false);
  EXPECT_LE(relative_error(lean.total.m2_total, got.total.m2_total), 1e-13);
}

INSTANTIATE_TEST_SUITE_P(
    TilesAndBlocks, LinearFusedDecomposition,
    ::testing::Values(FusedCase{Loss::squared, true, 32, 1}, FusedCase{Loss::squared, true, 32, 3},
                      FusedCase{Loss::squared, false, 32, 4}, FusedCase{Loss::cross_entropy, true, 32, 5},
                      FusedCase{Loss::cross_entropy, false, 16, 2},
                      FusedCase{Loss::binary_cross_entropy, true, 32, 3},
                      FusedCase{Loss::squared, true, 1, 7},     // one-row tiles
                      FusedCase{Loss::squared, true, 32, 40}),  // idle blocks
    [](const auto& info) {
      const FusedCase& c = info.param;
      return testing::loss_label(c.loss) + (c.bias ? "Bias" : "NoBias") +
             "Tile" + std::to_string(c.tile_rows) + "Blocks" + std::to_string(c.num_blocks);
    });

TEST(LinearFusedDecomposition, IllConditionedTraceStaysAccurate) {
  const std::int64_t n = 300;
  const auto [model, data] = testing::ill_conditioned_problem(n, 8, 3, 1e-4, 1e-4, 3, 4);
  const Profile want = profile_brute_force(model, data, Loss::squared, false);
  ASSERT_GE(want.grad_norm_sq / want.trace_cov, 1e6);
  const Emulated got = emulate(model, data, Loss::squared, 32, 4, false);
  EXPECT_LE(relative_error(got.total.m2_total / n, want.trace_cov), 1e-9);
}

}  // namespace
}  // namespace gradnoise
