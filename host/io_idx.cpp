// IDX files (LeCun's MNIST format) and the Fashion-MNIST loader. zlib's gzread
// passes plain files through unchanged, so one reader handles both .gz and
// uncompressed copies.

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"

namespace gradnoise {
namespace {

constexpr int kUnsignedByteType = 0x08;
constexpr const char* kFashionMnistPackage = "dataset-fashion-mnist";
constexpr const char* kFashionMnistEnv = "GRADNOISE_FASHION_MNIST_DIR";
constexpr std::int64_t kFashionMnistPixels = 28 * 28;
constexpr std::int64_t kFashionMnistClasses = 10;

std::string quoted(const std::filesystem::path& path) {
  std::string text(1, '"');
  text += path.string();
  text += '"';
  return text;
}

struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

/// Reads up to `size` bytes, looping because gzread takes an unsigned int.
/// Returns the number read; throws if zlib reports corrupt compressed data.
std::size_t read_bytes(gzFile file, unsigned char* destination, std::size_t size,
                       const std::filesystem::path& path) {
  std::size_t total = 0;
  while (total < size) {
    const auto request =
        static_cast<unsigned>(std::min<std::size_t>(size - total, std::size_t{1} << 30));
    const int got = gzread(file, destination + total, request);
    if (got < 0) {
      int zlib_error = Z_OK;
      const char* message = gzerror(file, &zlib_error);
      // Z_BUF_ERROR is zlib's "unexpected end of file" (gzread mostly gives
      // a short count for it instead): the caller reports it as truncation,
      // of the data by its byte counts, of the trailer by gzip_stream_cut.
      if (zlib_error == Z_BUF_ERROR) break;
      throw InputError("cannot read " + quoted(path) + ": its compressed data is corrupt (zlib: " +
                       message + ")");
    }
    if (got == 0) break;
    total += static_cast<std::size_t>(got);
  }
  return total;
}

/// After a read came back short: whether zlib's input ended inside a gzip
/// stream ("unexpected end of file", Z_BUF_ERROR) rather than after the
/// stream's end (Z_STREAM_END, reached only through its trailer, whose CRC-32
/// and length zlib has then verified). gzread reports the cut as a short read,
/// not an error, so it must be asked.
bool gzip_stream_cut(gzFile file) {
  int zlib_error = Z_OK;
  gzerror(file, &zlib_error);
  return zlib_error == Z_BUF_ERROR;
}

/// Reads an unsigned-byte IDX array. Keeps at most `row_limit` rows (all when
/// negative) and reports the row count stored in the file in `stored_rows`.
Array read_idx_rows(const std::filesystem::path& path, std::int64_t row_limit,
                    std::int64_t& stored_rows) {
  std::error_code status_error;
  if (!std::filesystem::exists(path, status_error)) {
    throw InputError("cannot read " + quoted(path) + ": the file does not exist");
  }
  if (std::filesystem::is_directory(path, status_error)) {
    throw InputError("cannot read " + quoted(path) + ": it is a directory, expected an IDX file");
  }
  errno = 0;
  GzFile file(gzopen(path.c_str(), "rb"));
  if (!file) {
    throw InputError("cannot open " + quoted(path) + " for reading (" +
                     (errno != 0 ? std::strerror(errno) : "out of memory") + ")");
  }

  // Magic: two zero bytes, the element type, the number of dimensions.
  std::array<unsigned char, 4> magic{};
  if (read_bytes(file.get(), magic.data(), magic.size(), path) < magic.size()) {
    throw InputError(quoted(path) + " is truncated: it ends inside the 4-byte IDX magic number");
  }
  if (magic[0] != 0 || magic[1] != 0) {
    throw InputError(quoted(path) + " is not an IDX file: its first two bytes are not zero");
  }
  const int type = magic[2];
  const int ndim = magic[3];
  if (type != kUnsignedByteType) {
    char found[8];
    std::snprintf(found, sizeof found, "0x%02X", type);
    throw InputError(quoted(path) + " has IDX element type " + found +
                     "; expected 0x08 (unsigned byte)");
  }
  if (ndim < 1 || ndim > 3) {
    throw InputError(quoted(path) + " has " + std::to_string(ndim) +
                     " IDX dimensions; expected 1 (labels), 2 or 3 (images)");
  }

  std::vector<std::int64_t> dims(static_cast<std::size_t>(ndim));
  for (std::int64_t& dim : dims) {
    std::array<unsigned char, 4> bytes{};
    if (read_bytes(file.get(), bytes.data(), bytes.size(), path) < bytes.size()) {
      throw InputError(quoted(path) + " is truncated: it ends inside the IDX dimension sizes");
    }
    dim = (std::int64_t{bytes[0]} << 24) | (std::int64_t{bytes[1]} << 16) |
          (std::int64_t{bytes[2]} << 8) | std::int64_t{bytes[3]};
  }
  // Three 32-bit dims can overflow 64 bits; refuse before multiplying.
  std::int64_t stored_count = 1;
  for (const std::int64_t dim : dims) {
    if (dim != 0 && stored_count > std::numeric_limits<std::int64_t>::max() / 8 / dim) {
      throw InputError(quoted(path) + " has IDX dimensions too large to hold in memory");
    }
    stored_count *= dim;
  }
  const std::int64_t row_size = dims[0] == 0 ? 1 : stored_count / dims[0];
  stored_rows = dims[0];
  const std::int64_t rows = row_limit < 0 ? stored_rows : std::min(row_limit, stored_rows);

  Array array;
  array.integral_dtype = true;
  array.shape = ndim == 1 ? std::vector<std::int64_t>{rows}
                          : std::vector<std::int64_t>{rows, row_size};
  const auto count = static_cast<std::size_t>(rows * row_size);
  // Grow the buffer as data arrives rather than trusting the header: a corrupt
  // gzip file's dims could otherwise demand terabytes before we notice.
  constexpr std::size_t kChunkBytes = std::size_t{1} << 22;
  std::vector<unsigned char> bytes;
  std::size_t got = 0;
  while (got < count) {
    bytes.resize(std::min(count, got + kChunkBytes));
    const std::size_t wanted = bytes.size() - got;
    const std::size_t chunk_got = read_bytes(file.get(), bytes.data() + got, wanted, path);
    got += chunk_got;
    if (chunk_got < wanted) break;
  }
  if (got < count) {
    throw InputError(quoted(path) + " is truncated: its dimensions need " +
                     std::to_string(stored_count) + " data bytes but only " +
                     std::to_string(got) + " are present");
  }
  // Reading past the last data byte also takes zlib through the gzip trailer:
  // a wrong CRC-32 or length is corrupt data (read_bytes throws), a missing
  // trailer a cut stream. With a row limit the rest is neither read nor checked.
  if (rows == stored_rows) {
    unsigned char extra = 0;
    if (read_bytes(file.get(), &extra, 1, path) != 0) {
      throw InputError(quoted(path) + " has bytes after the " + std::to_string(count) +
                       " data bytes that its dimensions describe");
    }
    if (gzip_stream_cut(file.get())) {
      throw InputError(quoted(path) + " is truncated: the gzip stream ends before its trailer");
    }
  }
  array.values.assign(bytes.begin(), bytes.end());
  return array;
}

/// Finds `name` (gzipped, as the Debian package ships it) or its uncompressed
/// twin in `dir`, or explains how to get it.
std::filesystem::path find_fashion_file(const std::filesystem::path& dir, const std::string& name) {
  std::error_code status_error;
  for (const std::filesystem::path& candidate : {dir / (name + ".gz"), dir / name}) {
    if (std::filesystem::is_regular_file(candidate, status_error)) return candidate;
  }
  throw InputError("Fashion-MNIST file " + name + ".gz is not in " + quoted(dir) +
                   "; install it with `apt-get install " + kFashionMnistPackage + "` or set " +
                   kFashionMnistEnv + " to the directory that holds it");
}

}  // namespace

Array read_idx(const std::filesystem::path& path) {
  std::int64_t stored_rows = 0;
  return read_idx_rows(path, -1, stored_rows);
}

std::filesystem::path fashion_mnist_dir() {
  const char* override_dir = std::getenv(kFashionMnistEnv);
  if (override_dir != nullptr && *override_dir != '\0') return override_dir;
  return "/usr/share/datasets/fashion-mnist";
}

Dataset load_fashion_mnist(const std::filesystem::path& dir, const std::string& split, Loss loss,
                           std::int64_t limit) {
  return load_fashion_mnist_part(dir, split, loss, limit, 0, 1).data;
}

DatasetPart load_fashion_mnist_part(const std::filesystem::path& dir, const std::string& split,
                                    Loss loss, std::int64_t limit, int part, int parts) {
  if (split != "train" && split != "test") {
    throw InputError("Fashion-MNIST split \"" + split +
                     "\" is unknown; expected \"train\" or \"test\"");
  }
  if (limit < 0) {
    throw InputError("Fashion-MNIST sample limit " + std::to_string(limit) +
                     " is negative; expected 0 (all samples) or a positive count");
  }
  // The files use the original MNIST names: "t10k" is the test split.
  const std::string prefix = split == "train" ? "train" : "t10k";
  const std::filesystem::path images_path = find_fashion_file(dir, prefix + "-images-idx3-ubyte");
  const std::filesystem::path labels_path = find_fashion_file(dir, prefix + "-labels-idx1-ubyte");

  // The whole set's rows from the header, then the files up to the part's
  // last row (a gzip stream is read from its start), keeping the part's rows.
  std::int64_t stored_images = 0;
  std::int64_t stored_labels = 0;
  read_idx_rows(images_path, 0, stored_images);
  const std::int64_t whole = limit > 0 ? std::min(limit, stored_images) : stored_images;
  const RowSpan span = parts == 1 ? RowSpan{0, whole} : split_rows(whole, part, parts);
  const std::int64_t row_limit = parts == 1 && limit <= 0 ? -1 : span.first + span.count;
  Array images = read_idx_rows(images_path, row_limit, stored_images);
  Array labels = read_idx_rows(labels_path, row_limit, stored_labels);
  if (images.shape.size() != 2 || images.cols() != kFashionMnistPixels) {
    throw InputError(quoted(images_path) + " does not hold 28×28 images; expected " +
                     std::to_string(kFashionMnistPixels) + " pixels per image");
  }
  if (labels.shape.size() != 1) {
    throw InputError(quoted(labels_path) + " is not a 1-D IDX label file");
  }
  if (stored_images != stored_labels) {
    throw InputError(quoted(images_path) + " holds " + std::to_string(stored_images) +
                     " images but " + quoted(labels_path) + " holds " +
                     std::to_string(stored_labels) + " labels; expected one label per image");
  }
  if (limit > stored_images) {
    throw InputError("Fashion-MNIST sample limit " + std::to_string(limit) + " exceeds the " +
                     std::to_string(stored_images) + " samples of the " + split + " split");
  }

  if (span.first > 0) {
    images.values.erase(images.values.begin(), images.values.begin() + span.first * kFashionMnistPixels);
    labels.values.erase(labels.values.begin(), labels.values.begin() + span.first);
    images.shape[0] -= span.first;
    labels.shape[0] -= span.first;
  }
  DatasetPart result;
  result.first_row = span.first;
  result.whole_rows = whole;
  Dataset& data = result.data;
  data.n = images.rows();
  data.d = kFashionMnistPixels;
  data.k = kFashionMnistClasses;
  data.x = std::move(images.values);
  for (double& pixel : data.x) pixel /= 255.0;
  if (loss_targets(loss) == TargetKind::labels) {
    data.labels.resize(labels.values.size());
  } else {
    data.y.assign(labels.values.size() * static_cast<std::size_t>(kFashionMnistClasses), 0.0);
  }
  for (std::size_t i = 0; i < labels.values.size(); ++i) {
    const auto label = static_cast<std::int32_t>(labels.values[i]);
    if (label >= kFashionMnistClasses) {
      throw InputError(quoted(labels_path) + " holds label " + std::to_string(label) +
                       " at index " + std::to_string(i) + "; expected labels in [0, 10)");
    }
    if (loss_targets(loss) == TargetKind::labels) {
      data.labels[i] = label;
    } else {
      data.y[i * kFashionMnistClasses + label] = 1.0;  // one-hot targets for squared loss
    }
  }
  return result;
}

}  // namespace gradnoise
