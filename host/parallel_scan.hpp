// Whole-array passes of the loaders over every core: a data set of 10⁹
// values is scanned at memory speed, not at one core's. Threads take equal
// contiguous ranges; the answer is the same whatever their number.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <thread>
#include <type_traits>
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

/// Index of the first NaN or infinity in values[0, count), or −1, on one
/// thread. Blocks are tested with the exponent bits, in a loop without an
/// exit that the compiler vectorises (on the 32-bit word holding them: a
/// 64-bit compare is no SSE2 instruction, and ran at 2/3 of the speed over a
/// memory map), and only a block that holds one is searched.
template <typename T>
std::int64_t first_non_finite_serial(const T* values, std::int64_t count) {
  static_assert(std::is_floating_point_v<T> && (sizeof(T) == 4 || sizeof(T) == 8));
  constexpr std::size_t kHighWord = sizeof(T) == 8 && std::endian::native == std::endian::little ? 4 : 0;
  constexpr std::uint32_t kExponent = sizeof(T) == 4 ? 0x7f800000u : 0x7ff00000u;
  constexpr std::int64_t kBlock = 2048;
  for (std::int64_t first = 0; first < count; first += kBlock) {
    const std::int64_t end = std::min(count, first + kBlock);
    std::uint32_t any = 0;  // all exponent bits set: infinity or NaN
    for (std::int64_t j = first; j < end; ++j) {
      std::uint32_t word;
      std::memcpy(&word, reinterpret_cast<const unsigned char*>(values + j) + kHighWord, sizeof word);
      any |= static_cast<std::uint32_t>((word & kExponent) == kExponent);
    }
    if (any != 0) {
      return std::find_if(values + first, values + end, [](T value) { return !std::isfinite(value); }) -
             values;
    }
  }
  return -1;
}

/// Index of the first NaN or infinity in values[0, count), or −1.
template <typename T>
std::int64_t first_non_finite(const T* values, std::int64_t count) {
  const std::int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::int64_t> first(static_cast<std::size_t>(cores), -1);
  parallel_ranges(count, [&](std::int64_t part, std::int64_t begin, std::int64_t end) {
    const std::int64_t bad = first_non_finite_serial(values + begin, end - begin);
    if (bad >= 0) first[static_cast<std::size_t>(part)] = begin + bad;
  });
  for (const std::int64_t index : first) {
    if (index >= 0) return index;
  }
  return -1;
}

}  // namespace gradnoise::detail
