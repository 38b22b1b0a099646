// How many rows a chunk of the CUDA pipeline can hold: pure arithmetic on the
// model's widths and the free device memory, kept apart from CUDA so CPU tests
// cover it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gradnoise/model.hpp"
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
