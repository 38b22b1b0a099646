// The fused profile of a linear model with few outputs (K ≤ 16): one kernel
// that reads X from device memory once, staging tiles in shared memory, and
// keeps every accumulation in float64 (kernels/linear_fused.hpp has the tile arithmetic;
// tests/test_linear_fused.cpp runs the same decomposition on the CPU).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "cuda_support.hpp"
#include "gradnoise/profile.hpp"
#include "linear_fused.hpp"

namespace gradnoise::cuda {

/// detail::use_fused_linear (policy.hpp) with this device's shared memory per block.
bool use_fused_linear(const Model& model, const ProfileOptions& options);

class FusedLinear {
 public:
  /// Per-block running moments for a fixed grid (the shared-memory layout's
  /// blocks per SM, policy.hpp fused_layout), so the order of every addition
  /// depends only on the data and the GPU. Allocates every buffer a profile
  /// needs, then reset(model).
  /// Without `upload_now` the weights go up at the first reset() or
  /// profile_rows() instead (a session's object, whose first call stages them).
  FusedLinear(const Model& model, const ProfileOptions& options, cudaStream_t stream, bool upload_now = true);
  FusedLinear(const FusedLinear&) = delete;
  FusedLinear& operator=(const FusedLinear&) = delete;
  ~FusedLinear();

  /// Whether this object can profile `model` with `options` after reset():
  /// the same shape, loss and param_stats (a session keeps one between calls).
  bool fits(const Model& model, const ProfileOptions& options) const;

  /// Queues the upload of `model`'s weights (which must outlive finish()) and
  /// the zeroing of the moments and flags: a fresh profile, no allocation.
  void reset(const Model& model);

  /// Queues rows [first_row, first_row + rows) held at x (rows×D), y (rows×K,
  /// squared loss) or labels (rows, cross-entropy); T is float or double.
  template <typename T>
  void accumulate(const T* x, const T* y, const std::int32_t* labels, std::int64_t rows,
                  std::int64_t first_row);

  /// Merges the blocks in order and fills n, loss, loss_var, layers[0],
  /// param_mean and (with param_stats) param_var; throws InputError for a bad
  /// label or a non-finite output seen on the way.
  void finish(Profile& result);

  /// The whole profile of `rows` device-resident rows (reset, accumulate,
  /// finish). With `replay` (a session, whose rows stay put), the second call
  /// on the same rows captures the call's copies and launches in a CUDA graph
  /// and every later one replays it: one launch a profile.
  template <typename T>
  void profile_rows(const Model& model, const T* x, const T* y, const std::int32_t* labels,
                    std::int64_t rows, bool replay, Profile& result);

 private:
  void stage(const Model& model);  // W and b into the pinned buffer; a fresh profile
  void enqueue_upload();
  void enqueue_merge();             // the merge of the blocks and the copy of the results
  void collect(Profile& result);    // synchronise, then read the results

  /// The rows a captured graph reads.
  struct GraphKey {
    const void* x = nullptr;
    const void* y = nullptr;
    const void* labels = nullptr;
    std::int64_t rows = 0;
    std::size_t value_bytes = 0;
    bool operator==(const GraphKey&) const = default;
  };

  const Model* model_;
  ProfileOptions options_;
  cudaStream_t stream_;
  std::int64_t d_ = 0, k_ = 0;
  bool bias_used_ = false;
  int sms_ = 0;
  int num_blocks_ = 0;  // the larger of the two layouts' grids: what finish() merges
  std::int64_t slots_ = 0;
  detail::FusedLayout layout_float_, layout_double_;  // for float32 and float64 rows
  DeviceBuffer<double> weight_;    // W (K×D) then b (K; zeros without a bias)
  PinnedBuffer<double> upload_;    // reset()'s staging of W and b
  DeviceBuffer<double> sums_;      // per-block sums when a layout keeps them out of shared memory
  DeviceBuffer<double> block_mean_, block_m2_;
  DeviceBuffer<detail::BlockScalars> block_scalars_;
  DeviceBuffer<unsigned long long> flags_;  // kNoRow between profiles (re-armed by the merge)
  // finish(): detail::FusedTotals, then the slots' means and M2s, and their pinned copy.
  DeviceBuffer<double> results_;
  PinnedBuffer<double> download_;
  DeviceBuffer<double> partial_;  // the merge's per-block sums of the slots' shifts
  DeviceBuffer<unsigned int> done_;  // the merge's count of finished blocks (0 between profiles)
  bool fresh_ = true;             // the next launch starts the blocks' moments
  bool pending_ = false;          // copies queued since the last synchronise
  int launched_blocks_ = 0;       // the widest grid launched since reset()
  CapturedGraph graph_;           // profile_rows' call, once captured
  GraphKey graph_key_;            // the rows of the last profile_rows call
  GraphKey uncapturable_;         // rows whose capture the driver refused
};

/// A session's fused-kernel state, kept between profile calls of the same
/// shape (kernels/resident.cuh).
struct FusedCache {
  std::unique_ptr<FusedLinear> fused;
};

}  // namespace gradnoise::cuda
