// Forward and backward over the data in chunks, exposing every layer's inputs
// a_{l-1} and output errors δ_l for the rows of a chunk: the rank-one factors
// of the per-sample gradients (g_{l,i} = δ_{l,i} ã_{l-1,i}ᵀ). Everything that
// needs per-sample gradients without materialising them (Σv, Hv, Gram blocks,
// batch tests) is a callback on these factors.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/model.hpp"

namespace gradnoise::detail {

struct ChunkView {
  std::int64_t first = 0;  // index of the chunk's first row in the data
  std::int64_t rows = 0;
  /// Per layer l: its input a_{l-1} (rows × in_l) and its output error δ_l
  /// (rows × out_l), row-major. The callback may overwrite them.
  std::vector<double*> inputs;
  std::vector<double*> errors;
  const double* outputs = nullptr;  // f(x_i), rows × K
  const double* losses = nullptr;   // ℓ_i, rows
};

/// Runs the model over `data` in chunks of `chunk_rows` rows, in order, and
/// calls `visit` for each. Throws InputError for a label outside [0, K) or a
/// non-finite output, like the profile.
void for_each_chunk(const Model& model, const DataSource& data, Loss loss, std::int64_t chunk_rows,
                    const std::function<void(const ChunkView&)>& visit);

}  // namespace gradnoise::detail
