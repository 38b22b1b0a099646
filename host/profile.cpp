// Backend dispatch: `profile` picks the device, the backends do the work.
#include "gradnoise/cuda.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

Device parse_device(const std::string& name) {
  if (name == "auto") return Device::automatic;
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") return Device::cuda;
  throw InputError("--device '" + name + "' is not known; expected auto, cpu or cuda");
}

Profile profile(const Model& model, const DataSource& data, const ProfileOptions& options) {
  switch (options.device) {
    case Device::cpu:
      return profile_cpu(model, data, options);
    case Device::cuda:
      return profile_cuda(model, data, options);  // says clearly when there is no GPU
    case Device::automatic:
      break;
  }
  return cuda_device_count() > 0 ? profile_cuda(model, data, options)
                                 : profile_cpu(model, data, options);
}

}  // namespace gradnoise
