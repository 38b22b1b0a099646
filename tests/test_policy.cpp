// The CUDA backend's tuning choices (kernels/policy.hpp), on every machine:
// the fused-or-pipeline choice and the relations the kernels rely on.
#include <gtest/gtest.h>

#include <cstdint>
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

TEST(CudaPolicy, FusedKernelOnlyWhenTheColumnMeansFitInSharedMemory) {
  const ProfileOptions options;
  const std::int64_t d = 1000;
  const Model model = random_model({d, 3}, true, 2);
  const auto needed = static_cast<std::int64_t>(d * sizeof(double) + detail::kFusedStaticSharedBytes);
  EXPECT_TRUE(detail::use_fused_linear(model, options, needed));
  EXPECT_FALSE(detail::use_fused_linear(model, options, needed - 1));
}

// What the kernels assume of the launch shapes: whole warps per block, a
// thread per tile row and per fused output, and a chunk the column-sum grid
// covers in one launch.
TEST(CudaPolicy, LaunchShapesFitTheKernels) {
  EXPECT_EQ(detail::kThreads % 32, 0);
  EXPECT_EQ(detail::kSweepThreads % 32, 0);
  EXPECT_LE(detail::kFusedTileRows, detail::kThreads);
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

}  // namespace
}  // namespace gradnoise
