// Block Hessian-vector products on host buffers through the GEMM sequence of
// core/hessian_pass.hpp: the CPU HessianOperator runs it with row-major
// BLAS; a test runs the same sequence through column-major BLAS with the
// arguments cuBLAS gets, so the two routes check each other.
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "chunk_pass.hpp"
#include "hessian_pass.hpp"
#include "host_exec.hpp"

namespace gradnoise::detail {

/// out = H · in for `cols` column-major directions of length P (docs/MATH.md
/// flattening), one pass over `data` in chunks of `chunk` rows: pack the
/// directions, run hessian_chunk on each chunk with `exec`, unpack scaled by
/// 1/N. The R a and R δ buffers start as NaN, so a GEMM that reads them
/// before writing them (a wrong beta) shows in the result.
template <class Exec>
void hessian_apply_host(Exec& exec, const Model& model, const DataSource& data, Loss loss,
                        bool gauss_newton, std::int64_t chunk, const double* in, double* out,
                        std::int64_t cols) {
  const bool full = !gauss_newton;
  const bool unit_hessian = losses::visit_loss(loss, [](auto l) { return decltype(l)::unit_hessian; });
  const std::int64_t k = model.output_dim(), num_layers = model.num_layers();
  HessianBlock block = pack_hessian_block(model, in, cols, full);
  std::vector<std::vector<double>> r_out(static_cast<std::size_t>(num_layers)), r_delta(r_out.size());
  std::vector<HessianLayerBuffers> buffers(r_out.size());
  for (std::int64_t l = 0; l < num_layers; ++l) {
    HessianBlock::LayerPart& part = block.layers[l];
    r_out[l].assign(static_cast<std::size_t>(chunk * cols * model.layers[l].out),
                    std::numeric_limits<double>::quiet_NaN());
    r_delta[l].assign(r_out[l].size(), std::numeric_limits<double>::quiet_NaN());
    HessianLayerBuffers& b = buffers[l];
    b.weight = model.layers[l].weight.data();
    b.v_stack = part.v_stack.data();
    b.v_hcat = part.v_hcat.empty() ? nullptr : part.v_hcat.data();
    b.c_stack = part.c_stack.empty() ? nullptr : part.c_stack.data();
    b.hw = part.hw.data();
    b.hwt = part.hwt.empty() ? nullptr : part.hwt.data();
    b.hb = part.hb.empty() ? nullptr : part.hb.data();
    b.r_out = r_out[l].data();
    b.r_delta = r_delta[l].data();
  }
  std::vector<double> state(unit_hessian ? 0 : static_cast<std::size_t>(chunk * k));
  std::vector<double> ones(static_cast<std::size_t>(chunk), 1.0);
  for_each_chunk(model, data, loss, chunk, [&](const ChunkView& view) {
    for (std::int64_t l = 0; l < num_layers; ++l) {
      buffers[l].input = view.inputs[l];
      buffers[l].error = view.errors[l];
    }
    hessian_chunk(exec, model, buffers, view.outputs, state.data(), ones.data(), loss, full,
                  view.rows, cols);
  });
  unpack_hessian_block(model, block, cols, 1.0 / static_cast<double>(data.num_samples()), out);
}

}  // namespace gradnoise::detail
