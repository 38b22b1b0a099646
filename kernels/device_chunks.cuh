// The CUDA pipeline's forward and backward pass, chunk by chunk, for other
// kernels files: the GPU twin of host/chunk_pass.hpp. Each chunk's rows are
// streamed from a host DataSource (pinned, double-buffered, as the profile
// does) or read from a session's resident copy, and a visitor sees every layer's input a_l and output error δ_l on
// the device. Defined in profile_pipeline.cu, beside the pipeline it drives.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/model.hpp"

namespace gradnoise {
class ResidentData;
}

namespace gradnoise::cuda {

/// One chunk on the device (all pointers are device memory, row-major, valid
/// for the work the visitor queues on `stream`).
struct DeviceChunkView {
  std::int64_t first = 0;  // index of the chunk's first row in the data
  std::int64_t rows = 0;
  std::vector<const double*> inputs;   // a_l, rows × in_l (l = 0: the data)
  std::vector<const double*> errors;   // δ_l, rows × out_l
  std::vector<const double*> weights;  // W_l, out_l × in_l
  const double* outputs = nullptr;     // f(x_i), rows × K
  cublasHandle_t cublas = nullptr;     // bound to `stream`
  cudaStream_t stream = nullptr;
};

/// Runs the model over `data` in chunks of at most `chunk` rows (1 ≤ chunk ≤
/// detail::kMaxChunkRows), in order, on `stream`, and calls `visit` for each
/// chunk after queuing its forward and backward pass. The visitor must queue
/// its work on view.stream (through view.cublas or kernels) and must not wait
/// for it. Returns once all queued work has finished; throws InputError for a
/// bad label or a non-finite output (the earliest row), like the profile.
/// The rows come from `resident` when given (a session's copy of `data` on
/// the device), else stream from `data` through pinned buffers. With a
/// session, the pass's activations are kept in its forward cache when they
/// fit, and a later pass with the same model and loss reads them instead of
/// running the pipeline; its results are then bit-identical to every other
/// cached pass, and equal to an uncached one up to rounding (the kept values
/// came from the filling pass's GEMMs, whose chunking may differ).
void for_each_device_chunk(const Model& model, const DataSource& data, const ResidentData* resident,
                           Loss loss, std::int64_t chunk, cudaStream_t stream,
                           const std::function<void(const DeviceChunkView&)>& visit);

/// Frees a session's forward cache (kernels/resident.cuh) unless it holds
/// `model` with `loss`: a pass over another θ plans its chunks from the free
/// memory, which a stale cache would take. No-op without a session.
void release_stale_forward(const ResidentData* resident, const Model& model, Loss loss);

}  // namespace gradnoise::cuda
