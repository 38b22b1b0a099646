#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "parallel_scan.hpp"
#include "gradnoise/data.hpp"
#include "gradnoise/error.hpp"
#include "stored_data.hpp"

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
  if (const std::int64_t at = detail::first_non_finite(x.data(), static_cast<std::int64_t>(x.size()));
      at >= 0) {
    throw InputError(name + " has a non-finite input value (" +
                     std::to_string(x[static_cast<std::size_t>(at)]) + ") at sample " +
                     std::to_string(at / d) + ", feature " + std::to_string(at % d) +
                     "; expected finite numbers");
  }
  if (const std::int64_t at = detail::first_non_finite(y.data(), static_cast<std::int64_t>(y.size()));
      at >= 0) {
    throw InputError(name + " has a non-finite target at sample " + std::to_string(at / k) +
                     "; expected finite numbers");
  }
  const auto bad_label = std::find_if(labels.begin(), labels.end(),
                                      [this](std::int32_t c) { return c < 0 || c >= k; });
  if (bad_label != labels.end()) {
    throw InputError(name + " has label " + std::to_string(*bad_label) + " at sample " +
                     std::to_string(bad_label - labels.begin()) + "; expected labels in [0, " +
                     std::to_string(k) + ")");
  }
}

std::string element_type_name(ElementType type) {
  switch (type) {
    case ElementType::float32: return "float32";
    case ElementType::float64: return "float64";
    case ElementType::int8: return "int8";
    case ElementType::int16: return "int16";
    case ElementType::int32: return "int32";
    case ElementType::int64: return "int64";
    case ElementType::uint8: return "uint8";
  }
  return "unknown";
}

namespace {

bool is_real(ElementType type) { return type == ElementType::float32 || type == ElementType::float64; }

/// Calls f with a typed pointer to the view's first element.
template <class F>
decltype(auto) visit_elements(const ArrayView& view, F&& f) {
  switch (view.type) {
    case ElementType::float32: return f(static_cast<const float*>(view.data));
    case ElementType::float64: return f(static_cast<const double*>(view.data));
    case ElementType::int8: return f(static_cast<const std::int8_t*>(view.data));
    case ElementType::int16: return f(static_cast<const std::int16_t*>(view.data));
    case ElementType::int32: return f(static_cast<const std::int32_t*>(view.data));
    case ElementType::int64: return f(static_cast<const std::int64_t*>(view.data));
    case ElementType::uint8: return f(static_cast<const std::uint8_t*>(view.data));
  }
  throw RuntimeError("internal: unknown element type");
}

/// Rows [first, first + count) of the view into out (count×cols, row-major).
template <class Out>
void gather_rows(const ArrayView& view, std::int64_t first, std::int64_t count, Out* out) {
  visit_elements(view, [&](const auto* base) {
    for (std::int64_t r = 0; r < count; ++r) {
      const auto* row = base + (first + r) * view.row_stride;
      Out* dst = out + r * view.cols;
      if (view.col_stride == 1) {
        for (std::int64_t c = 0; c < view.cols; ++c) dst[c] = static_cast<Out>(row[c]);
      } else {
        for (std::int64_t c = 0; c < view.cols; ++c) dst[c] = static_cast<Out>(row[c * view.col_stride]);
      }
    }
  });
}

}  // namespace

void copy_rows(const ArrayView& view, std::int64_t first, std::int64_t count, double* out) {
  gather_rows(view, first, count, out);
}

BorrowedData::BorrowedData(ArrayView x, ArrayView targets, TargetKind kind,
                           std::shared_ptr<const void> owner, std::int64_t classes,
                           const std::string& x_name, const std::string& targets_name)
    : x_(x), targets_(targets), kind_(kind), owner_(std::move(owner)) {
  if (!is_real(x_.type)) {
    throw InputError(x_name + " holds " + element_type_name(x_.type) +
                     " values; expected float32 or float64");
  }
  if (x_.rows < 1 || x_.cols < 1 || !x_.data) {
    throw InputError(x_name + " is empty (" + std::to_string(x_.rows) + " samples of " +
                     std::to_string(x_.cols) + " features); expected at least one sample and feature");
  }
  if (targets_.rows != x_.rows) {
    throw InputError(targets_name + " has " + std::to_string(targets_.rows) + " rows but " + x_name +
                     " has " + std::to_string(x_.rows) + " samples; expected one target row per sample");
  }
  if (kind_ == TargetKind::real) {
    if (!is_real(targets_.type)) {
      throw InputError(targets_name + " holds " + element_type_name(targets_.type) +
                       " values; expected float32 or float64 real targets");
    }
    if (targets_.cols < 1) throw InputError(targets_name + " has no columns; expected N×K real targets, K ≥ 1");
    k_ = targets_.cols;
    std::vector<double> row(static_cast<std::size_t>(k_));
    for (std::int64_t i = 0; i < targets_.rows; ++i) {
      copy_rows(targets_, i, 1, row.data());
      for (std::int64_t c = 0; c < k_; ++c) {
        if (!std::isfinite(row[c])) {
          throw InputError(targets_name + " has a non-finite target at sample " + std::to_string(i) +
                           "; expected finite numbers");
        }
      }
    }
    return;
  }
  if (is_real(targets_.type)) {
    throw InputError(targets_name + " holds " + element_type_name(targets_.type) +
                     " values; expected integer class labels (int32 or int64)");
  }
  if (targets_.cols != 1) {
    throw InputError(targets_name + " has " + std::to_string(targets_.cols) +
                     " columns; expected a vector of N class labels");
  }
  std::int64_t largest = -1;
  visit_elements(targets_, [&](const auto* base) {
    for (std::int64_t i = 0; i < targets_.rows; ++i) {
      const auto label = static_cast<std::int64_t>(base[i * targets_.row_stride]);
      if (label < 0 || label > std::numeric_limits<std::int32_t>::max()) {
        throw InputError(targets_name + " has label " + std::to_string(label) + " at sample " +
                         std::to_string(i) + "; expected class labels in [0, K)");
      }
      largest = std::max(largest, label);
    }
  });
  k_ = classes > 0 ? classes : largest + 1;
  if (largest >= k_) {
    throw InputError(targets_name + " has label " + std::to_string(largest) + " but " +
                     std::to_string(k_) + " classes were declared; expected labels in [0, " +
                     std::to_string(k_) + ")");
  }
}

void BorrowedData::read(std::int64_t first, std::int64_t count, double* x, double* y,
                        std::int32_t* labels) const {
  if (first < 0 || count < 0 || first + count > x_.rows) {
    throw RuntimeError("internal: BorrowedData::read asked for rows [" + std::to_string(first) + ", " +
                       std::to_string(first + count) + ") of " + std::to_string(x_.rows));
  }
  if (x) gather_rows(x_, first, count, x);
  if (kind_ == TargetKind::real) {
    if (y) gather_rows(targets_, first, count, y);
  } else if (labels) {
    gather_rows(targets_, first, count, labels);
  }
}

namespace {

/// Rows [first, first + count) of a C-order view of T in place, or null.
template <typename T>
const T* rows_in_place(const ArrayView& view, ElementType type, std::int64_t first, std::int64_t count) {
  if (view.type != type || !view.c_contiguous()) return nullptr;
  if (first < 0 || count < 0 || first + count > view.rows) return nullptr;
  return static_cast<const T*>(view.data) + first * view.cols;
}

}  // namespace

const double* BorrowedData::inputs_in_place(std::int64_t first, std::int64_t count) const {
  return rows_in_place<double>(x_, ElementType::float64, first, count);
}

const float* BorrowedData::inputs_in_place_float32(std::int64_t first, std::int64_t count) const {
  return rows_in_place<float>(x_, ElementType::float32, first, count);
}

// ---- StoredData (stored_data.hpp) ---------------------------------------------

namespace detail {

void StoredData::set_inputs(const void* data, ElementType type, std::shared_ptr<const void> owner) {
  x_vector_ = {};
  x_data_ = data;
  x_type_ = type;
  x_owner_ = std::move(owner);
}

void StoredData::set_inputs(std::vector<double> values) {
  x_vector_ = std::move(values);
  x_data_ = nullptr;
  x_type_ = ElementType::float64;
  x_owner_ = nullptr;
}

ArrayView StoredData::inputs() const {
  ArrayView view;
  view.data = x_owner_ ? x_data_ : x_vector_.data();
  view.type = x_type_;
  view.rows = n;
  view.cols = d;
  view.row_stride = d;
  return view;
}

void StoredData::read(std::int64_t first, std::int64_t count, double* x_out, double* y_out,
                      std::int32_t* labels_out) const {
  if (first < 0 || count < 0 || first + count > n) {
    throw RuntimeError("internal: StoredData::read asked for rows [" + std::to_string(first) + ", " +
                       std::to_string(first + count) + ") of " + std::to_string(n));
  }
  if (x_out) gather_rows(inputs(), first, count, x_out);
  if (kind == TargetKind::real) {
    if (y_out) std::copy_n(y.data() + first * k, count * k, y_out);
  } else if (labels_out) {
    std::copy_n(labels.data() + first, count, labels_out);
  }
}

const double* StoredData::inputs_in_place(std::int64_t first, std::int64_t count) const {
  return rows_in_place<double>(inputs(), ElementType::float64, first, count);
}

const float* StoredData::inputs_in_place_float32(std::int64_t first, std::int64_t count) const {
  return rows_in_place<float>(inputs(), ElementType::float32, first, count);
}

Dataset StoredData::release_dataset() {
  Dataset out;
  out.n = n;
  out.d = d;
  out.k = k;
  if (x_owner_) {
    out.x.resize(static_cast<std::size_t>(n * d));
    const ArrayView view = inputs();
    parallel_ranges(n, [&](std::int64_t, std::int64_t begin, std::int64_t end) {
      gather_rows(view, begin, end - begin, out.x.data() + begin * d);
    }, std::max<std::int64_t>(1, kParallelGrain / std::max<std::int64_t>(d, 1)));
  } else {
    out.x = std::move(x_vector_);
  }
  out.y = std::move(y);
  out.labels = std::move(labels);
  *this = StoredData();
  return out;
}

StoredData StoredData::from(Dataset&& data) {
  StoredData out;
  out.n = data.n;
  out.d = data.d;
  out.k = data.k;
  out.kind = data.target_kind();
  out.set_inputs(std::move(data.x));
  out.y = std::move(data.y);
  out.labels = std::move(data.labels);
  return out;
}

}  // namespace detail

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
