// NumPy .npy files (format versions 1.0, 2.0 and 3.0), as specified in
// numpy/lib/format.py: a magic string, a version, a little-endian header
// length, a Python-literal dict with 'descr', 'fortran_order' and 'shape', and
// the raw array bytes. Values are decoded byte by byte, so the reader gives the
// same result on a big-endian host. Regular files are read by every core at
// once (pread of disjoint ranges); pipes in order.

#include <array>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fcntl.h>
#include <unistd.h>

#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"
#include "parallel_scan.hpp"
#include "text.hpp"

namespace gradnoise {
namespace {

constexpr std::string_view kMagic = "\x93NUMPY";
constexpr std::size_t kPreambleSize = 8;         // magic + major + minor
constexpr std::size_t kMaxHeaderSize = 1 << 20;  // real headers are < 1 KiB; guards garbage
constexpr std::string_view kSupportedDtypes = "<f4, <f8, <i1, <i2, <i4, <i8, |u1 or <u2";

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

/// The element types we decode, by NumPy kind letter and size in bytes.
struct Dtype {
  char kind = 'f';  // 'f' float, 'i' signed integer, 'u' unsigned integer
  int size = 8;

  double decode(const unsigned char* bytes) const {
    switch (kind) {
      case 'f':
        return size == 4 ? std::bit_cast<float>(load_little_endian<std::uint32_t>(bytes))
                         : std::bit_cast<double>(load_little_endian<std::uint64_t>(bytes));
      case 'i':
        switch (size) {
          case 1: return static_cast<std::int8_t>(bytes[0]);
          case 2: return static_cast<std::int16_t>(load_little_endian<std::uint16_t>(bytes));
          case 4: return static_cast<std::int32_t>(load_little_endian<std::uint32_t>(bytes));
          default:
            return static_cast<double>(
                static_cast<std::int64_t>(load_little_endian<std::uint64_t>(bytes)));
        }
      default:
        return size == 1 ? bytes[0] : load_little_endian<std::uint16_t>(bytes);
    }
  }
};

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
  const Dtype dtype{kind, std::stoi(size_text)};
  // Byte order only matters for multi-byte types; NumPy writes '|' for bytes.
  if (dtype.size > 1 && order == '>') {
    throw InputError(quoted(path) + " has dtype '" + descr +
                     "', which is big-endian; expected little-endian '<" + descr.substr(1) +
                     "' (convert with array.astype('<" + descr.substr(1) + "'))");
  }
  if (dtype.size > 1 && order != '<') throw unsupported(", whose byte order is not explicit");
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
  if (header.fortran_order) {
    throw InputError(quoted(path) + " is stored in Fortran (column-major) order; expected C order "
                     "(save it with numpy.ascontiguousarray)");
  }
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

constexpr std::size_t kChunkElements = 1 << 16;

/// Reads `bytes` bytes at `offset` of `fd` into `out`; returns how many there
/// were (fewer at the end of the file).
std::uint64_t pread_fully(int fd, unsigned char* out, std::uint64_t bytes, std::uint64_t offset,
                          const std::filesystem::path& path) {
  std::uint64_t done = 0;
  while (done < bytes) {
    const ssize_t got = ::pread(fd, out + done, static_cast<std::size_t>(bytes - done),
                                static_cast<off_t>(offset + done));
    if (got == 0) break;
    if (got < 0) {
      if (errno == EINTR) continue;
      throw InputError("cannot read " + quoted(path) + " (" + std::strerror(errno) + ")");
    }
    done += static_cast<std::uint64_t>(got);
  }
  return done;
}

/// Decodes values.size() elements, the first at data byte `bytes_before`,
/// with every core when the file is a regular one (each thread reads its own
/// range with pread and decodes it; float64 on a little-endian host lands in
/// place). Returns false, reading nothing, for anything else (a pipe).
bool read_values_parallel(NpyFile& npy, const std::filesystem::path& path,
                          std::uint64_t bytes_before, std::vector<double>& values) {
  const auto count = static_cast<std::int64_t>(values.size());
  if (!npy.regular || count < detail::kParallelGrain) return false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  const auto size = static_cast<std::uint64_t>(npy.dtype.size);
  const std::uint64_t base = npy.data_offset + bytes_before;
  const bool in_place = npy.dtype.kind == 'f' && size == 8 && std::endian::native == std::endian::little;
  detail::parallel_ranges(count, [&](std::int64_t, std::int64_t begin, std::int64_t end) {
    std::vector<unsigned char> chunk(in_place ? 0 : kChunkElements * size);
    for (std::int64_t first = begin; first < end; first += static_cast<std::int64_t>(kChunkElements)) {
      const auto elements =
          static_cast<std::uint64_t>(std::min<std::int64_t>(kChunkElements, end - first));
      unsigned char* out =
          in_place ? reinterpret_cast<unsigned char*>(values.data() + first) : chunk.data();
      const std::uint64_t at = static_cast<std::uint64_t>(first) * size;
      const std::uint64_t got = pread_fully(fd, out, elements * size, base + at, path);
      if (got < elements * size) throw npy_truncated(path, npy, bytes_before + at + got);
      if (!in_place) {
        for (std::uint64_t i = 0; i < elements; ++i) {
          values[static_cast<std::size_t>(first) + i] = npy.dtype.decode(chunk.data() + i * size);
        }
      }
    }
  });
  npy.file.seekg(static_cast<std::streamoff>(base + static_cast<std::uint64_t>(count) * size));
  return true;
}

/// Decodes `values.size()` elements from the file's current position, which
/// is data byte `bytes_before`.
void read_values(NpyFile& npy, const std::filesystem::path& path, std::uint64_t bytes_before,
                 std::vector<double>& values) {
  if (read_values_parallel(npy, path, bytes_before, values)) return;
  const auto size = static_cast<std::size_t>(npy.dtype.size);
  std::vector<unsigned char> chunk(kChunkElements * size);
  std::uint64_t bytes_read = bytes_before;
  for (std::size_t first = 0; first < values.size(); first += kChunkElements) {
    const std::size_t elements = std::min(kChunkElements, values.size() - first);
    const auto wanted = static_cast<std::streamsize>(elements * size);
    npy.file.read(reinterpret_cast<char*>(chunk.data()), wanted);
    bytes_read += static_cast<std::uint64_t>(npy.file.gcount());
    if (npy.file.gcount() < wanted) throw npy_truncated(path, npy, bytes_read);
    for (std::size_t i = 0; i < elements; ++i) {
      values[first + i] = npy.dtype.decode(chunk.data() + i * size);
    }
  }
}

}  // namespace

Array read_npy(const std::filesystem::path& path) {
  NpyFile npy = open_npy(path);
  Array array;
  array.shape = npy.header.shape;
  array.integral_dtype = npy.dtype.kind != 'f';
  array.values.resize(static_cast<std::size_t>(npy.count));
  read_values(npy, path, 0, array.values);
  if (npy.file.peek() != std::ifstream::traits_type::eof()) {
    throw InputError(quoted(path) + " has bytes after the " + std::to_string(npy.data_bytes) +
                     " data bytes that shape " + shape_tuple(npy.header.shape) + " of '" +
                     npy.header.descr + "' needs");
  }
  return array;
}

ArrayPart read_npy_part(const std::filesystem::path& path, int part, int parts) {
  NpyFile npy = open_npy(path);
  ArrayPart result;
  result.whole_rows = npy.header.shape.empty() ? 1 : npy.header.shape[0];
  const RowSpan rows = split_rows(result.whole_rows, part, parts);
  result.first_row = rows.first;
  Array& array = result.array;
  array.shape = npy.header.shape;
  array.shape[0] = rows.count;
  array.integral_dtype = npy.dtype.kind != 'f';
  array.values.resize(static_cast<std::size_t>(rows.count * npy.row_elements));
  // Only this part's bytes are read: a seek to its first row.
  const std::uint64_t skipped = static_cast<std::uint64_t>(rows.first * npy.row_elements) *
                                static_cast<std::uint64_t>(npy.dtype.size);
  npy.file.seekg(static_cast<std::streamoff>(npy.data_offset + skipped));
  if (!npy.file) throw npy_truncated(path, npy, 0);
  read_values(npy, path, skipped, array.values);
  return result;
}

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
