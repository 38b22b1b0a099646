// File formats (.npy, CSV, IDX), atomic output, load_xy, Fashion-MNIST and
// the synthetic generator. Every rejection test checks the exception type and
// that the message names the offending file, since that sentence is what a
// CLI user sees.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "parallel_scan.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/report.hpp"
#include "io_npy.hpp"
#include "stored_data.hpp"
#include "text.hpp"

namespace gradnoise {
namespace {

namespace fs = std::filesystem;

/// A fresh directory per test, removed afterwards.
class IoTempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("gradnoise_test_" + std::string(info->test_suite_name()) +
                                        "_" + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  fs::path path(const std::string& name) const { return dir_ / name; }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream file(path, std::ios::binary);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(file.good()) << "could not write test file " << path;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

/// Runs `action` and returns the message of the `Error` it throws; records a
/// failure if it throws nothing or something else.
template <typename Error>
std::string error_message(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  } catch (const std::exception& other) {
    ADD_FAILURE() << "threw the wrong exception type: " << other.what();
    return {};
  }
  ADD_FAILURE() << "threw nothing";
  return {};
}

#define EXPECT_CONTAINS(text, needle) \
  EXPECT_NE(std::string(text).find(needle), std::string::npos) << "message: " << (text)

// ---- .npy files built byte by byte ------------------------------------------

template <typename Value>
void append_little_endian(std::string& bytes, Value value) {
  using Unsigned = std::conditional_t<
      sizeof(Value) == 1, std::uint8_t,
      std::conditional_t<sizeof(Value) == 2, std::uint16_t,
                         std::conditional_t<sizeof(Value) == 4, std::uint32_t, std::uint64_t>>>;
  const auto bits = std::bit_cast<Unsigned>(value);
  for (std::size_t byte = 0; byte < sizeof(Value); ++byte) {
    bytes += static_cast<char>((bits >> (8 * byte)) & 0xff);
  }
}

std::string npy_dict(const std::string& descr, const std::string& shape,
                     const std::string& fortran = "False") {
  return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
}

/// A complete .npy file: magic, version, header length, padded dict, data.
std::string npy_file(const std::string& dict, const std::string& data, int major = 1) {
  const std::size_t length_size = major == 1 ? 2 : 4;
  std::string header = dict;
  while ((8 + length_size + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string bytes = "\x93NUMPY";
  bytes += static_cast<char>(major);
  bytes += '\0';
  if (major == 1) {
    append_little_endian(bytes, static_cast<std::uint16_t>(header.size()));
  } else {
    append_little_endian(bytes, static_cast<std::uint32_t>(header.size()));
  }
  return bytes + header + data;
}

template <typename Value>
std::string npy_data(const std::vector<Value>& values) {
  std::string bytes;
  for (const Value value : values) append_little_endian(bytes, value);
  return bytes;
}

using IoNpy = IoTempDir;

TEST_F(IoNpy, RoundTripsFloat64In1DAnd2D) {
  const std::vector<double> values = {1.5, -2.25, 0.0, 1e-300, 3.0e300, -7.0};
  write_npy(path("matrix.npy"), {2, 3}, values);
  const Array matrix = read_npy(path("matrix.npy"));
  EXPECT_EQ(matrix.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(matrix.values, values);
  EXPECT_FALSE(matrix.integral_dtype);
  EXPECT_EQ(matrix.rows(), 2);
  EXPECT_EQ(matrix.cols(), 3);

  write_npy(path("vector.npy"), {6}, values);
  const Array vector = read_npy(path("vector.npy"));
  EXPECT_EQ(vector.shape, (std::vector<std::int64_t>{6}));
  EXPECT_EQ(vector.values, values);
  EXPECT_EQ(vector.cols(), 1);
}

TEST_F(IoNpy, WritesSpecCompliantVersion1Header) {
  write_npy(path("a.npy"), {2, 1}, {1.0, 2.0});
  const std::string bytes = read_bytes(path("a.npy"));
  ASSERT_GE(bytes.size(), 10u);
  EXPECT_EQ(bytes.substr(0, 6), "\x93NUMPY");
  EXPECT_EQ(bytes[6], '\x01');
  EXPECT_EQ(bytes[7], '\x00');
  const std::size_t header_size =
      static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
  EXPECT_EQ((10 + header_size) % 64, 0u) << "data must start on a 64-byte boundary";
  EXPECT_EQ(bytes[10 + header_size - 1], '\n');
  const std::string header = bytes.substr(10, header_size);
  EXPECT_CONTAINS(header, "'descr': '<f8'");
  EXPECT_CONTAINS(header, "'fortran_order': False");
  EXPECT_CONTAINS(header, "'shape': (2, 1)");
  EXPECT_EQ(bytes.size(), 10 + header_size + 2 * 8);
  EXPECT_EQ(listing(), std::vector<std::string>{"a.npy"}) << "no temp file may remain";
}

TEST_F(IoNpy, ReadsEveryDtype) {
  struct Case {
    std::string descr;
    std::string data;
    std::vector<double> expected;
    bool integral;
  };
  const std::vector<Case> cases = {
      {"<f4", npy_data<float>({1.5f, -2.0f, 0.25f, 3.0f}), {1.5, -2.0, 0.25, 3.0}, false},
      {"<f8", npy_data<double>({1.5, -2.0, 0.1, 3.0}), {1.5, -2.0, 0.1, 3.0}, false},
      {"<i4", npy_data<std::int32_t>({1, -2, 2147483647, -2147483647 - 1}),
       {1, -2, 2147483647.0, -2147483648.0}, true},
      {"<i8", npy_data<std::int64_t>({1, -2, 1LL << 40, -(1LL << 50)}),
       {1, -2, std::ldexp(1.0, 40), -std::ldexp(1.0, 50)}, true},
      {"|u1", npy_data<std::uint8_t>({0, 1, 200, 255}), {0, 1, 200, 255}, true},
      {"=u1", npy_data<std::uint8_t>({0, 1, 200, 255}), {0, 1, 200, 255}, true},
      {"|i1", npy_data<std::int8_t>({0, -1, 127, -128}), {0, -1, 127, -128}, true},
      {"<i2", npy_data<std::int16_t>({0, -1, 32767, -32768}), {0, -1, 32767, -32768}, true},
      {"<u2", npy_data<std::uint16_t>({0, 1, 65535, 300}), {0, 1, 65535, 300}, true},
  };
  for (const Case& test_case : cases) {
    SCOPED_TRACE(test_case.descr);
    const fs::path file = path("dtype.npy");
    write_bytes(file, npy_file(npy_dict(test_case.descr, "(2, 2)"), test_case.data));
    const Array array = read_npy(file);
    EXPECT_EQ(array.shape, (std::vector<std::int64_t>{2, 2}));
    EXPECT_EQ(array.values, test_case.expected);
    EXPECT_EQ(array.integral_dtype, test_case.integral);
  }
}

TEST_F(IoNpy, ReadsVersions2And3AndOneTupleShapes) {
  for (const int major : {2, 3}) {
    SCOPED_TRACE(major);
    write_bytes(path("v.npy"),
                npy_file(npy_dict("<f8", "(3,)"), npy_data<double>({1, 2, 3}), major));
    const Array array = read_npy(path("v.npy"));
    EXPECT_EQ(array.shape, (std::vector<std::int64_t>{3}));
    EXPECT_EQ(array.values, (std::vector<double>{1, 2, 3}));
  }
  // Key order is free and double quotes are valid Python literals.
  write_bytes(path("order.npy"),
              npy_file("{\"shape\": (1, 2), \"fortran_order\": False, \"descr\": \"<i4\"}",
                       npy_data<std::int32_t>({7, 8})));
  EXPECT_EQ(read_npy(path("order.npy")).values, (std::vector<double>{7, 8}));
}

/// The values of a big-endian file: each element's bytes reversed.
template <typename Value>
std::string npy_data_big_endian(const std::vector<Value>& values) {
  std::string bytes;
  for (const Value value : values) {
    std::string element;
    append_little_endian(element, value);
    bytes.append(element.rbegin(), element.rend());
  }
  return bytes;
}

/// rows×cols values in C order, stored column by column.
template <typename Value>
std::vector<Value> column_major(const std::vector<Value>& values, std::int64_t rows, std::int64_t cols) {
  std::vector<Value> out(values.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) out[c * rows + r] = values[r * cols + c];
  }
  return out;
}

TEST_F(IoNpy, ReadsFortranOrderAndBigEndianFiles) {
  const std::vector<double> values = {1.5, -2.25, 0.1, 1e-300, 3e300, -7.0};  // 2×3, C order
  const std::vector<float> floats = {1.5f, -2.25f, 0.1f, 1e-30f, 3e30f, -7.0f};
  std::vector<double> widened(floats.begin(), floats.end());
  const std::vector<std::int32_t> ints = {1, -2, 2147483647, -2147483647 - 1, 0, 65536};
  struct Case {
    std::string name;
    std::string file;
    std::vector<double> expected;
  };
  const std::vector<Case> cases = {
      {"<f8 Fortran", npy_file(npy_dict("<f8", "(2, 3)", "True"), npy_data(column_major(values, 2, 3))), values},
      {">f8", npy_file(npy_dict(">f8", "(2, 3)"), npy_data_big_endian(values)), values},
      {">f8 Fortran", npy_file(npy_dict(">f8", "(2, 3)", "True"),
                               npy_data_big_endian(column_major(values, 2, 3))), values},
      {">f4", npy_file(npy_dict(">f4", "(2, 3)"), npy_data_big_endian(floats)), widened},
      {"<f4 Fortran", npy_file(npy_dict("<f4", "(2, 3)", "True"), npy_data(column_major(floats, 2, 3))), widened},
      {">i4", npy_file(npy_dict(">i4", "(2, 3)"), npy_data_big_endian(ints)),
       {1, -2, 2147483647.0, -2147483648.0, 0, 65536}},
  };
  for (const Case& test_case : cases) {
    SCOPED_TRACE(test_case.name);
    write_bytes(path("x.npy"), test_case.file);
    const Array array = read_npy(path("x.npy"));
    EXPECT_EQ(array.shape, (std::vector<std::int64_t>{2, 3}));
    EXPECT_EQ(array.values, test_case.expected);
    // Each row alone, as two MPI ranks read them.
    for (int part = 0; part < 2; ++part) {
      const ArrayPart rows = read_npy_part(path("x.npy"), part, 2);
      EXPECT_EQ(rows.first_row, part);
      EXPECT_EQ(rows.array.values, std::vector<double>(test_case.expected.begin() + 3 * part,
                                                       test_case.expected.begin() + 3 * part + 3));
    }
    const detail::NpyRows mapped = detail::map_npy_rows(path("x.npy"));
    EXPECT_FALSE(mapped.in_place) << "these bytes are not the values: decoded";
    std::vector<double> got(6);
    copy_rows(mapped.values, 0, 2, got.data());
    EXPECT_EQ(got, test_case.expected);
  }
}

TEST_F(IoNpy, RejectsNativeByteOrderMarkOnMultiByteTypes) {
  const fs::path file = path("native.npy");
  write_bytes(file, npy_file(npy_dict("=f8", "(2,)"), std::string(16, '\0')));
  const std::string message = error_message<InputError>([&] { read_npy(file); });
  EXPECT_CONTAINS(message, file.string());
  EXPECT_CONTAINS(message, "byte order");
}

TEST_F(IoNpy, RejectsUnsupportedDtypes) {
  for (const std::string descr : {"<c16", "|O", "<f2", "|b1", "<u8", "<U5"}) {
    SCOPED_TRACE(descr);
    const fs::path file = path("dtype.npy");
    write_bytes(file, npy_file(npy_dict(descr, "(1,)"), std::string(16, '\0')));
    const std::string message = error_message<InputError>([&] { read_npy(file); });
    EXPECT_CONTAINS(message, file.string());
    EXPECT_CONTAINS(message, "'" + descr + "'");
  }
  const fs::path record = path("record.npy");
  write_bytes(record, npy_file("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }",
                               std::string(8, '\0')));
  EXPECT_CONTAINS(error_message<InputError>([&] { read_npy(record); }), record.string());
}

// Files of more than detail::kParallelGrain values are read by every core,
// each thread its own range of rows; the values must be those the sequential
// reader gives, every dtype, every element (the last thread's range ragged).
TEST_F(IoNpy, LargeFilesReadInParallelGiveEveryValue) {
  const std::int64_t rows = 3 * (detail::kParallelGrain / 7) + 5, cols = 7;
  const std::int64_t count = rows * cols;
  ASSERT_GT(count, 2 * detail::kParallelGrain);
  std::vector<double> f8(static_cast<std::size_t>(count));
  std::vector<float> f4(f8.size());
  std::vector<std::int16_t> i2(f8.size());
  for (std::int64_t j = 0; j < count; ++j) {
    f8[j] = std::sin(0.001 * static_cast<double>(j)) * 1e3 + 1e-9 * static_cast<double>(j);
    f4[j] = static_cast<float>(f8[j]);
    i2[j] = static_cast<std::int16_t>(j % 65536 - 32768);
  }
  const std::string shape = "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
  write_bytes(path("f8.npy"), npy_file(npy_dict("<f8", shape), npy_data<double>(f8)));
  write_bytes(path("f4.npy"), npy_file(npy_dict("<f4", shape), npy_data<float>(f4)));
  write_bytes(path("i2.npy"), npy_file(npy_dict("<i2", shape), npy_data<std::int16_t>(i2)));
  EXPECT_EQ(read_npy(path("f8.npy")).values, f8);
  const Array a4 = read_npy(path("f4.npy"));
  ASSERT_EQ(a4.values.size(), f4.size());
  for (std::size_t j = 0; j < f4.size(); ++j) {
    if (a4.values[j] != static_cast<double>(f4[j])) {
      ADD_FAILURE() << "f4 element " << j << ": " << a4.values[j] << " vs " << f4[j];
      break;
    }
  }
  const Array a2 = read_npy(path("i2.npy"));
  ASSERT_EQ(a2.values.size(), i2.size());
  EXPECT_TRUE(a2.integral_dtype);
  for (std::size_t j = 0; j < i2.size(); ++j) {
    if (a2.values[j] != static_cast<double>(i2[j])) {
      ADD_FAILURE() << "i2 element " << j << ": " << a2.values[j] << " vs " << i2[j];
      break;
    }
  }
  // A large file that ends early still names what is missing.
  const std::string whole = npy_file(npy_dict("<f8", shape), npy_data<double>(f8));
  write_bytes(path("cut.npy"), whole.substr(0, whole.size() - 8 * 1000));
  const std::string message = error_message<InputError>([&] { read_npy(path("cut.npy")); });
  EXPECT_CONTAINS(message, "truncated");
  EXPECT_CONTAINS(message, std::to_string(count * 8));  // bytes the shape needs
}

// ---- Memory-mapped rows (detail::map_npy_rows, io_npy.hpp) -------------------

/// The bytes of n values of T, for bit-for-bit comparisons (NaN == NaN, −0 ≠ 0).
template <typename T>
std::string bits_of(const void* values, std::int64_t n) {
  return std::string(static_cast<const char*>(values), static_cast<std::size_t>(n) * sizeof(T));
}

/// rows×cols values spread over many binades, with −0, a subnormal and the
/// largest finite value, as a float64 .npy would hold them.
std::vector<double> awkward_values(std::int64_t rows, std::int64_t cols) {
  std::vector<double> values(static_cast<std::size_t>(rows * cols));
  for (std::size_t j = 0; j < values.size(); ++j) {
    values[j] = std::ldexp(std::sin(static_cast<double>(j) * 0.37), static_cast<int>(j % 41) - 20);
  }
  values[1] = -0.0;
  values[2] = std::numeric_limits<double>::denorm_min();
  values[values.size() - 1] = std::numeric_limits<double>::max();
  return values;
}

// A NumPy-written float64 file (header padded to 64 bytes) is used where it
// lies: the mapped values are the file's bytes, identical to what was written,
// and to what read_npy decodes; parts map only their own rows.
TEST_F(IoNpy, MapsAlignedFloat64InPlaceBitForBit) {
  const std::int64_t rows = 2 * (detail::kParallelGrain / 5) + 3, cols = 5;
  const std::vector<double> values = awkward_values(rows, cols);
  const std::string shape = "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
  write_bytes(path("x.npy"), npy_file(npy_dict("<f8", shape), npy_data(values)));
  const detail::NpyRows mapped = detail::map_npy_rows(path("x.npy"));
  EXPECT_TRUE(mapped.in_place);
  EXPECT_EQ(mapped.values.type, ElementType::float64);
  EXPECT_EQ(mapped.values.rows, rows);
  EXPECT_EQ(mapped.values.cols, cols);
  EXPECT_EQ(mapped.first_non_finite, -1);
  EXPECT_EQ(bits_of<double>(mapped.values.data, rows * cols), bits_of<double>(values.data(), rows * cols));
  const Array decoded = read_npy(path("x.npy"));
  EXPECT_EQ(bits_of<double>(decoded.values.data(), rows * cols), bits_of<double>(values.data(), rows * cols));

  for (int part = 0; part < 3; ++part) {
    SCOPED_TRACE(part);
    const detail::NpyRows rows_part = detail::map_npy_rows(path("x.npy"), part, 3);
    const RowSpan span = split_rows(rows, part, 3);
    EXPECT_TRUE(rows_part.in_place);
    EXPECT_EQ(rows_part.first_row, span.first);
    EXPECT_EQ(rows_part.whole_rows, rows);
    EXPECT_EQ(rows_part.shape, (std::vector<std::int64_t>{span.count, cols}));
    EXPECT_EQ(bits_of<double>(rows_part.values.data, span.count * cols),
              bits_of<double>(values.data() + span.first * cols, span.count * cols));
  }
}

// float32 stays float32: mapped in place, and a StoredData over it hands the
// GPU's upload the floats as they are and the CPU engines float64 rows.
TEST_F(IoNpy, KeepsFloat32FilesFloat32) {
  const std::int64_t rows = 1000, cols = 3;
  const std::vector<double> wide = awkward_values(rows, cols);
  std::vector<float> values(wide.size());
  for (std::size_t j = 0; j + 1 < wide.size(); ++j) values[j] = static_cast<float>(wide[j]);
  values.back() = std::numeric_limits<float>::max();
  write_bytes(path("x.npy"), npy_file(npy_dict("<f4", "(1000, 3)"), npy_data(values)));
  write_npy(path("y.npy"), {rows}, std::vector<double>(static_cast<std::size_t>(rows), 0.5));
  const detail::NpyRows mapped = detail::map_npy_rows(path("x.npy"));
  EXPECT_TRUE(mapped.in_place);
  EXPECT_EQ(mapped.values.type, ElementType::float32);
  EXPECT_EQ(bits_of<float>(mapped.values.data, rows * cols), bits_of<float>(values.data(), rows * cols));

  const detail::StoredDataPart loaded =
      detail::load_xy_stored(path("x.npy"), path("y.npy"), Loss::squared, CsvHeader::automatic);
  const detail::StoredData& data = loaded.data;
  EXPECT_EQ(data.inputs().type, ElementType::float32);
  EXPECT_EQ(data.inputs_in_place(0, rows), nullptr) << "float32 rows are no float64 rows";
  const float* floats = data.inputs_in_place_float32(10, 5);
  ASSERT_NE(floats, nullptr);
  EXPECT_EQ(bits_of<float>(floats, 5 * cols), bits_of<float>(values.data() + 10 * cols, 5 * cols));
  std::vector<double> x(static_cast<std::size_t>(4 * cols)), y(4);
  data.read(997, 3, x.data(), y.data(), nullptr);
  for (std::int64_t j = 0; j < 3 * cols; ++j) {
    EXPECT_EQ(x[j], static_cast<double>(values[997 * cols + j])) << j;
  }
  EXPECT_EQ(y[0], 0.5);
}

// The rounding floor sums X² over float32 rows in place, on every core, in
// the fixed blocks of the float64 path: the same bits as from the widened copy.
TEST_F(IoNpy, RoundingFloorOfFloat32RowsEqualsTheirFloat64Copy) {
  const std::int64_t rows = detail::kParallelGrain / 2 + 7, cols = 3;  // more than one block
  std::vector<float> values(static_cast<std::size_t>(rows * cols));
  for (std::size_t j = 0; j < values.size(); ++j) {
    values[j] = static_cast<float>(std::sin(0.37 * static_cast<double>(j)) * (1 + j % 97));
  }
  write_bytes(path("x.npy"), npy_file(npy_dict("<f4", "(" + std::to_string(rows) + ", 3)"), npy_data(values)));
  write_npy(path("y.npy"), {rows}, std::vector<double>(static_cast<std::size_t>(rows), 0.5));
  const detail::StoredDataPart stored =
      detail::load_xy_stored(path("x.npy"), path("y.npy"), Loss::squared, CsvHeader::automatic);
  ASSERT_NE(stored.data.inputs_in_place_float32(0, rows), nullptr);
  const Dataset widened = load_xy(path("x.npy"), path("y.npy"), Loss::squared);
  EXPECT_EQ(rounding_grad_norm_sq(stored.data), rounding_grad_norm_sq(widened));
}

// A header of odd length (hand-made files; NumPy pads to 64 bytes) leaves the
// data unaligned: those values are decoded, never read through a misaligned
// pointer, and come out the same.
TEST_F(IoNpy, DecodesUnalignedData) {
  const std::vector<double> values = awkward_values(4, 3);
  std::vector<float> floats(values.size());
  for (std::size_t j = 0; j < values.size(); ++j) floats[j] = static_cast<float>(values[j]);
  for (const int extra : {1, 2, 3, 4, 5, 6, 7}) {
    SCOPED_TRACE(extra);
    for (const bool single : {false, true}) {
      const std::string dict = npy_dict(single ? "<f4" : "<f8", "(4, 3)");
      std::string header = dict;
      while ((10 + header.size() + 1) % 64 != static_cast<std::size_t>(extra)) header += ' ';
      header += '\n';
      std::string bytes = "\x93NUMPY\x01";
      bytes += '\0';
      append_little_endian(bytes, static_cast<std::uint16_t>(header.size()));
      bytes += header + (single ? npy_data(floats) : npy_data(values));
      write_bytes(path("odd.npy"), bytes);
      const detail::NpyRows mapped = detail::map_npy_rows(path("odd.npy"));
      const bool aligned = extra % (single ? 4 : 8) == 0;
      EXPECT_EQ(mapped.in_place, aligned);
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(mapped.values.data) % (single ? 4 : 8), 0u);
      if (single) {
        EXPECT_EQ(bits_of<float>(mapped.values.data, 12), bits_of<float>(floats.data(), 12));
      } else {
        EXPECT_EQ(bits_of<double>(mapped.values.data, 12), bits_of<double>(values.data(), 12));
      }
    }
  }
}

// The finiteness scan runs with the decode (or over the mapped pages) on
// every core: it must name the first bad value of the whole file, whichever
// thread's range holds it, for mapped, decoded and column-major files.
TEST_F(IoNpy, FindsTheFirstNonFiniteValueInAParallelScan) {
  const std::int64_t rows = 3 * (detail::kParallelGrain / 4) + 1, cols = 4;
  ASSERT_GT(rows * cols, 2 * detail::kParallelGrain);
  std::vector<double> values(static_cast<std::size_t>(rows * cols), 0.25);
  const std::int64_t bad_row = rows - 10, bad_col = 2;  // in the last thread's range
  values[static_cast<std::size_t>(bad_row * cols + bad_col)] = std::numeric_limits<double>::quiet_NaN();
  values[static_cast<std::size_t>((rows - 2) * cols)] = std::numeric_limits<double>::infinity();
  const std::string shape = "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
  std::vector<float> floats(values.begin(), values.end());
  struct Case {
    std::string name;
    std::string file;
    bool in_place;
  };
  const std::vector<Case> cases = {
      {"<f8", npy_file(npy_dict("<f8", shape), npy_data(values)), true},
      {"<f4", npy_file(npy_dict("<f4", shape), npy_data(floats)), true},
      {">f8", npy_file(npy_dict(">f8", shape), npy_data_big_endian(values)), false},
      {"<f8 Fortran", npy_file(npy_dict("<f8", shape, "True"), npy_data(column_major(values, rows, cols))), false},
  };
  write_npy(path("y.npy"), {rows}, std::vector<double>(static_cast<std::size_t>(rows), 1.0));
  for (const Case& test_case : cases) {
    SCOPED_TRACE(test_case.name);
    write_bytes(path("x.npy"), test_case.file);
    const detail::NpyRows mapped = detail::map_npy_rows(path("x.npy"));
    EXPECT_EQ(mapped.in_place, test_case.in_place);
    EXPECT_EQ(mapped.first_non_finite, bad_row * cols + bad_col);
    const std::string message = error_message<InputError>(
        [&] { detail::load_xy_stored(path("x.npy"), path("y.npy"), Loss::squared, CsvHeader::automatic); });
    EXPECT_CONTAINS(message, path("x.npy").string());
    EXPECT_CONTAINS(message, "non-finite value (nan) at row " + std::to_string(bad_row) + ", column 2");
    // A rank's part names the row in the whole file; the rank before it is clean.
    const std::string part_message = error_message<InputError>(
        [&] { detail::load_xy_stored(path("x.npy"), path("y.npy"), Loss::squared, CsvHeader::automatic, 1, 2); });
    EXPECT_CONTAINS(part_message, "at row " + std::to_string(bad_row) + ", column 2");
    EXPECT_EQ(detail::map_npy_rows(path("x.npy"), 0, 2).first_non_finite, -1);
  }
}

// The block test reads exponent bits: every NaN (quiet, signalling, either
// sign) and infinity is found wherever it sits in a block, and no finite
// value (the largest, subnormals, −0) is taken for one.
template <typename T>
void check_first_non_finite_serial() {
  using limits = std::numeric_limits<T>;
  std::vector<T> values(5000);
  for (std::size_t j = 0; j < values.size(); ++j) values[j] = static_cast<T>(j % 7) - T(3);
  values[0] = limits::max();
  values[1] = limits::lowest();
  values[2] = limits::denorm_min();
  values[3] = -T(0);
  EXPECT_EQ(detail::first_non_finite_serial(values.data(), 5000), -1);
  for (const T bad : {limits::quiet_NaN(), -limits::quiet_NaN(), limits::signaling_NaN(),
                      limits::infinity(), -limits::infinity()}) {
    for (const std::int64_t at : {0, 2047, 2048, 4999}) {
      std::vector<T> with = values;
      with[static_cast<std::size_t>(at)] = bad;
      with[4999] = at < 4999 ? limits::infinity() : with[4999];  // a later one must not win
      EXPECT_EQ(detail::first_non_finite_serial(with.data(), 5000), at) << bad << " at " << at;
      EXPECT_EQ(detail::first_non_finite(with.data(), 5000), at);
    }
  }
}

TEST(ParallelScan, FirstNonFiniteFindsEveryKindOfNonFiniteValue) {
  check_first_non_finite_serial<float>();
  check_first_non_finite_serial<double>();
}

// A mapped file cut short must be refused from its size before any page is
// touched (touching a page past the end would be SIGBUS), for the whole file
// and for the part of a rank whose rows run past the end.
TEST_F(IoNpy, RefusesTruncatedFilesBeforeMappingThem) {
  const std::int64_t rows = 20000, cols = 8;
  const std::string whole = npy_file(npy_dict("<f8", "(20000, 8)"),
                                     npy_data(std::vector<double>(static_cast<std::size_t>(rows * cols), 1.0)));
  write_bytes(path("cut.npy"), whole.substr(0, whole.size() - 4096 * 3 - 8));
  for (int part = 0; part < 2; ++part) {
    SCOPED_TRACE(part);
    const std::string message =
        error_message<InputError>([&] { detail::map_npy_rows(path("cut.npy"), part, 2); });
    EXPECT_CONTAINS(message, path("cut.npy").string());
    EXPECT_CONTAINS(message, "truncated");
    EXPECT_CONTAINS(message, std::to_string(rows * cols * 8));
  }
}

// The library's load_xy gives a Dataset whatever the X file's layout: the
// same values from a mapped float64 file, a float32 one (widened) and a
// decoded big-endian one.
TEST_F(IoNpy, LoadXyGivesTheSameDatasetFromEveryLayout) {
  const std::vector<double> values = awkward_values(6, 2);
  write_npy(path("y.npy"), {6}, {0, 1, 2, 0, 1, 2});
  write_bytes(path("le.npy"), npy_file(npy_dict("<f8", "(6, 2)"), npy_data(values)));
  write_bytes(path("be.npy"), npy_file(npy_dict(">f8", "(6, 2)", "True"),
                                       npy_data_big_endian(column_major(values, 6, 2))));
  for (const char* name : {"le.npy", "be.npy"}) {
    SCOPED_TRACE(name);
    const Dataset data = load_xy(path(name), path("y.npy"), Loss::cross_entropy);
    EXPECT_EQ(bits_of<double>(data.x.data(), 12), bits_of<double>(values.data(), 12));
    EXPECT_EQ(data.labels, (std::vector<std::int32_t>{0, 1, 2, 0, 1, 2}));
    EXPECT_EQ(data.k, 3);
  }
  std::vector<float> floats(values.begin(), values.end() - 1);
  floats.push_back(std::numeric_limits<float>::max());
  write_bytes(path("f4.npy"), npy_file(npy_dict("<f4", "(6, 2)"), npy_data(floats)));
  const Dataset data = load_xy(path("f4.npy"), path("y.npy"), Loss::cross_entropy);
  for (std::size_t j = 0; j < 12; ++j) EXPECT_EQ(data.x[j], static_cast<double>(floats[j])) << j;
}

TEST_F(IoNpy, RejectsTruncatedAndOverlongData) {
  const fs::path truncated = path("short.npy");
  write_bytes(truncated, npy_file(npy_dict("<f8", "(3, 4)"), npy_data<double>({1, 2, 3, 4, 5})));
  std::string message = error_message<InputError>([&] { read_npy(truncated); });
  EXPECT_CONTAINS(message, truncated.string());
  EXPECT_CONTAINS(message, "truncated");
  EXPECT_CONTAINS(message, "96");  // bytes the shape needs
  EXPECT_CONTAINS(message, "40");  // bytes present

  const fs::path header_cut = path("header_cut.npy");
  write_bytes(header_cut, npy_file(npy_dict("<f8", "(1,)"), "").substr(0, 30));
  EXPECT_CONTAINS(error_message<InputError>([&] { read_npy(header_cut); }), header_cut.string());

  const fs::path overlong = path("long.npy");
  write_bytes(overlong, npy_file(npy_dict("<f8", "(2,)"), npy_data<double>({1, 2, 3})));
  EXPECT_CONTAINS(error_message<InputError>([&] { read_npy(overlong); }), overlong.string());
}

TEST_F(IoNpy, RejectsWrongMagic) {
  const fs::path file = path("magic.npy");
  std::string bytes = npy_file(npy_dict("<f8", "(1,)"), npy_data<double>({1}));
  bytes[1] = 'X';
  write_bytes(file, bytes);
  const std::string message = error_message<InputError>([&] { read_npy(file); });
  EXPECT_CONTAINS(message, file.string());
  EXPECT_CONTAINS(message, "magic");

  const fs::path csv_named_npy = path("text.npy");
  write_bytes(csv_named_npy, "1,2,3\n");
  EXPECT_CONTAINS(error_message<InputError>([&] { read_npy(csv_named_npy); }),
                  csv_named_npy.string());
}

TEST_F(IoNpy, RejectsMissingFileAndDirectory) {
  const fs::path missing = path("missing.npy");
  std::string message = error_message<InputError>([&] { read_npy(missing); });
  EXPECT_CONTAINS(message, missing.string());
  EXPECT_CONTAINS(message, "does not exist");
  EXPECT_CONTAINS(error_message<InputError>([&] { read_npy(dir_); }), dir_.string());
}

TEST_F(IoNpy, RejectsMalformedHeaders) {
  const std::vector<std::string> dicts = {
      "{'descr': '<f8', 'fortran_order': False}",                       // no shape
      "{'descr': '<f8', 'fortran_order': Maybe, 'shape': (1,), }",      // bad bool
      "{'descr': '<f8', 'fortran_order': False, 'shape': (1, x), }",    // bad dim
      "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }",     // negative dim
      "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
      "'descr': '<f8'",                                                 // not a dict
      "{'descr': '<f8' 'fortran_order': False, 'shape': (1,)}",         // missing comma
  };
  for (const std::string& dict : dicts) {
    SCOPED_TRACE(dict);
    const fs::path file = path("header.npy");
    write_bytes(file, npy_file(dict, npy_data<double>({1})));
    const std::string message = error_message<InputError>([&] { read_npy(file); });
    EXPECT_CONTAINS(message, file.string());
    EXPECT_CONTAINS(message, "header");
  }
  const fs::path version = path("version.npy");
  std::string bytes = npy_file(npy_dict("<f8", "(1,)"), npy_data<double>({1}));
  bytes[6] = '\x04';
  write_bytes(version, bytes);
  EXPECT_CONTAINS(error_message<InputError>([&] { read_npy(version); }), "version 4.0");
}

TEST_F(IoNpy, AcceptsOnlyOneAndTwoDimensions) {
  const fs::path scalar = path("scalar.npy");
  write_bytes(scalar, npy_file(npy_dict("<f8", "()"), npy_data<double>({1})));
  std::string message = error_message<InputError>([&] { read_npy(scalar); });
  EXPECT_CONTAINS(message, scalar.string());
  EXPECT_CONTAINS(message, "1-D or 2-D");

  const fs::path cube = path("cube.npy");
  write_bytes(cube, npy_file(npy_dict("<f8", "(1, 1, 2)"), npy_data<double>({1, 2})));
  message = error_message<InputError>([&] { read_npy(cube); });
  EXPECT_CONTAINS(message, cube.string());
  EXPECT_CONTAINS(message, "(1, 1, 2)");
}

TEST_F(IoNpy, EscapesHeaderTextInMessages) {
  const fs::path key = path("key.npy");
  write_bytes(key, npy_file(std::string("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), "
                                        "'a\x1b]0;x") + '\0' + "b': 1}",
                            npy_data<double>({1})));
  std::string message = error_message<InputError>([&] { read_npy(key); });
  EXPECT_CONTAINS(message, key.string());
  EXPECT_CONTAINS(message, "unexpected key 'a\\x1b]0;x\\x00b'");

  const fs::path dtype = path("dtype.npy");
  write_bytes(dtype, npy_file(npy_dict("<f\r\n8", "(1,)"), npy_data<double>({1})));
  message = error_message<InputError>([&] { read_npy(dtype); });
  EXPECT_CONTAINS(message, "dtype '<f\\r\\n8'");
}

// ---- CSV ---------------------------------------------------------------------

using IoCsv = IoTempDir;

TEST_F(IoCsv, ReadsWithoutHeader) {
  write_bytes(path("a.csv"), "1,2,3\n4,5,6\n");
  const Array array = read_csv(path("a.csv"));
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(array.values, (std::vector<double>{1, 2, 3, 4, 5, 6}));
  EXPECT_TRUE(array.integral_dtype);
}

TEST_F(IoCsv, ReadsWithHeaderSpacesCrlfAndTrailingBlankLines) {
  write_bytes(path("a.csv"), "x0, x1 ,label\r\n 0.5 , -1e-3, +2\r\n1.25,2,  3\r\n\r\n\n");
  const Array array = read_csv(path("a.csv"));
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(array.values, (std::vector<double>{0.5, -1e-3, 2, 1.25, 2, 3}));
  EXPECT_FALSE(array.integral_dtype);
}

TEST_F(IoCsv, KeepsOneColumnAsRowsByOne) {
  write_bytes(path("y.csv"), "label\n3\n0\n1");  // no final newline
  const Array array = read_csv(path("y.csv"));
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{3, 1}));
  EXPECT_EQ(array.values, (std::vector<double>{3, 0, 1}));
  EXPECT_TRUE(array.integral_dtype);
}

TEST_F(IoCsv, IgnoresUtf8ByteOrderMark) {
  write_bytes(path("bom.csv"), "\xEF\xBB\xBF" "1,2\n3,4\n");
  EXPECT_EQ(read_csv(path("bom.csv")).shape, (std::vector<std::int64_t>{2, 2}));
}

TEST_F(IoCsv, RejectsRaggedRowsNamingFileAndLine) {
  const fs::path file = path("ragged.csv");
  write_bytes(file, "a,b\n1,2\n3,4\n5\n");
  const std::string message = error_message<InputError>([&] { read_csv(file); });
  EXPECT_CONTAINS(message, file.string());
  EXPECT_CONTAINS(message, "line 4");
}

TEST_F(IoCsv, RejectsNonFiniteNamingLineAndColumn) {
  for (const std::string value : {"nan", "NaN", "inf", "-Infinity"}) {
    SCOPED_TRACE(value);
    const fs::path file = path("nan.csv");
    write_bytes(file, "1,2\n3," + value + "\n");
    const std::string message = error_message<InputError>([&] { read_csv(file); });
    EXPECT_CONTAINS(message, file.string());
    EXPECT_CONTAINS(message, "line 2, column 2");
    EXPECT_CONTAINS(message, "finite");
  }
}

TEST_F(IoCsv, RejectsTextInDataEmptyFilesAndHeaderOnly) {
  const fs::path text = path("text.csv");
  write_bytes(text, "1,2\n3,abc\n");
  std::string message = error_message<InputError>([&] { read_csv(text); });
  EXPECT_CONTAINS(message, text.string());
  EXPECT_CONTAINS(message, "line 2, column 2");
  EXPECT_CONTAINS(message, "abc");

  const fs::path gap = path("gap.csv");
  write_bytes(gap, "1,2\n\n3,4\n");
  EXPECT_CONTAINS(error_message<InputError>([&] { read_csv(gap); }), "line 2");

  const fs::path empty = path("empty.csv");
  write_bytes(empty, "\n \n");
  EXPECT_CONTAINS(error_message<InputError>([&] { read_csv(empty); }), empty.string());

  const fs::path header_only = path("header.csv");
  write_bytes(header_only, "a,b\n");
  EXPECT_CONTAINS(error_message<InputError>([&] { read_csv(header_only); }), header_only.string());

  const fs::path missing = path("missing.csv");
  EXPECT_CONTAINS(error_message<InputError>([&] { read_csv(missing); }), missing.string());
}

TEST_F(IoCsv, OverflowIsAnErrorEvenInTheFirstLine) {
  // A first line of numbers, one beyond float64's range, used to be taken for
  // a header and dropped without a word.
  const fs::path first = path("first.csv");
  write_bytes(first, "1e999,2\n3,4\n");
  std::string message = error_message<InputError>([&] { read_csv(first); });
  EXPECT_CONTAINS(message, first.string());
  EXPECT_CONTAINS(message, "line 1, column 1");
  EXPECT_CONTAINS(message, "\"1e999\"");
  EXPECT_CONTAINS(message, "is beyond float64's range (±1.8e308)");

  for (const std::string value : {"-1e999", "1000e306", "1e400000000000000000000", "+2e308"}) {
    SCOPED_TRACE(value);
    const fs::path later = path("later.csv");
    write_bytes(later, "1,2\n3," + value + "\n");
    message = error_message<InputError>([&] { read_csv(later); });
    EXPECT_CONTAINS(message, later.string());
    EXPECT_CONTAINS(message, "line 2, column 2");
    EXPECT_CONTAINS(message, value);
    EXPECT_CONTAINS(message, "beyond float64's range");
  }
}

TEST_F(IoCsv, UnderflowReadsAsTheNearestDoubleInEveryLine) {
  // 1e-400 in the first line used to make it a header, and later "not a number".
  write_bytes(path("tiny.csv"), "1e-400,2\n3,-1e-400\n1e-310,4.9e-324\n0.00001e-320,2e-324\n");
  const Array array = read_csv(path("tiny.csv"));
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{4, 2}));
  ASSERT_EQ(array.values.size(), 8u);
  EXPECT_EQ(array.values[0], 0.0);
  EXPECT_EQ(array.values[1], 2.0);
  EXPECT_EQ(array.values[3], 0.0);
  EXPECT_TRUE(std::signbit(array.values[3]));  // the nearest double to -1e-400 is -0
  EXPECT_EQ(array.values[4], 1e-310);          // subnormals are kept
  EXPECT_EQ(array.values[5], std::numeric_limits<double>::denorm_min());
  EXPECT_EQ(array.values[6], 0.0);
  EXPECT_EQ(array.values[7], 0.0);
}

TEST_F(IoCsv, HeaderModeSaysWhetherTheFirstLineIsAHeader) {
  write_bytes(path("numbers.csv"), "1,2\n3,4\n");
  EXPECT_EQ(read_csv(path("numbers.csv"), CsvHeader::automatic).values,
            (std::vector<double>{1, 2, 3, 4}));
  Array array = read_csv(path("numbers.csv"), CsvHeader::present);
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(array.values, (std::vector<double>{3, 4}));
  EXPECT_EQ(read_csv(path("numbers.csv"), CsvHeader::absent).values,
            (std::vector<double>{1, 2, 3, 4}));

  const fs::path words = path("words.csv");
  write_bytes(words, "x,y\n1,2\n");
  EXPECT_EQ(read_csv(words, CsvHeader::automatic).values, (std::vector<double>{1, 2}));
  EXPECT_EQ(read_csv(words, CsvHeader::present).values, (std::vector<double>{1, 2}));
  std::string message = error_message<InputError>([&] { read_csv(words, CsvHeader::absent); });
  EXPECT_CONTAINS(message, words.string());
  EXPECT_CONTAINS(message, "line 1, column 1 holds \"x\", which is not a number");

  // A header as pandas writes it (an empty name over the index) is a header;
  // an empty field among numbers is not a word, so that line is data.
  write_bytes(path("pandas.csv"), ",x\n0,1.5\n");
  EXPECT_EQ(read_csv(path("pandas.csv")).values, (std::vector<double>{0, 1.5}));
  const fs::path gap = path("gap_in_first.csv");
  write_bytes(gap, "1,,3\n4,5,6\n");
  message = error_message<InputError>([&] { read_csv(gap); });
  EXPECT_CONTAINS(message, "line 1, column 2 holds \"\", which is not a number");

  const fs::path one_line = path("one_line.csv");
  write_bytes(one_line, "1,2\n");
  message = error_message<InputError>([&] { read_csv(one_line, CsvHeader::present); });
  EXPECT_CONTAINS(message, one_line.string());
  EXPECT_CONTAINS(message, "no data rows");
}

TEST_F(IoCsv, EscapesControlBytesOfATokenInTheMessage) {
  const fs::path file = path("escape.csv");
  write_bytes(file, std::string("1,2\n3,a\x1b[31mb") + '\0' + "c\n");
  const std::string message = error_message<InputError>([&] { read_csv(file); });
  EXPECT_CONTAINS(message, "holds \"a\\x1b[31mb\\x00c\", which is not a number");
  for (const char c : message) {
    EXPECT_FALSE(static_cast<unsigned char>(c) < 0x20 || c == 0x7f) << "raw byte in: " << message;
  }
}

// ---- IDX -----------------------------------------------------------------------

/// An IDX file of unsigned bytes with the given dims; values are i mod 251.
std::string idx_file(const std::vector<std::uint32_t>& dims, int type = 0x08) {
  std::string bytes = {'\0', '\0', static_cast<char>(type), static_cast<char>(dims.size())};
  std::size_t count = 1;
  for (const std::uint32_t dim : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes += static_cast<char>((dim >> shift) & 0xff);
    count *= dim;
  }
  for (std::size_t i = 0; i < count; ++i) bytes += static_cast<char>(i % 251);
  return bytes;
}

void write_gzip(const fs::path& path, const std::string& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(file), Z_OK);
}

using IoIdx = IoTempDir;

TEST_F(IoIdx, ReadsPlainAndGzippedImagesAsRows) {
  const std::string bytes = idx_file({3, 4, 5});
  write_bytes(path("images.idx"), bytes);
  write_gzip(path("images.idx.gz"), bytes);
  for (const std::string name : {"images.idx", "images.idx.gz"}) {
    SCOPED_TRACE(name);
    const Array array = read_idx(path(name));
    EXPECT_EQ(array.shape, (std::vector<std::int64_t>{3, 20}));
    ASSERT_EQ(array.values.size(), 60u);
    EXPECT_EQ(array.values[0], 0);
    EXPECT_EQ(array.values[59], 59);
    EXPECT_TRUE(array.integral_dtype);
  }
}

TEST_F(IoIdx, ReadsLabels) {
  write_gzip(path("labels.gz"), idx_file({7}));
  const Array array = read_idx(path("labels.gz"));
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{7}));
  EXPECT_EQ(array.values, (std::vector<double>{0, 1, 2, 3, 4, 5, 6}));
}

TEST_F(IoIdx, RejectsTruncatedPlainAndGzipped) {
  const std::string bytes = idx_file({10, 28, 28});
  const std::string cut = bytes.substr(0, bytes.size() - 100);
  write_bytes(path("cut.idx"), cut);
  write_gzip(path("cut.idx.gz"), cut);
  for (const std::string name : {"cut.idx", "cut.idx.gz"}) {
    SCOPED_TRACE(name);
    const std::string message = error_message<InputError>([&] { read_idx(path(name)); });
    EXPECT_CONTAINS(message, path(name).string());
    EXPECT_CONTAINS(message, "truncated");
  }
  // A gzip stream cut mid-way (a partial download) is reported, not read short.
  std::string compressed;
  write_gzip(path("whole.gz"), bytes);
  compressed = read_bytes(path("whole.gz"));
  write_bytes(path("cut_stream.gz"), compressed.substr(0, compressed.size() / 2));
  EXPECT_CONTAINS(error_message<InputError>([&] { read_idx(path("cut_stream.gz")); }),
                  path("cut_stream.gz").string());
}

TEST_F(IoIdx, RejectsAGzipStreamCutInItsTrailer) {
  // The trailer (CRC-32, then the length) is the last 8 bytes; without it the
  // data used to be accepted unchecked.
  write_gzip(path("whole.gz"), idx_file({4, 5}));
  const std::string compressed = read_bytes(path("whole.gz"));
  for (const std::size_t cut : {1, 4, 8}) {
    SCOPED_TRACE(cut);
    const fs::path file = path("cut_trailer.gz");
    write_bytes(file, compressed.substr(0, compressed.size() - cut));
    const std::string message = error_message<InputError>([&] { read_idx(file); });
    EXPECT_CONTAINS(message, file.string());
    EXPECT_CONTAINS(message, "is truncated: the gzip stream ends before its trailer");
  }
  // A trailer whose CRC-32 does not match the data is corrupt data.
  std::string bad_crc = compressed;
  bad_crc[bad_crc.size() - 8] = static_cast<char>(bad_crc[bad_crc.size() - 8] ^ 0x01);
  write_bytes(path("bad_crc.gz"), bad_crc);
  EXPECT_CONTAINS(error_message<InputError>([&] { read_idx(path("bad_crc.gz")); }), "corrupt");
}

TEST_F(IoIdx, RejectsWrongMagicAndUnsupportedType) {
  write_bytes(path("magic.idx"), "\x01\x02\x08\x01" + std::string(8, '\0'));
  std::string message = error_message<InputError>([&] { read_idx(path("magic.idx")); });
  EXPECT_CONTAINS(message, path("magic.idx").string());
  EXPECT_CONTAINS(message, "not an IDX file");

  write_bytes(path("float.idx"), idx_file({2}, 0x0D));
  message = error_message<InputError>([&] { read_idx(path("float.idx")); });
  EXPECT_CONTAINS(message, path("float.idx").string());
  EXPECT_CONTAINS(message, "0x0D");

  write_bytes(path("four.idx"), idx_file({1, 1, 1, 1}));
  EXPECT_CONTAINS(error_message<InputError>([&] { read_idx(path("four.idx")); }),
                  path("four.idx").string());

  const fs::path missing = path("missing.gz");
  EXPECT_CONTAINS(error_message<InputError>([&] { read_idx(missing); }), missing.string());
}

// ---- Escaping file content for messages ------------------------------------------

TEST(Printable, EscapesWhatCouldDriveATerminalAndKeepsText) {
  using detail::printable;
  EXPECT_EQ(printable(std::string("a\x1b[2Jb\0c\x7f", 9)), "a\\x1b[2Jb\\x00c\\x7f");
  EXPECT_EQ(printable("tab\there\r\n"), "tab\\there\\r\\n");
  EXPECT_EQ(printable("back\\slash \"quoted\" 'single'"), "back\\\\slash \\\"quoted\\\" 'single'");
  const std::string text = "Gr\xC3\xB6\xC3\x9F" "e ×2 \xF0\x9F\x93\x88";  // Größe ×2 📈
  EXPECT_EQ(printable(text), text);
  EXPECT_EQ(printable("\xC2\x9B" "31m"), "\\xc2\\x9b31m");            // C1 CSI
  EXPECT_EQ(printable("a\xE2\x80\xAE" "b"), "a\\xe2\\x80\\xaeb");     // right-to-left override
  EXPECT_EQ(printable("\xEF\xBB\xBF" "x"), "\\xef\\xbb\\xbfx");       // byte-order mark
  EXPECT_EQ(printable("\xff\xC3"), "\\xff\\xc3");                     // stray and cut bytes
  EXPECT_EQ(printable("\xC0\xAF"), "\\xc0\\xaf");                     // overlong '/'
  EXPECT_EQ(printable("\xED\xA0\x80"), "\\xed\\xa0\\x80");            // a surrogate
}

// ---- Atomic output -------------------------------------------------------------

using IoFiles = IoTempDir;

TEST_F(IoFiles, WriteAtomicReplacesTargetAndLeavesNoTempFiles) {
  const fs::path target = path("report.json");
  write_file_atomic(target, "first");
  write_file_atomic(target, "second, longer contents");
  EXPECT_EQ(read_bytes(target), "second, longer contents");
  write_file_atomic(target, "");
  EXPECT_EQ(read_bytes(target), "");
  EXPECT_EQ(listing(), std::vector<std::string>{"report.json"});
}

TEST_F(IoFiles, WriteAtomicFailsCleanlyInMissingDirectory) {
  const fs::path target = path("no_such_dir") / "report.json";
  const std::string message =
      error_message<RuntimeError>([&] { write_file_atomic(target, "contents"); });
  EXPECT_CONTAINS(message, target.string());
  EXPECT_TRUE(listing().empty());
}

TEST_F(IoFiles, FailedRenameKeepsTargetAndRemovesTempFile) {
  // A non-empty directory cannot be replaced by rename(), so the write fails
  // after the temp file exists: the target must survive and the temp go.
  const fs::path target = path("occupied");
  fs::create_directory(target);
  write_bytes(target / "keep.txt", "precious");
  const std::string message =
      error_message<RuntimeError>([&] { write_file_atomic(target, "contents"); });
  EXPECT_CONTAINS(message, target.string());
  EXPECT_EQ(read_bytes(target / "keep.txt"), "precious");
  EXPECT_EQ(listing(), std::vector<std::string>{"occupied"});
}

TEST_F(IoFiles, CheckWritableProbesWithoutLeavingFiles) {
  EXPECT_NO_THROW(check_writable(path("out.json")));
  EXPECT_TRUE(listing().empty());
  const fs::path unwritable = path("missing") / "out.json";
  const std::string message = error_message<RuntimeError>([&] { check_writable(unwritable); });
  EXPECT_CONTAINS(message, unwritable.string());
}

TEST_F(IoFiles, WriteFollowsSymlinksAndKeepsThem) {
  fs::create_directory(path("out"));
  write_bytes(path("out/report.json"), "old");
  fs::create_symlink("out/report.json", path("report.json"));
  write_file_atomic(path("report.json"), "new");
  EXPECT_TRUE(fs::is_symlink(path("report.json")));
  EXPECT_EQ(fs::read_symlink(path("report.json")), "out/report.json");
  EXPECT_EQ(read_bytes(path("out/report.json")), "new");
  EXPECT_EQ(output_target(path("report.json")).path, path("out/report.json"));

  // A dangling link (here a chain of two) names the file to create.
  fs::create_symlink("hop", path("weights.npy"));
  fs::create_symlink("out/weights.npy", path("hop"));
  write_npy(path("weights.npy"), {2}, {1.5, -2});
  EXPECT_TRUE(fs::is_symlink(path("weights.npy")));
  EXPECT_EQ(read_npy(path("out/weights.npy")).values, (std::vector<double>{1.5, -2}));
  EXPECT_EQ(listing(), (std::vector<std::string>{"hop", "out", "report.json", "weights.npy"}));
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(path("out"))) out.push_back(entry.path().filename());
  std::sort(out.begin(), out.end());
  EXPECT_EQ(out, (std::vector<std::string>{"report.json", "weights.npy"}));
}

TEST_F(IoFiles, DanglingSymlinkIntoAMissingDirectoryOrALoopFails) {
  fs::create_symlink("missing/report.json", path("report.json"));
  std::string message = error_message<RuntimeError>([&] { check_writable(path("report.json")); });
  EXPECT_CONTAINS(message, path("report.json").string());
  EXPECT_CONTAINS(message, "missing");
  message = error_message<RuntimeError>([&] { write_file_atomic(path("report.json"), "x"); });
  EXPECT_CONTAINS(message, path("report.json").string());
  fs::create_symlink("loop_b", path("loop_a"));
  fs::create_symlink("loop_a", path("loop_b"));
  message = error_message<RuntimeError>([&] { write_file_atomic(path("loop_a"), "x"); });
  EXPECT_CONTAINS(message, "symbolic links");
  EXPECT_EQ(listing(), (std::vector<std::string>{"loop_a", "loop_b", "report.json"}));
}

TEST_F(IoFiles, FifoIsWrittenInPlace) {
  ASSERT_EQ(::mkfifo(path("pipe").c_str(), 0600), 0);
  // A reader opened first, so the write need not wait; the contents fit the
  // pipe's buffer, so one thread does.
  const int reader = ::open(path("pipe").c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(reader, 0);
  EXPECT_TRUE(output_target(path("pipe")).in_place);
  EXPECT_NO_THROW(check_writable(path("pipe")));
  write_npy(path("pipe"), {1}, {3.0});
  std::string bytes(4096, '\0');
  const ssize_t got = ::read(reader, bytes.data(), bytes.size());
  ::close(reader);
  ASSERT_GT(got, 0);
  bytes.resize(static_cast<std::size_t>(got));
  write_bytes(path("copy.npy"), bytes);
  EXPECT_EQ(read_npy(path("copy.npy")).values, (std::vector<double>{3.0}));
  EXPECT_TRUE(fs::is_fifo(path("pipe")));
  EXPECT_EQ(listing(), (std::vector<std::string>{"copy.npy", "pipe"}));
}

TEST_F(IoFiles, CharacterDeviceIsWrittenInPlace) {
  // As root a private /dev/null, so a regression cannot replace the machine's.
  fs::path device = path("null");
  if (::mknod(device.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) device = "/dev/null";
  EXPECT_TRUE(output_target(device).in_place);
  EXPECT_NO_THROW(check_writable(device));
  write_file_atomic(device, "discarded");
  EXPECT_TRUE(fs::is_character_file(device));
  EXPECT_TRUE(fs::is_character_file("/dev/null"));
}

TEST_F(IoFiles, SocketIsRefused) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string name = path("sock").string();
  ASSERT_LT(name.size(), sizeof address.sun_path);
  std::copy(name.begin(), name.end(), address.sun_path);
  ASSERT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address), 0);
  const std::string message = error_message<RuntimeError>([&] { check_writable(path("sock")); });
  ::close(fd);
  EXPECT_CONTAINS(message, "socket");
  EXPECT_CONTAINS(message, name);
  EXPECT_TRUE(fs::is_socket(path("sock")));
}

// ---- load_xy ---------------------------------------------------------------------

using IoLoadXy = IoTempDir;

TEST_F(IoLoadXy, LoadsSquaredLossTargetsFromNpyAndCsv) {
  write_npy(path("x.npy"), {3, 2}, {1, 2, 3, 4, 5, 6});
  write_bytes(path("y.csv"), "y\n0.5\n1.5\n2.5\n");
  const Dataset data = load_xy(path("x.npy"), path("y.csv"), Loss::squared);
  EXPECT_EQ(data.n, 3);
  EXPECT_EQ(data.d, 2);
  EXPECT_EQ(data.k, 1);
  EXPECT_EQ(data.x, (std::vector<double>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(data.y, (std::vector<double>{0.5, 1.5, 2.5}));
  EXPECT_TRUE(data.labels.empty());

  write_npy(path("y2.npy"), {3, 2}, {1, 0, 0, 1, 1, 0});
  EXPECT_EQ(load_xy(path("x.npy"), path("y2.npy"), Loss::squared).k, 2);
}

TEST_F(IoLoadXy, LoadsLabelsForCrossEntropyAndOneDimensionalX) {
  write_npy(path("x.npy"), {4}, {0.1, 0.2, 0.3, 0.4});  // 1-D X is N×1
  write_bytes(path("labels.npy"),
              npy_file(npy_dict("|u1", "(4,)"), npy_data<std::uint8_t>({0, 3, 1, 3})));
  const Dataset data = load_xy(path("x.npy"), path("labels.npy"), Loss::cross_entropy);
  EXPECT_EQ(data.n, 4);
  EXPECT_EQ(data.d, 1);
  EXPECT_EQ(data.k, 4);  // largest label + 1
  EXPECT_EQ(data.labels, (std::vector<std::int32_t>{0, 3, 1, 3}));
  EXPECT_TRUE(data.y.empty());

  write_npy(path("float_labels.npy"), {4, 1}, {2, 0, 1, 0});  // exact integers stored as floats
  EXPECT_EQ(load_xy(path("x.npy"), path("float_labels.npy"), Loss::cross_entropy).k, 3);
}

TEST_F(IoLoadXy, RejectsRowCountMismatchNamingBothFiles) {
  write_npy(path("x.npy"), {3, 2}, {1, 2, 3, 4, 5, 6});
  write_npy(path("y.npy"), {4}, {1, 2, 3, 4});
  const std::string message = error_message<InputError>(
      [&] { load_xy(path("x.npy"), path("y.npy"), Loss::squared); });
  EXPECT_CONTAINS(message, path("x.npy").string());
  EXPECT_CONTAINS(message, path("y.npy").string());
  EXPECT_CONTAINS(message, "3");
  EXPECT_CONTAINS(message, "4");
}

TEST_F(IoLoadXy, RejectsBadLabelsExtensionsAndNonFiniteValues) {
  write_npy(path("x.npy"), {2, 1}, {1, 2});
  write_npy(path("half.npy"), {2}, {0, 0.5});
  std::string message = error_message<InputError>(
      [&] { load_xy(path("x.npy"), path("half.npy"), Loss::cross_entropy); });
  EXPECT_CONTAINS(message, path("half.npy").string());

  write_npy(path("negative.npy"), {2}, {0, -1});
  EXPECT_CONTAINS(error_message<InputError>(
                      [&] { load_xy(path("x.npy"), path("negative.npy"), Loss::cross_entropy); }),
                  path("negative.npy").string());

  write_npy(path("onehot.npy"), {2, 2}, {1, 0, 0, 1});
  EXPECT_CONTAINS(error_message<InputError>(
                      [&] { load_xy(path("x.npy"), path("onehot.npy"), Loss::cross_entropy); }),
                  path("onehot.npy").string());

  write_bytes(path("x.txt"), "1\n2\n");
  message = error_message<InputError>(
      [&] { load_xy(path("x.txt"), path("half.npy"), Loss::squared); });
  EXPECT_CONTAINS(message, path("x.txt").string());
  EXPECT_CONTAINS(message, ".npy or .csv");

  write_npy(path("nan.npy"), {2, 1}, {1, std::nan("")});
  message = error_message<InputError>(
      [&] { load_xy(path("nan.npy"), path("half.npy"), Loss::squared); });
  EXPECT_CONTAINS(message, path("nan.npy").string());
  EXPECT_CONTAINS(message, "finite");
}

// ---- Fashion-MNIST ---------------------------------------------------------------

using IoFashionMnist = IoTempDir;

/// A stand-in Fashion-MNIST directory: `count` 28×28 images (gzipped) and
/// labels (plain, to exercise the uncompressed fallback).
void write_fake_fashion_mnist(const fs::path& dir, const std::string& prefix,
                              const std::vector<std::uint8_t>& labels) {
  const auto count = static_cast<std::uint32_t>(labels.size());
  write_gzip(dir / (prefix + "-images-idx3-ubyte.gz"), idx_file({count, 28, 28}));
  std::string label_bytes = idx_file({count});
  for (std::size_t i = 0; i < labels.size(); ++i) label_bytes[8 + i] = static_cast<char>(labels[i]);
  write_bytes(dir / (prefix + "-labels-idx1-ubyte"), label_bytes);
}

TEST_F(IoFashionMnist, LoadsAFakeDirectoryForBothLosses) {
  write_fake_fashion_mnist(dir_, "t10k", {9, 0, 4});
  const Dataset labelled = load_fashion_mnist(dir_, "test", Loss::cross_entropy);
  EXPECT_EQ(labelled.n, 3);
  EXPECT_EQ(labelled.d, 784);
  EXPECT_EQ(labelled.k, 10);
  EXPECT_EQ(labelled.labels, (std::vector<std::int32_t>{9, 0, 4}));
  ASSERT_EQ(labelled.x.size(), 3u * 784u);
  EXPECT_EQ(labelled.x[250], 250.0 / 255.0);

  const Dataset one_hot = load_fashion_mnist(dir_, "test", Loss::squared, 2);
  EXPECT_EQ(one_hot.n, 2);
  EXPECT_EQ(one_hot.k, 10);
  EXPECT_TRUE(one_hot.labels.empty());
  ASSERT_EQ(one_hot.y.size(), 20u);
  EXPECT_EQ(one_hot.y[9], 1.0);
  EXPECT_EQ(one_hot.y[10], 1.0);
  EXPECT_EQ(std::accumulate(one_hot.y.begin(), one_hot.y.end(), 0.0), 2.0);
}

TEST_F(IoFashionMnist, RejectsBadSplitLimitAndMissingFiles) {
  write_fake_fashion_mnist(dir_, "t10k", {1, 2, 3});
  std::string message = error_message<InputError>(
      [&] { load_fashion_mnist(dir_, "validation", Loss::cross_entropy); });
  EXPECT_CONTAINS(message, "validation");

  message = error_message<InputError>(
      [&] { load_fashion_mnist(dir_, "test", Loss::cross_entropy, 4); });
  EXPECT_CONTAINS(message, "3 samples");

  message = error_message<InputError>([&] { load_fashion_mnist(dir_, "train", Loss::squared); });
  EXPECT_CONTAINS(message, dir_.string());
  EXPECT_CONTAINS(message, "apt-get install dataset-fashion-mnist");
  EXPECT_CONTAINS(message, "GRADNOISE_FASHION_MNIST_DIR");
}

TEST_F(IoFashionMnist, RejectsLabelsOutOfRange) {
  write_fake_fashion_mnist(dir_, "train", {1, 10});
  const std::string message = error_message<InputError>(
      [&] { load_fashion_mnist(dir_, "train", Loss::cross_entropy); });
  EXPECT_CONTAINS(message, "train-labels-idx1-ubyte");
  EXPECT_CONTAINS(message, "10");
}

TEST_F(IoFashionMnist, LimitStopsReadingBeforeTheEndOfTheFile) {
  write_fake_fashion_mnist(dir_, "t10k", {1, 2, 3});
  const fs::path images = dir_ / "t10k-images-idx3-ubyte.gz";
  const std::string compressed = read_bytes(images);
  write_bytes(images, compressed.substr(0, compressed.size() - 4));
  // With a limit the rest of the file, trailer included, is not read (as
  // README's --limit says); read whole, the cut is found.
  EXPECT_EQ(load_fashion_mnist(dir_, "test", Loss::cross_entropy, 2).n, 2);
  EXPECT_CONTAINS(error_message<InputError>(
                      [&] { load_fashion_mnist(dir_, "test", Loss::cross_entropy); }),
                  "trailer");
}

TEST(IoFashionMnistInstalled, LoadsTheTestSplit) {
  const fs::path dir = fashion_mnist_dir();
  if (!fs::is_directory(dir)) {
    GTEST_SKIP() << "Fashion-MNIST is not installed at " << dir
                 << " (apt-get install dataset-fashion-mnist)";
  }
  const Dataset labelled = load_fashion_mnist(dir, "test", Loss::cross_entropy, 100);
  EXPECT_EQ(labelled.n, 100);
  EXPECT_EQ(labelled.d, 784);
  EXPECT_EQ(labelled.k, 10);
  ASSERT_EQ(labelled.x.size(), 100u * 784u);
  ASSERT_EQ(labelled.labels.size(), 100u);
  EXPECT_EQ(*std::min_element(labelled.x.begin(), labelled.x.end()), 0.0);
  EXPECT_LE(*std::max_element(labelled.x.begin(), labelled.x.end()), 1.0);
  EXPECT_GT(*std::max_element(labelled.x.begin(), labelled.x.end()), 0.5);
  for (const std::int32_t label : labelled.labels) {
    EXPECT_GE(label, 0);
    EXPECT_LT(label, 10);
  }

  const Dataset one_hot = load_fashion_mnist(dir, "test", Loss::squared, 100);
  ASSERT_EQ(one_hot.y.size(), 100u * 10u);
  for (std::int64_t i = 0; i < one_hot.n; ++i) {
    const auto row = one_hot.y.begin() + i * 10;
    EXPECT_EQ(std::accumulate(row, row + 10, 0.0), 1.0) << "row " << i;
    EXPECT_EQ(row[labelled.labels[static_cast<std::size_t>(i)]], 1.0) << "row " << i;
  }
  EXPECT_EQ(one_hot.x, labelled.x);
}

// ---- Synthetic data --------------------------------------------------------------

TEST(SynthData, SameSeedGivesIdenticalDataAndDifferentSeedDoesNot) {
  SynthOptions options;
  options.n = 257;
  options.d = 7;  // odd, so the last Box–Muller pair is split
  options.k = 3;
  options.label_noise = 0.5;
  options.seed = 42;
  const SynthData first = make_synthetic(options);
  const SynthData again = make_synthetic(options);
  EXPECT_EQ(first.data.x, again.data.x);
  EXPECT_EQ(first.data.y, again.data.y);
  EXPECT_EQ(first.teacher, again.teacher);
  EXPECT_EQ(first.data.n, 257);
  EXPECT_EQ(first.data.d, 7);
  EXPECT_EQ(first.data.k, 3);
  EXPECT_EQ(first.data.y.size(), 257u * 3u);
  EXPECT_EQ(first.teacher.size(), 3u * 7u);
  EXPECT_TRUE(first.data.labels.empty());

  options.seed = 43;
  const SynthData other = make_synthetic(options);
  EXPECT_NE(first.data.x, other.data.x);
  EXPECT_NE(first.teacher, other.teacher);

  // A sample's values depend only on its index, so a larger n extends the set.
  options.seed = 42;
  options.n = 300;
  const SynthData longer = make_synthetic(options);
  EXPECT_TRUE(std::equal(first.data.x.begin(), first.data.x.end(), longer.data.x.begin()));
}

TEST(SynthData, MatchesPinnedValuesSoSeedsStayReproducible) {
  // Changing the stream layout would silently change every user's data for a
  // given seed; these values pin it (to libm rounding).
  SynthOptions options;
  options.n = 2;
  options.d = 3;
  options.seed = 2024;
  const SynthData data = make_synthetic(options);
  const std::vector<double> expected_x = {
      0.99998331721106104, -0.097070546854218703, 2.3168457572796157,
      1.1668050549578792,  -0.87152557730385194,  0.062138275941489782};
  ASSERT_EQ(data.data.x.size(), expected_x.size());
  for (std::size_t i = 0; i < expected_x.size(); ++i) {
    EXPECT_NEAR(data.data.x[i], expected_x[i], 1e-12) << "x[" << i << "]";
  }
}

/// Sample mean and covariance (divided by n) of the columns of an n×d matrix.
void column_moments(const std::vector<double>& values, std::int64_t n, std::int64_t d,
                    std::vector<double>& mean, std::vector<double>& covariance) {
  mean.assign(static_cast<std::size_t>(d), 0.0);
  covariance.assign(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < d; ++j) mean[j] += values[i * d + j] / static_cast<double>(n);
  }
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t a = 0; a < d; ++a) {
      for (std::int64_t b = 0; b < d; ++b) {
        covariance[a * d + b] += (values[i * d + a] - mean[a]) * (values[i * d + b] - mean[b]) /
                                 static_cast<double>(n);
      }
    }
  }
}

TEST(SynthData, InputCovarianceMatchesRequestedSpectrum) {
  SynthOptions options;
  options.n = 20000;
  options.d = 4;
  options.spectrum = "4, 1,0.25,2";
  options.mean = 0.5;
  options.seed = 7;
  const std::vector<double> eigenvalues = {4, 1, 0.25, 2};
  const SynthData data = make_synthetic(options);
  std::vector<double> mean, covariance;
  column_moments(data.data.x, options.n, options.d, mean, covariance);
  const double n = static_cast<double>(options.n);
  // Tolerances are 5 Monte-Carlo standard errors: sd(mean) = √(λ/n),
  // sd(variance) = λ√(2/n), sd(covariance) = √(λ_a λ_b / n).
  for (std::size_t a = 0; a < 4; ++a) {
    EXPECT_NEAR(mean[a], 0.5, 5 * std::sqrt(eigenvalues[a] / n)) << "coordinate " << a;
    for (std::size_t b = 0; b < 4; ++b) {
      const double expected = a == b ? eigenvalues[a] : 0.0;
      const double tolerance = a == b ? 5 * eigenvalues[a] * std::sqrt(2 / n)
                                      : 5 * std::sqrt(eigenvalues[a] * eigenvalues[b] / n);
      EXPECT_NEAR(covariance[a * 4 + b], expected, tolerance) << "entry " << a << "," << b;
    }
  }
  // Gaussian shape, not just the right variance: E z⁴ = 3 for each
  // standardised coordinate (sd of the mean of 4n values √(96/(4n))).
  double fourth_moment = 0;
  for (std::int64_t i = 0; i < options.n; ++i) {
    for (std::size_t a = 0; a < 4; ++a) {
      const double z = (data.data.x[static_cast<std::size_t>(i) * 4 + a] - 0.5) /
                       std::sqrt(eigenvalues[a]);
      fourth_moment += z * z * z * z / (4 * n);
    }
  }
  EXPECT_NEAR(fourth_moment, 3.0, 5 * std::sqrt(96 / (4 * n)));
}

TEST(SynthData, PowerlawSpectrumScalesCoordinates) {
  SynthOptions options;
  options.n = 20000;
  options.d = 5;
  options.spectrum = "powerlaw:1.5";
  options.seed = 11;
  const SynthData data = make_synthetic(options);
  std::vector<double> mean, covariance;
  column_moments(data.data.x, options.n, options.d, mean, covariance);
  for (std::int64_t j = 0; j < options.d; ++j) {
    const double expected = std::pow(static_cast<double>(j + 1), -1.5);
    EXPECT_NEAR(covariance[j * options.d + j], expected,
                5 * expected * std::sqrt(2.0 / static_cast<double>(options.n)))
        << "coordinate " << j;
  }
}

TEST(SynthData, LabelNoiseResidualHasVarianceSigmaSquared) {
  SynthOptions options;
  options.n = 20000;
  options.d = 50;
  options.k = 2;
  options.label_noise = 0.3;
  options.seed = 3;
  const SynthData data = make_synthetic(options);
  const double n = static_cast<double>(options.n);
  for (std::int64_t c = 0; c < options.k; ++c) {
    double residual_sum = 0, residual_sq_sum = 0;
    for (std::int64_t i = 0; i < options.n; ++i) {
      double prediction = 0;
      for (std::int64_t j = 0; j < options.d; ++j) {
        prediction += data.teacher[static_cast<std::size_t>(c * options.d + j)] *
                      data.data.x[static_cast<std::size_t>(i * options.d + j)];
      }
      const double residual = data.data.y[static_cast<std::size_t>(i * options.k + c)] - prediction;
      residual_sum += residual;
      residual_sq_sum += residual * residual;
    }
    const double sigma_sq = 0.09;
    EXPECT_NEAR(residual_sum / n, 0.0, 5 * std::sqrt(sigma_sq / n)) << "output " << c;
    EXPECT_NEAR(residual_sq_sum / n, sigma_sq, 5 * sigma_sq * std::sqrt(2 / n)) << "output " << c;
  }
  // Teacher entries are N(0, 1/d): 100 of them, sd of their mean square ≈ √(2/100)/d.
  double teacher_sq = 0;
  for (const double w : data.teacher) {
    teacher_sq += w * w / static_cast<double>(data.teacher.size());
  }
  EXPECT_NEAR(teacher_sq, 1.0 / 50, 5 * std::sqrt(2.0 / 100) / 50);

  options.label_noise = 0;
  const SynthData noiseless = make_synthetic(options);
  double prediction = 0;
  for (std::int64_t j = 0; j < options.d; ++j) {
    const auto index = static_cast<std::size_t>(j);
    prediction += noiseless.teacher[index] * noiseless.data.x[index];
  }
  EXPECT_DOUBLE_EQ(noiseless.data.y[0], prediction);
}

TEST(SynthData, RejectsBadOptions) {
  const auto rejects = [](const std::function<void(SynthOptions&)>& change,
                          const std::string& needle) {
    SynthOptions options;
    options.n = 10;
    options.d = 3;
    change(options);
    EXPECT_CONTAINS(error_message<InputError>([&] { make_synthetic(options); }), needle);
  };
  rejects([](SynthOptions& o) { o.n = 0; }, "n = 0");
  rejects([](SynthOptions& o) { o.d = 0; }, "d = 0");
  rejects([](SynthOptions& o) { o.k = -1; }, "k = -1");
  rejects([](SynthOptions& o) { o.label_noise = -0.1; }, "label noise");
  rejects([](SynthOptions& o) { o.label_noise = std::nan(""); }, "label noise");
  rejects([](SynthOptions& o) { o.spectrum = "diagonal"; }, "\"diagonal\"");
  rejects([](SynthOptions& o) { o.spectrum = "powerlaw:"; }, "powerlaw:");
  rejects([](SynthOptions& o) { o.spectrum = "powerlaw:fast"; }, "powerlaw:fast");
  rejects([](SynthOptions& o) { o.spectrum = "1,2"; }, "d = 3");
  rejects([](SynthOptions& o) { o.spectrum = "1,0,2"; }, "positive");
  rejects([](SynthOptions& o) { o.spectrum = "1,,2"; }, "\"1,,2\"");
}

}  // namespace
}  // namespace gradnoise
