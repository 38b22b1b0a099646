// Backend dispatch: `profile` picks the device, the backends do the work.
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
  if (options.device == Device::cuda) {
    throw RuntimeError(
        "--device cuda was asked for, but this gradnoise has no CUDA backend yet; "
        "use --device cpu or --device auto");
  }
  return profile_cpu(model, data, options);
}

}  // namespace gradnoise
