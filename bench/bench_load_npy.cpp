// What the CLI's --x/--y loading costs, alone: detail::load_xy_stored (the
// .npy mapped or decoded, finiteness and labels checked), timed in process
// the way `numpy.load` is timed in bench/load_npy.py. Prints one line:
//   seconds, GB/s of X, X's element type and shape.
// Usage: bench_load_npy X.npy Y.npy [mse|ce] [repeats]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "gradnoise/error.hpp"
#include "stored_data.hpp"

int main(int argc, char** argv) {
  using namespace gradnoise;
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_load_npy X.npy Y.npy [mse|ce] [repeats]\n");
    return 2;
  }
  const Loss loss = argc > 3 && std::string(argv[3]) == "mse" ? Loss::squared : Loss::cross_entropy;
  const int repeats = argc > 4 ? std::atoi(argv[4]) : 1;
  try {
    for (int r = 0; r < repeats; ++r) {
      const auto start = std::chrono::steady_clock::now();
      const detail::StoredDataPart loaded =
          detail::load_xy_stored(argv[1], argv[2], loss, CsvHeader::automatic);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const ArrayView x = loaded.data.inputs();
      const double bytes = static_cast<double>(x.rows * x.cols) * (x.type == ElementType::float32 ? 4 : 8);
      std::printf("load_s %.3f  X_GB/s %.2f  x %s  n %lld d %lld\n", seconds, bytes / seconds * 1e-9,
                  element_type_name(x.type).c_str(), static_cast<long long>(x.rows),
                  static_cast<long long>(x.cols));
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "bench_load_npy: %s\n", error.what());
    return 1;
  }
  return 0;
}
