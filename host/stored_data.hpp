// A data set whose inputs X stay where the loader left them: a memory-mapped
// .npy file, storage a loader decoded into, or a moved-in vector (CSV,
// Fashion-MNIST), float32 or float64 in C order. The CLI's loaded data.
// Float64 X is read in place by the engines (inputs_in_place); float32 X is
// widened chunk by chunk in read(), so a float32 file takes half the memory
// of its float64 copy and never exists widened whole, and the GPU's float32
// upload copies it as it is (inputs_in_place_float32).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/io.hpp"

namespace gradnoise::detail {

class StoredData final : public DataSource {
 public:
  std::int64_t n = 0;
  std::int64_t d = 0;
  std::int64_t k = 0;
  TargetKind kind = TargetKind::real;  // which of y and labels holds the targets
  std::vector<double> y;               // n×k real targets
  std::vector<std::int32_t> labels;    // n class labels

  /// X as n×d float32 or float64 values, C order, in memory `owner` keeps.
  void set_inputs(const void* data, ElementType type, std::shared_ptr<const void> owner);
  /// X as n×d float64 values held here.
  void set_inputs(std::vector<double> values);
  /// X: n×d, C order, float32 or float64.
  ArrayView inputs() const;

  std::int64_t num_samples() const override { return n; }
  std::int64_t num_features() const override { return d; }
  std::int64_t num_targets() const override { return k; }
  TargetKind target_kind() const override { return kind; }
  void read(std::int64_t first, std::int64_t count, double* x_out, double* y_out,
            std::int32_t* labels_out) const override;
  const double* inputs_in_place(std::int64_t first, std::int64_t count) const override;
  const float* inputs_in_place_float32(std::int64_t first, std::int64_t count) const override;

  /// The rows as a Dataset (sweeps index a Dataset's rows), leaving this
  /// empty: X is moved when it is a vector held here, widened otherwise.
  Dataset release_dataset();
  /// A Dataset's rows, its X moved in (no copy).
  static StoredData from(Dataset&& data);

 private:
  std::vector<double> x_vector_;         // X when held here
  const void* x_data_ = nullptr;         // X when `x_owner_` holds it
  ElementType x_type_ = ElementType::float64;
  std::shared_ptr<const void> x_owner_;  // a mapping or decoded storage
};

struct StoredDataPart {
  StoredData data;
  std::int64_t first_row = 0;
  std::int64_t whole_rows = 0;
};

/// load_xy_part (io.hpp) with X left where it lies: a .npy X memory-mapped
/// when its bytes are the values (float32 or float64 files), decoded in
/// parallel otherwise, with its finiteness checked in the same pass. Checks
/// and messages as load_xy_part's; rows of the whole file in messages.
StoredDataPart load_xy_stored(const std::filesystem::path& x_path,
                              const std::filesystem::path& y_path, Loss loss, CsvHeader csv_header,
                              int part = 0, int parts = 1);

}  // namespace gradnoise::detail
