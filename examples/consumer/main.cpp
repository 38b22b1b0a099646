// Profiles a small two-layer linear model on synthetic regression data through
// gradnoise's public headers only, as a program linking the library would:
// a session keeps the data while θ changes, as inside a training loop (here
// a few plain gradient steps on the full loss). Exits non-zero unless the
// profile's numbers are finite.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <vector>

#include "gradnoise/io.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "gradnoise/session.hpp"

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
    gradnoise::Model model =
        gradnoise::make_model(widths, /*bias=*/true, gradnoise::Init::gaussian, /*seed=*/2);

    gradnoise::Profiler session(synthetic.data, gradnoise::SessionOptions{});
    std::printf("device %s\n", session.device().c_str());
    for (int step = 0; step < 3; ++step) {
      const gradnoise::Profile profile = session.profile(model);
      std::printf("step %d  loss %.6g  trace_cov %.6g  grad_norm_sq %.6g  B_simple %.6g\n", step,
                  profile.loss, profile.trace_cov, profile.grad_norm_sq, profile.noise_scale_simple);
      if (!std::isfinite(profile.trace_cov) || !std::isfinite(profile.grad_norm_sq) ||
          !std::isfinite(profile.noise_scale_simple)) {
        std::fprintf(stderr, "consumer: error: the profile has a non-finite number.\n");
        return 1;
      }
      // θ ← θ − 0.1 G: the profile's mean gradient is the full loss's gradient.
      std::vector<double> theta = model.flatten();
      for (std::size_t j = 0; j < theta.size(); ++j) theta[j] -= 0.1 * profile.param_mean[j];
      model.unflatten(theta);
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "consumer: error: %s\n", error.what());
    return 1;
  }
  return 0;
}
