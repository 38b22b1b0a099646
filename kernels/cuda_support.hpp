// One error-check family and RAII owners for CUDA resources. Every CUDA or
// cuBLAS call in the backend goes through GN_CUDA_CHECK / GN_CUBLAS_CHECK,
// which throw gradnoise::RuntimeError carrying file, line and the error text;
// kernel launches are followed by GN_CUDA_CHECK(cudaGetLastError()). Also:
// copies of host vectors to and from the device, and the plan-and-retry of a
// pass's chunk size.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "gradnoise/error.hpp"
#include "gradnoise/loss.hpp"
#include "policy.hpp"

namespace gradnoise::cuda {

/// Thrown for cudaErrorMemoryAllocation so callers can retry with less.
class OutOfMemory : public RuntimeError {
 public:
  using RuntimeError::RuntimeError;
};

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* expr, const char* file,
                                          int line) {
  const std::string where = std::string(file) + ":" + std::to_string(line);
  const std::string text = std::string(cudaGetErrorName(status)) + " (" +
                           cudaGetErrorString(status) + ") in " + expr + " at " + where;
  if (status == cudaErrorMemoryAllocation) throw OutOfMemory("CUDA out of memory: " + text);
  throw RuntimeError("CUDA error " + text);
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* expr,
                                            const char* file, int line) {
  const std::string text = std::string(cublasGetStatusName(status)) + " (" +
                           cublasGetStatusString(status) + ") in " + expr + " at " + file + ":" +
                           std::to_string(line);
  if (status == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory("cuBLAS out of memory: " + text);
  throw RuntimeError("cuBLAS error " + text);
}

#define GN_CUDA_CHECK(expr)                                                              \
  do {                                                                                   \
    const cudaError_t gn_status_ = (expr);                                               \
    if (gn_status_ != cudaSuccess) {                                                     \
      ::gradnoise::cuda::throw_cuda_error(gn_status_, #expr, __FILE__, __LINE__);        \
    }                                                                                    \
  } while (0)

#define GN_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                   \
    const cublasStatus_t gn_status_ = (expr);                                            \
    if (gn_status_ != CUBLAS_STATUS_SUCCESS) {                                           \
      ::gradnoise::cuda::throw_cublas_error(gn_status_, #expr, __FILE__, __LINE__);      \
    }                                                                                    \
  } while (0)

/// Throws RuntimeError, saying to use --device cpu or auto, when there is no
/// CUDA device (kernels/device.cu).
void require_device();

/// Kernels flag the first bad row with atomicMin; kNoRow means none.
constexpr unsigned long long kNoRow = ~0ull;

/// Throws an InputError for the earliest flagged row: a target the loss
/// rejects (a label outside [0, k), a BCE target outside [0, 1]) or a
/// non-finite output or loss (a non-finite input, target or weight).
inline void throw_if_flagged(unsigned long long bad_label_row, unsigned long long non_finite_row,
                             std::int64_t k, Loss loss) {
  if (non_finite_row != kNoRow && non_finite_row <= bad_label_row) {
    throw InputError("sample " + std::to_string(non_finite_row) +
                     " gives a non-finite model output or loss; expected finite inputs, targets "
                     "and weights");
  }
  if (bad_label_row != kNoRow && loss_targets(loss) == TargetKind::labels) {
    throw InputError("sample " + std::to_string(bad_label_row) +
                     " has a label outside [0, " + std::to_string(k) +
                     "); expected labels below the model's number of outputs");
  }
  if (bad_label_row != kNoRow) {
    throw InputError("sample " + std::to_string(bad_label_row) + " has a target that --loss " +
                     loss_name(loss) + " does not take; expected " + loss_expected_targets(loss));
  }
}

/// Move-only device array of T.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count > 0) GN_CUDA_CHECK(cudaMalloc(&data_, count * sizeof(T)));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return count_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    count_ = 0;
  }
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

/// Move-only page-locked host array of T (what asynchronous copies need).
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t count) : count_(count) {
    if (count > 0) GN_CUDA_CHECK(cudaMallocHost(&data_, count * sizeof(T)));
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }
  ~PinnedBuffer() { release(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return count_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = nullptr;
    count_ = 0;
  }
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

/// Owning stream, event and cuBLAS handle.
class Stream {
 public:
  Stream() { GN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() { cudaStreamDestroy(stream_); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class Event {
 public:
  Event() { GN_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() { cudaEventDestroy(event_); }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

/// An instantiated CUDA graph, captured from what `enqueue()` queues on
/// `stream` (thread-local capture: other threads' CUDA calls are not
/// affected). If enqueue throws, the capture is ended and discarded, so the
/// stream is usable again, and the exception goes on.
class CapturedGraph {
 public:
  CapturedGraph() = default;
  template <class Enqueue>
  CapturedGraph(cudaStream_t stream, Enqueue&& enqueue) {
    GN_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t graph = nullptr;
    try {
      enqueue();
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    GN_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    const cudaError_t status = cudaGraphInstantiate(&exec_, graph, 0);
    cudaGraphDestroy(graph);
    GN_CUDA_CHECK(status);
  }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  CapturedGraph(CapturedGraph&& other) noexcept : exec_(std::exchange(other.exec_, nullptr)) {}
  CapturedGraph& operator=(CapturedGraph&& other) noexcept {
    if (this != &other) {
      if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
      exec_ = std::exchange(other.exec_, nullptr);
    }
    return *this;
  }
  ~CapturedGraph() {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  }
  explicit operator bool() const { return exec_ != nullptr; }
  /// Queues one replay on `stream`.
  void launch(cudaStream_t stream) const { GN_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

/// A device copy of `host`, queued on `stream` (zero-length: no allocation).
inline DeviceBuffer<double> upload(const std::vector<double>& host, cudaStream_t stream) {
  DeviceBuffer<double> dev(host.size());
  if (!host.empty()) {
    GN_CUDA_CHECK(cudaMemcpyAsync(dev.data(), host.data(), host.size() * sizeof(double),
                                  cudaMemcpyHostToDevice, stream));
  }
  return dev;
}

/// Queues the copy of host.size() doubles of `dev` into `host` on `stream`.
inline void download(const DeviceBuffer<double>& dev, std::vector<double>& host, cudaStream_t stream) {
  if (!host.empty()) {
    GN_CUDA_CHECK(cudaMemcpyAsync(host.data(), dev.data(), host.size() * sizeof(double),
                                  cudaMemcpyDeviceToHost, stream));
  }
}

class CublasHandle {
 public:
  explicit CublasHandle(cudaStream_t stream) {
    GN_CUBLAS_CHECK(cublasCreate(&handle_));
    GN_CUBLAS_CHECK(cublasSetStream(handle_, stream));
    // Bit-reproducible results: no atomics-based algorithms.
    GN_CUBLAS_CHECK(cublasSetAtomicsMode(handle_, CUBLAS_ATOMICS_NOT_ALLOWED));
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  ~CublasHandle() { cublasDestroy(handle_); }
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

/// Runs attempt(chunk) with the rows plan(budget) gives for the usable part of
/// the free device memory (detail::usable_device_bytes) and returns its
/// result; when the device runs out of memory anyway (another tenant took
/// some since), halves the chunk and runs again. Throws RuntimeError ("the
/// GPU has … MiB free, too little for `what` even one row at a time") once
/// not even one row fits.
template <class Plan, class Attempt>
auto with_halving_chunks(const std::string& what, Plan plan, Attempt attempt)
    -> decltype(attempt(std::int64_t{1})) {
  std::size_t free_bytes = 0, total_bytes = 0;
  GN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  std::int64_t chunk = plan(detail::usable_device_bytes(free_bytes));
  for (;;) {
    if (chunk < 1) {
      throw RuntimeError("the GPU has " + std::to_string(free_bytes >> 20) + " MiB free, too little for " +
                         what + " even one row at a time");
    }
    try {
      return attempt(chunk);
    } catch (const OutOfMemory&) {
      cudaGetLastError();
      chunk /= 2;
    }
  }
}

}  // namespace gradnoise::cuda
