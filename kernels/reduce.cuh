// Deterministic reductions shared by the CUDA kernels: two-stage
// cub::BlockReduce whose grid depends only on the item count, so the order of
// every floating-point addition is fixed and results are bit-identical from
// run to run on the same GPU.
#pragma once

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>

#include "cuda_support.hpp"
#include "moments.hpp"
#include "policy.hpp"

namespace gradnoise::cuda {

using detail::kMaxReduceBlocks;
using detail::kThreads;
constexpr int kWarp = 32;

/// Blocks of `threads` for a grid-stride loop over `items`.
inline int grid_for(std::int64_t items, int threads = kThreads) {
  return static_cast<int>(std::min<std::int64_t>(detail::ceil_div(items, threads), detail::kMaxGridBlocks));
}

/// Butterfly sum over a full warp: every lane ends with the same total, added
/// in a fixed order.
inline __device__ double warp_sum(double v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

struct Plus {
  template <typename T>
  __device__ T operator()(T a, const T& b) const {
    a += b;
    return a;
  }
};

/// partial[block] = Σ load(i) over this block's fixed share of [0, count).
template <typename T, typename Load>
__global__ void __launch_bounds__(kThreads) block_reduce_kernel(std::int64_t count, Load load,
                                                                T* partial) {
  using BlockReduce = cub::BlockReduce<T, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  T acc{};
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kThreads;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < count;
       i += stride) {
    acc += load(i);
  }
  const T total = BlockReduce(temp).Reduce(acc, Plus{});
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

template <typename T>
struct LoadArray {
  const T* values;
  __device__ T operator()(std::int64_t i) const { return values[i]; }
};

struct LoadSquare {
  const double* values;
  __device__ double operator()(std::int64_t i) const { return values[i] * values[i]; }
};

/// Sums `count` loaded items into *result (device) in a fixed order; `partial`
/// holds kMaxReduceBlocks items.
template <typename T, typename Load>
void reduce(std::int64_t count, Load load, T* partial, T* result, cudaStream_t stream) {
  const int blocks = static_cast<int>(
      std::clamp<std::int64_t>(detail::ceil_div(count, kThreads * detail::kReduceItemsPerThread), 1,
                               kMaxReduceBlocks));
  block_reduce_kernel<T><<<blocks, kThreads, 0, stream>>>(count, load, partial);
  GN_CUDA_CHECK(cudaGetLastError());
  block_reduce_kernel<T><<<1, kThreads, 0, stream>>>(blocks, LoadArray<T>{partial}, result);
  GN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace gradnoise::cuda
