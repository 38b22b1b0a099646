// A session's resident data (cuda_entry.hpp), for the kernels files that
// read it: the device arrays and the session's stream. Made by make_resident
// (resident.cu).
#pragma once

#include <cstdint>
#include <type_traits>

#include "chunk_feeder.cuh"
#include "cuda_entry.hpp"
#include "cuda_support.hpp"

namespace gradnoise {

class ResidentData {
 public:
  cuda::Stream stream;
  GpuDtype dtype = GpuDtype::float32;
  std::int64_t n = 0, d = 0, k = 0;
  bool labels = false;
  cuda::DeviceBuffer<float> x32, y32;
  cuda::DeviceBuffer<double> x64, y64;
  cuda::DeviceBuffer<std::int32_t> label_ids;

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
