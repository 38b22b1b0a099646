// The fused profile of a linear model with few outputs (K ≤ 16): one kernel
// that reads each tile of X from device memory once and keeps every
// accumulation in float64 (kernels/linear_fused.hpp has the tile arithmetic;
// tests/test_linear_fused.cpp runs the same decomposition on the CPU).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_support.hpp"
#include "gradnoise/profile.hpp"
#include "linear_fused.hpp"

namespace gradnoise::cuda {

/// detail::use_fused_linear (policy.hpp) with this device's shared memory per block.
bool use_fused_linear(const Model& model, const ProfileOptions& options);

class FusedLinear {
 public:
  /// Per-block running moments for a fixed grid (kFusedBlocksPerSm), so the
  /// order of every addition depends only on the data and the GPU.
  FusedLinear(const Model& model, const ProfileOptions& options, cudaStream_t stream);

  /// Queues rows [first_row, first_row + rows) held at x (rows×D), y (rows×K,
  /// squared loss) or labels (rows, cross-entropy); T is float or double.
  template <typename T>
  void accumulate(const T* x, const T* y, const std::int32_t* labels, std::int64_t rows,
                  std::int64_t first_row);

  /// Merges the blocks in order and fills n, loss, loss_var, layers[0],
  /// param_mean and (with param_stats) param_var; throws InputError for a bad
  /// label or a non-finite output seen on the way.
  void finish(Profile& result);

 private:
  const Model& model_;
  ProfileOptions options_;
  cudaStream_t stream_;
  int num_blocks_ = 0;
  std::int64_t slots_ = 0;
  std::size_t shared_bytes_ = 0;
  DeviceBuffer<double> weight_, bias_;
  DeviceBuffer<double> block_mean_, block_m2_;
  DeviceBuffer<detail::BlockScalars> block_scalars_;
  DeviceBuffer<unsigned long long> flags_;
};

}  // namespace gradnoise::cuda
