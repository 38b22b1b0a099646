// NumPy .npy files (format versions 1.0, 2.0 and 3.0), as specified in
// numpy/lib/format.py: a magic string, a version, a little-endian header
// length, a Python-literal dict with 'descr', 'fortran_order' and 'shape', and
// the raw array bytes. Regular files are memory-mapped (only the pages of the
// rows asked for) and decoded by every core at once; pipes are read in order.
// Values are decoded through memcpy and an explicit byte swap, so the reader
// gives the same result on a host of either byte order.

#include <algorithm>
#include <array>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"
#include "io_npy.hpp"
#include "parallel_scan.hpp"
#include "text.hpp"

namespace gradnoise {
namespace {

constexpr std::string_view kMagic = "\x93NUMPY";
constexpr std::size_t kPreambleSize = 8;         // magic + major + minor
constexpr std::size_t kMaxHeaderSize = 1 << 20;  // real headers are < 1 KiB; guards garbage
constexpr std::string_view kSupportedDtypes =
    "<f4, <f8, <i1, <i2, <i4, <i8, |u1 or <u2 (or the same big-endian, '>')";

std::string quoted(const std::filesystem::path& path) {
  std::string text(1, '"');
  text += path.string();
  text += '"';
  return text;
}

std::string shape_tuple(const std::vector<std::int64_t>& shape) {
  std::string text = "(";
  for (std::size_t dim = 0; dim < shape.size(); ++dim) {
    if (dim > 0) text += ", ";
    text += std::to_string(shape[dim]);
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

template <typename Unsigned>
Unsigned load_little_endian(const unsigned char* bytes) {
  Unsigned value = 0;
  for (std::size_t i = 0; i < sizeof(Unsigned); ++i) {
    value |= static_cast<Unsigned>(static_cast<Unsigned>(bytes[i]) << (8 * i));
  }
  return value;
}

/// The element types we decode, by NumPy kind letter, size in bytes and
/// byte order.
struct Dtype {
  char kind = 'f';  // 'f' float, 'i' signed integer, 'u' unsigned integer
  int size = 8;
  bool big_endian = false;

  /// Whether the file's bytes must be swapped to give this host's values.
  bool swapped() const { return size > 1 && big_endian != (std::endian::native == std::endian::big); }
};

template <std::size_t Size> struct UnsignedOf;
template <> struct UnsignedOf<1> { using type = std::uint8_t; };
template <> struct UnsignedOf<2> { using type = std::uint16_t; };
template <> struct UnsignedOf<4> { using type = std::uint32_t; };
template <> struct UnsignedOf<8> { using type = std::uint64_t; };

/// The element of type T at `bytes`, its bytes reversed when `swap`.
template <typename T>
T load_element(const unsigned char* bytes, bool swap) {
  using Unsigned = typename UnsignedOf<sizeof(T)>::type;
  Unsigned bits;
  std::memcpy(&bits, bytes, sizeof bits);
  if constexpr (sizeof(T) == 2) {
    if (swap) bits = __builtin_bswap16(bits);
  } else if constexpr (sizeof(T) == 4) {
    if (swap) bits = __builtin_bswap32(bits);
  } else if constexpr (sizeof(T) == 8) {
    if (swap) bits = __builtin_bswap64(bits);
  }
  return std::bit_cast<T>(bits);
}

/// Calls f(T{}) with the C++ type of the dtype's elements.
template <typename F>
void visit_dtype(const Dtype& dtype, F&& f) {
  switch (dtype.kind) {
    case 'f':
      if (dtype.size == 4) return f(float{});
      return f(double{});
    case 'i':
      switch (dtype.size) {
        case 1: return f(std::int8_t{});
        case 2: return f(std::int16_t{});
        case 4: return f(std::int32_t{});
        default: return f(std::int64_t{});
      }
    default:
      if (dtype.size == 1) return f(std::uint8_t{});
      return f(std::uint16_t{});
  }
}

/// Maps a 'descr' string to a Dtype, or throws naming what was found.
Dtype parse_dtype(const std::string& descr, const std::filesystem::path& path) {
  auto unsupported = [&](const std::string& why) {
    return InputError(quoted(path) + " has dtype '" + detail::printable(descr) + "'" + why +
                      "; expected one of " + std::string(kSupportedDtypes));
  };
  if (descr.size() < 3 || std::string_view("<>=|").find(descr[0]) == std::string_view::npos) {
    throw unsupported("");
  }
  const char order = descr[0];
  const char kind = descr[1];
  const std::string size_text = descr.substr(2);
  const bool known = (kind == 'f' && (size_text == "4" || size_text == "8")) ||
                     (kind == 'i' && (size_text == "1" || size_text == "2" || size_text == "4" ||
                                      size_text == "8")) ||
                     (kind == 'u' && (size_text == "1" || size_text == "2"));
  if (!known) throw unsupported("");
  const Dtype dtype{kind, std::stoi(size_text), order == '>'};
  // Byte order only matters for multi-byte types; NumPy writes '|' for bytes.
  if (dtype.size > 1 && order != '<' && order != '>') {
    throw unsupported(", whose byte order is not explicit");
  }
  return dtype;
}

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::int64_t> shape;
};

/// Parses the header dict, which NumPy writes with repr(): single-quoted keys,
/// True/False, and a tuple of ints (a 1-tuple carries a trailing comma).
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::filesystem::path& path)
      : text_(text), path_(path) {}

  NpyHeader parse() {
    NpyHeader header;
    bool has_descr = false, has_order = false, has_shape = false;
    expect('{', "at the start of the dict");
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = parse_string("a key");
      expect(':', "after key '" + detail::printable(key) + "'");
      if (key == "descr") {
        skip_space();
        if (peek() == '[') {
          throw InputError(quoted(path_) + " holds a structured (record) array; expected a plain "
                           "numeric array of dtype " + std::string(kSupportedDtypes));
        }
        header.descr = parse_string("the 'descr' value");
        has_descr = true;
      } else if (key == "fortran_order") {
        header.fortran_order = parse_bool();
        has_order = true;
      } else if (key == "shape") {
        header.shape = parse_shape();
        has_shape = true;
      } else {
        fail("unexpected key '" + detail::printable(key) + "'");
      }
      skip_space();
      if (peek() == ',') {
        ++position_;
      } else if (peek() != '}') {
        fail("expected ',' or '}' after the value of '" + detail::printable(key) + "'");
      }
    }
    ++position_;  // the closing brace; padding spaces and '\n' may follow
    skip_space();
    if (position_ != text_.size()) fail("unexpected text after the closing '}'");
    if (!has_descr || !has_order || !has_shape) {
      fail("the keys 'descr', 'fortran_order' and 'shape' must all be present");
    }
    return header;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw InputError(quoted(path_) + " has a malformed .npy header: " + what + " (at byte " +
                     std::to_string(position_) + " of the header dict)");
  }
  char peek() const { return position_ < text_.size() ? text_[position_] : '\0'; }
  void skip_space() {
    while (position_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[position_]))) {
      ++position_;
    }
  }
  void expect(char wanted, const std::string& where) {
    skip_space();
    if (peek() != wanted) fail(std::string("expected '") + wanted + "' " + where);
    ++position_;
  }
  std::string parse_string(const std::string& what) {
    skip_space();
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string for " + what);
    const std::size_t end = text_.find(quote, position_ + 1);
    if (end == std::string_view::npos) fail("unterminated string for " + what);
    std::string value(text_.substr(position_ + 1, end - position_ - 1));
    position_ = end + 1;
    return value;
  }
  bool parse_bool() {
    skip_space();
    for (const auto& [word, value] : {std::pair{"True", true}, std::pair{"False", false}}) {
      if (text_.substr(position_).starts_with(word)) {
        position_ += std::strlen(word);
        return value;
      }
    }
    fail("expected True or False for 'fortran_order'");
  }
  std::vector<std::int64_t> parse_shape() {
    std::vector<std::int64_t> shape;
    expect('(', "to open the 'shape' tuple");
    while (true) {
      skip_space();
      if (peek() == ')') break;
      if (!std::isdigit(static_cast<unsigned char>(peek()))) {
        fail("expected a non-negative integer in the 'shape' tuple");
      }
      std::int64_t dim = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const int digit = peek() - '0';
        if (dim > (std::numeric_limits<std::int64_t>::max() - digit) / 10) {
          fail("a 'shape' entry is too large");
        }
        dim = dim * 10 + digit;
        ++position_;
      }
      if (peek() == 'L') ++position_;  // Python 2 long suffix, seen in old files
      shape.push_back(dim);
      skip_space();
      if (peek() == ',') {
        ++position_;
      } else if (peek() != ')') {
        fail("expected ',' or ')' in the 'shape' tuple");
      }
    }
    ++position_;
    return shape;
  }

  std::string_view text_;
  const std::filesystem::path& path_;
  std::size_t position_ = 0;
};

struct NpyFile;
InputError npy_truncated(const std::filesystem::path& path, const NpyFile& npy, std::uint64_t present);

/// An open .npy file positioned at its first data byte, with its layout.
struct NpyFile {
  std::ifstream file;
  NpyHeader header;
  Dtype dtype;
  std::int64_t count = 0;          // elements
  std::uint64_t data_bytes = 0;    // count × dtype size
  std::uint64_t data_offset = 0;   // of the first data byte
  std::int64_t row_elements = 1;   // elements per row (the trailing dims)
  bool regular = false;            // a regular file, whose size was checked
};

/// Opens `path` and reads and checks everything up to the data: the magic,
/// version, header, dtype, order, shape and the file's size.
NpyFile open_npy(const std::filesystem::path& path) {
  std::error_code status_error;
  if (!std::filesystem::exists(path, status_error)) {
    throw InputError("cannot read " + quoted(path) + ": the file does not exist");
  }
  if (std::filesystem::is_directory(path, status_error)) {
    throw InputError("cannot read " + quoted(path) + ": it is a directory, expected a .npy file");
  }
  NpyFile npy;
  std::ifstream& file = npy.file;
  file.open(path, std::ios::binary);
  if (!file) {
    throw InputError("cannot open " + quoted(path) + " for reading (" + std::strerror(errno) + ")");
  }

  std::array<char, kPreambleSize> preamble{};
  file.read(preamble.data(), preamble.size());
  if (file.gcount() < static_cast<std::streamsize>(kMagic.size()) ||
      std::string_view(preamble.data(), kMagic.size()) != kMagic) {
    throw InputError(quoted(path) + " is not a .npy file: it does not start with the magic "
                     "string \\x93NUMPY");
  }
  if (file.gcount() < static_cast<std::streamsize>(preamble.size())) {
    throw InputError(quoted(path) + " is truncated: it ends inside the .npy preamble");
  }
  const int major = static_cast<unsigned char>(preamble[6]);
  const int minor = static_cast<unsigned char>(preamble[7]);
  if (minor != 0 || major < 1 || major > 3) {
    throw InputError(quoted(path) + " has .npy format version " + std::to_string(major) + "." +
                     std::to_string(minor) + "; expected 1.0, 2.0 or 3.0");
  }

  // Version 1.0 stores the header length in 2 bytes, 2.0 and 3.0 in 4.
  const std::size_t length_size = major == 1 ? 2 : 4;
  std::array<unsigned char, 4> length_bytes{};
  file.read(reinterpret_cast<char*>(length_bytes.data()),
            static_cast<std::streamsize>(length_size));
  if (file.gcount() < static_cast<std::streamsize>(length_size)) {
    throw InputError(quoted(path) + " is truncated: it ends inside the .npy header length");
  }
  const std::size_t header_size = length_size == 2
                                      ? load_little_endian<std::uint16_t>(length_bytes.data())
                                      : load_little_endian<std::uint32_t>(length_bytes.data());
  if (header_size > kMaxHeaderSize) {
    throw InputError(quoted(path) + " has a malformed .npy header: it claims " +
                     std::to_string(header_size) + " bytes, expected at most " +
                     std::to_string(kMaxHeaderSize));
  }
  std::string header_text(header_size, '\0');
  file.read(header_text.data(), static_cast<std::streamsize>(header_size));
  if (file.gcount() < static_cast<std::streamsize>(header_size)) {
    throw InputError(quoted(path) + " is truncated: it ends inside the .npy header");
  }

  npy.header = HeaderParser(header_text, path).parse();
  const NpyHeader& header = npy.header;
  npy.dtype = parse_dtype(header.descr, path);
  if (header.shape.size() != 1 && header.shape.size() != 2) {
    throw InputError(quoted(path) + " holds an array of shape " + shape_tuple(header.shape) +
                     "; expected a 1-D or 2-D array");
  }

  std::int64_t count = 1;
  for (const std::int64_t dim : header.shape) {
    if (dim != 0 && count > std::numeric_limits<std::int64_t>::max() / 8 / dim) {
      throw InputError(quoted(path) + " has shape " + shape_tuple(header.shape) +
                       ", which is too large to hold in memory");
    }
    count *= dim;
  }
  npy.count = count;
  npy.row_elements = header.shape.size() == 2 ? header.shape[1] : 1;
  npy.data_bytes = static_cast<std::uint64_t>(count) * static_cast<std::uint64_t>(npy.dtype.size);
  npy.data_offset = kPreambleSize + length_size + header_size;
  // Check the size first when we can, so a corrupt shape cannot trigger a huge
  // allocation; the read loop catches the rest (e.g. a pipe).
  const std::uintmax_t file_size = std::filesystem::file_size(path, status_error);
  if (!status_error && file_size >= npy.data_offset) {
    npy.regular = std::filesystem::is_regular_file(path, status_error) && !status_error;
    const std::uint64_t present = file_size - npy.data_offset;
    if (present < npy.data_bytes) throw npy_truncated(path, npy, present);
    if (present > npy.data_bytes) {
      throw InputError(quoted(path) + " has " + std::to_string(present) + " data bytes but shape " +
                       shape_tuple(header.shape) + " of '" + header.descr + "' needs exactly " +
                       std::to_string(npy.data_bytes));
    }
  }
  return npy;
}

InputError npy_truncated(const std::filesystem::path& path, const NpyFile& npy, std::uint64_t present) {
  return InputError(quoted(path) + " is truncated: shape " + shape_tuple(npy.header.shape) +
                    " of '" + npy.header.descr + "' needs " + std::to_string(npy.data_bytes) +
                    " data bytes but only " + std::to_string(present) + " are present");
}

/// Bytes of a file's data, mapped or read, kept alive by `owner`.
struct DataBytes {
  const unsigned char* data = nullptr;
  std::shared_ptr<const void> owner;
};

/// A read-only private mapping, unmapped with its last owner.
class Mapping {
 public:
  Mapping(void* base, std::size_t length) : base_(base), length_(length) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { ::munmap(base_, length_); }

 private:
  void* base_;
  std::size_t length_;
};

/// Data bytes [first, first + length) of a regular file, memory-mapped from
/// the page that holds the first; nullopt when the file cannot be mapped
/// (then it is read in order). The size is checked on the descriptor that is
/// mapped, so a file cut short since open_npy looked is an InputError here,
/// never a SIGBUS later.
std::optional<DataBytes> map_bytes(const NpyFile& npy, const std::filesystem::path& path,
                                   std::uint64_t first, std::uint64_t length) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }  // the mapping outlives the descriptor
  } closer{fd};
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) return std::nullopt;
  const auto size = static_cast<std::uint64_t>(info.st_size);
  const std::uint64_t offset = npy.data_offset + first;
  if (size < offset + length) {
    throw npy_truncated(path, npy, size > npy.data_offset ? size - npy.data_offset : 0);
  }
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t start = offset / page * page;
  const auto mapped = static_cast<std::size_t>(offset + length - start);
  void* base = ::mmap(nullptr, mapped, PROT_READ, MAP_PRIVATE, fd, static_cast<off_t>(start));
  if (base == MAP_FAILED) return std::nullopt;
  auto mapping = std::make_shared<const Mapping>(base, mapped);
  return DataBytes{static_cast<const unsigned char*>(base) + (offset - start), std::move(mapping)};
}

/// Data bytes [first, first + length) read in order from the stream, which
/// stands at the first data byte (a pipe, or a file that cannot be mapped).
DataBytes stream_bytes(NpyFile& npy, const std::filesystem::path& path, std::uint64_t first,
                       std::uint64_t length) {
  std::shared_ptr<unsigned char[]> buffer(new unsigned char[std::max<std::uint64_t>(length, 1)]);
  std::uint64_t present = 0;  // data bytes seen
  // The rows before the part are read into the buffer and overwritten.
  auto read = [&](std::uint64_t bytes, bool keep) {
    constexpr std::uint64_t kStep = std::uint64_t{1} << 24;
    const std::uint64_t step_limit = keep ? kStep : std::min(kStep, std::max<std::uint64_t>(length, 1));
    for (std::uint64_t done = 0; done < bytes;) {
      const auto wanted = static_cast<std::streamsize>(std::min(step_limit, bytes - done));
      npy.file.read(reinterpret_cast<char*>(buffer.get() + (keep ? done : 0)), wanted);
      const auto got = static_cast<std::uint64_t>(npy.file.gcount());
      present += got;
      done += got;
      if (got < static_cast<std::uint64_t>(wanted)) throw npy_truncated(path, npy, present);
    }
  };
  read(first, false);
  read(length, true);
  return {buffer.get(), std::shared_ptr<const void>(buffer, buffer.get())};
}

/// Where a part's values lie among the bytes handed to decode_rows.
struct Layout {
  std::int64_t rows = 0;        // the part's
  std::int64_t cols = 1;        // elements per row
  std::int64_t whole_rows = 0;  // the file's
  std::int64_t first_row = 0;   // the part's first, in the file
  /// Fortran order with more than one row and column: the bytes hold the
  /// whole array, element (r, c) at c·whole_rows + r. Otherwise they hold
  /// the part's rows alone, in C order.
  bool column_major = false;
};

/// Decodes a part's values from `bytes` into out (rows × cols, C order) over
/// every core, each thread a range of rows, and finds the first NaN or
/// infinity in the same pass (block by block, while the block is in cache).
/// Returns its index in `out`, or −1. A thread stops at its first bad value;
/// the lowest one over the threads is the answer, as with every core.
template <typename Out>
std::int64_t decode_rows(const unsigned char* bytes, const Dtype& dtype, const Layout& layout, Out* out) {
  const bool swap = dtype.swapped();
  const std::int64_t cols = layout.cols;
  const std::int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::int64_t> first_bad(static_cast<std::size_t>(cores), -1);
  visit_dtype(dtype, [&](auto element) {
    using T = decltype(element);
    constexpr std::int64_t kBlockValues = 4096;
    // Column-major rows come 64 at a time: each column's run is contiguous.
    const std::int64_t block_rows =
        layout.column_major ? 64 : std::max<std::int64_t>(1, kBlockValues / std::max<std::int64_t>(cols, 1));
    detail::parallel_ranges(
        layout.rows,
        [&](std::int64_t part, std::int64_t begin, std::int64_t end) {
          for (std::int64_t r0 = begin; r0 < end; r0 += block_rows) {
            const std::int64_t r1 = std::min(end, r0 + block_rows);
            Out* dst = out + r0 * cols;
            if (!layout.column_major) {
              const unsigned char* src = bytes + static_cast<std::size_t>(r0 * cols) * sizeof(T);
              for (std::int64_t j = 0; j < (r1 - r0) * cols; ++j) {
                dst[j] = static_cast<Out>(load_element<T>(src + static_cast<std::size_t>(j) * sizeof(T), swap));
              }
            } else {
              for (std::int64_t c = 0; c < cols; ++c) {
                const unsigned char* src =
                    bytes + static_cast<std::size_t>(c * layout.whole_rows + layout.first_row + r0) * sizeof(T);
                for (std::int64_t r = 0; r < r1 - r0; ++r) {
                  dst[r * cols + c] = static_cast<Out>(load_element<T>(src + static_cast<std::size_t>(r) * sizeof(T), swap));
                }
              }
            }
            if constexpr (std::is_floating_point_v<T>) {
              const std::int64_t bad = detail::first_non_finite_serial(dst, (r1 - r0) * cols);
              if (bad >= 0) {
                first_bad[static_cast<std::size_t>(part)] = r0 * cols + bad;
                return;
              }
            }
          }
        },
        std::max<std::int64_t>(1, detail::kParallelGrain / std::max<std::int64_t>(cols, 1)));
  });
  for (const std::int64_t index : first_bad) {
    if (index >= 0) return index;
  }
  return -1;
}

/// A part of a file's rows and the bytes that hold them.
struct PartBytes {
  NpyFile npy;
  RowSpan rows;
  Layout layout;
  DataBytes bytes;
};

/// Opens `path` and maps (or reads) the bytes of part `part` of `parts` of its
/// rows: only the part's own for C order, the whole array for Fortran order.
/// A pipe read whole must end with the data.
PartBytes part_bytes(const std::filesystem::path& path, int part, int parts) {
  PartBytes result{open_npy(path), {}, {}, {}};
  NpyFile& npy = result.npy;
  const std::vector<std::int64_t>& shape = npy.header.shape;
  const std::int64_t whole_rows = shape[0];
  result.rows = split_rows(whole_rows, part, parts);
  Layout& layout = result.layout;
  layout.rows = result.rows.count;
  layout.cols = npy.row_elements;
  layout.whole_rows = whole_rows;
  layout.first_row = result.rows.first;
  // A Fortran-order vector, one row or one column lies as in C order.
  layout.column_major = npy.header.fortran_order && shape.size() == 2 && shape[0] > 1 && shape[1] > 1;
  const auto size = static_cast<std::uint64_t>(npy.dtype.size);
  const std::uint64_t first =
      layout.column_major ? 0 : static_cast<std::uint64_t>(result.rows.first * layout.cols) * size;
  const std::uint64_t length = layout.column_major
                                   ? npy.data_bytes
                                   : static_cast<std::uint64_t>(result.rows.count * layout.cols) * size;
  std::optional<DataBytes> mapped;
  if (npy.regular && length > 0) mapped = map_bytes(npy, path, first, length);
  result.bytes = mapped ? std::move(*mapped) : stream_bytes(npy, path, first, length);
  if (!mapped && parts == 1 && npy.file.peek() != std::ifstream::traits_type::eof()) {
    throw InputError(quoted(path) + " has bytes after the " + std::to_string(npy.data_bytes) +
                     " data bytes that shape " + shape_tuple(shape) + " of '" + npy.header.descr +
                     "' needs");
  }
  return result;
}

}  // namespace

Array read_npy(const std::filesystem::path& path) { return read_npy_part(path, 0, 1).array; }

ArrayPart read_npy_part(const std::filesystem::path& path, int part, int parts) {
  PartBytes source = part_bytes(path, part, parts);
  ArrayPart result;
  result.whole_rows = source.layout.whole_rows;
  result.first_row = source.rows.first;
  Array& array = result.array;
  array.shape = source.npy.header.shape;
  array.shape[0] = source.rows.count;
  array.integral_dtype = source.npy.dtype.kind != 'f';
  array.values.resize(static_cast<std::size_t>(source.rows.count * source.layout.cols));
  decode_rows(source.bytes.data, source.npy.dtype, source.layout, array.values.data());
  return result;
}

namespace detail {

NpyRows map_npy_rows(const std::filesystem::path& path, int part, int parts) {
  PartBytes source = part_bytes(path, part, parts);
  const Dtype& dtype = source.npy.dtype;
  const std::int64_t count = source.rows.count * source.layout.cols;
  NpyRows rows;
  rows.shape = source.npy.header.shape;
  rows.shape[0] = source.rows.count;
  rows.first_row = source.rows.first;
  rows.whole_rows = source.layout.whole_rows;
  rows.integral_dtype = dtype.kind != 'f';
  const bool float32 = dtype.kind == 'f' && dtype.size == 4;
  rows.values.type = float32 ? ElementType::float32 : ElementType::float64;
  rows.values.rows = source.rows.count;
  rows.values.cols = source.layout.cols;
  rows.values.row_stride = source.layout.cols;
  const unsigned char* bytes = source.bytes.data;
  // The file's bytes are the values when they are floats in this host's
  // order, row by row, and aligned (NumPy pads the header to 64 bytes; a
  // hand-made header of odd length leaves the data unaligned: decoded).
  const bool in_place = dtype.kind == 'f' && !dtype.swapped() && !source.layout.column_major &&
                        reinterpret_cast<std::uintptr_t>(bytes) % static_cast<std::uintptr_t>(dtype.size) == 0;
  auto fill = [&](auto* typed) {
    using Out = std::remove_const_t<std::remove_pointer_t<decltype(typed)>>;
    if (in_place) {
      const auto* values = reinterpret_cast<const Out*>(bytes);
      rows.values.data = values;
      rows.owner = std::move(source.bytes.owner);
      rows.in_place = true;
      rows.first_non_finite = detail::first_non_finite(values, count);
      return;
    }
    // Uninitialised: every element is written by the decode.
    std::shared_ptr<Out[]> storage(new Out[static_cast<std::size_t>(std::max<std::int64_t>(count, 1))]);
    rows.first_non_finite = decode_rows(bytes, dtype, source.layout, storage.get());
    rows.values.data = storage.get();
    rows.owner = std::shared_ptr<const void>(storage, storage.get());
  };
  if (float32) {
    fill(static_cast<float*>(nullptr));
  } else {
    fill(static_cast<double*>(nullptr));
  }
  return rows;
}

}  // namespace detail

void write_npy(const std::filesystem::path& path, const std::vector<std::int64_t>& shape,
               const std::vector<double>& values) {
  std::int64_t count = 1;
  for (const std::int64_t dim : shape) {
    if (dim < 0) throw std::invalid_argument("write_npy: shape " + shape_tuple(shape) +
                                             " has a negative dimension");
    count *= dim;
  }
  if (count != static_cast<std::int64_t>(values.size())) {
    throw std::invalid_argument("write_npy: shape " + shape_tuple(shape) + " needs " +
                                std::to_string(count) + " values but " +
                                std::to_string(values.size()) + " were given");
  }

  std::string dict = "{'descr': '<f8', 'fortran_order': False, 'shape': " + shape_tuple(shape) +
                     ", }";
  // The spec pads with spaces and ends with '\n' so the data starts on a
  // 64-byte boundary (lets readers memory-map it aligned).
  const std::size_t unpadded = kPreambleSize + 2 + dict.size() + 1;
  const std::size_t header_size = dict.size() + (64 - unpadded % 64) % 64 + 1;
  if (header_size > std::numeric_limits<std::uint16_t>::max()) {
    throw std::invalid_argument("write_npy: shape " + shape_tuple(shape) +
                                " has too many dimensions for a version 1.0 header");
  }
  dict.resize(header_size - 1, ' ');
  dict += '\n';

  std::string contents;
  contents.reserve(kPreambleSize + 2 + header_size + values.size() * 8);
  contents += kMagic;
  contents += '\x01';
  contents += '\x00';
  contents += static_cast<char>(header_size & 0xff);
  contents += static_cast<char>(header_size >> 8);
  contents += dict;
  for (const double value : values) {
    const auto bits = std::bit_cast<std::uint64_t>(value);
    for (int byte = 0; byte < 8; ++byte) contents += static_cast<char>((bits >> (8 * byte)) & 0xff);
  }
  write_file_atomic(path, contents);
}

}  // namespace gradnoise
