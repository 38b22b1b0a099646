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
#include "host_device.hpp"

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

/// The forward pass of a warp takes this many rows at once, so each weight
/// and shift it reads from shared memory serves two rows: 4 + 4(1 + K)
/// shared-memory bytes per float32 input value instead of 12 + 8K (an SM
/// reads 128 B a clock and must take ~4 values a clock at the bandwidth
/// floor). Two, not more, so a tile of 16 rows keeps all 8 warps busy.
inline constexpr int kFusedRowsAtOnce = 2;

/// Rows per tile at most (a warp's loss lanes take one row each), persistent
/// blocks per SM at most, and the bytes one staged tile may take.
inline constexpr int kFusedMaxTileRows = 32;
inline constexpr int kFusedBlocksPerSm = 2;
inline constexpr std::int64_t kFusedMaxStageBytes = std::int64_t{64} << 10;
/// Doubles a tile row keeps in shared memory between the forward pass and
/// its loss lane: z (kFusedMaxOutputs), ‖x‖², ‖v‖², a₀·v, the loss.
inline constexpr int kFusedRowFields = kFusedMaxOutputs + 4;
/// Static shared memory of a fused block (CUB's scratch for the final
/// reduction, the block's scalars), reserved beside the dynamic layout.
inline constexpr std::int64_t kFusedStaticSharedBytes = 2 << 10;
/// Shared memory the GPU keeps per resident block beyond what it asks for.
inline constexpr std::int64_t kSharedReservedPerBlock = 1 << 10;

/// Where a fused block keeps what it reads and accumulates: byte offsets into
/// its dynamic shared memory (each 16-byte aligned), chosen on the host from
/// the shape (fused_layout) and passed to the kernel.
///   stage[0..1]  two tiles of `tile_rows` rows of X, filled asynchronously
///   shift        a₀, the launch's first-tile column means (D doubles)
///   weights      W (K·D doubles) and b (K), when weights_shared
///   sums         S = Σ u vᵀ (K·D), with param stats Q = Σ h² (K·D), and
///                Σ v (D), when sums_shared; else a per-block slab of device
///                memory (L2)
///   errors       the tile's δ, then u = δ − δ₀ (tile_rows × kFusedMaxOutputs)
///   rows         the tile rows' kFusedRowFields doubles
///   small        δ₀, b, Σu and Σu² per output, ℓ₀ (5·kFusedMaxOutputs doubles)
struct FusedLayout {
  int tile_rows = 0;  // 0: the shape does not fit
  bool weights_shared = false;
  bool sums_shared = false;
  std::int64_t stage[2] = {0, 0};
  std::int64_t shift = 0, weights = 0, sums = 0, errors = 0, rows = 0, small = 0;
  std::int64_t shared_bytes = 0;  // dynamic
  int blocks_per_sm = 0;
};

/// Rows of doubles the sums take: S (K), Q (K, with param stats), Σv (1).
GN_HOST_DEVICE constexpr std::int64_t fused_sums_rows(std::int64_t k, bool param_stats) {
  return k * (param_stats ? 2 : 1) + 1;
}

inline std::int64_t align16(std::int64_t bytes) { return (bytes + 15) / 16 * 16; }

/// The layout of one try: `tile_rows` rows per tile, W and the sums in shared
/// memory or not.
inline FusedLayout fused_layout_for(std::int64_t d, std::int64_t k, bool param_stats,
                                    std::int64_t value_bytes, int tile_rows, bool weights_shared,
                                    bool sums_shared) {
  FusedLayout l;
  l.tile_rows = tile_rows;
  l.weights_shared = weights_shared;
  l.sums_shared = sums_shared;
  std::int64_t at = 0;
  const auto take = [&](std::int64_t bytes) {
    const std::int64_t offset = at;
    at += align16(bytes);
    return offset;
  };
  const std::int64_t stage = tile_rows * d * value_bytes;
  l.stage[0] = take(stage);
  l.stage[1] = take(stage);
  l.shift = take(d * 8);
  if (weights_shared) l.weights = take((k * d + k) * 8);
  if (sums_shared) l.sums = take(fused_sums_rows(k, param_stats) * d * 8);
  l.errors = take(std::int64_t{tile_rows} * kFusedMaxOutputs * 8);
  l.rows = take(std::int64_t{tile_rows} * kFusedRowFields * 8);
  l.small = take(5 * kFusedMaxOutputs * 8);
  l.shared_bytes = at;
  return l;
}

/// Blocks per SM the fused kernel is compiled for (its __launch_bounds__):
/// two without param stats for K ≤ 8 (at most 128 registers a thread); the
/// widest bucket and param stats take the registers they need, one block.
constexpr int fused_max_blocks_per_sm(std::int64_t k, bool param_stats) {
  return param_stats || k > 8 ? 1 : kFusedBlocksPerSm;
}

/// The fused kernel's layout for a D×K layer whose rows are stored in
/// `value_bytes` (4 or 8) on a device that gives a block at most
/// `max_shared_per_block` bytes (the opt-in limit) and an SM
/// `shared_per_sm`. Preference, in order: where W and the sums live (both in
/// shared memory; W only, the sums' read-modify-write per tile going to L2;
/// the sums only, W read per row through L1; neither), then as many blocks
/// per SM as the kernel is compiled for (more warps to hide latency), then
/// the largest tile (≤ 32 rows, one staged tile ≤ kFusedMaxStageBytes), each
/// tile of at least 8 rows; failing all of those, the same with fewer rows.
/// tile_rows 0 when nothing fits (the GEMM pipeline takes the layer).
inline FusedLayout fused_layout(std::int64_t d, std::int64_t k, bool param_stats,
                                std::int64_t value_bytes, std::int64_t max_shared_per_block,
                                std::int64_t shared_per_sm) {
  constexpr bool kPlaces[4][2] = {{true, true}, {true, false}, {false, true}, {false, false}};
  const std::int64_t budget = max_shared_per_block - kFusedStaticSharedBytes;
  const int most_blocks = fused_max_blocks_per_sm(k, param_stats);
  for (const int least_rows : {8, 1}) {
    for (const auto& place : kPlaces) {
      for (int blocks = most_blocks; blocks >= 1; --blocks) {
        for (int rows = kFusedMaxTileRows; rows >= least_rows; rows /= 2) {
          if (rows > 1 && rows * d * value_bytes > kFusedMaxStageBytes) continue;
          FusedLayout l = fused_layout_for(d, k, param_stats, value_bytes, rows, place[0], place[1]);
          const std::int64_t per_block = l.shared_bytes + kFusedStaticSharedBytes + kSharedReservedPerBlock;
          if (l.shared_bytes > budget || blocks * per_block > shared_per_sm) continue;
          l.blocks_per_sm = blocks;
          return l;
        }
      }
    }
  }
  return FusedLayout{};
}

/// An H100's or H200's shared memory (sm_90): the opt-in limit per block, per SM.
inline constexpr std::int64_t kSm90SharedPerBlock = 227 << 10;
inline constexpr std::int64_t kSm90SharedPerSm = 228 << 10;

/// Whether the profile runs the fused linear kernel rather than the GEMM
/// pipeline: when asked to (options.fused_linear, the default), for one layer
/// with K ≤ kFusedMaxOutputs whose tiles, column means and per-row scratch
/// fit in a block's shared memory for float32 and float64 rows alike
/// (`max_shared_bytes`: the device's opt-in limit per block; `shared_per_sm`:
/// its shared memory per SM, which FusedLinear's layout uses too).
inline bool use_fused_linear(const Model& model, const ProfileOptions& options,
                             std::int64_t max_shared_bytes,
                             std::int64_t shared_per_sm = 0 /* 0: one block of the opt-in size */) {
  if (!options.fused_linear || model.num_layers() != 1 || model.output_dim() > kFusedMaxOutputs) {
    return false;
  }
  for (const std::int64_t value_bytes : {4, 8}) {
    // Without the SM's figure: an SM holds at least one block of the opt-in size.
    const std::int64_t per_sm = shared_per_sm > 0 ? shared_per_sm : max_shared_bytes + kSharedReservedPerBlock;
    if (fused_layout(model.input_dim(), model.output_dim(), options.param_stats, value_bytes,
                     max_shared_bytes, per_sm)
            .tile_rows == 0) {
      return false;
    }
  }
  return true;
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

/// Bytes a session's forward cache takes for N rows of `model`: every
/// layer's input and error, the outputs (float64), and the weights.
inline std::int64_t forward_cache_bytes(const Model& model, std::int64_t n) {
  std::int64_t per_row = model.output_dim(), weights = 0;
  for (const Layer& layer : model.layers) {
    per_row += layer.in + layer.out;
    weights += layer.in * layer.out;
  }
  return 8 * (n * per_row + weights);
}

/// Whether a session keeps its operators' forward pass on a device with
/// `free_bytes` free (after its resident copy): like the resident copy, when
/// it takes at most half of the usable memory, leaving the rest to the
/// passes' chunk workspaces.
inline bool fits_forward_cache(std::int64_t bytes, std::size_t free_bytes) {
  return fits_resident(bytes, free_bytes);
}

}  // namespace gradnoise::detail
