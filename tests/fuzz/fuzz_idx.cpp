// libFuzzer target: gradnoise::read_idx on arbitrary bytes, plain and gzipped.
// The input is read as it is (a gzip stream when it starts with gzip's magic
// number, so corrupt compressed data is fuzzed too); an input that is not
// gzip is also compressed here and read again, and both reads must agree: the
// same array, or both an error. Checks what io.hpp promises of an array: 1-D
// or 2-D, a value for every element, bytes (integers in 0..255).
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "fuzz_util.hpp"
#include "gradnoise/io.hpp"

using namespace gradnoise;

namespace {

void check_array(const Array& array, const std::string& what) {
  GRADNOISE_FUZZ_CHECK(array.shape.size() == 1 || array.shape.size() == 2,
                       what + " returned " + std::to_string(array.shape.size()) + " dims");
  std::uint64_t count = 1;
  for (const std::int64_t dim : array.shape) {
    GRADNOISE_FUZZ_CHECK(dim >= 0, what + " returned a negative dimension");
    count *= static_cast<std::uint64_t>(dim);
  }
  GRADNOISE_FUZZ_CHECK(count == array.values.size(), what + " returned a shape whose product is " +
                                                         std::to_string(count) + " with " +
                                                         std::to_string(array.values.size()) +
                                                         " values");
  GRADNOISE_FUZZ_CHECK(array.integral_dtype, what + " returned a non-integral array");
  for (const double value : array.values) {
    GRADNOISE_FUZZ_CHECK(value >= 0 && value <= 255 && value == static_cast<int>(value),
                         what + " returned the value " + std::to_string(value));
  }
}

/// `size` bytes as a gzip stream (zlib's deflate with a gzip wrapper).
std::string gzip(const std::uint8_t* data, std::size_t size) {
  z_stream stream{};
  if (deflateInit2(&stream, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    fuzz::finding("deflateInit2 failed");
  }
  std::string out(deflateBound(&stream, size), '\0');
  stream.next_in = const_cast<Bytef*>(data);
  stream.avail_in = static_cast<uInt>(size);
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  const int status = deflate(&stream, Z_FINISH);
  deflateEnd(&stream);
  if (status != Z_STREAM_END) fuzz::finding("deflate did not finish");
  out.resize(stream.total_out);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const bool is_gzip = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
  const std::filesystem::path path =
      fuzz::scratch_dir() / (is_gzip ? "input-idx1-ubyte.gz" : "input-idx1-ubyte");
  fuzz::write_bytes(path, data, size);

  std::optional<Array> plain;
  fuzz::returns_or_reports("read_idx", [&] { plain = read_idx(path); });
  if (plain) check_array(*plain, is_gzip ? "read_idx (gzip input)" : "read_idx");
  // A file starting with 0x1f may be taken for gzip once more bytes follow.
  if (is_gzip || (size >= 1 && data[0] == 0x1f)) return 0;

  const std::filesystem::path gz_path = fuzz::scratch_dir() / "input-idx1-ubyte.gz";
  fuzz::write_bytes(gz_path, gzip(data, size));
  std::optional<Array> unzipped;
  fuzz::returns_or_reports("read_idx (gzipped)", [&] { unzipped = read_idx(gz_path); });
  GRADNOISE_FUZZ_CHECK(plain.has_value() == unzipped.has_value(),
                       std::string("read_idx ") + (plain ? "accepted" : "refused") +
                           " the plain file but " + (unzipped ? "accepted" : "refused") +
                           " the same bytes gzipped");
  if (plain) {
    check_array(*unzipped, "read_idx (gzipped)");
    GRADNOISE_FUZZ_CHECK(plain->shape == unzipped->shape && plain->values == unzipped->values,
                         "read_idx gave different arrays for the plain and gzipped file");
  }
  return 0;
}
