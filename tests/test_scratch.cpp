// The CPU engine's scratch cache (host/scratch.hpp): a large block given back
// is handed out again for the same size, small ones go to the system
// allocator, and the cache never holds more than its limit.
#include <gtest/gtest.h>

#include <vector>

#include "scratch.hpp"

namespace gradnoise::detail {
namespace {

TEST(ScratchCache, ReusesALargeBlockOfTheSameSize) {
  const std::size_t count = (std::size_t{1} << 20) / sizeof(double) + 3;  // an odd size of its own
  const std::size_t before = scratch_cached_bytes();
  const double* first = nullptr;
  {
    ScratchVector<double> buffer(count, 1.0);
    first = buffer.data();
  }
  EXPECT_EQ(scratch_cached_bytes(), before + count * sizeof(double));
  ScratchVector<double> again(count);
  EXPECT_EQ(again.data(), first);
  EXPECT_EQ(again[count - 1], 0.0);  // a vector still value-initialises
  EXPECT_EQ(scratch_cached_bytes(), before);
}

TEST(ScratchCache, SmallBlocksAreNotCached) {
  const std::size_t before = scratch_cached_bytes();
  { ScratchVector<double> small(kScratchCachedBytes / sizeof(double) - 1); }
  EXPECT_EQ(scratch_cached_bytes(), before);
}

TEST(ScratchCache, HoldsAtMostItsLimit) {
  const std::size_t block = std::size_t{64} << 20;
  std::vector<ScratchVector<char>> blocks;
  for (std::size_t total = 0; total <= kScratchCacheLimit + block; total += block) {
    blocks.emplace_back(block);
  }
  blocks.clear();
  EXPECT_LE(scratch_cached_bytes(), kScratchCacheLimit);
  EXPECT_GE(scratch_cached_bytes(), kScratchCacheLimit - block);
}

}  // namespace
}  // namespace gradnoise::detail
