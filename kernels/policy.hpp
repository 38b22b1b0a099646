// Every tuning choice of the CUDA backend in one place: launch shapes, the
// fused kernel's tile, grid and K limit, chunk limits, memory budgets, and the
// choice between the fused kernel and the GEMM pipeline. Plain C++ (no CUDA
// header), so CPU tests check it (tests/test_policy.cpp).
//
// A launch shape or tile size fixes the order of floating-point additions on
// the GPU: changing one changes a report's last bits (never its accuracy);
// results stay bit-identical from run to run for any fixed choice.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise::detail {

// ---- Launch shapes -------------------------------------------------------------

/// Threads per block of the element-wise, row and reduction kernels and of
/// the fused linear kernel.
inline constexpr int kThreads = 256;

/// Most blocks a grid-stride launch gets (grid_for); more items loop.
inline constexpr std::int64_t kMaxGridBlocks = std::int64_t{1} << 20;

/// A two-stage reduction adds a first-stage block per kReduceItemsPerThread
/// items per thread, up to kMaxReduceBlocks blocks (and partials).
inline constexpr std::int64_t kReduceItemsPerThread = 4;
inline constexpr std::int64_t kMaxReduceBlocks = 1024;

/// Column sums of the pipeline: each block adds kColumnRowsPerBlock rows in
/// order, then the blocks are added in order; at most kColumnGridX blocks
/// across the columns. kMaxGridY is CUDA's limit on a grid's y extent.
inline constexpr std::int64_t kColumnRowsPerBlock = 64;
inline constexpr std::int64_t kColumnGridX = std::int64_t{1} << 16;
inline constexpr std::int64_t kMaxGridY = 65535;

/// The sweep engine: one run per thread, at most kSweepThreads per block and
/// kSweepMaxBlocks blocks (more runs loop).
inline constexpr int kSweepThreads = 128;
inline constexpr std::int64_t kSweepMaxBlocks = 65535;

/// Threads per block of the sweep kernel for `runs` runs on `sms` SMs: few
/// enough that every SM gets a block before any block is full. A run is one
/// thread's long serial loop, so a warp of 8 runs takes as long as a warp of
/// 32: 1000 runs as 125 blocks of 8 threads keep 125 SMs busy, where blocks
/// of 128 kept 8. Each run's arithmetic does not depend on where it runs, so
/// the results are the same bits for any block size.
inline int sweep_threads_per_block(std::int64_t runs, int sms) {
  const std::int64_t per_sm = (runs + std::max(sms, 1) - 1) / std::max(sms, 1);
  return static_cast<int>(std::clamp<std::int64_t>(per_sm, 1, kSweepThreads));
}

// ---- The fused linear kernel ---------------------------------------------------

/// Largest K the fused kernel keeps in registers; larger K goes to the GEMM pipeline.
inline constexpr int kFusedMaxOutputs = 16;

/// The fused kernel is compiled for these output counts (without param
/// stats; with them, for kFusedMaxOutputs only): a model with K outputs runs
/// the smallest bucket ≥ K, so per-thread arrays have compile-time sizes.
inline constexpr int kFusedOutputBuckets[] = {1, 2, 4, 8, kFusedMaxOutputs};

/// The bucket a model with k outputs runs (0 for k outside 1..kFusedMaxOutputs).
constexpr int fused_output_bucket(std::int64_t k, bool param_stats) {
  if (k < 1 || k > kFusedMaxOutputs) return 0;
  if (param_stats) return kFusedMaxOutputs;
  for (int bucket : kFusedOutputBuckets) {
    if (k <= bucket) return bucket;
  }
  return 0;
}

/// Rows per tile, and persistent blocks per SM.
inline constexpr int kFusedTileRows = 32;
inline constexpr int kFusedBlocksPerSm = 2;

/// Shared memory a fused block needs besides the D column means: its tile
/// buffers and CUB's scratch.
inline constexpr std::size_t kFusedStaticSharedBytes = 16 << 10;

/// Whether the profile runs the fused linear kernel rather than the GEMM
/// pipeline: when asked to (options.fused_linear, the default), for one layer
/// with K ≤ kFusedMaxOutputs whose D column means fit in a block's shared
/// memory beside the kernel's own (`max_shared_bytes`: the device's opt-in
/// limit per block).
inline bool use_fused_linear(const Model& model, const ProfileOptions& options,
                             std::int64_t max_shared_bytes) {
  if (!options.fused_linear || model.num_layers() != 1 || model.output_dim() > kFusedMaxOutputs) {
    return false;
  }
  const auto bytes = static_cast<std::size_t>(model.input_dim()) * sizeof(double);
  return bytes + kFusedStaticSharedBytes <= static_cast<std::size_t>(max_shared_bytes);
}

// ---- Chunks and memory ---------------------------------------------------------

/// Rows a chunk may have: what the column-sum grid covers in one launch
/// (kMaxGridY blocks of kColumnRowsPerBlock rows), rounded down to a power of
/// two; also keeps cuBLAS's int dimensions far from overflow.
inline constexpr std::int64_t kMaxChunkRows = std::int64_t{1} << 21;
static_assert(kMaxChunkRows <= kMaxGridY * kColumnRowsPerBlock &&
              2 * kMaxChunkRows > kMaxGridY * kColumnRowsPerBlock);

/// Rows per chunk a GPU pass gets when nobody asks for a size (a session's
/// default, through detail::default_chunk_rows): enough to keep the device busy.
inline constexpr std::int64_t kDefaultGpuChunkRows = std::int64_t{1} << 16;

/// Doubles the per-row buffers of a block product may take together (H·V:
/// R a and R δ of every column; Σ·V: c_i and Z): 1 GiB.
inline constexpr std::int64_t kBlockBudgetDoubles = std::int64_t{1} << 27;

/// Bytes of `free_bytes` of free device memory a chunk plan may use: nine
/// tenths, leaving the rest to cuBLAS's workspaces and other tenants.
inline std::int64_t usable_device_bytes(std::size_t free_bytes) {
  return static_cast<std::int64_t>(free_bytes / 10 * 9);
}

/// A session's resident copy goes up in chunks of this many bytes (two
/// pinned buffers of it), converted on the host by threads of at least
/// kResidentConvertGrain values each.
inline constexpr std::int64_t kResidentStagingBytes = std::int64_t{64} << 20;
inline constexpr std::int64_t kResidentConvertGrain = std::int64_t{1} << 18;

/// Whether a session keeps a resident copy of `bytes` of data on a device
/// with `free_bytes` free: when it takes at most half of the usable memory,
/// so the passes' chunk workspaces (which shrink to fit) keep the rest.
inline bool fits_resident(std::int64_t bytes, std::size_t free_bytes) {
  return bytes >= 0 && bytes <= usable_device_bytes(free_bytes) / 2;
}

}  // namespace gradnoise::detail
