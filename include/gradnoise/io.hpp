// Reading and writing data: NumPy .npy, CSV, IDX (+gzip), the Fashion-MNIST
// set, and outputs: regular files written atomically (temp file + rename) so a
// failed run never leaves a partial file, symlinks written through, devices
// and FIFOs written in place (docs/OUTPUTS.md). Every error is an InputError/RuntimeError with
// one sentence naming the file and what was expected.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "gradnoise/data.hpp"

namespace gradnoise {

/// A dense array in float64 with its shape, as read from a file.
struct Array {
  std::vector<std::int64_t> shape;
  std::vector<double> values;  // C order
  bool integral_dtype = false; // the file stored integers (labels)
  std::int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
  std::int64_t cols() const;   // product of the trailing dims (1 for 1-D)
};

/// .npy (format 1.0, 2.0, 3.0): dtypes <f4, <f8, <i4, <i8, |u1 (also |i1, <i2,
/// <u2) and their big-endian forms ('>'); C or Fortran order, 1-D or 2-D only.
/// Integer dtypes set integral_dtype. Anything else is an InputError naming
/// the file.
Array read_npy(const std::filesystem::path& path);
// ---- Parts of a file: the rows one of several processes reads (docs/MPI.md)

/// Rows [first, first + count) of part `part` of `parts` of N rows: part r
/// starts at ⌊N·r/parts⌋, so the sizes differ by at most one.
struct RowSpan {
  std::int64_t first = 0;
  std::int64_t count = 0;
};
RowSpan split_rows(std::int64_t n, int part, int parts);

/// A file's rows of one part, and where they sit in the whole file.
struct ArrayPart {
  Array array;                  // shape[0] is the part's row count
  std::int64_t first_row = 0;
  std::int64_t whole_rows = 0;  // the file's rows
};

/// Part `part` of `parts` of a .npy file's rows (split_rows): the header,
/// then only the part's pages are mapped (the whole array for Fortran order).
ArrayPart read_npy_part(const std::filesystem::path& path, int part, int parts);

/// Writes float64 '<f8' .npy (version 1.0, C order) atomically. A shape whose
/// product differs from values.size() is a caller bug: std::invalid_argument.
void write_npy(const std::filesystem::path& path, const std::vector<std::int64_t>& shape,
               const std::vector<double>& values);

/// Whether a CSV file's first line is a header (column names) to skip.
enum class CsvHeader {
  automatic,  // a header when a field is a word: not empty and not a number at all
  present,    // always a header, even when it holds numbers
  absent,     // never: the first line is data, and a word in it is an error
};

/// Numeric CSV, its first line a header as `header` says. Shape is always
/// {rows, cols} (one column gives rows×1). A number too small for float64
/// (1e-400) reads as the nearest float64 (0 or subnormal); one beyond its
/// range (1e999), NaN/Inf, words and ragged rows are InputErrors naming the
/// file, line and column.
Array read_csv(const std::filesystem::path& path, CsvHeader header = CsvHeader::automatic);
/// Part `part` of `parts` of a CSV file's data rows: every line is scanned
/// for the row count, only the part's lines are parsed.
ArrayPart read_csv_part(const std::filesystem::path& path, CsvHeader header, int part, int parts);

/// IDX (LeCun's format), gzip-compressed or plain: unsigned-byte arrays of 1
/// to 3 dims; N×R×C images come back as {N, R*C}.
Array read_idx(const std::filesystem::path& path);

/// Reads X and Y from .npy or .csv (by extension; `csv_header` for .csv). For
/// `loss` cross-entropy Y holds N integer labels (N or N×1); for squared loss
/// Y is N or N×K reals.
Dataset load_xy(const std::filesystem::path& x_path, const std::filesystem::path& y_path,
                Loss loss, CsvHeader csv_header = CsvHeader::automatic);

/// The rows of one part of a data set, and where they sit in the whole.
struct DatasetPart {
  Dataset data;                 // the part's rows; for labels, k is the part's largest label + 1
  std::int64_t first_row = 0;
  std::int64_t whole_rows = 0;
};

/// Part `part` of `parts` of the rows of X and Y (split_rows), checked as
/// load_xy checks the whole; messages give rows of the whole file.
DatasetPart load_xy_part(const std::filesystem::path& x_path, const std::filesystem::path& y_path,
                         Loss loss, CsvHeader csv_header, int part, int parts);

/// Where Debian's dataset-fashion-mnist package puts the files, unless the
/// environment variable GRADNOISE_FASHION_MNIST_DIR says otherwise.
std::filesystem::path fashion_mnist_dir();

/// Fashion-MNIST: pixels scaled to [0, 1] (D = 784), labels in [0, 10) for
/// cross-entropy or one-hot targets for squared loss. `split` is "train" or
/// "test"; `limit` > 0 keeps the first `limit` samples (a limit above the
/// split's size is an InputError, not clamped).
Dataset load_fashion_mnist(const std::filesystem::path& dir, const std::string& split, Loss loss,
                           std::int64_t limit = 0);
/// Part `part` of `parts` of the (first `limit`) Fashion-MNIST rows: the
/// IDX files are read up to the part's last row, and only its rows kept.
DatasetPart load_fashion_mnist_part(const std::filesystem::path& dir, const std::string& split,
                                    Loss loss, std::int64_t limit, int part, int parts);

/// Where writing to a path puts the bytes.
struct OutputTarget {
  /// The file written: the path with its symlinks followed (a dangling link
  /// names the file to create). A character device or FIFO keeps the path as
  /// given.
  std::filesystem::path path;
  /// A character device or FIFO: opened and written, no temp file, no rename.
  bool in_place = false;
};

/// Follows `path`'s symlinks and says how it is written. RuntimeError for a
/// symlink loop, or when `path` is something other than a regular file, a
/// directory, a character device or a FIFO (a block device, a socket).
OutputTarget output_target(const std::filesystem::path& path);

/// Writes `contents` to `path` without replacing what is there: a regular
/// file (or a new one) is replaced atomically by a temp file beside it and a
/// rename, through any symlink to it, so the link stays a link; a character
/// device or FIFO is opened and written in place.
void write_file_atomic(const std::filesystem::path& path, const std::string& contents);

/// Throws RuntimeError unless `path` can be written as write_file_atomic
/// writes it (a file can be created in its target's directory, or the device
/// or FIFO is writable); run before a long computation so a bad output path
/// fails fast. Never opens a FIFO (that would wait for a reader).
void check_writable(const std::filesystem::path& path);

// ---- Synthetic regression data ------------------------------------------

struct SynthOptions {
  std::int64_t n = 1000;
  std::int64_t d = 10;
  std::int64_t k = 1;
  /// Input covariance eigenvalues: "identity", "powerlaw:ALPHA" (λ_j = j^−α),
  /// or a comma-separated list of d values.
  std::string spectrum = "identity";
  double mean = 0;           // every input coordinate is shifted by this
  double label_noise = 0;    // σ of the Gaussian label noise
  std::uint64_t seed = 0;
};

struct SynthData {
  Dataset data;                  // x (n×d), y (n×k)
  std::vector<double> teacher;   // k×d, row-major: y = W* x + σ ε
};

/// Gaussian inputs x = μ + diag(√λ) z with a teacher W* ~ N(0, 1/d), from
/// Philox (Random123), so a seed gives the same data on every platform.
SynthData make_synthetic(const SynthOptions& options);

}  // namespace gradnoise
