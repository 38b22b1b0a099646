// Σ·V on the GPU (covariance_operator_cuda): the CPU CovarianceOperator's
// block product (host/covariance.cpp) in float64, a whole block of directions
// per pass over the data. Per chunk the profile pipeline's forward and
// backward pass gives every layer's a_l and δ_l on the device
// (device_chunks.cuh); then the steps of core/covariance_pass.hpp run as
// cuBLAS DGEMMs over all columns at once, three element kernels that run its
// per-entry functions, and DGEMMs with a ones vector for the column sums
// (Σ_i c_i and the bias products), so there is no reduction kernel.
// tests/test_covariance_pass.cpp runs the same calls through column-major
// BLAS against the CPU operator.
//
// The directions are packed and Gᵀv formed on the host and copied in once per
// call; the sums are copied back and unpacked on the host, −G c̄ included
// (O(cols·P) each way, against the pass's O(N·cols·Σ out·in)).
#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "block_product.cuh"
#include "covariance_pass.hpp"
#include "cuda_support.hpp"
#include "device_chunks.cuh"
#include "cuda_entry.hpp"
#include "gradnoise/error.hpp"
#include "backend.hpp"
#include "policy.hpp"
#include "reduce.cuh"

namespace gradnoise {
namespace cuda {
namespace {

/// One thread per (row i, column c), j = i·cols + c: s_j += Σ_r δ_ir (z + b)_{j,r}.
__global__ void add_row_dots_kernel(const double* z, const double* delta, const double* bias,
                                    std::int64_t m, std::int64_t cols, std::int64_t out, double* s) {
  const std::int64_t count = m * cols;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    detail::add_row_dot(j, z, delta, bias, cols, out, s);
  }
}

/// One thread per (row, column): s_j −= Gᵀv_c.
__global__ void subtract_shift_kernel(double* s, const double* shift, std::int64_t m,
                                      std::int64_t cols) {
  const std::int64_t count = m * cols;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    detail::subtract_shift(j, shift, cols, s);
  }
}

/// One thread per (row, column, output): e = c ∘ δ.
__global__ void scale_errors_kernel(const double* s, const double* delta, std::int64_t m,
                                    std::int64_t cols, std::int64_t out, double* e) {
  const std::int64_t count = m * cols * out;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    detail::scale_error(j, s, delta, cols, out, e);
  }
}

/// covariance_pass.hpp's executor on the GPU: cuBLAS and the kernels above,
/// all queued on one stream (the cuBLAS handle is bound to it).
struct CudaExec : CublasExec {
  const double* ones = nullptr;  // at least a chunk's rows

  void zero(double* dst, std::int64_t count) {
    GN_CUDA_CHECK(cudaMemsetAsync(dst, 0, static_cast<std::size_t>(count) * sizeof(double), stream));
  }
  void add_row_dots(const double* z, const double* delta, const double* bias, std::int64_t m,
                    std::int64_t cols, std::int64_t out, double* s) {
    add_row_dots_kernel<<<grid_for(m * cols), kThreads, 0, stream>>>(z, delta, bias, m, cols, out, s);
    GN_CUDA_CHECK(cudaGetLastError());
  }
  void subtract_shift(double* s, const double* shift, std::int64_t m, std::int64_t cols) {
    subtract_shift_kernel<<<grid_for(m * cols), kThreads, 0, stream>>>(s, shift, m, cols);
    GN_CUDA_CHECK(cudaGetLastError());
  }
  void scale_errors(const double* s, const double* delta, std::int64_t m, std::int64_t cols,
                    std::int64_t out, double* e) {
    scale_errors_kernel<<<grid_for(m * cols * out), kThreads, 0, stream>>>(s, delta, m, cols, out, e);
    GN_CUDA_CHECK(cudaGetLastError());
  }
  void column_sums(const double* rows, std::int64_t m, std::int64_t width, double* sums) {
    detail::column_sums_by_gemm(*this, ones, rows, m, width, sums);
  }
};

/// out = Σ · in for `cols` column-major directions (host memory), one pass in
/// chunks of `chunk` rows.
void covariance_pass(const Model& model, const DataSource& data, const ResidentData* resident, Loss loss,
                     const std::vector<double>& mean_grad, std::int64_t chunk, const double* in,
                     double* out, std::int64_t cols) {
  const detail::CovarianceLayers layers = detail::covariance_layers(model, -1);
  const detail::CovarianceBlock block = detail::pack_covariance_block(
      model, layers, mean_grad, in, cols, [](std::int64_t count, const double* x, const double* y) {
        return cblas_ddot(static_cast<int>(count), x, 1, y, 1);
      });
  detail::CovarianceSums sums = detail::zero_covariance_sums(model, layers, cols);

  Stream stream;
  struct DeviceLayer {
    DeviceBuffer<double> v_stack, c_stack, w, b;
  };
  std::vector<DeviceLayer> device(static_cast<std::size_t>(model.num_layers()));
  detail::CovarianceBuffers buffers;
  buffers.layers.resize(device.size());
  for (std::int64_t l = layers.first; l < layers.end; ++l) {
    DeviceLayer& d = device[l];
    d.v_stack = upload(block.layers[l].v_stack, stream.get());
    d.c_stack = upload(block.layers[l].c_stack, stream.get());  // none without a bias
    d.w = upload(sums.layers[l].w, stream.get());                // zeros
    d.b = upload(sums.layers[l].b, stream.get());
    buffers.layers[l].v_stack = d.v_stack.data();
    buffers.layers[l].c_stack = d.c_stack.data();
    buffers.layers[l].w = d.w.data();
    buffers.layers[l].b = d.b.data();
  }
  const DeviceBuffer<double> g_dot_v = upload(block.g_dot_v, stream.get());
  DeviceBuffer<double> c_sum = upload(sums.c_sum, stream.get());
  DeviceBuffer<double> s(static_cast<std::size_t>(chunk * cols));
  DeviceBuffer<double> z(static_cast<std::size_t>(chunk * cols * layers.widest));
  const DeviceBuffer<double> ones = device_ones(chunk, stream.get());
  buffers.g_dot_v = g_dot_v.data();
  buffers.c_sum = c_sum.data();
  buffers.s = s.data();
  buffers.z = z.data();

  CudaExec exec;
  exec.stream = stream.get();
  exec.ones = ones.data();
  for_each_device_chunk(model, data, resident, loss, chunk, stream.get(), [&](const DeviceChunkView& view) {
    exec.cublas = view.cublas;
    for (std::int64_t l = layers.first; l < layers.end; ++l) {
      buffers.layers[l].input = view.inputs[l];
      buffers.layers[l].error = view.errors[l];
    }
    detail::covariance_chunk(exec, model, layers, buffers, view.rows, cols);
  });

  for (std::int64_t l = layers.first; l < layers.end; ++l) {
    download(device[l].w, sums.layers[l].w, stream.get());
    download(device[l].b, sums.layers[l].b, stream.get());
  }
  download(c_sum, sums.c_sum, stream.get());
  GN_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  detail::unpack_covariance_block(model, layers, sums, mean_grad, cols,
                                  1.0 / static_cast<double>(data.num_samples()), out);
}

/// Plans the chunk from the block budget and free memory, runs the pass, and
/// on running out of memory halves the chunk and runs again.
void covariance_apply(const Model& model, const DataSource& data, const ResidentData* resident, Loss loss,
                      const std::vector<double>& mean_grad, std::int64_t chunk_rows, const double* in,
                      double* out, std::int64_t cols) {
  if (cols < 1) return;
  release_stale_forward(resident, model, loss);  // before the plan reads the free memory
  const std::int64_t per_row =
      detail::covariance_doubles_per_row(detail::covariance_layers(model, -1), cols);
  const std::int64_t wanted =
      std::min(chunk_rows, std::max<std::int64_t>(1, detail::kBlockBudgetDoubles / per_row));
  const auto pass = [&](std::int64_t chunk) {
    covariance_pass(model, data, resident, loss, mean_grad, chunk, in, out, cols);
  };
  run_block_product(model, data.num_samples(), cols, "covariance-vector products", wanted,
                    detail::covariance_chunk_footprint(model, loss_targets(loss) == TargetKind::labels, cols), pass);
}

}  // namespace
}  // namespace cuda

BlockOperator covariance_operator_cuda(const Model& model, const DataSource& data, Loss loss,
                                       std::vector<double> mean_grad, std::int64_t chunk_rows,
                                       const ResidentData* resident) {
  check_profile_inputs(model, data, ProfileOptions{.loss = loss, .chunk_rows = chunk_rows});
  cuda::require_device();
  if (static_cast<std::int64_t>(mean_grad.size()) != model.num_params()) {
    throw InputError("the mean gradient has " + std::to_string(mean_grad.size()) +
                     " entries; expected the model's " + std::to_string(model.num_params()));
  }
  return [&model, &data, resident, loss, grad = std::move(mean_grad), chunk_rows](
             const double* in, double* out, std::int64_t cols) {
    cuda::covariance_apply(model, data, resident, loss, grad, chunk_rows, in, out, cols);
  };
}

}  // namespace gradnoise
