// Hessian-vector products on the GPU: the CPU HessianOperator's R-operator
// (host/curvature.cpp) in float64, a whole block of directions per pass over
// the data. Per chunk the profile pipeline's forward and backward pass gives
// every layer's a_l and δ_l on the device (device_chunks.cuh); then the
// R-operator's forward pass, the loss Hessian and its backward pass run as
// cuBLAS DGEMMs over all columns at once, with two small kernels for the
// softmax loss Hessian and one for the bias directions. The order of the
// steps and every GEMM's operands are core/hessian_pass.hpp's, which a CPU
// test runs through column-major BLAS against the CPU operator.
//
// The directions are packed per layer on the host, copied in once per call,
// and the accumulated products copied back and scaled by 1/N on the host
// (O(cols·P) each way, against the pass's O(N·cols·Σ out·in)).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "block_product.cuh"
#include "cuda_support.hpp"
#include "device_chunks.cuh"
#include "cuda_entry.hpp"
#include "gradnoise/error.hpp"
#include "backend.hpp"
#include "hessian_pass.hpp"
#include "losses.hpp"
#include "policy.hpp"
#include "reduce.cuh"

namespace gradnoise {
namespace cuda {
namespace {

/// One thread per row: state_i = the loss's Hessian state of z_i (softmax p_i, ...).
template <class L>
__global__ void loss_state_rows_kernel(const double* z, std::int64_t m, std::int64_t k,
                                       double* state) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < m;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    L::hessian_state(z + i * k, k, state + i * k);
  }
}

/// One thread per (row i, column c), j = i·cols + c: rd_j = H_ℓ(z_i) rz_j.
template <class L>
__global__ void loss_hessian_rows_kernel(const double* state, const double* rz, std::int64_t m,
                                         std::int64_t cols, std::int64_t k, double* rd) {
  const std::int64_t count = m * cols;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    L::hessian_row(state + (j / cols) * k, rz + j * k, k, rd + j * k);
  }
}

/// hessian_pass.hpp's executor on the GPU: cuBLAS and the kernels above, all
/// queued on one stream (the cuBLAS handle is bound to it).
struct CudaExec : CublasExec {
  void loss_state_rows(Loss loss, const double* z, std::int64_t m, std::int64_t k, double* state) {
    losses::visit_loss(loss, [&](auto l) {
      loss_state_rows_kernel<decltype(l)><<<grid_for(m), kThreads, 0, stream>>>(z, m, k, state);
    });
    GN_CUDA_CHECK(cudaGetLastError());
  }
  void loss_hessian_rows(Loss loss, const double* state, const double* rz, std::int64_t m,
                         std::int64_t cols, std::int64_t k, double* rd) {
    losses::visit_loss(loss, [&](auto l) {
      loss_hessian_rows_kernel<decltype(l)><<<grid_for(m * cols), kThreads, 0, stream>>>(
          state, rz, m, cols, k, rd);
    });
    GN_CUDA_CHECK(cudaGetLastError());
  }
};

/// out = H · in for `cols` column-major directions (host memory), one pass
/// in chunks of `chunk` rows.
void hessian_pass(const Model& model, const DataSource& data, const ResidentData* resident,
                  Loss loss, bool gauss_newton,
                  std::int64_t chunk, const double* in, double* out, std::int64_t cols) {
  const std::int64_t n = data.num_samples(), k = model.output_dim();
  const std::int64_t num_layers = model.num_layers();
  const bool full = !gauss_newton;
  const bool unit_hessian = losses::visit_loss(loss, [](auto l) { return decltype(l)::unit_hessian; });

  Stream stream;
  detail::HessianBlock block = detail::pack_hessian_block(model, in, cols, full);
  struct DeviceLayer {
    DeviceBuffer<double> v_stack, v_hcat, c_stack, hw, hwt, hb, r_out, r_delta;
  };
  std::vector<DeviceLayer> device(static_cast<std::size_t>(num_layers));
  std::vector<detail::HessianLayerBuffers> buffers(static_cast<std::size_t>(num_layers));
  for (std::int64_t l = 0; l < num_layers; ++l) {
    const detail::HessianBlock::LayerPart& part = block.layers[l];
    DeviceLayer& d = device[l];
    d.v_stack = upload(part.v_stack, stream.get());
    d.v_hcat = upload(part.v_hcat, stream.get());
    d.c_stack = upload(part.c_stack, stream.get());
    d.hw = upload(part.hw, stream.get());  // zeros
    d.hwt = upload(part.hwt, stream.get());
    d.hb = upload(part.hb, stream.get());
    const auto rows_size = static_cast<std::size_t>(chunk * cols * model.layers[l].out);
    d.r_out = DeviceBuffer<double>(rows_size);
    d.r_delta = DeviceBuffer<double>(rows_size);
    detail::HessianLayerBuffers& b = buffers[l];
    b.v_stack = d.v_stack.data();
    b.v_hcat = part.v_hcat.empty() ? nullptr : d.v_hcat.data();
    b.c_stack = part.c_stack.empty() ? nullptr : d.c_stack.data();
    b.hw = d.hw.data();
    b.hwt = part.hwt.empty() ? nullptr : d.hwt.data();
    b.hb = part.hb.empty() ? nullptr : d.hb.data();
    b.r_out = d.r_out.data();
    b.r_delta = d.r_delta.data();
  }
  DeviceBuffer<double> state(unit_hessian ? 0 : static_cast<std::size_t>(chunk * k));
  const DeviceBuffer<double> ones = device_ones(chunk, stream.get());

  CudaExec exec;
  exec.stream = stream.get();
  for_each_device_chunk(model, data, resident, loss, chunk, stream.get(), [&](const DeviceChunkView& view) {
    exec.cublas = view.cublas;
    for (std::int64_t l = 0; l < num_layers; ++l) {
      buffers[l].weight = view.weights[l];
      buffers[l].input = view.inputs[l];
      buffers[l].error = view.errors[l];
    }
    detail::hessian_chunk(exec, model, buffers, view.outputs, state.data(), ones.data(), loss, full,
                          view.rows, cols);
  });

  for (std::int64_t l = 0; l < num_layers; ++l) {
    download(device[l].hw, block.layers[l].hw, stream.get());
    download(device[l].hwt, block.layers[l].hwt, stream.get());
    download(device[l].hb, block.layers[l].hb, stream.get());
  }
  GN_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  detail::unpack_hessian_block(model, block, cols, 1.0 / static_cast<double>(n), out);
}

/// Plans the chunk from the budget and free memory, runs the pass, and on
/// running out of memory halves the chunk and runs again (as the profile does).
void hessian_apply(const Model& model, const DataSource& data, const ResidentData* resident,
                   Loss loss, bool gauss_newton,
                   std::int64_t chunk_rows, const double* in, double* out, std::int64_t cols) {
  if (cols <= 0) return;
  release_stale_forward(resident, model, loss);  // before the plan reads the free memory
  const std::int64_t n = data.num_samples();
  run_block_product(model, n, cols, "Hessian-vector products",
                    detail::hessian_chunk_rows(model, cols, chunk_rows, n, detail::kBlockBudgetDoubles),
                    detail::hessian_chunk_footprint(model, loss, cols),
                    [&](std::int64_t chunk) {
                      hessian_pass(model, data, resident, loss, gauss_newton, chunk, in, out, cols);
                    });
}

}  // namespace
}  // namespace cuda

BlockOperator hessian_operator_cuda(const Model& model, const DataSource& data, Loss loss,
                                    bool gauss_newton, std::int64_t chunk_rows,
                                    const ResidentData* resident) {
  ProfileOptions options;
  options.loss = loss;
  options.chunk_rows = chunk_rows;
  check_profile_inputs(model, data, options);
  if (cuda_device_count() == 0) {
    throw RuntimeError("Hessian-vector products on the GPU were asked for, but no CUDA device is "
                       "present; use the CPU HessianOperator");
  }
  return [model, &data, resident, loss, gauss_newton, chunk_rows](const double* in, double* out,
                                                                 std::int64_t cols) {
    cuda::hessian_apply(model, data, resident, loss, gauss_newton, chunk_rows, in, out, cols);
  };
}

}  // namespace gradnoise
