// The per-chunk steps of a block covariance product Σ·V, written once against
// an executor, as core/hessian_pass.hpp does for H·V: the CPU
// CovarianceOperator (host/covariance.cpp) runs them with row-major BLAS and
// CovarianceHostOps, the GPU (kernels/covariance_cuda.cu) with cuBLAS and
// kernels that run the same per-entry functions, and a CPU test
// (tests/test_covariance_pass.cpp) with column-major BLAS and exactly
// cuBLAS's arguments, which it compares with the CPU operator. Plain C++:
// compiles with and without nvcc, includes no CUDA header.
//
// Σv = (1/N) Σ_i g_i c_i − G c̄ with the centred weights c_i = g_iᵀv − Gᵀv
// (docs/DEFINITIONS.md); c̄ is zero but for rounding, which subtracting G c̄
// removes. With g_{l,i} = δ_{l,i} ã_{l,i}ᵀ and every column of the block at
// once, per chunk of m rows:
//   per layer   Z = A_l V_lᵀ                  (m × cols·out, one GEMM)
//               c_i += Σ_r δ_ir (Z_i + b_l)_r   per column
//   then        c_i −= Gᵀv,  c̄ += Σ_i c_i
//   per layer   E = c ∘ δ_l                    (m × cols·out)
//               W_l += Eᵀ A_l                  (one GEMM),  b_l += Σ_i E_i
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gradnoise/model.hpp"
#include "hessian_pass.hpp"
#include "host_device.hpp"

namespace gradnoise::detail {

// ---- The block: which layers, the packed directions, the sums ----------------------

/// The layers a product covers, [first, end) (all, or one for a per-layer
/// Σ), where each one's slots start in a direction of length dim (offset[l],
/// 0 outside the range), and the widest of their outputs.
struct CovarianceLayers {
  std::int64_t first = 0, end = 0;
  std::int64_t dim = 0;
  std::int64_t widest = 0;
  std::vector<std::int64_t> offset;
};

/// `layer` −1: every layer; otherwise that layer alone.
inline CovarianceLayers covariance_layers(const Model& model, std::int64_t layer) {
  CovarianceLayers s;
  s.first = layer < 0 ? 0 : layer;
  s.end = layer < 0 ? model.num_layers() : layer + 1;
  s.offset.assign(static_cast<std::size_t>(model.num_layers()), 0);
  for (std::int64_t l = s.first; l < s.end; ++l) {
    s.offset[l] = s.dim;
    s.dim += model.layers[l].num_params();
    s.widest = std::max(s.widest, model.layers[l].out);
  }
  return s;
}

/// The directions packed per layer as the GEMMs read them, and Gᵀv.
struct CovarianceBlock {
  struct LayerPart {
    std::vector<double> v_stack;  // [c][r][s]: every column's V_l, stacked ((cols·out) × in)
    std::vector<double> c_stack;  // [c][r]: every column's bias part (empty without a bias)
  };
  std::vector<LayerPart> layers;  // per model layer; empty outside [first, end)
  std::vector<double> g_dot_v;    // [c]: Gᵀv
};

/// Packs `cols` column-major directions of length layers.dim; `mean_grad` is
/// G over the same slots, and dot(n, x, y) is Σ_j x_j y_j (every route passes
/// cblas_ddot, so Gᵀv rounds alike).
template <class Dot>
CovarianceBlock pack_covariance_block(const Model& model, const CovarianceLayers& layers,
                                      const std::vector<double>& mean_grad, const double* in,
                                      std::int64_t cols, Dot dot) {
  CovarianceBlock block;
  block.g_dot_v.resize(static_cast<std::size_t>(cols));
  for (std::int64_t c = 0; c < cols; ++c) {
    block.g_dot_v[c] = dot(layers.dim, mean_grad.data(), in + c * layers.dim);
  }
  block.layers.resize(static_cast<std::size_t>(model.num_layers()));
  for (std::int64_t l = layers.first; l < layers.end; ++l) {
    const Layer& layer = model.layers[l];
    const std::int64_t o = layer.out, d = layer.in;
    CovarianceBlock::LayerPart& part = block.layers[l];
    part.v_stack.resize(static_cast<std::size_t>(cols * o * d));
    if (layer.has_bias()) part.c_stack.resize(static_cast<std::size_t>(cols * o));
    for (std::int64_t c = 0; c < cols; ++c) {
      const double* v = in + c * layers.dim + layers.offset[l];
      std::copy_n(v, o * d, part.v_stack.data() + c * o * d);
      if (layer.has_bias()) std::copy_n(v + o * d, o, part.c_stack.data() + c * o);
    }
  }
  return block;
}

/// What a pass accumulates: per layer Σ_i g_{l,i} c_i, packed like the
/// directions (w: [c][r][s], b: [c][r]), and Σ_i c_i per column.
struct CovarianceSums {
  struct LayerPart {
    std::vector<double> w, b;
  };
  std::vector<LayerPart> layers;
  std::vector<double> c_sum;
};

inline CovarianceSums zero_covariance_sums(const Model& model, const CovarianceLayers& layers,
                                           std::int64_t cols) {
  CovarianceSums sums;
  sums.layers.resize(static_cast<std::size_t>(model.num_layers()));
  for (std::int64_t l = layers.first; l < layers.end; ++l) {
    const Layer& layer = model.layers[l];
    sums.layers[l].w.assign(static_cast<std::size_t>(cols * layer.out * layer.in), 0.0);
    if (layer.has_bias()) sums.layers[l].b.assign(static_cast<std::size_t>(cols * layer.out), 0.0);
  }
  sums.c_sum.assign(static_cast<std::size_t>(cols), 0.0);
  return sums;
}

/// out = (1/N) Σ_i g_i c_i − G c̄, column-major layers.dim × cols, with
/// inv_n = 1/N and `mean_grad` G over the layers' slots.
inline void unpack_covariance_block(const Model& model, const CovarianceLayers& layers,
                                    const CovarianceSums& sums, const std::vector<double>& mean_grad,
                                    std::int64_t cols, double inv_n, double* out) {
  for (std::int64_t c = 0; c < cols; ++c) {
    double* col = out + c * layers.dim;
    const double c_mean = sums.c_sum[c] * inv_n;
    for (std::int64_t l = layers.first; l < layers.end; ++l) {
      const Layer& layer = model.layers[l];
      const std::int64_t o = layer.out, d = layer.in;
      const CovarianceSums::LayerPart& part = sums.layers[l];
      for (std::int64_t j = 0; j < o * d; ++j) col[layers.offset[l] + j] = part.w[c * o * d + j] * inv_n;
      if (layer.has_bias()) {
        for (std::int64_t r = 0; r < o; ++r) col[layers.offset[l] + o * d + r] = part.b[c * o + r] * inv_n;
      }
    }
    for (std::int64_t j = 0; j < layers.dim; ++j) col[j] -= mean_grad[j] * c_mean;
  }
}

// ---- Chunk size on the GPU -----------------------------------------------------------

/// Doubles per row of a chunk that a block of `cols` products keeps: c_i and
/// Z (cols·widest, then E).
inline std::int64_t covariance_doubles_per_row(const CovarianceLayers& layers, std::int64_t cols) {
  return cols * (1 + layers.widest);
}

/// Device bytes of a block product over every layer on top of the profile
/// pipeline's own footprint: per row c_i, Z and a ones entry; fixed the
/// packed directions and the sums (each cols·P), Gᵀv and c̄.
inline ChunkFootprint covariance_chunk_footprint(const Model& model, bool labels, std::int64_t cols) {
  ChunkFootprint fp = chunk_footprint(model, labels, false);
  fp.per_row += 8 * (covariance_doubles_per_row(covariance_layers(model, -1), cols) + 1);
  fp.fixed += 8 * (2 * cols * model.num_params() + 2 * cols);
  return fp;
}

// ---- Per-entry arithmetic (host loops and GPU kernels alike) -------------------------

/// Entry j = i·cols + c of s += the layer's part of c_i for column c:
/// Σ_r δ_ir (z_{i,c·out+r} + bias_{c·out+r}), with z m × (cols·out) and bias
/// cols·out (or null).
GN_HOST_DEVICE inline void add_row_dot(std::int64_t j, const double* z, const double* delta,
                                       const double* bias, std::int64_t cols, std::int64_t out,
                                       double* s) {
  const double* zj = z + j * out;
  const double* di = delta + (j / cols) * out;
  const double* bj = bias != nullptr ? bias + (j % cols) * out : nullptr;
  double dot = 0;
  for (std::int64_t r = 0; r < out; ++r) dot += di[r] * (bj != nullptr ? zj[r] + bj[r] : zj[r]);
  s[j] += dot;
}

/// Entry j = i·cols + c of s −= shift_c (the centring by Gᵀv).
GN_HOST_DEVICE inline void subtract_shift(std::int64_t j, const double* shift, std::int64_t cols,
                                          double* s) {
  s[j] -= shift[j % cols];
}

/// Entry j = (i·cols + c)·out + r of e = c ∘ δ: s_{i,c} δ_ir.
GN_HOST_DEVICE inline void scale_error(std::int64_t j, const double* s, const double* delta,
                                       std::int64_t cols, std::int64_t out, double* e) {
  e[j] = s[j / out] * delta[(j / (cols * out)) * out + j % out];
}

// ---- One chunk ---------------------------------------------------------------------

/// Layer l's buffers for one chunk of m rows (row-major).
struct CovarianceLayerBuffers {
  const double* input = nullptr;    // a_l, m × in
  const double* error = nullptr;    // δ_l, m × out
  const double* v_stack = nullptr;  // see CovarianceBlock
  const double* c_stack = nullptr;  // null without a bias
  double* w = nullptr;              // see CovarianceSums
  double* b = nullptr;              // null without a bias
};

struct CovarianceBuffers {
  std::vector<CovarianceLayerBuffers> layers;  // per model layer; [first, end) used
  const double* g_dot_v = nullptr;             // cols
  double* c_sum = nullptr;                     // cols
  double* s = nullptr;                         // c_i: [i][c], m × cols
  double* z = nullptr;                         // [i][c][r], m × cols·widest: Z, then E
};

/// Buffers over a host block and host sums (the layers' input and error are
/// the caller's, per chunk).
inline CovarianceBuffers covariance_buffers(const CovarianceLayers& layers, const CovarianceBlock& block,
                                            CovarianceSums& sums, double* s, double* z) {
  CovarianceBuffers b;
  b.layers.resize(block.layers.size());
  for (std::int64_t l = layers.first; l < layers.end; ++l) {
    b.layers[l].v_stack = block.layers[l].v_stack.data();
    b.layers[l].c_stack = block.layers[l].c_stack.empty() ? nullptr : block.layers[l].c_stack.data();
    b.layers[l].w = sums.layers[l].w.data();
    b.layers[l].b = sums.layers[l].b.empty() ? nullptr : sums.layers[l].b.data();
  }
  b.g_dot_v = block.g_dot_v.data();
  b.c_sum = sums.c_sum.data();
  b.s = s;
  b.z = z;
  return b;
}

/// The executor's row operations on the host, in the order the CPU operator
/// has always added (the GPU's kernels in covariance_cuda.cu run the same
/// per-entry functions over the same index j):
///   zero(dst, count);
///   add_row_dots(z, delta, bias, m, cols, out, s): add_row_dot for every (row, column);
///   subtract_shift(s, shift, m, cols): subtract_shift for every (row, column);
///   scale_errors(s, delta, m, cols, out, e): scale_error for every (row, column, output);
///   column_sums(rows, m, width, sums): sums_j += Σ_i rows_ij, rows added in order (the GPU
///     runs column_sums_by_gemm instead).
/// With gemm(const RowMajorGemm&, a, b, c) (see hessian_pass.hpp) they make an executor.
struct CovarianceHostOps {
  void zero(double* dst, std::int64_t count) { std::fill_n(dst, count, 0.0); }
  void add_row_dots(const double* z, const double* delta, const double* bias, std::int64_t m,
                    std::int64_t cols, std::int64_t out, double* s) {
    for (std::int64_t j = 0; j < m * cols; ++j) add_row_dot(j, z, delta, bias, cols, out, s);
  }
  void subtract_shift(double* s, const double* shift, std::int64_t m, std::int64_t cols) {
    for (std::int64_t j = 0; j < m * cols; ++j) detail::subtract_shift(j, shift, cols, s);
  }
  void scale_errors(const double* s, const double* delta, std::int64_t m, std::int64_t cols,
                    std::int64_t out, double* e) {
    for (std::int64_t j = 0; j < m * cols * out; ++j) scale_error(j, s, delta, cols, out, e);
  }
  void column_sums(const double* rows, std::int64_t m, std::int64_t width, double* sums) {
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < width; ++j) sums[j] += rows[i * width + j];
    }
  }
};

/// sums (width) += rowsᵀ · ones: the column sums of m × width rows as one
/// GEMM against m ones (the GPU's column_sums; no reduction kernel).
template <class Exec>
void column_sums_by_gemm(Exec& exec, const double* ones, const double* rows, std::int64_t m,
                         std::int64_t width, double* sums) {
  row_major_gemm(exec, true, false, width, 1, m, 1.0, rows, width, ones, 1, 1.0, sums, 1);
}

/// One chunk of m rows of a block product over `cols` directions (see the
/// top of this file); `b` holds this chunk's inputs and errors.
template <class Exec>
void covariance_chunk(Exec& exec, const Model& model, const CovarianceLayers& layers,
                      const CovarianceBuffers& b, std::int64_t m, std::int64_t cols) {
  exec.zero(b.s, m * cols);
  // c_i per column: Σ_l δ_{l,i}ᵀ V_l ã_{l,i}, one GEMM per layer for all columns.
  for (std::int64_t l = layers.first; l < layers.end; ++l) {
    const Layer& layer = model.layers[l];
    const std::int64_t o = layer.out, d = layer.in, width = cols * o;
    const CovarianceLayerBuffers& bl = b.layers[l];
    row_major_gemm(exec, false, true, m, width, d, 1.0, bl.input, d, bl.v_stack, d, 0.0, b.z, width);
    exec.add_row_dots(b.z, bl.error, bl.c_stack, m, cols, o, b.s);
  }
  exec.subtract_shift(b.s, b.g_dot_v, m, cols);
  exec.column_sums(b.s, m, cols, b.c_sum);
  // Σ_i c_i g_{l,i} = (c∘Δ_l)ᵀ Ã_l: one GEMM per layer for all columns.
  for (std::int64_t l = layers.first; l < layers.end; ++l) {
    const Layer& layer = model.layers[l];
    const std::int64_t o = layer.out, d = layer.in, width = cols * o;
    const CovarianceLayerBuffers& bl = b.layers[l];
    exec.scale_errors(b.s, bl.error, m, cols, o, b.z);
    row_major_gemm(exec, true, false, width, d, m, 1.0, b.z, width, bl.input, d, 1.0, bl.w, d);
    if (layer.has_bias()) exec.column_sums(b.z, m, width, bl.b);
  }
}

}  // namespace gradnoise::detail
