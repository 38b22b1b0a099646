// The CUDA backend's device queries (gradnoise/cuda.hpp) and the check the
// entry points make before they use the device.
#include <map>
#include <mutex>
#include <string>

#include "cuda_entry.hpp"
#include "cuda_support.hpp"
#include "gradnoise/cuda.hpp"
#include "gradnoise/error.hpp"

namespace gradnoise {

bool cuda_built() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" status
    return 0;
  }
  return count;
}

std::string cuda_device_name() {
  if (cuda_device_count() == 0) return {};
  int device = 0;
  GN_CUDA_CHECK(cudaGetDevice(&device));
  // Every profile names its device, and cudaGetDeviceProperties reads every
  // property: ask once per device and process.
  static std::mutex mutex;
  static std::map<int, std::string> names;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = names.find(device);
  if (it == names.end()) {
    cudaDeviceProp prop{};
    GN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    it = names.emplace(device, prop.name).first;
  }
  return it->second;
}

void warm_up_cuda() noexcept {
  if (cuda_device_count() > 0) cudaFree(nullptr);  // creates the context; errors surface later
}

void select_cuda_device(int ordinal) {
  const int count = cuda_device_count();
  if (count > 0) GN_CUDA_CHECK(cudaSetDevice(ordinal % count));
}

namespace cuda {

void require_device() {
  if (cuda_device_count() == 0) {
    throw RuntimeError("--device cuda was asked for, but no CUDA device is present; "
                       "use --device cpu or --device auto");
  }
}

}  // namespace cuda
}  // namespace gradnoise
