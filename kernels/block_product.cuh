// What the GPU block products (H·V in hessian_cuda.cu, Σ·V in
// covariance_cuda.cu) share: their executors' GEMM, core's row-major
// description (RowMajorGemm, core/hessian_pass.hpp) run on column-major
// cuBLAS; the vector of ones their bias and column sums multiply; and the
// plan of their chunk size with its retry.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <string>

#include "cuda_support.hpp"
#include "elementwise.cuh"
#include "gradnoise/model.hpp"
#include "hessian_pass.hpp"
#include "plan.hpp"
#include "reduce.cuh"

namespace gradnoise::cuda {

/// A GEMM dimension as cuBLAS's int; a block too wide for it is an error.
inline int blas_int(std::int64_t value) {
  if (value < 0 || value > INT_MAX) {
    throw RuntimeError("a block product needs a GEMM dimension of " + std::to_string(value) +
                       ", beyond cuBLAS's 32-bit limit; use fewer vectors per block");
  }
  return static_cast<int>(value);
}

/// Row-major C = alpha op(A) op(B) + beta C on cuBLAS: column_major(g), whose
/// first operand is b and second a (a test runs these very arguments through
/// column-major BLAS).
inline void gemm(cublasHandle_t cublas, const detail::RowMajorGemm& row_major, const double* a,
                 const double* b, double* c) {
  const detail::ColumnMajorGemm g = detail::column_major(row_major);
  const double* first = b;  // column-major, a row-major product's operands swap
  const double* second = a;
  GN_CUBLAS_CHECK(cublasDgemm(cublas, g.trans_first ? CUBLAS_OP_T : CUBLAS_OP_N,
                              g.trans_second ? CUBLAS_OP_T : CUBLAS_OP_N, blas_int(g.m),
                              blas_int(g.n), blas_int(g.k), &g.alpha, first, blas_int(g.ld_first),
                              second, blas_int(g.ld_second), &g.beta, c, blas_int(g.ldc)));
}

/// The base of core's executors on the GPU (forward_pass.hpp, hessian_pass.hpp,
/// covariance_pass.hpp): GEMMs on cuBLAS and the shared row operations as
/// kernels, all queued on one stream (the cuBLAS handle is bound to it).
struct CublasExec {
  cublasHandle_t cublas = nullptr;
  cudaStream_t stream = nullptr;

  void gemm(const detail::RowMajorGemm& g, const double* a, const double* b, double* c) {
    cuda::gemm(cublas, g, a, b, c);
  }
  void add_rows(double* rows, const double* vec, std::int64_t m, std::int64_t width) {
    add_rows_kernel<<<grid_for(m * width), kThreads, 0, stream>>>(rows, vec, m, width);
    GN_CUDA_CHECK(cudaGetLastError());
  }
  void copy(double* dst, const double* src, std::int64_t count) {
    GN_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(count) * sizeof(double),
                                  cudaMemcpyDeviceToDevice, stream));
  }
};

/// `count` ones on the device, filled on `stream`.
inline DeviceBuffer<double> device_ones(std::int64_t count, cudaStream_t stream) {
  DeviceBuffer<double> ones(static_cast<std::size_t>(count));
  fill_kernel<double><<<grid_for(count), kThreads, 0, stream>>>(ones.data(), count, 1.0);
  GN_CUDA_CHECK(cudaGetLastError());
  return ones;
}

/// Runs pass(chunk) for a block of `cols` products, "a block of <cols> <what>
/// on this model's <P> parameters" in the out-of-memory message: chunks of at
/// most `wanted` rows, n and what `footprint` leaves of the usable free
/// memory, halved and run again when the device runs out of memory anyway.
template <class Pass>
void run_block_product(const Model& model, std::int64_t n, std::int64_t cols, const std::string& what,
                       std::int64_t wanted, const detail::ChunkFootprint& footprint, Pass pass) {
  with_halving_chunks(
      "a block of " + std::to_string(cols) + " " + what + " on this model's " +
          std::to_string(model.num_params()) + " parameters",
      [&](std::int64_t budget) { return detail::plan_chunk_rows(footprint, budget, wanted, n); }, pass);
}

}  // namespace gradnoise::cuda
