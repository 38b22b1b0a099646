// --devices: ranks as threads of one process (host/cli/ranks.hpp).
#include "cli/ranks.hpp"

#include <algorithm>

#include "comm_threads.hpp"
#include "distributed.hpp"
#include "gradnoise/cuda.hpp"
#include "gradnoise/error.hpp"

namespace gradnoise::cli {

DeviceList parse_devices(const std::string& spec) {
  DeviceList list;
  bool cpus = false;
  std::size_t start = 0;
  while (start <= spec.size()) {
    const std::size_t comma = std::min(spec.find(',', start), spec.size());
    const std::string item = spec.substr(start, comma - start);
    if (item == "cpu") {
      cpus = true;
      list.local_ranks.push_back(static_cast<int>(list.local_ranks.size()));
    } else if (!item.empty() && item.size() <= 4 && item.find_first_not_of("0123456789") == std::string::npos) {
      const int ordinal = std::stoi(item);
      if (list.gpus && std::find(list.local_ranks.begin(), list.local_ranks.end(), ordinal) != list.local_ranks.end()) {
        throw InputError("--devices " + spec + " lists GPU " + item + " twice; give each GPU once.");
      }
      list.gpus = true;
      list.local_ranks.push_back(ordinal);
    } else {
      throw InputError("--devices " + spec + " must be a comma-separated list of GPU numbers "
                       "(e.g. 0,1,2,3) or of cpu entries (cpu,cpu for two CPU ranks).");
    }
    start = comma + 1;
  }
  if (list.gpus && cpus) {
    throw InputError("--devices " + spec + " mixes GPUs and cpu entries; list GPU numbers alone "
                     "or cpu entries alone.");
  }
  return list;
}

int run_ranks(const std::string& devices, std::string& device, bool device_given,
              const std::function<int(detail::Communicator&)>& rank) {
  detail::Communicator& world = detail::world();
  if (devices.empty()) return rank(world);
  DeviceList list;
  // Under mpirun every rank refuses alike: agreed, printed once.
  world.together([&] {
    if (world.size() > 1) {
      throw InputError("--devices runs ranks as threads of one process; under mpirun each rank "
                       "takes its node-local GPU with --device cuda, so drop --devices.");
    }
    list = parse_devices(devices);
    const std::string wanted = list.gpus ? "cuda" : "cpu";
    if (device_given && device != wanted && device != "auto") {
      throw InputError("--device " + device + " contradicts --devices " + devices + " (" +
                       (list.gpus ? "GPUs" : "CPU ranks") + "); drop --device or make them agree.");
    }
    device = wanted;
    if (!list.gpus) return;
    if (!cuda_built()) {
      throw InputError("--devices " + devices + " lists GPUs, but this gradnoise was built without "
                       "the CUDA backend; list cpu entries (e.g. --devices cpu,cpu) for CPU ranks.");
    }
    const int gpus = cuda_device_count();
    if (gpus == 0) {
      throw InputError("--devices " + devices + " lists GPUs, but this machine has no usable CUDA "
                       "device; list cpu entries (e.g. --devices cpu,cpu) for CPU ranks.");
    }
    const int largest = *std::max_element(list.local_ranks.begin(), list.local_ranks.end());
    if (largest >= gpus) {
      throw InputError("--devices " + devices + " lists GPU " + std::to_string(largest) +
                       ", but this machine has " + std::to_string(gpus) + " (numbered 0 to " +
                       std::to_string(gpus - 1) + ").");
    }
  });
  const bool gpus = list.gpus;
  return detail::run_thread_ranks(list.local_ranks, [&](detail::Communicator& comm) {
    // The CUDA device is per thread: the rank's own before any work.
    if (gpus) detail::select_rank_device(comm, Device::cuda);
    return rank(comm);
  });
}

}  // namespace gradnoise::cli
