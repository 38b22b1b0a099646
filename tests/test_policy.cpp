// The CUDA backend's tuning choices (kernels/policy.hpp), on every machine:
// the fused-or-pipeline choice and the relations the kernels rely on.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "policy.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using testing::random_model;

constexpr std::int64_t kH100SharedBytes = 227 << 10;  // opt-in shared memory per block

TEST(CudaPolicy, FusedKernelForOneLayerWithFewOutputsWhenAskedFor) {
  ProfileOptions options;
  EXPECT_TRUE(detail::use_fused_linear(random_model({784, 10}, true, 1), options, kH100SharedBytes));
  EXPECT_TRUE(detail::use_fused_linear(random_model({5, detail::kFusedMaxOutputs}, false, 1), options,
                                       kH100SharedBytes));
  EXPECT_FALSE(detail::use_fused_linear(random_model({5, detail::kFusedMaxOutputs + 1}, true, 1),
                                        options, kH100SharedBytes));
  EXPECT_FALSE(detail::use_fused_linear(random_model({784, 32, 10}, true, 1), options, kH100SharedBytes));
  options.fused_linear = false;
  EXPECT_FALSE(detail::use_fused_linear(random_model({784, 10}, true, 1), options, kH100SharedBytes));
}

TEST(CudaPolicy, FusedKernelOnlyWhenItsLayoutFitsInSharedMemory) {
  const ProfileOptions options;
  const Model model = random_model({1000, 3}, true, 2);
  // The least a block needs: one-row tiles, W and the sums out of shared memory.
  const detail::FusedLayout least = detail::fused_layout_for(1000, 3, false, 8, 1, false, false);
  const std::int64_t needed = least.shared_bytes + detail::kFusedStaticSharedBytes;
  EXPECT_TRUE(detail::use_fused_linear(model, options, needed));
  EXPECT_FALSE(detail::use_fused_linear(model, options, needed - 1));
  // Rows too wide for two staged tiles and the shift: the GEMM pipeline.
  EXPECT_FALSE(detail::use_fused_linear(random_model({16384, 1}, true, 2), options, kH100SharedBytes));
}

// Every layout the policy hands the kernel: regions 16-byte aligned, in
// order, not overlapping, within the device's limits, and the tiles whole.
TEST(CudaPolicy, FusedLayoutsAreAlignedDisjointAndWithinTheLimits) {
  for (const std::int64_t d : {1, 9, 256, 784, 1000, 1024, 4096, 8192}) {
    for (const std::int64_t k : {1, 2, 5, 10, 16}) {
      for (const std::int64_t value_bytes : {4, 8}) {
        for (const bool param_stats : {false, true}) {
          SCOPED_TRACE("D=" + std::to_string(d) + " K=" + std::to_string(k) + " bytes " +
                       std::to_string(value_bytes) + (param_stats ? " param stats" : ""));
          const detail::FusedLayout l = detail::fused_layout(d, k, param_stats, value_bytes, kH100SharedBytes,
                                                             detail::kSm90SharedPerSm);
          ASSERT_GE(l.tile_rows, 1);
          EXPECT_LE(l.tile_rows, detail::kFusedMaxTileRows);
          EXPECT_GE(l.blocks_per_sm, 1);
          EXPECT_LE(l.blocks_per_sm, detail::fused_max_blocks_per_sm(k, param_stats));
          const std::int64_t per_block = l.shared_bytes + detail::kFusedStaticSharedBytes;
          EXPECT_LE(per_block, kH100SharedBytes);
          EXPECT_LE(l.blocks_per_sm * (per_block + detail::kSharedReservedPerBlock), detail::kSm90SharedPerSm);
          const std::int64_t stage = l.tile_rows * d * value_bytes;
          EXPECT_TRUE(l.tile_rows == 1 || stage <= detail::kFusedMaxStageBytes);
          // Regions in order: [offset, offset + size) each, 16-byte aligned.
          std::vector<std::pair<std::int64_t, std::int64_t>> regions = {
              {l.stage[0], stage}, {l.stage[1], stage}, {l.shift, d * 8}};
          if (l.weights_shared) regions.emplace_back(l.weights, (k * d + k) * 8);
          if (l.sums_shared) regions.emplace_back(l.sums, detail::fused_sums_rows(k, param_stats) * d * 8);
          regions.emplace_back(l.errors, l.tile_rows * detail::kFusedMaxOutputs * 8);
          regions.emplace_back(l.rows, l.tile_rows * detail::kFusedRowFields * 8);
          regions.emplace_back(l.small, 5 * detail::kFusedMaxOutputs * 8);
          std::int64_t end = 0;
          for (const auto& [offset, size] : regions) {
            EXPECT_EQ(offset % 16, 0);
            EXPECT_GE(offset, end);
            end = offset + size;
          }
          EXPECT_LE(end, l.shared_bytes);
        }
      }
    }
  }
}

// The layouts the benchmarks' shapes get on an H100/H200: W and the sums in
// shared memory where they fit, two blocks per SM for narrow K.
TEST(CudaPolicy, FusedLayoutsPreferSharedWeightsAndSumsThenBlocksThenRows) {
  const auto layout = [](std::int64_t d, std::int64_t k) {
    return detail::fused_layout(d, k, false, 4, kH100SharedBytes, detail::kSm90SharedPerSm);
  };
  const detail::FusedLayout narrow = layout(256, 1);
  EXPECT_TRUE(narrow.weights_shared && narrow.sums_shared);
  EXPECT_EQ(narrow.blocks_per_sm, 2);
  EXPECT_EQ(narrow.tile_rows, 32);
  const detail::FusedLayout mnist = layout(784, 10);  // Fashion-MNIST's linear model
  EXPECT_TRUE(mnist.weights_shared && mnist.sums_shared);
  EXPECT_EQ(mnist.blocks_per_sm, 1);
  EXPECT_GE(mnist.tile_rows, 8);
  // K = 16 at D = 1024: W (128 KiB) stays, the sums go to the block's slab.
  const detail::FusedLayout wide = layout(1024, 16);
  EXPECT_TRUE(wide.weights_shared);
  EXPECT_FALSE(wide.sums_shared);
}

// What the kernels assume of the launch shapes: whole warps per block, a
// thread per tile row and per fused output, and a chunk the column-sum grid
// covers in one launch.
TEST(CudaPolicy, LaunchShapesFitTheKernels) {
  EXPECT_EQ(detail::kThreads % 32, 0);
  EXPECT_EQ(detail::kSweepThreads % 32, 0);
  // A warp's share of a tile has at most 32 rows: a loss lane for each.
  EXPECT_LE(detail::kFusedMaxTileRows, 32);
  EXPECT_LE(detail::kFusedMaxOutputs, detail::kThreads);
  EXPECT_GE(detail::kFusedBlocksPerSm, 1);
  EXPECT_EQ(detail::kMaxChunkRows & (detail::kMaxChunkRows - 1), 0);  // a power of two
  EXPECT_LE(detail::kMaxChunkRows, detail::kMaxGridY * detail::kColumnRowsPerBlock);
  EXPECT_LE(detail::kDefaultGpuChunkRows, detail::kMaxChunkRows);
}

TEST(CudaPolicy, MemoryBudgets) {
  EXPECT_EQ(detail::kBlockBudgetDoubles * 8, std::int64_t{1} << 30);  // 1 GiB
  EXPECT_EQ(detail::usable_device_bytes(1000), 900);
  EXPECT_EQ(detail::usable_device_bytes(std::size_t{80} << 30), (std::int64_t{80} << 30) / 10 * 9);
  EXPECT_EQ(detail::usable_device_bytes(9), 0);
}

TEST(CudaPolicy, SweepBlocksSpreadRunsOverEverySm) {
  EXPECT_EQ(detail::sweep_threads_per_block(1000, 132), 8);     // 125 blocks, 125 SMs busy
  EXPECT_EQ(detail::sweep_threads_per_block(10000, 132), 76);   // 132 blocks
  EXPECT_EQ(detail::sweep_threads_per_block(1, 132), 1);
  EXPECT_EQ(detail::sweep_threads_per_block(1 << 20, 132), detail::kSweepThreads);
  EXPECT_EQ(detail::sweep_threads_per_block(5, 0), 5);          // a device that reports no SMs
  for (const std::int64_t runs : {1, 7, 131, 132, 133, 1000, 16896, 17000, 100000}) {
    const int threads = detail::sweep_threads_per_block(runs, 132);
    ASSERT_GE(threads, 1);
    ASSERT_LE(threads, detail::kSweepThreads);
    const std::int64_t blocks = (runs + threads - 1) / threads;
    // A warp's lanes run in step, so the time is set by the SM with the most
    // blocks: one each until blocks are full, and no smaller block would
    // still give every block an SM of its own.
    if (threads < detail::kSweepThreads) EXPECT_LE(blocks, 132) << runs;
    if (threads > 1) EXPECT_GT((runs + threads - 2) / (threads - 1), 132) << runs;
  }
}

TEST(CudaPolicy, ResidentCopyTakesAtMostHalfTheUsableMemory) {
  const std::size_t free_bytes = std::size_t{80} << 30;
  const std::int64_t half = detail::usable_device_bytes(free_bytes) / 2;
  EXPECT_TRUE(detail::fits_resident(0, free_bytes));
  EXPECT_TRUE(detail::fits_resident(half, free_bytes));
  EXPECT_FALSE(detail::fits_resident(half + 1, free_bytes));
  EXPECT_FALSE(detail::fits_resident(1, 0));
  EXPECT_FALSE(detail::fits_resident(-1, free_bytes));
  // Staging buffers hold at least one row of the widest data sets we expect.
  EXPECT_GE(detail::kResidentStagingBytes, std::int64_t{4096} * 8 * 64);
}

// The operators' forward cache: every layer's input and error, the outputs,
// the weights, float64; kept under the same rule as the resident copy.
TEST(CudaPolicy, ForwardCacheHoldsEveryLayersInputAndErrorAndTakesAtMostHalf) {
  const Model model = random_model({784, 256, 10}, true, 1);
  const std::int64_t n = std::int64_t{1} << 20;
  const std::int64_t per_row = (784 + 256) + (256 + 10) + 10;
  EXPECT_EQ(detail::forward_cache_bytes(model, n), 8 * (n * per_row + 784 * 256 + 256 * 10));
  const std::int64_t bytes = detail::forward_cache_bytes(model, n);  // 11.6 GB
  EXPECT_TRUE(detail::fits_forward_cache(bytes, std::size_t{80} << 30));
  EXPECT_FALSE(detail::fits_forward_cache(bytes, std::size_t{16} << 30));
}

}  // namespace
}  // namespace gradnoise
