// Whole-array passes of the loaders over every core: a data set of 10⁹
// values is scanned at memory speed, not at one core's. Threads take equal
// contiguous ranges; the answer is the same whatever their number.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace gradnoise::detail {

/// Values per thread below which one thread does the work.
inline constexpr std::int64_t kParallelGrain = std::int64_t{1} << 20;

/// Calls work(part, first, end) for contiguous ranges of [0, count), one per
/// thread (one per core, fewer when a range would hold less than `grain`);
/// rethrows the exception of the lowest part that threw.
template <typename Work>
void parallel_ranges(std::int64_t count, Work&& work, std::int64_t grain = kParallelGrain) {
  const std::int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  const std::int64_t parts = std::clamp<std::int64_t>(count / std::max<std::int64_t>(1, grain), 1, cores);
  std::vector<std::exception_ptr> failures(static_cast<std::size_t>(parts));
  auto run = [&](std::int64_t part) {
    try {
      work(part, count * part / parts, count * (part + 1) / parts);
    } catch (...) {
      failures[static_cast<std::size_t>(part)] = std::current_exception();
    }
  };
  std::vector<std::thread> helpers;
  for (std::int64_t part = 1; part < parts; ++part) helpers.emplace_back(run, part);
  run(0);
  for (std::thread& helper : helpers) helper.join();
  for (const std::exception_ptr& failure : failures) {
    if (failure) std::rethrow_exception(failure);
  }
}

/// Σ f(values[j]) over [0, count): fixed blocks of kParallelGrain values,
/// each summed in order, then the blocks in order, so the bits do not depend
/// on the number of cores.
template <typename T, typename F>
double blocked_sum(const T* values, std::int64_t count, F&& f) {
  const std::int64_t blocks = std::max<std::int64_t>(1, (count + kParallelGrain - 1) / kParallelGrain);
  std::vector<double> sums(static_cast<std::size_t>(blocks), 0.0);
  parallel_ranges(
      blocks,
      [&](std::int64_t, std::int64_t first_block, std::int64_t end_block) {
        for (std::int64_t b = first_block; b < end_block; ++b) {
          double total = 0;
          const std::int64_t end = std::min(count, (b + 1) * kParallelGrain);
          for (std::int64_t j = b * kParallelGrain; j < end; ++j) total += f(values[j]);
          sums[static_cast<std::size_t>(b)] = total;
        }
      },
      1);
  double total = 0;
  for (const double s : sums) total += s;
  return total;
}

/// Index of the first NaN or infinity in values[0, count), or −1.
template <typename T>
std::int64_t first_non_finite(const T* values, std::int64_t count) {
  const std::int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::int64_t> first(static_cast<std::size_t>(cores), -1);
  parallel_ranges(count, [&](std::int64_t part, std::int64_t begin, std::int64_t end) {
    const T* bad = std::find_if(values + begin, values + end,
                                [](T value) { return !std::isfinite(value); });
    if (bad != values + end) first[static_cast<std::size_t>(part)] = bad - values;
  });
  for (const std::int64_t index : first) {
    if (index >= 0) return index;
  }
  return -1;
}

}  // namespace gradnoise::detail
