// Synthetic linear-regression data (the Ziyin et al. setting): Gaussian inputs
// with a chosen covariance spectrum, a random linear teacher, Gaussian label
// noise.
//
// Randomness comes from Philox4x32 (Random123), a counter-based generator:
// every normal is a pure function of (seed, stream, sample, coordinate), so
// the bits do not depend on the standard library, the thread count or the
// order of generation. Normals come from our own Box–Muller rather than
// std::normal_distribution, whose algorithm differs between libraries; the
// remaining platform dependence is the last-ulp rounding of libm's log/cos/sin.

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numbers>
#include <string>
#include <string_view>
#include <vector>

#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"
#include "text.hpp"
#include "random.hpp"

namespace gradnoise {
namespace {

/// Independent streams under one seed: the same sample index draws unrelated
/// numbers for its inputs and its label noise.
enum class Stream : std::uint32_t { inputs = 0, teacher = 1, label_noise = 2 };

void fill_normals(std::uint64_t seed, Stream stream, std::uint64_t row, double* out,
                  std::int64_t count) {
  detail::fill_normals(seed, static_cast<std::uint32_t>(stream), row, out, count);
}

using detail::format_number;

bool parse_double(std::string_view text, double& value) {
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  return !text.empty() && error == std::errc() && stop == end;
}

/// The input covariance eigenvalues λ_1..λ_d from the spectrum option.
std::vector<double> parse_spectrum(const std::string& spectrum, std::int64_t d) {
  const auto size = static_cast<std::size_t>(d);
  if (spectrum == "identity") return std::vector<double>(size, 1.0);

  constexpr std::string_view kPowerlaw = "powerlaw:";
  if (spectrum.starts_with(kPowerlaw)) {
    double alpha = 0;
    if (!parse_double(std::string_view(spectrum).substr(kPowerlaw.size()), alpha) ||
        !std::isfinite(alpha)) {
      throw InputError("spectrum \"" + spectrum +
                       "\" has no valid exponent; expected powerlaw:ALPHA with a finite number, "
                       "e.g. powerlaw:1.5");
    }
    std::vector<double> eigenvalues(size);
    for (std::size_t j = 0; j < size; ++j) {
      eigenvalues[j] = std::pow(static_cast<double>(j + 1), -alpha);  // λ_j = j^−α, j from 1
    }
    return eigenvalues;
  }

  std::vector<double> eigenvalues;
  std::string_view rest = spectrum;
  while (true) {
    const std::size_t comma = rest.find(',');
    double value = 0;
    if (!parse_double(rest.substr(0, comma), value)) {
      throw InputError("spectrum \"" + spectrum +
                       "\" is not \"identity\", \"powerlaw:ALPHA\" or a comma-separated list of " +
                       std::to_string(d) + " positive numbers");
    }
    if (!(value > 0) || !std::isfinite(value)) {
      throw InputError("spectrum \"" + spectrum + "\" contains " +
                       std::string(rest.substr(0, comma)) +
                       "; every eigenvalue must be positive and finite");
    }
    eigenvalues.push_back(value);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  if (eigenvalues.size() != size) {
    throw InputError("spectrum \"" + spectrum + "\" lists " + std::to_string(eigenvalues.size()) +
                     (eigenvalues.size() == 1 ? " eigenvalue" : " eigenvalues") +
                     " but the data has d = " + std::to_string(d) + " features");
  }
  return eigenvalues;
}

}  // namespace

SynthData make_synthetic(const SynthOptions& options) {
  if (options.n < 1 || options.d < 1 || options.k < 1) {
    throw InputError("synthetic data needs n, d and k of at least 1, but got n = " +
                     std::to_string(options.n) + ", d = " + std::to_string(options.d) +
                     ", k = " + std::to_string(options.k));
  }
  if (!(options.label_noise >= 0) || !std::isfinite(options.label_noise)) {
    throw InputError("synthetic label noise " + format_number(options.label_noise) +
                     " is invalid; expected a finite σ ≥ 0");
  }
  if (!std::isfinite(options.mean)) {
    throw InputError("synthetic input mean " + format_number(options.mean) +
                     " is invalid; expected a finite number");
  }
  const std::vector<double> eigenvalues = parse_spectrum(options.spectrum, options.d);
  std::vector<double> scales(eigenvalues.size());
  for (std::size_t j = 0; j < scales.size(); ++j) scales[j] = std::sqrt(eigenvalues[j]);

  const std::int64_t n = options.n, d = options.d, k = options.k;
  const std::uint64_t seed = options.seed;

  SynthData result;
  result.teacher.resize(static_cast<std::size_t>(k * d));
  const double teacher_scale = 1.0 / std::sqrt(static_cast<double>(d));  // W* ~ N(0, 1/d)
  for (std::int64_t row = 0; row < k; ++row) {
    double* teacher_row = result.teacher.data() + row * d;
    fill_normals(seed, Stream::teacher, static_cast<std::uint64_t>(row), teacher_row, d);
    for (std::int64_t j = 0; j < d; ++j) teacher_row[j] *= teacher_scale;
  }

  Dataset& data = result.data;
  data.n = n;
  data.d = d;
  data.k = k;
  data.x.resize(static_cast<std::size_t>(n * d));
  data.y.resize(static_cast<std::size_t>(n * k));
  // Each sample depends only on its own counters, so the threads' split does
  // not change a single bit of the output.
#pragma omp parallel
  {
    std::vector<double> noise(static_cast<std::size_t>(k));
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      double* x_row = data.x.data() + i * d;
      fill_normals(seed, Stream::inputs, static_cast<std::uint64_t>(i), x_row, d);
      for (std::int64_t j = 0; j < d; ++j) {
        x_row[j] = options.mean + scales[static_cast<std::size_t>(j)] * x_row[j];
      }
      fill_normals(seed, Stream::label_noise, static_cast<std::uint64_t>(i), noise.data(), k);
      for (std::int64_t c = 0; c < k; ++c) {
        const double* teacher_row = result.teacher.data() + c * d;
        double prediction = 0;
        for (std::int64_t j = 0; j < d; ++j) prediction += teacher_row[j] * x_row[j];
        data.y[static_cast<std::size_t>(i * k + c)] =
            prediction + options.label_noise * noise[static_cast<std::size_t>(c)];
      }
    }
  }
  return result;
}

}  // namespace gradnoise
