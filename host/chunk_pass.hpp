// Forward and backward over the data in chunks, exposing every layer's inputs
// a_{l-1} and output errors δ_l for the rows of a chunk: the rank-one factors
// of the per-sample gradients (g_{l,i} = δ_{l,i} ã_{l-1,i}ᵀ). The profile
// engine and everything that needs per-sample gradients without
// materialising them (Σv, Hv, Gram blocks, batch tests) build on it.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "scratch.hpp"
#include "gradnoise/data.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/model.hpp"

namespace gradnoise::detail {

struct ChunkView {
  std::int64_t first = 0;  // index of the chunk's first row in the data
  std::int64_t rows = 0;
  /// Per layer l: its input a_{l-1} (rows × in_l, row-major; for l = 0 it may
  /// be the data itself) and its output error δ_l (rows × out_l), which the
  /// caller may overwrite.
  std::vector<const double*> inputs;
  std::vector<double*> errors;
  const double* outputs = nullptr;  // f(x_i), rows × K
  const double* losses = nullptr;   // ℓ_i, rows
};

/// The buffers and the arithmetic of one chunk's forward and backward pass.
/// One per thread: it is not safe to share.
class ChunkForward {
 public:
  ChunkForward(const Model& model, Loss loss, std::int64_t chunk_rows);

  /// Rows [first, first + m) of `data` (m ≤ chunk_rows): forward, output
  /// errors, backward. Inputs a source stores as float64 are read in place.
  /// Throws InputError for a label outside [0, K) or a non-finite output.
  const ChunkView& run(const DataSource& data, std::int64_t first, std::int64_t m);

  /// A rows × in_l buffer the caller may overwrite after run(), e.g. with the
  /// centred inputs: for l ≥ 1 it is view.inputs[l] itself.
  double* scratch_input(std::int64_t layer) { return inputs_[layer].data(); }

 private:
  const Model& model_;
  Loss loss_;
  std::vector<ScratchVector<double>> inputs_, errors_;
  ScratchVector<double> output_, losses_, y_;
  std::vector<std::int32_t> labels_;
  ChunkView view_;
};

/// The first of a row's K real targets that `loss` rejects (each checked
/// alone), or −1 when all are valid.
std::int64_t first_bad_target_column(Loss loss, const double* y, std::int64_t k);

/// The InputError for sample `row`, whose target (y, K values, or label)
/// the loss rejects: one sentence naming the value and what was expected.
InputError bad_target(Loss loss, std::int64_t row, const double* y, std::int32_t label,
                      std::int64_t k);

/// Runs the model over `data` in chunks of `chunk_rows` rows, in order, and
/// calls `visit` for each. Throws InputError for a label outside [0, K) or a
/// non-finite output, like the profile.
void for_each_chunk(const Model& model, const DataSource& data, Loss loss, std::int64_t chunk_rows,
                    const std::function<void(const ChunkView&)>& visit);

}  // namespace gradnoise::detail
