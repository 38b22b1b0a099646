// Every batch size at once (docs/MATH.md "Minibatch variance for every batch
// size"): one profile gives tr Σ and Var_i(ℓ_i); each b then costs O(1).
#include <algorithm>
#include <charconv>
#include <string>

#include "gradnoise/error.hpp"
#include "gradnoise/profile.hpp"

namespace gradnoise {

double without_replacement_factor(std::int64_t n, std::int64_t batch_size) {
  if (n < 2 || batch_size < 1 || batch_size > n) {
    throw InputError("batch size " + std::to_string(batch_size) + " is outside 1.." +
                     std::to_string(n) + " (the number of samples)");
  }
  return static_cast<double>(n - batch_size) /
         (static_cast<double>(batch_size) * static_cast<double>(n - 1));
}

std::vector<std::int64_t> parse_batch_sizes(const std::string& spec, std::int64_t n) {
  std::vector<std::int64_t> sizes;
  if (spec == "all") {
    sizes.resize(static_cast<std::size_t>(n));
    for (std::int64_t b = 1; b <= n; ++b) sizes[b - 1] = b;
    return sizes;
  }
  if (spec == "pow2") {
    for (std::int64_t b = 1; b < n; b *= 2) sizes.push_back(b);
    sizes.push_back(n);
    return sizes;
  }
  std::size_t pos = 0;
  while (pos <= spec.size()) {
    const std::size_t comma = std::min(spec.find(',', pos), spec.size());
    const std::string item = spec.substr(pos, comma - pos);
    std::int64_t b = 0;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), b);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size()) {
      throw InputError("--batch-sizes '" + spec + "' is not all, pow2 or a comma-separated list of integers");
    }
    if (b < 1 || b > n) {
      throw InputError("--batch-sizes asks for batch size " + std::to_string(b) +
                       "; expected sizes in 1.." + std::to_string(n) + " (the number of samples)");
    }
    if (std::find(sizes.begin(), sizes.end(), b) != sizes.end()) {
      throw InputError("--batch-sizes lists batch size " + std::to_string(b) +
                       " more than once; give each size once");
    }
    sizes.push_back(b);
    pos = comma + 1;
  }
  return sizes;
}

std::vector<CurvePoint> batch_size_curve(const Profile& profile,
                                         std::span<const std::int64_t> batch_sizes) {
  std::vector<CurvePoint> curve;
  curve.reserve(batch_sizes.size());
  for (const std::int64_t b : batch_sizes) {
    const double without = without_replacement_factor(profile.n, b);
    const double with = 1.0 / static_cast<double>(b);
    curve.push_back({b, without * profile.trace_cov, with * profile.trace_cov,
                     without * profile.loss_var, with * profile.loss_var});
  }
  return curve;
}

}  // namespace gradnoise
