// The one-shot profile: a session's backend for the length of one call; the
// names users write for a device and a GPU precision.
#include "backend.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

std::optional<Device> device_named(std::string_view name) {
  if (name == "auto") return Device::automatic;
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") return Device::cuda;
  return std::nullopt;
}

std::optional<GpuDtype> gpu_dtype_named(std::string_view name) {
  if (name == "float32") return GpuDtype::float32;
  if (name == "float64") return GpuDtype::float64;
  return std::nullopt;
}

Profile profile(const Model& model, const DataSource& data, const ProfileOptions& options) {
  // The caller owns the data and it outlives this call, so the backend borrows it.
  const std::shared_ptr<const DataSource> borrowed(&data, [](const DataSource*) {});
  const std::unique_ptr<detail::Backend> backend = detail::make_backend(
      options.device, borrowed, options.loss, options.chunk_rows, options.threads,
      options.fused_linear);
  return backend->profile(model, options);
}

}  // namespace gradnoise
