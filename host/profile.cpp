// The one-shot profile: a session's backend for the length of one call.
#include "backend.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

Profile profile(const Model& model, const DataSource& data, const ProfileOptions& options) {
  // The caller owns the data and it outlives this call, so the backend borrows it.
  const std::shared_ptr<const DataSource> borrowed(&data, [](const DataSource*) {});
  const std::unique_ptr<detail::Backend> backend = detail::make_backend(
      options.device, borrowed, options.loss, options.chunk_rows, options.threads,
      options.fused_linear);
  return backend->profile(model, options);
}

}  // namespace gradnoise
