// Profiles a small two-layer linear model on synthetic regression data through
// gradnoise's public headers only, as a program linking the library would.
// Exits non-zero unless the profile's numbers are finite.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <vector>

#include "gradnoise/io.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"

int main() {
  try {
    gradnoise::SynthOptions synth;
    synth.n = 512;
    synth.d = 8;
    synth.k = 2;
    synth.label_noise = 0.3;  // so no model fits exactly and the noise is not zero
    synth.seed = 1;
    const gradnoise::SynthData synthetic = gradnoise::make_synthetic(synth);

    const std::vector<std::int64_t> widths = {synth.d, 4, synth.k};
    const gradnoise::Model model =
        gradnoise::make_model(widths, /*bias=*/true, gradnoise::Init::gaussian, /*seed=*/2);

    const gradnoise::Profile profile =
        gradnoise::profile(model, synthetic.data, gradnoise::ProfileOptions{});
    std::printf("device %s\n", profile.device.c_str());
    std::printf("trace_cov %.17g\n", profile.trace_cov);
    std::printf("grad_norm_sq %.17g\n", profile.grad_norm_sq);
    std::printf("noise_scale_simple %.17g\n", profile.noise_scale_simple);
    if (!std::isfinite(profile.trace_cov) || !std::isfinite(profile.grad_norm_sq) ||
        !std::isfinite(profile.noise_scale_simple)) {
      std::fprintf(stderr, "consumer: error: the profile has a non-finite number.\n");
      return 1;
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "consumer: error: %s\n", error.what());
    return 1;
  }
  return 0;
}
