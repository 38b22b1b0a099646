// What a library user needs of the CUDA backend directly: whether it exists,
// the device, and the profile of data that is already in device memory
// (a PyTorch tensor's storage, say). Everything else reaches the GPU through a
// session (gradnoise/session.hpp) with Device::cuda or automatic. Plain C++,
// no CUDA headers (the stream is forward-declared as the driver's opaque type).
#pragma once

#include <cstdint>
#include <string>

#include "gradnoise/data.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace gradnoise {

/// Whether this build contains the CUDA backend.
bool cuda_built();

/// Number of usable CUDA devices: 0 when none is present, the driver is
/// missing, or the backend was not built.
int cuda_device_count();

/// "NVIDIA H100 80GB HBM3" and the like; empty when there is no device.
std::string cuda_device_name();

/// Creates the current device's context now (a few hundred milliseconds), so
/// a caller can overlap it with loading its data; does nothing without a
/// device or a CUDA build, and reports no error (the first real call does).
void warm_up_cuda() noexcept;

/// A data set already in device memory, float32, row-major: x is n×d; y is
/// n×k real targets (mse, bce) or null; labels are n class labels (ce) or
/// null. The pointers are device pointers.
struct DeviceData {
  std::int64_t n = 0;
  std::int64_t d = 0;
  std::int64_t k = 0;
  const float* x = nullptr;
  const float* y = nullptr;
  const std::int32_t* labels = nullptr;
};

/// The profile of device-resident float32 data: each chunk is widened to
/// float64 on the device (one read of the inputs from device memory) and runs
/// through the same pipeline as a session's GPU profile. No host copies of
/// the data. Work is queued on `stream` (the default stream when null).
Profile profile_cuda_device(const Model& model, const DeviceData& data,
                            const ProfileOptions& options, CUstream_st* stream = nullptr);

}  // namespace gradnoise
