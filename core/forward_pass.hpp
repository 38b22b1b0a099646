// The forward and backward pass of a chunk of m rows, written once against an
// executor: the CPU runs it with row-major BLAS (host/chunk_pass.cpp), the GPU
// with cuBLAS and its kernels (kernels/profile_pipeline.cu).
//   Forward:  a_l = a_{l−1} W_lᵀ (+ b_l)        (row-major, m × out_l)
//   Loss:     δ_L and ℓ_i by the loss's error row (the caller's step)
//   Backward: δ_{l−1} = δ_l W_l
// Every per-sample gradient is then g_{l,i} = δ_{l,i} ã_{l−1,i}ᵀ. Plain C++.
#pragma once

#include <cstdint>
#include <vector>

#include "gemm.hpp"
#include "gradnoise/model.hpp"

namespace gradnoise::detail {

/// Layer l's buffers for one chunk: W_l (out × in) and b_l (null without a
/// bias), its input a_{l−1} (m × in), its output (m × out: the next layer's
/// input, or f for the last layer) and its output error δ_l (m × out).
struct ForwardLayerBuffers {
  const double* weight = nullptr;
  const double* bias = nullptr;
  const double* input = nullptr;
  double* output = nullptr;
  double* error = nullptr;
};

/// The executor: gemm(const RowMajorGemm&, a, b, c) (core/gemm.hpp) and
/// add_rows(double* rows, const double* vec, m, width): rows[i][j] += vec[j].
/// `output_errors()` fills the last layer's error from f between the passes.
template <class Exec, class OutputErrors>
void forward_backward(Exec& exec, const Model& model, const std::vector<ForwardLayerBuffers>& b,
                      std::int64_t m, OutputErrors&& output_errors) {
  const std::int64_t num_layers = model.num_layers();
  for (std::int64_t l = 0; l < num_layers; ++l) {
    const Layer& layer = model.layers[l];
    row_major_gemm(exec, false, true, m, layer.out, layer.in, 1.0, b[l].input, layer.in,
                   b[l].weight, layer.in, 0.0, b[l].output, layer.out);
    if (b[l].bias != nullptr) exec.add_rows(b[l].output, b[l].bias, m, layer.out);
  }
  output_errors();
  for (std::int64_t l = num_layers - 1; l > 0; --l) {
    const Layer& layer = model.layers[l];
    row_major_gemm(exec, false, false, m, layer.in, layer.out, 1.0, b[l].error, layer.out,
                   b[l].weight, layer.in, 0.0, b[l - 1].error, layer.in);
  }
}

}  // namespace gradnoise::detail
