// A session's resident data (cuda_entry.hpp), for the kernels files that
// read it: the device arrays and the session's stream. Made by make_resident
// (resident.cu).
#pragma once

#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "chunk_feeder.cuh"
#include "cuda_entry.hpp"
#include "cuda_support.hpp"
#include "linear_fused.cuh"

namespace gradnoise {

/// A session's forward and backward pass at one θ, kept for the passes of
/// the operators (Σ·V, H·V; an eigensolve makes tens of them at the same θ):
/// every layer's input a_l and error δ_l, the outputs and the weights, for
/// all N rows, in float64. for_each_device_chunk fills it during a pass when
/// it fits (detail::fits_forward_cache) and, while the model and loss are
/// the ones it holds, serves later passes from it instead of running the
/// pipeline again.
struct ForwardCache {
  bool valid = false;
  Loss loss = Loss::squared;
  std::vector<std::int64_t> shape;  // per layer: in, out, bias
  std::vector<double> params;       // θ, Model::flatten()
  std::vector<cuda::DeviceBuffer<double>> inputs, errors, weights;
  cuda::DeviceBuffer<double> outputs;
  std::unique_ptr<cuda::CublasHandle> cublas;  // rebound to each pass's stream

  /// Whether it holds `model`'s pass with `loss`.
  bool matches(const Model& model, Loss loss) const;
  /// Drops what it holds and, when N rows of `model`'s pass fit in the free
  /// device memory, allocates for them and takes `model` and `loss` as the
  /// key (valid only once a pass has filled it); false when they do not fit.
  bool prepare(const Model& model, Loss loss, std::int64_t n, cudaStream_t stream);
  void release();
};

class ResidentData {
 public:
  cuda::Stream stream;
  GpuDtype dtype = GpuDtype::float32;
  std::int64_t n = 0, d = 0, k = 0;
  bool labels = false;
  cuda::DeviceBuffer<float> x32, y32;
  cuda::DeviceBuffer<double> x64, y64;
  cuda::DeviceBuffer<std::int32_t> label_ids;
  /// The fused kernel's buffers, kept from one profile call to the next.
  cuda::FusedCache fused;
  /// The operators' forward pass, kept from one pass to the next (mutable:
  /// the passes see the data as const).
  mutable ForwardCache forward;

  template <typename T>
  cuda::DeviceRows<T> rows() const {
    cuda::DeviceRows<T> view{n, d, k, nullptr, nullptr, nullptr};
    if constexpr (std::is_same_v<T, float>) {
      view.x = x32.data();
      view.y = labels ? nullptr : y32.data();
    } else {
      view.x = x64.data();
      view.y = labels ? nullptr : y64.data();
    }
    view.labels = labels ? label_ids.data() : nullptr;
    return view;
  }
};

}  // namespace gradnoise
