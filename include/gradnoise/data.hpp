// Data as the engines see it: N samples of D features with either real
// targets (squared loss, N×K) or integer class labels (cross-entropy).
// Engines pull rows in chunks through DataSource, so a source backed by a file
// or a generator can feed N larger than memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gradnoise/loss.hpp"

namespace gradnoise {

/// Streaming access to a data set, row-major.
class DataSource {
 public:
  virtual ~DataSource() = default;
  virtual std::int64_t num_samples() const = 0;
  /// N of the whole data set when this source holds a contiguous part of it
  /// (an MPI rank's rows, docs/MPI.md); num_samples() otherwise. What needs
  /// the whole set (N ≥ 2, batch sizes, a profile's N) is checked against it.
  virtual std::int64_t whole_samples() const { return num_samples(); }
  virtual std::int64_t num_features() const = 0;
  virtual TargetKind target_kind() const = 0;
  /// Target columns for real targets; number of classes for labels (one more
  /// than the largest label, or as declared by the data set).
  virtual std::int64_t num_targets() const = 0;
  /// Copies rows [first, first + count) into x (count×D, row-major) and, by
  /// target kind, into y (count×K) or labels (count); any of the three may be
  /// null to skip it. May be called from several threads at once for
  /// disjoint ranges.
  virtual void read(std::int64_t first, std::int64_t count, double* x, double* y,
                    std::int32_t* labels) const = 0;
  /// Rows [first, first + count) of X in place (count×D, row-major float64)
  /// when the source stores them so; null otherwise. Engines then read the
  /// inputs without copying them.
  virtual const double* inputs_in_place(std::int64_t /*first*/, std::int64_t /*count*/) const {
    return nullptr;
  }
  /// The same for X stored as float32 (a float32 file or array): the GPU's
  /// float32 copy of the data then takes the values as they are, never
  /// widened to float64 and narrowed back.
  virtual const float* inputs_in_place_float32(std::int64_t /*first*/, std::int64_t /*count*/) const {
    return nullptr;
  }
};

/// A data set held in memory in float64. Exactly one of `y` (n×k real targets)
/// and `labels` (n class labels, k classes) is non-empty.
struct Dataset final : DataSource {
  std::int64_t n = 0;
  std::int64_t d = 0;
  std::int64_t k = 0;
  std::vector<double> x;
  std::vector<double> y;
  std::vector<std::int32_t> labels;

  std::int64_t num_samples() const override { return n; }
  std::int64_t num_features() const override { return d; }
  TargetKind target_kind() const override {
    return labels.empty() && !y.empty() ? TargetKind::real : TargetKind::labels;
  }
  std::int64_t num_targets() const override { return k; }
  void read(std::int64_t first, std::int64_t count, double* x_out, double* y_out,
            std::int32_t* labels_out) const override;
  const double* inputs_in_place(std::int64_t first, std::int64_t count) const override {
    return first >= 0 && count >= 0 && first + count <= n ? x.data() + first * d : nullptr;
  }

  /// Throws InputError unless sizes agree, every value is finite and labels lie
  /// in [0, k). `what` names the data in the message (e.g. "--x data.npy").
  void validate(const char* what = "the data") const;
};

/// The element types a borrowed array (ArrayView) may hold.
enum class ElementType { float32, float64, int8, int16, int32, int64, uint8 };

/// "float32", "int64", ...
std::string element_type_name(ElementType type);

/// A matrix in someone else's memory: element (r, c) lies at
/// data + r·row_stride + c·col_stride elements (strides may be negative or
/// zero), so C order, Fortran order and slices are all views. A vector is a
/// rows×1 view.
struct ArrayView {
  const void* data = nullptr;
  ElementType type = ElementType::float64;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;
  std::int64_t col_stride = 1;

  /// Row-major with no gaps: row r at data + r·cols.
  bool c_contiguous() const {
    return (rows <= 1 || row_stride == cols) && (cols <= 1 || col_stride == 1);
  }
};

/// Rows [first, first + count) of a view into `out` (count×cols, row-major),
/// converted to double whatever the view's element type and strides.
void copy_rows(const ArrayView& view, std::int64_t first, std::int64_t count, double* out);

/// A data set read where it lies, without copying it (the Python module's
/// arrays and tensors, a memory-mapped file): X as a float32 or float64 view
/// of any strides, and real targets (float32/float64, N×K) or integer class
/// labels. Float64 C-order inputs are handed to the engines in place
/// (inputs_in_place); every other layout or type is converted chunk by
/// chunk in read(), so no full copy of X is ever made. `owner` is held
/// for as long as the source lives and keeps the memory valid; the memory
/// must not be resized while the source exists (writing new values is fine:
/// every pass reads them afresh).
class BorrowedData final : public DataSource {
 public:
  /// Throws InputError naming the argument (x_name, targets_name) when X is
  /// empty or not float32/float64, when the targets have another row count
  /// than X, are not of the kind asked (real: float32/float64; labels: an
  /// integer type), hold a non-finite real target or a negative label.
  /// `classes` 0 takes one more than the largest label as the class count.
  BorrowedData(ArrayView x, ArrayView targets, TargetKind kind, std::shared_ptr<const void> owner = {},
               std::int64_t classes = 0, const std::string& x_name = "X",
               const std::string& targets_name = "Y");

  std::int64_t num_samples() const override { return x_.rows; }
  std::int64_t num_features() const override { return x_.cols; }
  TargetKind target_kind() const override { return kind_; }
  std::int64_t num_targets() const override { return k_; }
  void read(std::int64_t first, std::int64_t count, double* x, double* y,
            std::int32_t* labels) const override;
  const double* inputs_in_place(std::int64_t first, std::int64_t count) const override;
  const float* inputs_in_place_float32(std::int64_t first, std::int64_t count) const override;

  const ArrayView& inputs() const { return x_; }
  const ArrayView& targets() const { return targets_; }

 private:
  ArrayView x_;
  ArrayView targets_;
  TargetKind kind_;
  std::int64_t k_ = 0;
  std::shared_ptr<const void> owner_;
};

/// Real one-hot targets (n×k) from labels, for squared loss on a
/// classification set.
Dataset with_one_hot_targets(const Dataset& labelled);

}  // namespace gradnoise
