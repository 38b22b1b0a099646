// Every random number gradnoise draws, in one place and on both devices:
// counter-based Philox4x32-10 (Random123), so a number is a pure function of
// (seed, counter) and any draw can be regenerated without replaying the ones
// before it — whatever the thread count, the device or a resume from a
// checkpoint. std::normal_distribution is avoided because its algorithm
// differs between standard libraries; what remains platform-dependent is the
// last-ulp rounding of log/cos/sin (glibc's on the CPU, CUDA's on a GPU).
//
// Streams (the counter's words):
//   fill_normals      {row low, row high, stream, block}: weights, synthetic data,
//                     Lanczos starts;
//   sweep streams     {replica, kSweepTag | stream, step or epoch, block}: a
//                     sweep's minibatch indices, epoch permutations, label noise.
// The tag keeps the two families apart.
#pragma once

#include <Random123/philox.h>

#include <cmath>
#include <cstdint>

#include "host_device.hpp"

namespace gradnoise::detail {

using PhiloxBlock = r123::Philox4x32::ctr_type;

/// The Philox block at counter {c0, c1, c2, c3} under `seed`.
GN_HOST_DEVICE inline PhiloxBlock philox(std::uint64_t seed, std::uint32_t c0, std::uint32_t c1,
                                         std::uint32_t c2, std::uint32_t c3) {
  const r123::Philox4x32 generator;
  const r123::Philox4x32::key_type key = {
      {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
  const PhiloxBlock counter = {{c0, c1, c2, c3}};
  return generator(counter, key);
}

/// The 64-bit word `half` (0 or 1) of a Philox block.
GN_HOST_DEVICE inline std::uint64_t word(const PhiloxBlock& bits, int half) {
  return std::uint64_t{bits[2 * half]} << 32 | bits[2 * half + 1];
}

/// floor(bits · n / 2⁶⁴): uniform on [0, n) up to a bias below n/2⁶⁴.
GN_HOST_DEVICE inline std::uint64_t below(std::uint64_t bits, std::uint64_t n) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(bits, n);
#else
  __extension__ using uint128 = unsigned __int128;  // GCC and Clang; not ISO C++
  return static_cast<std::uint64_t>((static_cast<uint128>(bits) * n) >> 64);
#endif
}

/// Two standard normals from one block (Box–Muller): the block's two 53-bit
/// uniforms give the radius (from (0, 1], so log is finite) and the angle.
struct NormalPair {
  double even = 0;  // radius · cos(angle)
  double odd = 0;   // radius · sin(angle)
};

GN_HOST_DEVICE inline NormalPair box_muller(const PhiloxBlock& bits) {
  constexpr double kTwoToMinus53 = 1.0 / 9007199254740992.0;
  constexpr double kPi = 3.141592653589793;  // std::numbers::pi
  const double u_radius = static_cast<double>((word(bits, 0) >> 11) + 1) * kTwoToMinus53;
  const double u_angle = static_cast<double>(word(bits, 1) >> 11) * kTwoToMinus53;
  const double radius = sqrt(-2.0 * log(u_radius));
  const double angle = 2.0 * kPi * u_angle;
  return {radius * cos(angle), radius * sin(angle)};
}

/// Fills out[0, count) with standard normals for `row` of `stream` under `seed`:
/// block b of the row yields normals 2b and 2b+1.
inline void fill_normals(std::uint64_t seed, std::uint32_t stream, std::uint64_t row, double* out,
                         std::int64_t count) {
  for (std::int64_t index = 0; index < count; index += 2) {
    const NormalPair pair =
        box_muller(philox(seed, static_cast<std::uint32_t>(row), static_cast<std::uint32_t>(row >> 32),
                          stream, static_cast<std::uint32_t>(index / 2)));
    out[index] = pair.even;
    if (index + 1 < count) out[index + 1] = pair.odd;
  }
}

// ---- A sweep's streams (docs/SWEEP.md "Randomness") ------------------------------

constexpr std::uint32_t kSweepTag = 0x53570000u;  // "SW"
enum class SweepStream : std::uint32_t { indices = 1, permutation = 2, label_noise = 3 };

GN_HOST_DEVICE inline PhiloxBlock sweep_block(std::uint64_t seed, std::uint32_t replica,
                                              SweepStream stream, std::uint32_t step,
                                              std::uint32_t block) {
  return philox(seed, replica, kSweepTag | static_cast<std::uint32_t>(stream), step, block);
}

/// With replacement: the row of slot `slot` of batch `step`, uniform on [0, n)
/// (two slots per block).
GN_HOST_DEVICE inline std::int64_t replacement_row(std::uint64_t seed, std::uint32_t replica,
                                                   std::int64_t step, std::int64_t slot,
                                                   std::int64_t n) {
  const PhiloxBlock bits = sweep_block(seed, replica, SweepStream::indices,
                                       static_cast<std::uint32_t>(step),
                                       static_cast<std::uint32_t>(slot / 2));
  return static_cast<std::int64_t>(
      below(word(bits, static_cast<int>(slot % 2)), static_cast<std::uint64_t>(n)));
}

/// The uniform permutation of epoch `epoch` for `replica` in perm[0, n):
/// Fisher–Yates, draw p (p = 0..n−2) swapping position n−1−p with a uniform
/// one at or below it (two draws per block). Perm indexes like an array.
template <class Perm>
GN_HOST_DEVICE inline void epoch_permutation(std::uint64_t seed, std::uint32_t replica,
                                             std::uint32_t epoch, Perm&& perm, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) perm[i] = static_cast<std::int32_t>(i);
  PhiloxBlock bits{};
  for (std::int64_t p = 0; p + 1 < n; ++p) {
    if (p % 2 == 0) {
      bits = sweep_block(seed, replica, SweepStream::permutation, epoch,
                         static_cast<std::uint32_t>(p / 2));
    }
    const std::int64_t i = n - 1 - p;
    const auto j = static_cast<std::int64_t>(
        below(word(bits, static_cast<int>(p % 2)), static_cast<std::uint64_t>(i + 1)));
    const std::int32_t held = perm[i];
    perm[i] = perm[j];
    perm[j] = held;
  }
}

/// Label noise of one step: normal m (= slot·K + output) is the even (m even)
/// or odd half of block m/2. Keeps the last pair, so drawing m in order costs
/// one block per two normals.
struct LabelNoise {
  std::int64_t block = -1;
  NormalPair pair;

  GN_HOST_DEVICE double get(std::uint64_t seed, std::uint32_t replica, std::int64_t step,
                            std::int64_t m) {
    if (m / 2 != block) {
      block = m / 2;
      pair = box_muller(sweep_block(seed, replica, SweepStream::label_noise,
                                    static_cast<std::uint32_t>(step),
                                    static_cast<std::uint32_t>(block)));
    }
    return m % 2 == 0 ? pair.even : pair.odd;
  }
};

}  // namespace gradnoise::detail
