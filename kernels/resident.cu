// A session's data on the device (cuda_entry.hpp "A session's resident
// data"): copied once, at the first pass, then read in place by every pass of
// the session. The copy converts chunks of rows on the host with every core
// into one of two pinned buffers while the other's copy runs, so the upload
// runs at the slower of the conversion and the PCIe link. float32 inputs
// (a float32 file or array) are copied as they are, never widened first.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_entry.hpp"
#include "cuda_support.hpp"
#include "gradnoise/error.hpp"
#include "parallel_scan.hpp"
#include "policy.hpp"
#include "resident.cuh"

namespace gradnoise {

void ResidentDataDeleter::operator()(ResidentData* data) const {
  if (data != nullptr) cudaStreamSynchronize(data->stream.get());
  delete data;
}

namespace {

/// dst[j] = T(src[j]) for j < count, over all cores. Returns the first j whose
/// finite value overflows T (float32), or −1 (always when S is T: a copy).
template <typename S, typename T>
std::int64_t convert(const S* src, std::int64_t count, T* dst) {
  detail::parallel_ranges(
      count,
      [&](std::int64_t, std::int64_t begin, std::int64_t end) {
        std::copy(src + begin, src + end, dst + begin);
      },
      detail::kResidentConvertGrain);
  if constexpr (std::is_same_v<S, T>) return -1;
  // A non-finite source value is the kernels' to report (as a sample's
  // non-finite output); only finite values float32 cannot hold are this call's.
  std::int64_t j = detail::first_non_finite(dst, count);
  while (j >= 0 && !std::isfinite(src[j])) {
    const std::int64_t next = detail::first_non_finite(dst + j + 1, count - j - 1);
    j = next < 0 ? -1 : j + 1 + next;
  }
  return j;
}

[[noreturn]] void throw_overflow(const char* what, std::int64_t row, std::int64_t col) {
  throw InputError(std::string(what) + " at row " + std::to_string(row) + ", column " +
                   std::to_string(col) +
                   " is too large for float32 on the GPU; expected magnitudes below 3.4e38, "
                   "or use --gpu-dtype float64");
}

template <typename T>
void upload_rows(const DataSource& data, ResidentData& out, T* x, T* y) {
  const std::int64_t n = out.n, d = out.d, k = out.k;
  const std::int64_t row_bytes =
      d * static_cast<std::int64_t>(sizeof(T)) +
      (out.labels ? static_cast<std::int64_t>(sizeof(std::int32_t)) : k * static_cast<std::int64_t>(sizeof(T)));
  const std::int64_t rows_per = std::clamp<std::int64_t>(detail::kResidentStagingBytes / row_bytes, 1, n);
  cuda::PinnedBuffer<T> x_stage[2], y_stage[2];
  cuda::PinnedBuffer<std::int32_t> label_stage[2];
  for (int b = 0; b < 2; ++b) {
    x_stage[b] = cuda::PinnedBuffer<T>(static_cast<std::size_t>(rows_per * d));
    if (out.labels) {
      label_stage[b] = cuda::PinnedBuffer<std::int32_t>(static_cast<std::size_t>(rows_per));
    } else {
      y_stage[b] = cuda::PinnedBuffer<T>(static_cast<std::size_t>(rows_per * k));
    }
  }
  std::vector<double> x_host, y_host;  // float64 rows to convert (float32 only)
  cuda::Event copied[2];
  bool in_flight[2] = {false, false};
  const cudaStream_t stream = out.stream.get();
  for (std::int64_t first = 0, c = 0; first < n; first += rows_per, ++c) {
    const int b = static_cast<int>(c % 2);
    const std::int64_t m = std::min(rows_per, n - first);
    if (in_flight[b]) GN_CUDA_CHECK(cudaEventSynchronize(copied[b].get()));
    std::int32_t* labels = out.labels ? label_stage[b].data() : nullptr;
    if constexpr (std::is_same_v<T, double>) {
      data.read(first, m, x_stage[b].data(), out.labels ? nullptr : y_stage[b].data(), labels);
    } else {
      // float32 X (a float32 file or array) is copied as it is.
      const float* same = data.inputs_in_place_float32(first, m);
      const double* src = same != nullptr ? nullptr : data.inputs_in_place(first, m);
      if (!out.labels) y_host.resize(static_cast<std::size_t>(m * k));
      double* y_read = out.labels ? nullptr : y_host.data();
      if (same == nullptr && src == nullptr) {
        x_host.resize(static_cast<std::size_t>(m * d));
        data.read(first, m, x_host.data(), y_read, labels);
        src = x_host.data();
      } else if (labels != nullptr || y_read != nullptr) {
        data.read(first, m, nullptr, y_read, labels);
      }
      if (same != nullptr) {
        convert(same, m * d, x_stage[b].data());
      } else if (const std::int64_t bad = convert(src, m * d, x_stage[b].data()); bad >= 0) {
        throw_overflow("the input", first + bad / d, bad % d);
      }
      if (!out.labels) {
        if (const std::int64_t bad = convert(y_host.data(), m * k, y_stage[b].data()); bad >= 0) {
          throw_overflow("the target", first + bad / k, bad % k);
        }
      }
    }
    GN_CUDA_CHECK(cudaMemcpyAsync(x + first * d, x_stage[b].data(),
                                  static_cast<std::size_t>(m * d) * sizeof(T),
                                  cudaMemcpyHostToDevice, stream));
    if (out.labels) {
      GN_CUDA_CHECK(cudaMemcpyAsync(out.label_ids.data() + first, labels,
                                    static_cast<std::size_t>(m) * sizeof(std::int32_t),
                                    cudaMemcpyHostToDevice, stream));
    } else {
      GN_CUDA_CHECK(cudaMemcpyAsync(y + first * k, y_stage[b].data(),
                                    static_cast<std::size_t>(m * k) * sizeof(T),
                                    cudaMemcpyHostToDevice, stream));
    }
    GN_CUDA_CHECK(cudaEventRecord(copied[b].get(), stream));
    in_flight[b] = true;
  }
  // The pinned buffers die with this frame.
  GN_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace

std::int64_t resident_bytes(const DataSource& data, Loss loss, GpuDtype dtype) {
  const std::int64_t value = dtype == GpuDtype::float32 ? 4 : 8;
  const std::int64_t n = data.num_samples();
  const bool labels = loss_targets(loss) == TargetKind::labels;
  return n * data.num_features() * value + (labels ? n * 4 : n * data.num_targets() * value);
}

ResidentDataPtr make_resident(const DataSource& data, Loss loss, GpuDtype dtype) {
  cuda::require_device();
  std::size_t free_bytes = 0, total_bytes = 0;
  GN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (!detail::fits_resident(resident_bytes(data, loss, dtype), free_bytes)) return nullptr;
  ResidentDataPtr out(new ResidentData);
  out->dtype = dtype;
  out->n = data.num_samples();
  out->d = data.num_features();
  out->k = data.num_targets();
  out->labels = loss_targets(loss) == TargetKind::labels;
  const auto xs = static_cast<std::size_t>(out->n * out->d);
  const auto ys = static_cast<std::size_t>(out->n * out->k);
  try {
    if (out->labels) out->label_ids = cuda::DeviceBuffer<std::int32_t>(static_cast<std::size_t>(out->n));
    if (dtype == GpuDtype::float32) {
      out->x32 = cuda::DeviceBuffer<float>(xs);
      if (!out->labels) out->y32 = cuda::DeviceBuffer<float>(ys);
    } else {
      out->x64 = cuda::DeviceBuffer<double>(xs);
      if (!out->labels) out->y64 = cuda::DeviceBuffer<double>(ys);
    }
  } catch (const cuda::OutOfMemory&) {
    cudaGetLastError();
    return nullptr;  // another tenant took the memory since: stream instead
  }
  if (dtype == GpuDtype::float32) {
    upload_rows(data, *out, out->x32.data(), out->y32.data());
  } else {
    upload_rows(data, *out, out->x64.data(), out->y64.data());
  }
  return out;
}

Profile profile_resident(ResidentData& data, const Model& model, const ProfileOptions& options) {
  if (data.dtype == GpuDtype::float32) {
    return cuda::profile_device_rows(model, data.rows<float>(), options, data.stream.get(),
                                     &data.fused);
  }
  return cuda::profile_device_rows(model, data.rows<double>(), options, data.stream.get(),
                                   &data.fused);
}

// ---- ForwardCache -----------------------------------------------------------

namespace {

std::vector<std::int64_t> layer_shape(const Model& model) {
  std::vector<std::int64_t> shape;
  for (const Layer& layer : model.layers) {
    shape.insert(shape.end(), {layer.in, layer.out, layer.has_bias() ? 1 : 0});
  }
  return shape;
}

}  // namespace

bool ForwardCache::matches(const Model& model, Loss loss) const {
  return valid && loss == this->loss && shape == layer_shape(model) && params == model.flatten();
}

void ForwardCache::release() {
  valid = false;
  shape.clear();
  params.clear();
  inputs.clear();
  errors.clear();
  weights.clear();
  outputs = cuda::DeviceBuffer<double>();
}

bool ForwardCache::prepare(const Model& model, Loss loss, std::int64_t n, cudaStream_t stream) {
  release();
  std::size_t free_bytes = 0, total_bytes = 0;
  GN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (!detail::fits_forward_cache(detail::forward_cache_bytes(model, n), free_bytes)) return false;
  try {
    for (const Layer& layer : model.layers) {
      inputs.emplace_back(static_cast<std::size_t>(n * layer.in));
      errors.emplace_back(static_cast<std::size_t>(n * layer.out));
      weights.emplace_back(static_cast<std::size_t>(layer.in * layer.out));
    }
    outputs = cuda::DeviceBuffer<double>(static_cast<std::size_t>(n * model.output_dim()));
    if (!cublas) cublas = std::make_unique<cuda::CublasHandle>(stream);
  } catch (const cuda::OutOfMemory&) {  // another tenant took memory since: run without it
    cudaGetLastError();
    release();
    return false;
  }
  this->loss = loss;
  shape = layer_shape(model);
  params = model.flatten();
  return true;
}

}  // namespace gradnoise
