// The CUDA backend's public face: plain C++, no CUDA headers (the stream is
// forward-declared as the driver's opaque type), so the CLI and the tests
// include it whether or not the CUDA backend was built.
#pragma once

#include <cstdint>
#include <string>

#include "gradnoise/data.hpp"
#include "gradnoise/krylov.hpp"
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

/// The profile on the current CUDA device, streaming chunks of rows from
/// `data` through pinned host memory. Work is queued on `stream` (the default
/// stream when null); the call returns when the result is on the host.
/// Throws RuntimeError when there is no device or memory runs out even for a
/// one-row chunk, InputError for bad data (as profile_cpu).
Profile profile_cuda(const Model& model, const DataSource& data, const ProfileOptions& options,
                     CUstream_st* stream = nullptr);

/// Σ·V on the GPU for blocks of vectors (P × cols, column-major, host memory):
/// the same exact, centred matrix-free product as the CPU's covariance
/// operator (c_i = g_iᵀv − Gᵀv), one pass over the data per call. The
/// returned operator refers to `model` and `data`, which must outlive it.
BlockOperator covariance_operator_cuda(const Model& model, const DataSource& data, Loss loss,
                                       std::vector<double> mean_grad,
                                       std::int64_t chunk_rows = std::int64_t{1} << 16);

/// H·V on the GPU for blocks of vectors (P × cols, column-major, host memory):
/// the CPU HessianOperator's exact R-operator products (full Hessian, or the
/// Gauss–Newton matrix when `gauss_newton`) in float64, one pass over the data
/// per call, every column through the same cuBLAS GEMMs. Chunks have at most
/// `chunk_rows` rows, fewer when a block's R-operator buffers would pass 1 GiB
/// or free device memory. The operator keeps a copy of `model` and refers to
/// `data`, which must outlive it. Throws InputError when model, data and loss
/// do not fit together, RuntimeError when there is no device.
BlockOperator hessian_operator_cuda(const Model& model, const DataSource& data, Loss loss,
                                    bool gauss_newton,
                                    std::int64_t chunk_rows = std::int64_t{1} << 16);

/// A data set already in device memory, float32, row-major: x is n×d; y is
/// n×k real targets (squared loss) or null; labels are n class labels
/// (cross-entropy) or null. The pointers are device pointers.
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
/// through the same pipeline as profile_cuda. No host copies of the data.
Profile profile_cuda_device(const Model& model, const DeviceData& data,
                            const ProfileOptions& options, CUstream_st* stream = nullptr);

}  // namespace gradnoise
