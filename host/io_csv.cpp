// Numeric CSV: comma-separated, one sample per line, an optional header line.
// Every error names the file and the 1-based line (and column) so a user can
// open the file at the right place.

#include <cerrno>
#include <charconv>
#include <cmath>
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

/// Parses the whole field as a double, or returns false. from_chars is
/// locale-independent (a German locale must not turn "1.5" into an error);
/// it rejects a leading '+', which spreadsheets sometimes write, so skip it.
bool parse_number(std::string_view field, double& value) {
  if (field.size() > 1 && field.front() == '+' && field[1] != '-' && field[1] != '+') {
    field.remove_prefix(1);
  }
  const char* end = field.data() + field.size();
  const auto [stop, error] = std::from_chars(field.data(), end, value);
  return error == std::errc() && stop == end && !field.empty();
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

}  // namespace

Array read_csv(const std::filesystem::path& path) {
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
    double ignored = 0;
    for (const std::string_view field : fields) {
      if (!parse_number(field, ignored)) first_data_line = 1;  // a header line
    }
    columns = fields.size();
  }
  if (first_data_line >= lines.size()) {
    throw InputError(quoted(path) + " has a header line but no data rows");
  }

  std::int64_t rows = 0;
  array.values.reserve((lines.size() - first_data_line) * columns);
  for (std::size_t line_index = first_data_line; line_index < lines.size(); ++line_index) {
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
      if (!parse_number(fields[column], value)) {
        throw InputError(where + ", column " + std::to_string(column + 1) + " holds \"" +
                         detail::printable(fields[column]) + "\", which is not a number");
      }
      if (!std::isfinite(value)) {
        throw InputError(where + ", column " + std::to_string(column + 1) + " holds \"" +
                         detail::printable(fields[column]) + "\"; every value must be finite");
      }
      if (value != std::floor(value)) array.integral_dtype = false;
      array.values.push_back(value);
    }
    ++rows;
  }
  array.shape = {rows, static_cast<std::int64_t>(columns)};
  return array;
}

}  // namespace gradnoise
