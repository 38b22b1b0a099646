#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "gradnoise/data.hpp"
#include "gradnoise/error.hpp"

namespace gradnoise {

void Dataset::read(std::int64_t first, std::int64_t count, double* x_out, double* y_out,
                   std::int32_t* labels_out) const {
  if (first < 0 || count < 0 || first + count > n) {
    throw RuntimeError("internal: Dataset::read asked for rows [" + std::to_string(first) + ", " +
                       std::to_string(first + count) + ") of " + std::to_string(n));
  }
  if (x_out) std::copy_n(x.data() + first * d, count * d, x_out);
  if (target_kind() == TargetKind::real) {
    if (y_out) std::copy_n(y.data() + first * k, count * k, y_out);
  } else if (labels_out) {
    std::copy_n(labels.data() + first, count, labels_out);
  }
}

void Dataset::validate(const char* what) const {
  const std::string name(what);
  if (n < 1 || d < 1) {
    throw InputError(name + " is empty (" + std::to_string(n) + " samples of " +
                     std::to_string(d) + " features); expected at least one sample and feature");
  }
  if (static_cast<std::int64_t>(x.size()) != n * d) {
    throw InputError(name + " has " + std::to_string(x.size()) + " input values; expected N×D = " +
                     std::to_string(n * d));
  }
  const bool has_y = !y.empty();
  const bool has_labels = !labels.empty();
  if (has_y == has_labels) {
    throw InputError(name + " must carry either real targets or class labels, not " +
                     (has_y ? "both" : "neither"));
  }
  if (k < 1) throw InputError(name + " has no target columns or classes; expected K ≥ 1");
  if (has_y && static_cast<std::int64_t>(y.size()) != n * k) {
    throw InputError(name + " has " + std::to_string(y.size()) + " target values; expected N×K = " +
                     std::to_string(n * k));
  }
  if (has_labels && static_cast<std::int64_t>(labels.size()) != n) {
    throw InputError(name + " has " + std::to_string(labels.size()) + " labels for " +
                     std::to_string(n) + " samples");
  }
  const auto bad_x = std::find_if(x.begin(), x.end(), [](double v) { return !std::isfinite(v); });
  if (bad_x != x.end()) {
    const auto at = bad_x - x.begin();
    throw InputError(name + " has a non-finite input value (" + std::to_string(*bad_x) +
                     ") at sample " + std::to_string(at / d) + ", feature " +
                     std::to_string(at % d) + "; expected finite numbers");
  }
  const auto bad_y = std::find_if(y.begin(), y.end(), [](double v) { return !std::isfinite(v); });
  if (bad_y != y.end()) {
    throw InputError(name + " has a non-finite target at sample " +
                     std::to_string((bad_y - y.begin()) / k) + "; expected finite numbers");
  }
  const auto bad_label = std::find_if(labels.begin(), labels.end(),
                                      [this](std::int32_t c) { return c < 0 || c >= k; });
  if (bad_label != labels.end()) {
    throw InputError(name + " has label " + std::to_string(*bad_label) + " at sample " +
                     std::to_string(bad_label - labels.begin()) + "; expected labels in [0, " +
                     std::to_string(k) + ")");
  }
}

Dataset with_one_hot_targets(const Dataset& labelled) {
  Dataset out;
  out.n = labelled.n;
  out.d = labelled.d;
  out.k = labelled.k;
  out.x = labelled.x;
  out.y.assign(static_cast<std::size_t>(out.n * out.k), 0.0);
  for (std::int64_t i = 0; i < out.n; ++i) {
    out.y[static_cast<std::size_t>(i * out.k + labelled.labels[i])] = 1.0;
  }
  return out;
}

}  // namespace gradnoise
