// Data as the engines see it: N samples of D features with either real
// targets (squared loss, N×K) or integer class labels (cross-entropy).
// Engines pull rows in chunks through DataSource, so a source backed by a file
// or a generator can feed N larger than memory.
#pragma once

#include <cstdint>
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

/// Real one-hot targets (n×k) from labels, for squared loss on a
/// classification set.
Dataset with_one_hot_targets(const Dataset& labelled);

}  // namespace gradnoise
