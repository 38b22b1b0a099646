// Outputs (regular files written atomically through their symlinks, devices
// and FIFOs written in place), the writability probe, and load_xy, which turns
// a pair of .npy/.csv files into a validated Dataset.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "parallel_scan.hpp"
#include "chunk_pass.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"
#include "io_npy.hpp"
#include "stored_data.hpp"
#include "text.hpp"

namespace gradnoise {

std::int64_t Array::cols() const {
  std::int64_t product = 1;
  for (std::size_t dim = 1; dim < shape.size(); ++dim) product *= shape[dim];
  return product;
}

namespace {

using detail::format_number;

std::string quoted(const std::filesystem::path& path) {
  std::string text(1, '"');
  text += path.string();
  text += '"';
  return text;
}

std::filesystem::path directory_of(const std::filesystem::path& path) {
  const std::filesystem::path parent = path.parent_path();
  return parent.empty() ? std::filesystem::path(".") : parent;
}

/// A file descriptor that is closed on scope exit unless released first.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  /// Closes now so the caller can check the result (close can report a
  /// delayed write error, e.g. on NFS or a full disk).
  int close() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

/// Creates a new, uniquely named file beside `target` (same directory, so the
/// final rename stays on one file system and is atomic). O_EXCL makes the name
/// ours even if another process picked the same one. `what` names the output
/// in messages.
std::pair<std::filesystem::path, int> create_temp_beside(const std::filesystem::path& target,
                                                         const char* purpose,
                                                         const std::string& what) {
  static std::atomic<unsigned> counter{0};
  const std::filesystem::path directory = directory_of(target);
  // Hidden (leading dot) so a crash mid-write does not leave a file that
  // looks like a result.
  std::string stem(1, '.');
  stem += target.filename().string();
  stem += std::string(".") + purpose + "-" + std::to_string(::getpid()) + "-";
  for (int attempt = 0; attempt < 100; ++attempt) {
    const auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
    const std::filesystem::path candidate =
        directory / (stem + std::to_string(counter.fetch_add(1)) + "-" +
                     std::to_string(static_cast<unsigned long long>(ticks) % 1000000007ULL));
    const int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return {candidate, fd};
    if (errno != EEXIST) {
      throw RuntimeError("cannot write " + what + ": creating a file in directory " +
                         quoted(directory) + " failed (" + std::strerror(errno) + ")");
    }
  }
  throw RuntimeError("cannot write " + what + ": no unused temporary file name found in " +
                     quoted(directory));
}

/// `path` in quotes, and the file it leads to when that is another path.
std::string described(const std::filesystem::path& path, const OutputTarget& target) {
  if (target.path == path) return quoted(path);
  return quoted(path) + " (a symlink to " + quoted(target.path) + ")";
}

/// Writes all of `contents` to `fd`; 0, or the errno of the failure.
int write_all(int fd, const std::string& contents) {
  const char* next = contents.data();
  std::size_t remaining = contents.size();
  while (remaining > 0) {
    const ssize_t written = ::write(fd, next, remaining);
    if (written < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    next += written;
    remaining -= static_cast<std::size_t>(written);
  }
  return 0;
}

/// A character device or FIFO: opened (a FIFO waits for its reader) and
/// written as it is, never created, truncated or replaced.
void write_in_place(const std::filesystem::path& path, const std::string& contents) {
  int raw_fd = -1;
  do {
    raw_fd = ::open(path.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);
  } while (raw_fd < 0 && errno == EINTR);
  if (raw_fd < 0) {
    throw RuntimeError("cannot write " + quoted(path) + ": opening it failed (" +
                       std::strerror(errno) + ")");
  }
  FileDescriptor fd(raw_fd);
  if (const int error = write_all(fd.get(), contents); error != 0) {
    throw RuntimeError("cannot write " + quoted(path) + ": writing failed (" +
                       std::strerror(error) + ")");
  }
  if (fd.close() != 0) {
    throw RuntimeError("cannot write " + quoted(path) + ": closing it failed (" +
                       std::strerror(errno) + ")");
  }
}

/// What `mode` is, for the refusal of files that are neither regular files,
/// directories, character devices nor FIFOs.
const char* file_kind(mode_t mode) {
  if (S_ISBLK(mode)) return "block device";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}

// Linux's own limit on symlinks followed in one lookup.
constexpr int kMaxSymlinkHops = 40;

bool has_extension(const std::filesystem::path& path, const std::string& lowercase_extension) {
  std::string extension = path.extension().string();
  std::transform(extension.begin(), extension.end(), extension.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return extension == lowercase_extension;
}

ArrayPart read_array_part(const std::filesystem::path& path, const char* role, CsvHeader csv_header,
                          int part, int parts) {
  if (has_extension(path, ".npy")) return read_npy_part(path, part, parts);
  if (has_extension(path, ".csv")) return read_csv_part(path, csv_header, part, parts);
  throw InputError(std::string(role) + " file " + quoted(path) +
                   " has an unsupported extension; expected .npy or .csv");
}

std::string shape_string(const Array& array) {
  std::string text;
  for (std::size_t dim = 0; dim < array.shape.size(); ++dim) {
    if (dim > 0) text += "×";
    text += std::to_string(array.shape[dim]);
  }
  return text;
}

/// NaN/Inf checked here as well as in Dataset::validate so the message can
/// name the file and the element.
InputError non_finite_error(const char* role, const std::filesystem::path& path, double value,
                            std::int64_t row, std::int64_t column) {
  return InputError(std::string(role) + " file " + quoted(path) + " holds a non-finite value (" +
                    format_number(value) + ") at row " + std::to_string(row) + ", column " +
                    std::to_string(column) + " (0-based); every value must be finite");
}

void require_finite(const Array& array, std::int64_t first_row, const std::filesystem::path& path,
                    const char* role) {
  const std::int64_t index =
      detail::first_non_finite(array.values.data(), static_cast<std::int64_t>(array.values.size()));
  if (index < 0) return;
  const std::int64_t cols = array.cols();
  throw non_finite_error(role, path, array.values[static_cast<std::size_t>(index)],
                         first_row + index / cols, index % cols);
}

}  // namespace

OutputTarget output_target(const std::filesystem::path& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) == 0) {
    // Decided on what the path leads to, so /dev/stdout (a symlink to
    // /proc/self/fd/1, itself a link to "pipe:[…]") is written as the pipe.
    if (S_ISCHR(info.st_mode) || S_ISFIFO(info.st_mode)) return {path, true};
    if (!S_ISREG(info.st_mode) && !S_ISDIR(info.st_mode)) {
      throw RuntimeError("cannot write " + quoted(path) + ": it is a " + file_kind(info.st_mode) +
                         "; an output must be a regular file, a character device or a FIFO");
    }
  }
  std::filesystem::path current = path;
  for (int hop = 0; hop <= kMaxSymlinkHops; ++hop) {
    struct stat link {};
    if (::lstat(current.c_str(), &link) != 0 || !S_ISLNK(link.st_mode)) return {current, false};
    std::error_code error;
    const std::filesystem::path next = std::filesystem::read_symlink(current, error);
    if (error) {
      throw RuntimeError("cannot write " + quoted(path) + ": reading the symlink " +
                         quoted(current) + " failed (" + error.message() + ")");
    }
    current = next.is_absolute() ? next : current.parent_path() / next;
  }
  throw RuntimeError("cannot write " + quoted(path) + ": too many levels of symbolic links");
}

void write_file_atomic(const std::filesystem::path& path, const std::string& contents) {
  const OutputTarget target = output_target(path);
  if (target.in_place) {
    write_in_place(target.path, contents);
    return;
  }
  const std::string what = described(path, target);
  auto [temp_path, raw_fd] = create_temp_beside(target.path, "tmp", what);
  FileDescriptor fd(raw_fd);
  auto fail = [&, temp = temp_path](const std::string& step, int error) {
    if (fd.get() >= 0) fd.close();
    ::unlink(temp.c_str());
    throw RuntimeError("cannot write " + what + ": " + step + " failed (" +
                       std::strerror(error) + ")");
  };
  if (const int error = write_all(fd.get(), contents); error != 0) {
    fail("writing the temporary file " + quoted(temp_path), error);
  }
  if (fd.close() != 0) fail("closing the temporary file " + quoted(temp_path), errno);
  // Over the symlink's target, not the link: the link stays a link.
  if (std::rename(temp_path.c_str(), target.path.c_str()) != 0) {
    fail("renaming the temporary file " + quoted(temp_path) + " over it", errno);
  }
}

void check_writable(const std::filesystem::path& path) {
  const OutputTarget target = output_target(path);
  if (target.in_place) {
    if (::access(target.path.c_str(), W_OK) != 0) {
      throw RuntimeError("cannot write " + quoted(path) + " (" + std::strerror(errno) + ")");
    }
    return;
  }
  const std::string what = described(path, target);
  const std::filesystem::path directory = directory_of(target.path);
  std::error_code error;
  if (!std::filesystem::is_directory(directory, error)) {
    throw RuntimeError("cannot write " + what + ": directory " + quoted(directory) +
                       " does not exist");
  }
  auto [probe_path, raw_fd] = create_temp_beside(target.path, "probe", what);
  FileDescriptor fd(raw_fd);
  fd.close();
  ::unlink(probe_path.c_str());
}

RowSpan split_rows(std::int64_t n, int part, int parts) {
  // N·r fits 64 bits for any N below 2⁴³ rows at a million parts.
  const auto start = [&](std::int64_t r) { return n * r / parts; };
  return {start(part), start(part + 1) - start(part)};
}

Dataset load_xy(const std::filesystem::path& x_path, const std::filesystem::path& y_path,
                Loss loss, CsvHeader csv_header) {
  return load_xy_part(x_path, y_path, loss, csv_header, 0, 1).data;
}

DatasetPart load_xy_part(const std::filesystem::path& x_path, const std::filesystem::path& y_path,
                         Loss loss, CsvHeader csv_header, int part, int parts) {
  detail::StoredDataPart stored = detail::load_xy_stored(x_path, y_path, loss, csv_header, part, parts);
  return {stored.data.release_dataset(), stored.first_row, stored.whole_rows};
}

namespace detail {

StoredDataPart load_xy_stored(const std::filesystem::path& x_path, const std::filesystem::path& y_path,
                              Loss loss, CsvHeader csv_header, int part, int parts) {
  StoredDataPart result;
  StoredData& data = result.data;
  data.kind = loss_targets(loss);
  std::int64_t x_first_bad = -1;
  if (has_extension(x_path, ".npy")) {
    NpyRows x = map_npy_rows(x_path, part, parts);
    result.first_row = x.first_row;
    result.whole_rows = x.whole_rows;
    data.n = x.values.rows;
    data.d = x.values.cols;  // 1-D X is N×1
    x_first_bad = x.first_non_finite;
    data.set_inputs(x.values.data, x.values.type, std::move(x.owner));
  } else {
    ArrayPart x = read_array_part(x_path, "X", csv_header, part, parts);
    result.first_row = x.first_row;
    result.whole_rows = x.whole_rows;
    data.n = x.array.rows();
    data.d = x.array.cols();
    x_first_bad = detail::first_non_finite(x.array.values.data(),
                                           static_cast<std::int64_t>(x.array.values.size()));
    data.set_inputs(std::move(x.array.values));
  }
  const std::int64_t first_row = result.first_row;
  ArrayPart y_part = read_array_part(y_path, "Y", csv_header, part, parts);
  Array& y = y_part.array;
  if (x_first_bad >= 0) {
    std::vector<double> row(static_cast<std::size_t>(data.d));
    data.read(x_first_bad / data.d, 1, row.data(), nullptr, nullptr);
    throw non_finite_error("X", x_path, row[static_cast<std::size_t>(x_first_bad % data.d)],
                           first_row + x_first_bad / data.d, x_first_bad % data.d);
  }
  require_finite(y, first_row, y_path, "Y");

  if (result.whole_rows == 0) throw InputError("X file " + quoted(x_path) + " holds no samples");
  if (data.d == 0) throw InputError("X file " + quoted(x_path) + " has no feature columns");
  if (y_part.whole_rows != result.whole_rows) {
    throw InputError("X file " + quoted(x_path) + " has " + std::to_string(result.whole_rows) +
                     " rows but Y file " + quoted(y_path) + " has " + std::to_string(y_part.whole_rows) +
                     "; they must have one row per sample");
  }
  if (data.n == 0) {
    throw InputError("X file " + quoted(x_path) + " has " + std::to_string(result.whole_rows) +
                     " rows, too few to give each of " + std::to_string(parts) +
                     " processes at least one; use at most " + std::to_string(result.whole_rows) +
                     " ranks");
  }
  if (loss_targets(loss) == TargetKind::labels) {
    if (y.cols() != 1) {
      throw InputError("Y file " + quoted(y_path) + " has shape " + shape_string(y) +
                       " but cross-entropy needs one integer label per sample (shape " +
                       std::to_string(data.n) + " or " + std::to_string(data.n) + "×1)");
    }
    data.labels.resize(y.values.size());
    std::int32_t max_label = -1;
    for (std::size_t i = 0; i < y.values.size(); ++i) {
      const double value = y.values[i];
      if (value != std::floor(value) || value < 0 ||
          value > std::numeric_limits<std::int32_t>::max() - 1) {
        throw InputError("Y file " + quoted(y_path) + " holds " + format_number(value) +
                         " at row " + std::to_string(first_row + static_cast<std::int64_t>(i)) +
                         " (0-based) but cross-entropy labels must be non-negative integers "
                         "below 2^31 - 1");
      }
      data.labels[i] = static_cast<std::int32_t>(value);
      max_label = std::max(max_label, data.labels[i]);
    }
    data.k = static_cast<std::int64_t>(max_label) + 1;
  } else {
    data.k = y.cols();  // 1-D Y is N×1
    if (data.k == 0) throw InputError("Y file " + quoted(y_path) + " has no target columns");
    data.y = std::move(y.values);
    for (std::int64_t i = 0; i < data.n; ++i) {
      const double* row = data.y.data() + i * data.k;
      const std::int64_t c = detail::first_bad_target_column(loss, row, data.k);
      if (c >= 0) {
        throw InputError("Y file " + quoted(y_path) + " holds " + format_number(row[c]) +
                         " at row " + std::to_string(first_row + i) + ", column " + std::to_string(c) +
                         " (0-based) but --loss " + loss_name(loss) + " needs " +
                         loss_expected_targets(loss));
      }
    }
  }

  return result;
}

}  // namespace detail

}  // namespace gradnoise
