// Chunks of rows onto the device, in float64, for the profile pipeline: from
// a host DataSource through pinned, double-buffered memory (HostFeeder), or
// from device-resident float32 data widened on the device (DeviceFeeder).
// Both take turns with two device buffers b ∈ {0, 1}: feed(b, first, m,
// stream) returns rows [first, first + m) in buffer b, ordered before the
// work `stream` queues next; consumed(b, stream) marks the buffer as in use
// by the work queued so far.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_support.hpp"
#include "cuda_entry.hpp"
#include "gradnoise/data.hpp"

namespace gradnoise::cuda {

/// One chunk of rows on the device, in float64: inputs (centred in place by
/// the pipeline) and either real targets or labels.
struct Chunk {
  double* x = nullptr;
  const double* y = nullptr;
  const std::int32_t* labels = nullptr;
};

/// Double-buffered device chunks, as the feeders fill them.
class ChunkBuffers {
 public:
  ChunkBuffers(std::int64_t chunk, std::int64_t d, std::int64_t k, bool labels) {
    for (int b = 0; b < 2; ++b) {
      x_[b] = DeviceBuffer<double>(static_cast<std::size_t>(chunk * d));
      if (labels) {
        labels_[b] = DeviceBuffer<std::int32_t>(static_cast<std::size_t>(chunk));
      } else {
        y_[b] = DeviceBuffer<double>(static_cast<std::size_t>(chunk * k));
      }
    }
  }
  Chunk chunk(int b) { return {x_[b].data(), y_[b].data(), labels_[b].data()}; }
  double* x(int b) { return x_[b].data(); }
  double* y(int b) { return y_[b].data(); }
  std::int32_t* labels(int b) { return labels_[b].data(); }

 private:
  DeviceBuffer<double> x_[2], y_[2];
  DeviceBuffer<std::int32_t> labels_[2];
};

/// Feeds chunks from a host DataSource: the host fills one pinned buffer
/// while the other's copy (second stream) and compute (main stream) run.
class HostFeeder {
 public:
  HostFeeder(const DataSource& data, std::int64_t chunk, std::int64_t k, bool labels);

  HostFeeder(const HostFeeder&) = delete;
  HostFeeder& operator=(const HostFeeder&) = delete;
  // Copies out of the pinned buffers may still run when an exception unwinds.
  ~HostFeeder() { cudaStreamSynchronize(copy_stream_.get()); }

  /// Rows [first, first + m) in device buffer b, ordered before the work
  /// that `stream` queues next.
  Chunk feed(int b, std::int64_t first, std::int64_t m, cudaStream_t stream);

  /// Marks buffer b as in use by everything `stream` has queued so far.
  void consumed(int b, cudaStream_t stream) {
    GN_CUDA_CHECK(cudaEventRecord(consumed_[b].get(), stream));
    in_flight_[b] = true;
  }

 private:
  const DataSource& data_;
  std::int64_t d_, k_;
  bool labels_;
  ChunkBuffers device_;
  Stream copy_stream_;
  Event copied_[2], consumed_[2];
  PinnedBuffer<double> x_[2], y_[2];
  PinnedBuffer<std::int32_t> labels_host_[2];
  bool in_flight_[2] = {false, false};
};

/// Rows already in device memory, row-major, in float32 (a caller's tensor,
/// or a session's resident copy) or float64 (a session asked for
/// --gpu-dtype float64): x is n×d; exactly one of y (n×k) and labels (n).
template <typename T>
struct DeviceRows {
  std::int64_t n = 0;
  std::int64_t d = 0;
  std::int64_t k = 0;
  const T* x = nullptr;
  const T* y = nullptr;
  const std::int32_t* labels = nullptr;
};

inline DeviceRows<float> device_rows(const DeviceData& data) {
  return {data.n, data.d, data.k, data.x, data.y, data.labels};
}

/// The profile of device-resident rows (profile_pipeline.cu): the fused
/// linear kernel reads them in place, the GEMM pipeline through DeviceFeeder's
/// float64 chunks. Work is queued on `stream`; returns with the result on the
/// host.
template <typename T>
Profile profile_device_rows(const Model& model, const DeviceRows<T>& data,
                            const ProfileOptions& options, cudaStream_t stream);

/// Queues dst[j] = double(src[j]) for j < count on `stream` (a copy for
/// float64 sources).
void widen(const float* src, std::int64_t count, double* dst, cudaStream_t stream);
void widen(const double* src, std::int64_t count, double* dst, cudaStream_t stream);

/// Feeds chunks of device-resident rows to the GEMM pipeline, in float64 on
/// the device (the pipeline centres its inputs in place, so it needs a copy
/// even of float64 rows).
template <typename T>
class DeviceFeeder {
 public:
  DeviceFeeder(const DeviceRows<T>& data, std::int64_t chunk)
      : data_(data), device_(chunk, data.d, data.k, data.labels != nullptr) {}

  Chunk feed(int b, std::int64_t first, std::int64_t m, cudaStream_t stream) {
    widen(data_.x + first * data_.d, m * data_.d, device_.x(b), stream);
    if (data_.labels != nullptr) return {device_.x(b), nullptr, data_.labels + first};
    widen(data_.y + first * data_.k, m * data_.k, device_.y(b), stream);
    return {device_.x(b), device_.y(b), nullptr};
  }

  void consumed(int, cudaStream_t) {}

 private:
  DeviceRows<T> data_;
  ChunkBuffers device_;
};

}  // namespace gradnoise::cuda
