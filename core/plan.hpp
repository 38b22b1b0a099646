// How many rows a chunk of the CUDA pipeline can hold, and what a pass moves
// and launches (PassPlan): pure arithmetic on the
// model's widths and the free device memory, kept apart from CUDA so CPU tests
// cover it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gradnoise/model.hpp"
#include "moments.hpp"
#include "policy.hpp"

namespace gradnoise::detail {

/// Device bytes the CUDA profile needs: `per_row` for every row of a chunk and
/// `fixed` for the per-parameter state, whatever the chunk size.
struct ChunkFootprint {
  std::int64_t per_row = 0;
  std::int64_t fixed = 0;
};

inline ChunkFootprint chunk_footprint(const Model& model, bool labels, bool param_stats) {
  const std::int64_t d = model.input_dim();
  const std::int64_t k = model.output_dim();
  std::int64_t row_doubles = 2 * d;  // the input chunk, double-buffered
  std::int64_t widest = d, max_slots = 0, max_weights = 0;
  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    const Layer& layer = model.layers[l];
    if (l > 0) row_doubles += layer.in;  // activations a_l
    row_doubles += layer.out;            // errors δ_l
    widest = std::max(widest, layer.out);
    max_slots = std::max(max_slots, layer.num_params());
    max_weights = std::max(max_weights, layer.out * layer.in);
  }
  row_doubles += k;      // model output
  row_doubles += 1 + 6;  // per-sample loss and the six row scalars
  // Column-sum partials, one per kColumnRowsPerBlock rows.
  row_doubles += (widest + kColumnRowsPerBlock - 1) / kColumnRowsPerBlock;
  if (param_stats) row_doubles += 2 * widest;  // U∘U and V∘V
  if (!param_stats) row_doubles += 1;          // the ones of Σ δ (the shifted scheme)
  ChunkFootprint fp;
  fp.per_row = row_doubles * 8 + (labels ? 2 * 4 : 2 * k * 8);  // targets, double-buffered
  const std::int64_t p = model.num_params();
  std::int64_t fixed_doubles = (param_stats ? 2 : 1) * p + 2 * p;  // running moments; weights, biases
  fixed_doubles += 3 * max_slots;  // chunk mean, chunk M2, merge scratch
  fixed_doubles += (param_stats ? 3 : 0) * max_weights + 4 * widest;  // products, means, Σu², Σv²
  fixed_doubles += 1 << 16;                // reduction partials and scalars
  fp.fixed = fixed_doubles * 8;
  return fp;
}

/// Rows per chunk: at most `requested`, `n` and kMaxChunkRows, and what fits
/// in `budget` bytes; 0 when not even one row fits. When memory is what
/// limits, the size is rounded down to a power of two, so a small change in
/// free memory between runs does not change the chunking (and with it the
/// order of summation).
inline std::int64_t plan_chunk_rows(const ChunkFootprint& fp, std::int64_t budget,
                                    std::int64_t requested, std::int64_t n) {
  if (budget <= fp.fixed || fp.per_row <= 0) return 0;
  const std::int64_t fit = (budget - fp.fixed) / fp.per_row;
  const std::int64_t wanted = std::min({requested, n, kMaxChunkRows});
  if (fit >= wanted) return std::max<std::int64_t>(0, wanted);
  std::int64_t rows = 1;
  while (rows * 2 <= fit) rows *= 2;
  return fit < 1 ? 0 : rows;
}

}  // namespace gradnoise::detail

namespace gradnoise::detail {

/// Where a GPU pass's rows come from.
enum class RowOrigin { host, resident };

/// What one GPU profile pass does, read off the structure of the code in
/// linear_fused.cu and profile_pipeline.cu: the kernels it launches (a cuBLAS
/// call counts as one) and the bytes it moves through device memory, so CPU
/// tests can hold each path to the bandwidth floor and bench_cuda_profile can
/// turn a time into bytes per second. DRAM bytes assume what a kernel re-reads
/// within a tile stays in L1/L2 (the fused kernel's second look at a tile);
/// `l2_bytes` is the traffic that should stay in L2 (weights re-read per
/// block, the fused blocks' per-tile merges).
struct PassPlan {
  bool fused = false;
  std::int64_t chunks = 0;
  std::int64_t launches = 0;
  std::int64_t dram_bytes = 0;  // read and written
  std::int64_t l2_bytes = 0;
  std::int64_t min_bytes = 0;   // the floor: each input and target read once
};

struct PassShape {
  std::int64_t n = 0;
  bool labels = false;
  bool param_stats = false;
  std::int64_t value_bytes = 4;  // an input or real target as stored on the device
  RowOrigin origin = RowOrigin::resident;
  bool fused = false;            // use_fused_linear's answer
  std::int64_t chunk_rows = 0;   // the pipeline's rows per chunk
  int sms = 132;                 // the device's SMs (the fused grid)
  std::int64_t shared_per_block = kSm90SharedPerBlock;  // the fused layout's limits
  std::int64_t shared_per_sm = kSm90SharedPerSm;
};

inline PassPlan profile_pass_plan(const Model& model, const PassShape& s) {
  const std::int64_t n = s.n, d = model.input_dim(), k = model.output_dim();
  const std::int64_t targets = s.labels ? n * 4 : n * k * s.value_bytes;
  PassPlan plan;
  plan.fused = s.fused;
  plan.min_bytes = n * d * s.value_bytes + targets;
  const std::int64_t p = model.num_params();
  const std::int64_t moments = (s.param_stats ? 2 : 1) * 8;  // mean (and M2) per slot
  if (s.fused) {
    // Streamed rows arrive as float64 chunks; resident ones as stored.
    const std::int64_t row_bytes = s.origin == RowOrigin::host ? 8 : s.value_bytes;
    const FusedLayout layout =
        fused_layout(d, k, s.param_stats, row_bytes, s.shared_per_block, s.shared_per_sm);
    const std::int64_t blocks = std::int64_t{std::max(layout.blocks_per_sm, 1)} * s.sms;
    plan.chunks = 1;
    const std::int64_t chunk = s.chunk_rows > 0 ? std::min(s.chunk_rows, n) : n;
    if (s.origin == RowOrigin::host) {
      // The copy in (written), then the kernel's read.
      plan.chunks = ceil_div(n, chunk);
      const std::int64_t rows_bytes = n * d * 8 + (s.labels ? n * 4 : n * k * 8);
      plan.dram_bytes += 2 * rows_bytes;
    } else {
      plan.dram_bytes += plan.min_bytes;  // each tile staged into shared memory once
    }
    // Weights once from DRAM; each launch of each block then copies them into
    // shared memory (or reads them per row through L1) and merges its moments
    // into the block's running ones once (in L2); the final merge reads the
    // blocks' moments and writes the result.
    plan.dram_bytes += p * 8 + 2 * blocks * p * moments + 2 * p * moments;
    plan.l2_bytes += plan.chunks * blocks * p * (8 + 2 * moments);
    if (!layout.sums_shared && layout.tile_rows > 0) {
      // Sums kept in the block's slab: read and written once per tile.
      plan.l2_bytes += 2 * ceil_div(n, layout.tile_rows) * fused_sums_rows(k, s.param_stats) * d * 8;
    }
    // Per chunk the fused kernel; then one merge of the blocks (slots,
    // shifts and scalars, the last block closing). Besides the launches, one
    // copy of W and b in and one of the results out.
    plan.launches = plan.chunks + 1;
    return plan;
  }
  const std::int64_t chunk = std::max<std::int64_t>(1, std::min(s.chunk_rows > 0 ? s.chunk_rows : n, n));
  plan.chunks = ceil_div(n, chunk);
  const std::int64_t layers = model.num_layers();
  std::int64_t per_chunk = 0;
  // The feeder: resident rows widened to float64 on the device (inputs, and
  // real targets); host rows copied in (no kernel).
  if (s.origin == RowOrigin::resident) per_chunk += s.labels ? 1 : 2;
  // Without param stats the pipeline runs core/shifted_moments.hpp's scheme
  // (the shift from the first chunk's means); with them, chunk-centred copies.
  const bool shifted = !s.param_stats;
  std::int64_t first_chunk = 0;  // the shift's column means and ℓ₀, once
  for (const Layer& layer : model.layers) {
    per_chunk += 1 + (layer.has_bias() ? 1 : 0);  // forward GEMM and bias
    if (shifted) {
      // Σ δ aᵀ (GEMM), Σ δ (GEMV), the row scalars, their two-stage
      // reduction, its join to the running sums.
      per_chunk += 1 + (layer.has_bias() ? 1 : 0) + 1 + 2 + 1;
      first_chunk += 4;
    } else {
      // Column means of δ and a (2 launches each), centring, three two-stage
      // reductions, C's GEMM and its reduction, chunk mean, merge, its
      // reduction, the layer's scalars; then the param stats' own.
      per_chunk += 4 + 1 + 6 + 1 + 2 + 1 + 1 + 2 + 1;
      per_chunk += 2 + 4 + 3 + 1;
    }
  }
  per_chunk += 1 + (layers - 1);  // the output errors; backward GEMMs
  // The loss: around ℓ₀, a reduction and its join (ℓ₀: a reduction and a
  // divide, once); chunk-centred, two reductions, a divide, a merge.
  per_chunk += shifted ? 3 : 6;
  if (shifted) first_chunk += 3;
  plan.launches = plan.chunks * per_chunk + first_chunk;
  // DRAM traffic in float64 values per row: the widening (read the stored
  // value, write float64), then per layer the forward GEMM (read a, write z),
  // column means (read δ and a), the in-place centring (read and write both),
  // C's GEMM (read both); per row scalars written and read; the output errors.
  std::int64_t row_bytes = 0;
  if (s.origin == RowOrigin::resident) {
    row_bytes += d * (s.value_bytes + 8) + (s.labels ? 4 : k * (s.value_bytes + 8));
  } else {
    row_bytes += d * 8 + (s.labels ? 4 : k * 8);  // the host copy's writes
  }
  for (const Layer& layer : model.layers) {
    const std::int64_t widths = layer.in + layer.out;
    row_bytes += 8 * (layer.in + layer.out);  // forward: read a, write z
    row_bytes += 8 * 6 * 2;                   // the row scalars, written and read
    if (shifted) {
      row_bytes += 8 * widths;  // Σ δ aᵀ
      row_bytes += 8 * widths;  // the row scalars' kernel reads δ and a
      row_bytes += 8 * layer.out;  // Σ δ
    } else {
      row_bytes += 8 * widths;      // column means
      row_bytes += 8 * 2 * widths;  // centring, in place
      row_bytes += 8 * widths;      // C = UᵀV/m
      row_bytes += 8 * 7 * widths;  // the param stats' squares and products
    }
  }
  row_bytes += 8 * (3 * k + 2) + (s.labels ? 4 : k * 8);  // output errors and losses
  plan.dram_bytes = n * row_bytes + plan.chunks * layers * 2 * p * moments;
  return plan;
}

}  // namespace gradnoise::detail
