// libFuzzer target: gradnoise::read_npy on arbitrary bytes, then load_xy with
// the same file as X and Y for every loss. Checks what io.hpp promises of an
// array it returns (1-D or 2-D, values for every element) and that
// write_npy/read_npy give it back bit for bit.
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "fuzz_util.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/loss.hpp"

using namespace gradnoise;

namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text;
  for (const std::int64_t dim : shape) text += (text.empty() ? "" : ",") + std::to_string(dim);
  return "(" + text + ")";
}

void check_array(const Array& array, const char* what) {
  GRADNOISE_FUZZ_CHECK(array.shape.size() == 1 || array.shape.size() == 2,
                       std::string(what) + " returned shape " + shape_text(array.shape));
  std::uint64_t count = 1;
  for (const std::int64_t dim : array.shape) {
    GRADNOISE_FUZZ_CHECK(dim >= 0, std::string(what) + " returned shape " + shape_text(array.shape));
    count *= static_cast<std::uint64_t>(dim);
  }
  GRADNOISE_FUZZ_CHECK(count == array.values.size(),
                       std::string(what) + " returned shape " + shape_text(array.shape) + " with " +
                           std::to_string(array.values.size()) + " values");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::filesystem::path path = fuzz::scratch_dir() / "input.npy";
  fuzz::write_bytes(path, data, size);

  std::optional<Array> array;
  fuzz::returns_or_reports("read_npy", [&] { array = read_npy(path); });
  if (array) {
    check_array(*array, "read_npy");
    // The values are float64 now; written as '<f8' they must come back unchanged.
    const std::filesystem::path copy = fuzz::scratch_dir() / "copy.npy";
    std::optional<Array> back;
    const bool wrote = fuzz::returns_or_reports("write_npy + read_npy", [&] {
      write_npy(copy, array->shape, array->values);
      back = read_npy(copy);
    });
    GRADNOISE_FUZZ_CHECK(wrote, "an array read_npy returned could not be written and read back");
    GRADNOISE_FUZZ_CHECK(back->shape == array->shape,
                         "round trip changed shape " + shape_text(array->shape) + " into " +
                             shape_text(back->shape));
    GRADNOISE_FUZZ_CHECK(!back->integral_dtype, "a '<f8' file read back as integral");
    GRADNOISE_FUZZ_CHECK(
        back->values.size() == array->values.size() &&
            (array->values.empty() ||
             std::memcmp(back->values.data(), array->values.data(),
                         array->values.size() * sizeof(double)) == 0),
        "round trip through write_npy changed the values");
  }

  // The same file as inputs and targets: exercises load_xy's shape and label
  // checks on whatever read_npy accepted.
  for (const Loss loss : all_losses()) {
    fuzz::returns_or_reports("load_xy", [&] {
      const Dataset dataset = load_xy(path, path, loss);
      dataset.validate("the fuzz input");
    });
  }
  return 0;
}
