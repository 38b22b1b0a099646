// The chunk feeders of chunk_feeder.cuh and the widening kernel of device data.
#include "chunk_feeder.cuh"

#include "reduce.cuh"

namespace gradnoise::cuda {
namespace {

__global__ void widen_kernel(const float* src, std::int64_t count, double* dst) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    dst[j] = static_cast<double>(src[j]);
  }
}

}  // namespace

HostFeeder::HostFeeder(const DataSource& data, std::int64_t chunk, std::int64_t k, bool labels)
    : data_(data), d_(data.num_features()), k_(k), labels_(labels),
      device_(chunk, data.num_features(), k, labels) {
  for (int b = 0; b < 2; ++b) {
    x_[b] = PinnedBuffer<double>(static_cast<std::size_t>(chunk * d_));
    if (labels) {
      labels_host_[b] = PinnedBuffer<std::int32_t>(static_cast<std::size_t>(chunk));
    } else {
      y_[b] = PinnedBuffer<double>(static_cast<std::size_t>(chunk * k));
    }
  }
}

Chunk HostFeeder::feed(int b, std::int64_t first, std::int64_t m, cudaStream_t stream) {
  // The pinned buffer is free once its previous copy finished; the device
  // buffer once the chunk that used it was processed.
  if (in_flight_[b]) GN_CUDA_CHECK(cudaEventSynchronize(copied_[b].get()));
  data_.read(first, m, x_[b].data(), labels_ ? nullptr : y_[b].data(),
             labels_ ? labels_host_[b].data() : nullptr);
  const cudaStream_t copy = copy_stream_.get();
  if (in_flight_[b]) GN_CUDA_CHECK(cudaStreamWaitEvent(copy, consumed_[b].get(), 0));
  GN_CUDA_CHECK(cudaMemcpyAsync(device_.x(b), x_[b].data(), m * d_ * sizeof(double),
                                cudaMemcpyHostToDevice, copy));
  if (labels_) {
    GN_CUDA_CHECK(cudaMemcpyAsync(device_.labels(b), labels_host_[b].data(),
                                  m * sizeof(std::int32_t), cudaMemcpyHostToDevice, copy));
  } else {
    GN_CUDA_CHECK(cudaMemcpyAsync(device_.y(b), y_[b].data(), m * k_ * sizeof(double),
                                  cudaMemcpyHostToDevice, copy));
  }
  GN_CUDA_CHECK(cudaEventRecord(copied_[b].get(), copy));
  GN_CUDA_CHECK(cudaStreamWaitEvent(stream, copied_[b].get(), 0));
  return device_.chunk(b);
}

void widen(const float* src, std::int64_t count, double* dst, cudaStream_t stream) {
  if (count <= 0) return;
  widen_kernel<<<grid_for(count), kThreads, 0, stream>>>(src, count, dst);
  GN_CUDA_CHECK(cudaGetLastError());
}

void widen(const double* src, std::int64_t count, double* dst, cudaStream_t stream) {
  if (count <= 0) return;
  GN_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(count) * sizeof(double),
                                cudaMemcpyDeviceToDevice, stream));
}

}  // namespace gradnoise::cuda
