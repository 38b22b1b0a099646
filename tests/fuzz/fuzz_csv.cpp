// libFuzzer target: gradnoise::read_csv on arbitrary bytes, then load_xy with
// the same file as X and Y for every loss. Checks what io.hpp promises of an
// array it returns: shape {rows, cols}, a value for every cell, and no NaN or
// infinity (those are InputErrors naming the line).
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "fuzz_util.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/loss.hpp"

using namespace gradnoise;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::filesystem::path path = fuzz::scratch_dir() / "input.csv";
  fuzz::write_bytes(path, data, size);

  std::optional<Array> array;
  fuzz::returns_or_reports("read_csv", [&] { array = read_csv(path); });
  if (array) {
    GRADNOISE_FUZZ_CHECK(array->shape.size() == 2,
                         "read_csv returned " + std::to_string(array->shape.size()) + " dims");
    const std::int64_t rows = array->shape[0];
    const std::int64_t cols = array->shape[1];
    GRADNOISE_FUZZ_CHECK(rows >= 0 && cols >= 0 &&
                             static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(cols) ==
                                 array->values.size(),
                         "read_csv returned shape (" + std::to_string(rows) + ", " +
                             std::to_string(cols) + ") with " +
                             std::to_string(array->values.size()) + " values");
    for (const double value : array->values) {
      GRADNOISE_FUZZ_CHECK(std::isfinite(value),
                           "read_csv returned a non-finite value " + std::to_string(value));
    }
  }

  for (const Loss loss : all_losses()) {
    fuzz::returns_or_reports("load_xy", [&] {
      const Dataset dataset = load_xy(path, path, loss);
      dataset.validate("the fuzz input");
    });
  }
  return 0;
}
