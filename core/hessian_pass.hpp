// The per-chunk steps of a block Hessian-vector product, written once
// against an executor: the GPU runs them with cuBLAS (kernels/hessian_cuda.cu),
// the CPU HessianOperator with row-major BLAS (host/hessian_host.hpp), and a
// CPU test with column-major BLAS and exactly cuBLAS's arguments, which it
// compares with the CPU operator. Plain C++: compiles with and without nvcc, includes no CUDA header.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gemm.hpp"
#include "gradnoise/model.hpp"
#include "losses.hpp"
#include "moments.hpp"
#include "plan.hpp"

namespace gradnoise::detail {

// ---- Buffers and chunk size ----------------------------------------------------

/// Doubles per row of a chunk that a block of `cols` products keeps: R a_{l+1}
/// and R δ_l for every layer and column.
inline std::int64_t hessian_doubles_per_row(const Model& model, std::int64_t cols) {
  std::int64_t width_sum = 0;
  for (const Layer& layer : model.layers) width_sum += layer.out;
  return 2 * cols * width_sum;
}

/// Device bytes of a block product on top of the profile pipeline's own
/// footprint: per row R a, R δ, the loss's Hessian state (K doubles unless
/// H_ℓ = I) and a ones entry; fixed the packed directions and the accumulated
/// products.
inline ChunkFootprint hessian_chunk_footprint(const Model& model, Loss loss, std::int64_t cols) {
  const bool labels = losses::visit_loss(loss, [](auto l) { return decltype(l)::targets == TargetKind::labels; });
  const bool state = !losses::visit_loss(loss, [](auto l) { return decltype(l)::unit_hessian; });
  ChunkFootprint fp = chunk_footprint(model, labels, false);
  const std::int64_t k = model.output_dim();
  fp.per_row += 8 * (hessian_doubles_per_row(model, cols) + (state ? k : 0) + 1);
  // v_stack, v_hcat, hw, hwt (each cols·out·in) and c_stack, hb (cols·out), per layer.
  fp.fixed += 8 * 4 * cols * model.num_params();
  return fp;
}

/// Rows per chunk of a GPU block product: at most `requested`, n, the
/// pipeline's limit and what `budget_doubles` allows for R a and R δ (so the
/// cuBLAS dimensions m·cols stay far below 2³¹).
inline std::int64_t hessian_chunk_rows(const Model& model, std::int64_t cols, std::int64_t requested,
                                       std::int64_t n, std::int64_t budget_doubles) {
  const std::int64_t per_row = std::max<std::int64_t>(hessian_doubles_per_row(model, cols), 1);
  return std::max<std::int64_t>(
      1, std::min({requested, n, kMaxChunkRows, std::max<std::int64_t>(budget_doubles / per_row, 1)}));
}

/// The direction block packed per layer as the GEMMs read it, and the
/// accumulated products, on the host (the GPU copies them in and out).
struct HessianBlock {
  struct LayerPart {
    std::vector<double> v_stack;  // [c][r][s]: every column's V_l, stacked
    std::vector<double> v_hcat;   // [r][c][s]: side by side (full Hessian, l > 0)
    std::vector<double> c_stack;  // [c][r]: every column's c_l (bias)
    std::vector<double> hw;       // [c][r][s]: Σ_i R δ a_lᵀ
    std::vector<double> hwt;      // [r][c][s]: Σ_i δ (R a_l)ᵀ (full, l > 0)
    std::vector<double> hb;       // [c][r]:    Σ_i R δ
  };
  std::vector<LayerPart> layers;
};

/// Packs `cols` column-major directions of length P (docs/MATH.md flattening) and
/// zeroes the accumulators.
inline HessianBlock pack_hessian_block(const Model& model, const double* in, std::int64_t cols,
                                       bool full) {
  const std::int64_t p = model.num_params();
  HessianBlock block;
  block.layers.resize(static_cast<std::size_t>(model.num_layers()));
  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    const Layer& layer = model.layers[l];
    const std::int64_t o = layer.out, ni = layer.in, off = model.param_offset(l);
    HessianBlock::LayerPart& b = block.layers[l];
    b.v_stack.resize(static_cast<std::size_t>(cols * o * ni));
    for (std::int64_t c = 0; c < cols; ++c) {
      std::copy_n(in + c * p + off, o * ni, b.v_stack.data() + c * o * ni);
    }
    if (full && l > 0) {
      b.v_hcat.resize(b.v_stack.size());
      for (std::int64_t r = 0; r < o; ++r) {
        for (std::int64_t c = 0; c < cols; ++c) {
          std::copy_n(in + c * p + off + r * ni, ni, b.v_hcat.data() + (r * cols + c) * ni);
        }
      }
      b.hwt.assign(b.v_stack.size(), 0.0);
    }
    if (layer.has_bias()) {
      b.c_stack.resize(static_cast<std::size_t>(cols * o));
      for (std::int64_t c = 0; c < cols; ++c) {
        std::copy_n(in + c * p + off + o * ni, o, b.c_stack.data() + c * o);
      }
      b.hb.assign(b.c_stack.size(), 0.0);
    }
    b.hw.assign(b.v_stack.size(), 0.0);
  }
  return block;
}

/// out = (1/N) · the accumulated products, column-major P × cols.
inline void unpack_hessian_block(const Model& model, const HessianBlock& block, std::int64_t cols,
                                 double inv_n, double* out) {
  const std::int64_t p = model.num_params();
  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    const Layer& layer = model.layers[l];
    const std::int64_t o = layer.out, ni = layer.in, off = model.param_offset(l);
    const HessianBlock::LayerPart& b = block.layers[l];
    for (std::int64_t c = 0; c < cols; ++c) {
      double* dst = out + c * p + off;
      for (std::int64_t r = 0; r < o; ++r) {
        for (std::int64_t s = 0; s < ni; ++s) {
          double v = b.hw[(c * o + r) * ni + s];
          if (!b.hwt.empty()) v += b.hwt[(r * cols + c) * ni + s];
          dst[r * ni + s] = v * inv_n;
        }
      }
      if (layer.has_bias()) {
        for (std::int64_t r = 0; r < o; ++r) dst[o * ni + r] = b.hb[c * o + r] * inv_n;
      }
    }
  }
}

// ---- One chunk ---------------------------------------------------------------------

/// Layer l's buffers for one chunk of m rows and a block of `cols` directions
/// (all row-major; "[i][c][r]" is sample-major, every column of a row together).
struct HessianLayerBuffers {
  const double* weight = nullptr;  // W_l, out × in
  const double* input = nullptr;   // a_l, m × in
  const double* error = nullptr;   // δ_l, m × out
  const double* v_stack = nullptr;  // see HessianBlock
  const double* v_hcat = nullptr;   // null unless full and l > 0
  const double* c_stack = nullptr;  // null without a bias
  double* hw = nullptr;
  double* hwt = nullptr;            // null unless full and l > 0
  double* hb = nullptr;             // null without a bias
  double* r_out = nullptr;          // R a_{l+1}, [i][c][r], m × cols × out
  double* r_delta = nullptr;        // R δ_l,     [i][c][r], m × cols × out
};

/// The executor's operations (the GPU's in kernels/hessian_cuda.cu, the CPU's in
/// host/hessian_host.hpp):
///   gemm(const RowMajorGemm&, const double* a, const double* b, double* c): a
///     column-major executor (cuBLAS) runs column_major(g) with first = b, second = a;
///   add_rows(double* rows, const double* vec, m, width): rows[i][j] += vec[j];
///   copy(double* dst, const double* src, count);
///   loss_state_rows(Loss, const double* z, m, k, double* state): the loss's
///     hessian_state per row;
///   loss_hessian_rows(Loss, const double* state, const double* rz, m, cols, k, double* rd):
///     the loss's hessian_row on every (row, column), rz and rd [i][c][r].

/// One chunk of a block Hessian-vector product (the CPU HessianOperator runs
/// it too, through host/hessian_host.hpp):
/// Forward:  R a_{l+1} = a_l V_lᵀ + R a_l W_lᵀ + c_l            (R a_0 = 0)
/// Loss:     R δ_{L−1} = H_ℓ R f   (the loss's rows; a copy when H_ℓ = I)
/// Backward: R δ_{l−1} = R δ_l W_l [+ δ_l V_l]                  (full only)
/// Products: hw_l += Σ_i R δ_l a_lᵀ, hwt_l += Σ_i δ_l (R a_l)ᵀ, hb_l += Σ_i R δ_l
/// (the last as R δ_lᵀ · ones, a GEMM, so no reduction kernel is needed).
/// `outputs` is f (m × K), `state` m × K scratch (unless H_ℓ = I), `ones` m ones.
template <class Exec>
void hessian_chunk(Exec& exec, const Model& model, const std::vector<HessianLayerBuffers>& b,
                   const double* outputs, double* state, const double* ones, Loss loss,
                   bool full, std::int64_t m, std::int64_t cols) {
  const std::int64_t num_layers = model.num_layers();
  const std::int64_t k = model.output_dim();
  for (std::int64_t l = 0; l < num_layers; ++l) {
    const Layer& layer = model.layers[l];
    const std::int64_t o = layer.out, ni = layer.in;
    row_major_gemm(exec, false, true, m, cols * o, ni, 1.0, b[l].input, ni, b[l].v_stack, ni, 0.0,
                   b[l].r_out, cols * o);
    if (l > 0) {
      row_major_gemm(exec, false, true, m * cols, o, ni, 1.0, b[l - 1].r_out, ni, b[l].weight, ni,
                     1.0, b[l].r_out, o);
    }
    if (layer.has_bias()) exec.add_rows(b[l].r_out, b[l].c_stack, m, cols * o);
  }
  const double* rf = b[num_layers - 1].r_out;
  double* rd = b[num_layers - 1].r_delta;
  if (losses::visit_loss(loss, [](auto l) { return decltype(l)::unit_hessian; })) {
    exec.copy(rd, rf, m * cols * k);
  } else {
    exec.loss_state_rows(loss, outputs, m, k, state);
    exec.loss_hessian_rows(loss, state, rf, m, cols, k, rd);
  }
  for (std::int64_t l = num_layers - 1; l >= 0; --l) {
    const Layer& layer = model.layers[l];
    const std::int64_t o = layer.out, ni = layer.in;
    row_major_gemm(exec, true, false, cols * o, ni, m, 1.0, b[l].r_delta, cols * o, b[l].input, ni,
                   1.0, b[l].hw, ni);
    if (full && l > 0) {
      row_major_gemm(exec, true, false, o, cols * ni, m, 1.0, b[l].error, o, b[l - 1].r_out,
                     cols * ni, 1.0, b[l].hwt, cols * ni);
    }
    if (layer.has_bias()) {
      row_major_gemm(exec, true, false, cols * o, 1, m, 1.0, b[l].r_delta, cols * o, ones, 1, 1.0,
                     b[l].hb, 1);
    }
    if (l > 0) {
      row_major_gemm(exec, false, false, m * cols, ni, o, 1.0, b[l].r_delta, o, b[l].weight, ni,
                     0.0, b[l - 1].r_delta, ni);
      if (full) {
        row_major_gemm(exec, false, false, m, cols * ni, o, 1.0, b[l].error, o, b[l].v_hcat,
                       cols * ni, 1.0, b[l - 1].r_delta, cols * ni);
      }
    }
  }
}

}  // namespace gradnoise::detail
