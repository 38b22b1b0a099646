// The CUDA backend's internal entry points (kernels/*.cu; host/cuda_stub.cpp
// where the CUDA build is off): what the session's CUDA backend
// (kernels/backend_cuda.cpp) and the sweep call. Plain C++, no CUDA headers,
// so host code includes it in every build.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gradnoise/cuda.hpp"
#include "gradnoise/data.hpp"
#include "gradnoise/krylov.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "gradnoise/sweep.hpp"
#include "policy.hpp"

namespace gradnoise {

/// Makes GPU `ordinal` mod the device count current for this process (an
/// MPI rank's local GPU); nothing without a device or a CUDA build.
void select_cuda_device(int ordinal);

/// A session's copy of its data on the device (inputs and real targets in
/// the chosen precision, labels as int32) and the session's stream, kept
/// from the first pass to the end of the session (kernels/resident.cuh).
/// Passes given one read their rows from it instead of the DataSource.
class ResidentData;

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
                                       std::int64_t chunk_rows = detail::kDefaultGpuChunkRows,
                                       const ResidentData* resident = nullptr);

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
                                    std::int64_t chunk_rows = detail::kDefaultGpuChunkRows,
                                    const ResidentData* resident = nullptr);

// ---- A session's resident data (kernels/resident.cu) ---------------------------

struct ResidentDataDeleter {
  void operator()(ResidentData* data) const;
};
using ResidentDataPtr = std::unique_ptr<ResidentData, ResidentDataDeleter>;

/// Device bytes a resident copy of `data` takes in `dtype`.
std::int64_t resident_bytes(const DataSource& data, Loss loss, GpuDtype dtype);

/// Copies `data` onto the current device once: chunks of rows converted on
/// the host by all cores into pinned buffers, each copy overlapping the next
/// chunk's conversion. Returns null, copying nothing, when the copy would
/// not fit beside the passes' workspaces (detail::fits_resident). Throws
/// RuntimeError when there is no device.
ResidentDataPtr make_resident(const DataSource& data, Loss loss, GpuDtype dtype);

/// The profile of the resident data, on the session's stream: the fused
/// linear kernel reads it in place; the GEMM pipeline reads float64 chunks of it.
Profile profile_resident(ResidentData& data, const Model& model, const ProfileOptions& options);

// ---- Sweeps on the GPU (kernels/sweep_cuda.cu) ---------------------------------

/// Layers a model may have for the GPU sweep engine.
inline constexpr std::int64_t kSweepCudaMaxLayers = 16;

/// What the GPU sweep engine needs: the model's shapes (its weights are not
/// used), the training data, the options, and per run its batch size,
/// learning rate and replica index. The engine copies what it needs.
struct SweepCudaSetup {
  const Model* model = nullptr;
  const Dataset* train = nullptr;
  const SweepConfig* config = nullptr;  // loss, sampling, noise, decay, momentum, seed
  /// A minibatch loss above it (or not finite) stops a run.
  double divergence_limit = 0;
  std::vector<std::int64_t> batch_sizes;  // per run
  std::vector<double> lrs;                // per run
  std::vector<std::uint32_t> replicas;    // per run
};

/// What a segment of steps did to one run, as the CPU engine reports it.
struct SweepRunOutcome {
  std::int64_t steps = 0;           // updates made
  std::int64_t diverged_step = -1;  // −1: still running
  /// true: the minibatch loss at diverged_step was not finite or too large
  /// (no update made); false: the weights stopped being finite after it.
  bool loss_diverged = false;
  double loss = 0;  // the minibatch loss at diverged_step
};

/// The device side of a sweep: the training data (float64), per-run
/// scratch, permutations and random state, kept between segments.
class SweepCudaState;
struct SweepCudaStateDeleter {
  void operator()(SweepCudaState* state) const;
};
using SweepCudaStatePtr = std::unique_ptr<SweepCudaState, SweepCudaStateDeleter>;

/// Uploads the data and allocates the runs' device state. Throws
/// RuntimeError when there is no device (or no CUDA backend), the model has
/// more than kSweepCudaMaxLayers layers, or device memory runs out.
SweepCudaStatePtr sweep_cuda_create(const SweepCudaSetup& setup);

/// Advances every run with diverged[run] == 0 from step `from` to step `to`
/// on the GPU, one thread per run, all runs in one launch: θ and the
/// velocities (runs × P, run major, host memory; velocity empty without
/// momentum) are uploaded, updated and downloaded. Work is queued on
/// `stream` (the default stream when null); returns when the results are on
/// the host. Runs stop at divergence as on the CPU.
std::vector<SweepRunOutcome> sweep_advance_cuda(SweepCudaState& state, std::vector<double>& theta,
                                                std::vector<double>& velocity,
                                                const std::vector<std::uint8_t>& diverged,
                                                std::int64_t from, std::int64_t to,
                                                CUstream_st* stream = nullptr);

}  // namespace gradnoise
