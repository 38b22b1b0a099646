// Element-wise kernels more than one operation launches (grid-stride loops
// over a 64-bit index): filling a buffer, and adding a vector to every row.
#pragma once

#include <cstdint>

#include "reduce.cuh"

namespace gradnoise::cuda {

template <typename T>
__global__ void fill_kernel(T* dst, std::int64_t count, T value) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    dst[j] = value;
  }
}

/// rows[i][j] += vec[j] for m rows of `width`: a layer's bias on its outputs,
/// or a block of direction biases on R a.
__global__ inline void add_rows_kernel(double* rows, const double* vec, std::int64_t m,
                                       std::int64_t width) {
  const std::int64_t count = m * width;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    rows[j] += vec[j % width];
  }
}

}  // namespace gradnoise::cuda
