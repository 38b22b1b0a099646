// The fused linear kernel's decomposition, run on the CPU: launches of
// `launch_rows` rows (a streamed profile's chunks; one launch for resident
// data), blocks owning contiguous runs of tiles per launch, the shift from
// each block's first tile, per-row and per-column sums, the close of each
// launch into the block's running moments and a final merge of the blocks in
// order — with exactly the __host__ __device__ steps the kernel calls
// (kernels/linear_fused.hpp). Its result must equal the float64 engine's for
// every tile size, block count and launch size the kernel may use, including
// ragged last tiles and idle blocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
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

/// One row's loss and δ (the kernel's loss lane, minus the flags).
double error_row(Loss loss, const Layer& layer, const Dataset& data, std::int64_t row, const double* z_no_bias,
                 double* delta) {
  const int k = static_cast<int>(layer.out);
  double z[kFusedMaxOutputs];
  for (int c = 0; c < k; ++c) z[c] = z_no_bias[c] + (layer.has_bias() ? layer.bias[c] : 0.0);
  const double* y = data.y.empty() ? nullptr : data.y.data() + row * k;
  const std::int32_t label = data.labels.empty() ? 0 : data.labels[row];
  return losses::visit_loss(loss, [&](auto l) { return decltype(l)::error_row(z, y, label, k, delta); });
}

/// What linear_fused.cu computes, with its thread loops written as plain
/// loops, compiled like the kernel for K ≤ KB outputs and param stats PS.
template <int KB, bool PS>
Emulated emulate_bucket(const Model& model, const Dataset& data, Loss loss, int tile_rows, int num_blocks,
                        std::int64_t launch_rows) {
  constexpr int RW = kFusedRowsAtOnce;
  const Layer& layer = model.layers.at(0);
  const std::int64_t n = data.n, d = data.d;
  const int k = static_cast<int>(layer.out);
  const bool bias = layer.has_bias();
  const std::int64_t slots = layer.num_params();
  const std::int64_t sums_rows = fused_sums_rows(k, PS);

  // The kernel never zeroes the blocks' moments: they hold the previous
  // profile's (here: poison), and a block's first rows of a profile start
  // from zero (count_before = 0 in the first launch, or after an idle one).
  const double poison = std::numeric_limits<double>::quiet_NaN();
  std::vector<std::vector<double>> block_mean(num_blocks, std::vector<double>(slots, poison));
  std::vector<std::vector<double>> block_m2(num_blocks, std::vector<double>(PS ? slots : 0, poison));
  BlockScalars stale;
  stale.count = 12345;
  stale.m2_total = stale.sum_norm_sq = stale.loss_mean = stale.loss_m2 = poison;
  std::vector<BlockScalars> block_scalars(num_blocks, stale);
  bool fresh = true;

  for (std::int64_t launch_first = 0; launch_first < n; launch_first += launch_rows) {
    const std::int64_t rows_all = std::min(launch_rows, n - launch_first);
    const std::int64_t tiles = ceil_div(rows_all, tile_rows);
    const std::int64_t tiles_per_block = ceil_div(tiles, num_blocks);
    for (int b = 0; b < num_blocks; ++b) {
      const std::int64_t tile_begin = b * tiles_per_block;
      const std::int64_t tile_end = std::min(tiles, tile_begin + tiles_per_block);
      if (tile_begin >= tile_end) {  // an idle block
        if (fresh) block_scalars[b] = BlockScalars{};
        continue;
      }
      std::vector<double> shift(d, 0.0), sums(sums_rows * d, 0.0);
      double delta0[kFusedMaxOutputs] = {}, u_sum[kFusedMaxOutputs] = {}, u_sq[kFusedMaxOutputs] = {};
      double loss0 = 0;
      LaunchSums launch;
      for (std::int64_t t = tile_begin; t < tile_end; ++t) {
        const std::int64_t first = launch_first + t * tile_rows;
        const int rows = static_cast<int>(std::min<std::int64_t>(tile_rows, rows_all - t * tile_rows));
        const double* x = data.x.data() + first * d;
        std::vector<double> errors(static_cast<std::size_t>(rows) * kFusedMaxOutputs, 0.0);
        std::vector<double> z(static_cast<std::size_t>(rows) * kFusedMaxOutputs, 0.0);
        std::vector<double> x_sq(rows), v_sq(rows), shift_dot_v(rows), loss_i(rows);
        // A: the forward pass, RW rows at a time; then each row's loss.
        const auto forward = [&] {
          for (int g = 0; g * RW < rows; ++g) {
            double zg[RW][KB] = {};
            double xs[RW] = {}, vs[RW] = {}, sv[RW] = {};
            const int in_group = std::min(RW, rows - g * RW);
            partial_rows<KB, RW>(x + g * RW * d, in_group, layer.weight.data(), shift.data(), d, k, 0, 1, zg,
                                 xs, vs, sv);
            for (int r = 0; r < in_group; ++r) {
              const int i = g * RW + r;
              for (int c = 0; c < k; ++c) z[i * kFusedMaxOutputs + c] = zg[r][c];
              x_sq[i] = xs[r];
              v_sq[i] = vs[r];
              shift_dot_v[i] = sv[r];
            }
          }
          for (int i = 0; i < rows; ++i) {
            loss_i[i] = error_row(loss, layer, data, first + i, &z[i * kFusedMaxOutputs],
                                  &errors[i * kFusedMaxOutputs]);
          }
        };
        if (t == tile_begin) {  // the shift: the first tile's means
          forward();
          for (std::int64_t j = 0; j < d; ++j) shift[j] = column_mean(x + j, d, rows);
          for (int c = 0; c < k; ++c) {
            double total = 0;
            for (int i = 0; i < rows; ++i) total += errors[i * kFusedMaxOutputs + c];
            delta0[c] = total / rows;
          }
          double total = 0;
          for (int i = 0; i < rows; ++i) total += loss_i[i];
          loss0 = total / rows;
        }
        forward();
        for (int i = 0; i < rows; ++i) {
          const ShiftedErrors e = shift_errors(&errors[i * kFusedMaxOutputs], delta0, k);
          launch.rows.add_row(e.delta_sq, x_sq[i], e.u_sq, e.shift_dot_u, v_sq[i], shift_dot_v[i], bias);
          launch.loss_sum += loss_i[i] - loss0;
          launch.loss_sq += (loss_i[i] - loss0) * (loss_i[i] - loss0);
        }
        // B: per column, and per output.
        for (std::int64_t j = 0; j < d; ++j) {
          column_tile<KB, PS>(x + j, d, rows, shift[j], errors.data(), delta0, k, sums.data() + j, d);
        }
        for (int c = 0; c < k; ++c) {
          for (int i = 0; i < rows; ++i) {
            const double u = errors[i * kFusedMaxOutputs + c];
            u_sum[c] += u;
            u_sq[c] += u * u;
          }
        }
      }
      // Close the launch into block b's running moments.
      const std::int64_t launch_n = std::min(tile_end * tile_rows, rows_all) - tile_begin * tile_rows;
      const double m = static_cast<double>(launch_n);
      const std::int64_t count_before = fresh ? 0 : block_scalars[b].count;
      const MergeWeights w = merge_weights(count_before, launch_n);
      const auto start_slot = [&](std::int64_t slot) {
        if (count_before > 0) return;
        block_mean[b][slot] = 0;
        if (PS) block_m2[b][slot] = 0;
      };
      for (std::int64_t j = 0; j < d; ++j) {
        launch.shift_sq += shift[j] * shift[j];
        for (int c = 0; c < k; ++c) {
          const std::int64_t slot = c * d + j;
          start_slot(slot);
          finish_slot(sums[c * d + j], PS ? sums[(k + c) * d + j] : 0.0, sums[(sums_rows - 1) * d + j], u_sum[c],
                      shift[j], delta0[c], m, w, block_mean[b][slot], PS ? &block_m2[b][slot] : nullptr, launch);
        }
      }
      if (bias) {
        for (int c = 0; c < k; ++c) {
          const std::int64_t slot = k * d + c;
          start_slot(slot);
          finish_bias_slot(u_sum[c], u_sq[c], delta0[c], m, w, block_mean[b][slot],
                           PS ? &block_m2[b][slot] : nullptr, launch);
        }
      }
      double delta0_sq = 0;
      for (int c = 0; c < k; ++c) delta0_sq += delta0[c] * delta0[c];
      if (count_before == 0) block_scalars[b] = BlockScalars{};
      finish_launch(block_scalars[b], launch, delta0_sq, bias, launch_n, loss0);
    }
    fresh = false;
  }
  // Final merge of the blocks, in order, skipping idle ones.
  Emulated out;
  out.mean.assign(slots, 0.0);
  if (PS) out.m2.assign(slots, 0.0);
  for (int b = 0; b < num_blocks; ++b) {
    if (block_scalars[b].count == 0) continue;
    const MergeWeights w = merge_weights(out.total.count, block_scalars[b].count);
    double shift = 0;
    for (std::int64_t s = 0; s < slots; ++s) {
      shift += merge_block_slot(out.mean[s], PS ? &out.m2[s] : nullptr, block_mean[b][s],
                                PS ? block_m2[b][s] : 0.0, w);
    }
    merge_block_scalars(out.total, block_scalars[b], shift);
  }
  return out;
}

/// The kernel's dispatch: the bucket fused_output_bucket picks. One launch
/// unless `launch_rows` says otherwise.
Emulated emulate(const Model& model, const Dataset& data, Loss loss, int tile_rows, int num_blocks,
                 bool param_stats, std::int64_t launch_rows = 0) {
  const std::int64_t rows = launch_rows > 0 ? launch_rows : data.n;
  if (param_stats) {
    return emulate_bucket<kFusedMaxOutputs, true>(model, data, loss, tile_rows, num_blocks, rows);
  }
  switch (fused_output_bucket(model.output_dim(), false)) {
    case 1: return emulate_bucket<1, false>(model, data, loss, tile_rows, num_blocks, rows);
    case 2: return emulate_bucket<2, false>(model, data, loss, tile_rows, num_blocks, rows);
    case 4: return emulate_bucket<4, false>(model, data, loss, tile_rows, num_blocks, rows);
    case 8: return emulate_bucket<8, false>(model, data, loss, tile_rows, num_blocks, rows);
    default: return emulate_bucket<kFusedMaxOutputs, false>(model, data, loss, tile_rows, num_blocks, rows);
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
        emulate_bucket<kFusedMaxOutputs, false>(model, data, Loss::cross_entropy, 32, 3, data.n);
    EXPECT_EQ(own.mean, widest.mean);
    EXPECT_EQ(own.total.m2_total, widest.total.m2_total);
    EXPECT_EQ(own.total.sum_norm_sq, widest.total.sum_norm_sq);
    EXPECT_EQ(own.total.loss_m2, widest.total.loss_m2);
  }
}

// Every row of a tile gets exactly one loss lane, in the warp whose forward
// pass wrote the row's fields, for every tile size the layouts use.
TEST(LinearFusedLanes, EveryRowHasOneLossLaneInTheWarpThatRanItsForwardPass) {
  constexpr int kWarps = kThreads / 32, kRw = kFusedRowsAtOnce;
  for (int rows = 1; rows <= kFusedMaxTileRows; ++rows) {
    SCOPED_TRACE("rows " + std::to_string(rows));
    std::vector<int> lanes_of_row(rows, 0);
    for (int warp = 0; warp < kWarps; ++warp) {
      for (int lane = 0; lane < 32; ++lane) {
        const int i = loss_lane_row(warp, lane, rows, kWarps, kRw);
        if (i < 0) continue;
        ASSERT_LT(i, rows);
        ++lanes_of_row[i];
        EXPECT_EQ((i / kRw) % kWarps, warp);  // the forward loop's group g = i / RW runs on warp g mod warps
      }
    }
    for (int i = 0; i < rows; ++i) EXPECT_EQ(lanes_of_row[i], 1) << "row " << i;
  }
}

struct FusedCase {
  Loss loss;
  bool bias;
  int tile_rows;
  int num_blocks;
  std::int64_t launch_rows = 0;  // 0: one launch
};

void PrintTo(const FusedCase& c, std::ostream* os) {
  *os << loss_name(c.loss) << (c.bias ? " bias" : " no bias") << ", tiles of "
      << c.tile_rows << ", " << c.num_blocks << " blocks, launches of " << c.launch_rows << " rows";
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
  const Emulated got = emulate(model, data, c.loss, c.tile_rows, c.num_blocks, true, c.launch_rows);
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
  const Emulated lean = emulate(model, data, c.loss, c.tile_rows, c.num_blocks, false, c.launch_rows);
  EXPECT_LE(relative_error(lean.total.m2_total, got.total.m2_total), 1e-13);
}

INSTANTIATE_TEST_SUITE_P(
    TilesAndBlocks, LinearFusedDecomposition,
    ::testing::Values(FusedCase{Loss::squared, true, 32, 1}, FusedCase{Loss::squared, true, 32, 3},
                      FusedCase{Loss::squared, false, 32, 4}, FusedCase{Loss::cross_entropy, true, 32, 5},
                      FusedCase{Loss::cross_entropy, false, 16, 2},
                      FusedCase{Loss::binary_cross_entropy, true, 32, 3},
                      FusedCase{Loss::squared, true, 1, 7},      // one-row tiles
                      FusedCase{Loss::squared, true, 32, 40},    // idle blocks
                      FusedCase{Loss::squared, true, 8, 3, 50},  // streamed: launches of 50 rows
                      FusedCase{Loss::cross_entropy, true, 4, 2, 61},
                      FusedCase{Loss::squared, false, 32, 4, 17}),  // launches shorter than a tile
    [](const auto& info) {
      const FusedCase& c = info.param;
      return testing::loss_label(c.loss) + (c.bias ? "Bias" : "NoBias") + "Tile" +
             std::to_string(c.tile_rows) + "Blocks" + std::to_string(c.num_blocks) +
             (c.launch_rows > 0 ? "Launch" + std::to_string(c.launch_rows) : "");
    });

// ‖G‖²/tr Σ ≥ 1e6: the shift (a tile's means) keeps tr Σ and every slot's
// variance accurate however the rows are cut into tiles, blocks and launches.
TEST(LinearFusedDecomposition, IllConditionedTraceStaysAccurate) {
  const std::int64_t n = 300;
  const auto [model, data] = testing::ill_conditioned_problem(n, 8, 3, 1e-4, 1e-4, 3, 4);
  const Profile want = profile_brute_force(model, data, Loss::squared, true);
  ASSERT_GE(want.grad_norm_sq / want.trace_cov, 1e6);
  struct Cut {
    int tile_rows, blocks;
    std::int64_t launch_rows;
  };
  for (const Cut cut : {Cut{32, 4, 0}, Cut{1, 3, 0}, Cut{8, 2, 70}, Cut{4, 5, 33}}) {
    SCOPED_TRACE("tiles of " + std::to_string(cut.tile_rows) + ", " + std::to_string(cut.blocks) +
                 " blocks, launches of " + std::to_string(cut.launch_rows));
    const Emulated got = emulate(model, data, Loss::squared, cut.tile_rows, cut.blocks, false, cut.launch_rows);
    EXPECT_LE(relative_error(got.total.m2_total / n, want.trace_cov), 1e-9);
    const Emulated slots = emulate(model, data, Loss::squared, cut.tile_rows, cut.blocks, true, cut.launch_rows);
    std::vector<double> var(slots.m2);
    for (double& v : var) v /= static_cast<double>(n);
    EXPECT_TRUE(all_near(var, want.param_var, 1e-8, 0.0));
    EXPECT_TRUE(all_near(slots.mean, want.param_mean, 1e-12, 0.0));
  }
}

}  // namespace
}  // namespace gradnoise
