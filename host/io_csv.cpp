// Numeric CSV: comma-separated, one sample per line, an optional header line
// (CsvHeader says whether the first line is one).
// Every error names the file and the 1-based line (and column) so a user can
// open the file at the right place.

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"
#include "text.hpp"

namespace gradnoise {
namespace {

std::string quoted(const std::filesystem::path& path) {
  std::string text(1, '"');
  text += path.string();
  text += '"';
  return text;
}

std::string count_of(std::size_t count, const char* noun) {
  return std::to_string(count) + " " + noun + (count == 1 ? "" : "s");
}

std::string_view trim(std::string_view text) {
  const auto is_blank = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  while (!text.empty() && is_blank(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_blank(text.back())) text.remove_suffix(1);
  return text;
}

/// What a CSV field holds.
enum class Field {
  number,        // a float64 (a number below float64's range reads as ±0)
  beyond_range,  // a number whose magnitude exceeds float64's largest (1e999)
  word,          // not a number at all (and the empty field)
};

/// For a field that from_chars matched whole, [-]digits[.digits][e[±]digits]:
/// whether its magnitude is at least 1. from_chars only says "out of range",
/// and that is an overflow when |x| ≥ 1 and an underflow when |x| < 1.
bool magnitude_at_least_one(std::string_view field) {
  if (field.starts_with('-')) field.remove_prefix(1);
  const std::size_t e = std::min(field.find_first_of("eE"), field.size());
  std::int64_t exponent = 0;  // saturates: 1e99999999999999999999 is simply huge
  std::string_view exponent_text = field.substr(std::min(e + 1, field.size()));
  const bool negative = exponent_text.starts_with('-');
  if (negative || exponent_text.starts_with('+')) exponent_text.remove_prefix(1);
  for (const char digit : exponent_text) {
    exponent = std::min<std::int64_t>(exponent * 10 + (digit - '0'), 1'000'000'000);
  }
  if (negative) exponent = -exponent;

  const std::string_view mantissa = field.substr(0, e);
  const std::size_t point = std::min(mantissa.find('.'), mantissa.size());
  const std::string_view integer = mantissa.substr(0, point);
  const std::string_view fraction = mantissa.substr(std::min(point + 1, mantissa.size()));
  // The decimal exponent of the first non-zero digit.
  std::int64_t order = 0;
  if (const std::size_t first = integer.find_first_not_of('0'); first != std::string_view::npos) {
    order = static_cast<std::int64_t>(integer.size() - first) - 1;
  } else if (const std::size_t first = fraction.find_first_not_of('0');
             first != std::string_view::npos) {
    order = -static_cast<std::int64_t>(first) - 1;
  } else {
    return false;  // zero, which is never out of range
  }
  return order + exponent >= 0;
}

/// Classifies the whole field and parses a number into `value`. from_chars is
/// locale-independent (a German locale must not turn "1.5" into an error);
/// it rejects a leading '+', which spreadsheets sometimes write, so skip it.
Field parse_field(std::string_view field, double& value) {
  if (field.size() > 1 && field.front() == '+' && field[1] != '-' && field[1] != '+') {
    field.remove_prefix(1);
  }
  const char* end = field.data() + field.size();
  const auto [stop, error] = std::from_chars(field.data(), end, value);
  if (field.empty() || stop != end) return Field::word;
  if (error == std::errc()) return Field::number;
  if (error != std::errc::result_out_of_range) return Field::word;
  if (magnitude_at_least_one(field)) return Field::beyond_range;
  // Subnormals come back as numbers, so out of range below means closer to 0
  // than to the smallest subnormal: the nearest float64 is ±0.
  value = field.starts_with('-') ? -0.0 : 0.0;
  return Field::number;
}

/// CsvHeader::automatic: the first line is a header when a field is a word
/// (column names); a numeric-looking field, even one beyond float64's range,
/// is data, so a bad number is reported rather than dropped as a header.
bool is_header(const std::vector<std::string_view>& first_line, CsvHeader header) {
  if (header != CsvHeader::automatic) return header == CsvHeader::present;
  return std::any_of(first_line.begin(), first_line.end(), [](std::string_view field) {
    double ignored = 0;
    return !field.empty() && parse_field(field, ignored) == Field::word;
  });
}

std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> fields;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = line.find(',', start);
    fields.push_back(trim(line.substr(start, comma - start)));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return fields;
}

/// The data rows of part `part` of `parts` (all of them for 0 of 1).
ArrayPart read_csv_rows(const std::filesystem::path& path, CsvHeader header, int part, int parts) {
  std::error_code status_error;
  if (!std::filesystem::exists(path, status_error)) {
    throw InputError("cannot read " + quoted(path) + ": the file does not exist");
  }
  if (std::filesystem::is_directory(path, status_error)) {
    throw InputError("cannot read " + quoted(path) + ": it is a directory, expected a .csv file");
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    throw InputError("cannot open " + quoted(path) + " for reading (" + std::strerror(errno) + ")");
  }
  std::ostringstream buffer;
  buffer << file.rdbuf();
  if (file.bad()) {
    throw InputError("cannot read " + quoted(path) + " (" + std::strerror(errno) + ")");
  }
  std::string text = std::move(buffer).str();
  // Spreadsheets often prepend a UTF-8 byte-order mark; left in, it would make
  // a numeric first row look like a header and silently drop a sample.
  if (text.starts_with("\xEF\xBB\xBF")) text.erase(0, 3);

  // Split into lines first so trailing blank lines can be dropped before parsing.
  std::vector<std::string_view> lines;
  for (std::size_t start = 0; start < text.size();) {
    std::size_t newline = text.find('\n', start);
    if (newline == std::string::npos) newline = text.size();
    lines.emplace_back(text.data() + start, newline - start);
    start = newline + 1;
  }
  while (!lines.empty() && trim(lines.back()).empty()) lines.pop_back();
  if (lines.empty()) throw InputError(quoted(path) + " is empty; expected numeric CSV rows");

  Array array;
  array.integral_dtype = true;
  std::size_t first_data_line = 0;
  std::size_t columns = 0;
  {
    const std::vector<std::string_view> fields = split_fields(lines[0]);
    if (is_header(fields, header)) first_data_line = 1;
    columns = fields.size();
  }
  if (first_data_line >= lines.size()) {
    throw InputError(quoted(path) + " has a header line but no data rows");
  }

  ArrayPart result;
  result.whole_rows = static_cast<std::int64_t>(lines.size() - first_data_line);
  const RowSpan span = split_rows(result.whole_rows, part, parts);
  result.first_row = span.first;
  std::int64_t rows = 0;
  array.values.reserve(static_cast<std::size_t>(span.count) * columns);
  const std::size_t first_line = first_data_line + static_cast<std::size_t>(span.first);
  for (std::size_t line_index = first_line; line_index < first_line + static_cast<std::size_t>(span.count);
       ++line_index) {
    const std::string where = quoted(path) + " line " + std::to_string(line_index + 1);
    if (trim(lines[line_index]).empty()) {
      throw InputError(where + " is empty but later lines hold data; expected " +
                       count_of(columns, "value"));
    }
    const std::vector<std::string_view> fields = split_fields(lines[line_index]);
    if (fields.size() != columns) {
      throw InputError(where + " has " + count_of(fields.size(), "column") + " but line " +
                       std::to_string(first_data_line + 1) + " has " + std::to_string(columns) +
                       "; every row must have the same number of columns");
    }
    for (std::size_t column = 0; column < fields.size(); ++column) {
      double value = 0;
      const Field kind = parse_field(fields[column], value);
      const std::string holds = where + ", column " + std::to_string(column + 1) + " holds \"" +
                                detail::printable(fields[column]) + "\"";
      if (kind == Field::word) throw InputError(holds + ", which is not a number");
      if (kind == Field::beyond_range) {
        throw InputError(holds + ", which is beyond float64's range (±1.8e308)");
      }
      if (!std::isfinite(value)) throw InputError(holds + "; every value must be finite");
      if (value != std::floor(value)) array.integral_dtype = false;
      array.values.push_back(value);
    }
    ++rows;
  }
  array.shape = {rows, static_cast<std::int64_t>(columns)};
  result.array = std::move(array);
  return result;
}

}  // namespace

Array read_csv(const std::filesystem::path& path, CsvHeader header) {
  return read_csv_rows(path, header, 0, 1).array;
}

ArrayPart read_csv_part(const std::filesystem::path& path, CsvHeader header, int part, int parts) {
  return read_csv_rows(path, header, part, parts);
}

}  // namespace gradnoise
