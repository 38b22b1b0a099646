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
//                     sweep's minibatch indices, label noise and (with the
//                     Feistel round in bits 8–15 of the stream word, the
//                     value in the block word) its epoch permutations.
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

/// ⌈log₂ n⌉ bits hold every value below n (0 for n ≤ 1).
GN_HOST_DEVICE inline int bits_below(std::uint64_t n) {
  if (n <= 1) return 0;
#if defined(__CUDA_ARCH__)
  return 64 - __clzll(static_cast<long long>(n - 1));
#else
  return 64 - __builtin_clzll(n - 1);  // GCC and Clang
#endif
}

/// The epoch permutation's Feistel network: its rounds, and the fewest bits
/// it works on. Luby and Rackoff's four rounds of a pseudo-random function
/// make a strong pseudo-random permutation when the halves are wide; halves
/// of one to three bits need far more rounds (six rounds on 3 bits fail a
/// pair test that a Fisher–Yates shuffle passes), so small n walk in 2^8
/// values, halves of at least 4 bits, where six rounds pass every test in
/// tests/test_permutation.cpp.
constexpr int kPermutationRounds = 6;
constexpr int kPermutationMinBits = 8;

/// The permutation of epoch `epoch` for `replica` under `seed`: a keyed
/// bijection of [0, n) evaluated one position at a time in O(1) memory, so
/// no run stores a table (docs/SWEEP.md "Randomness and reproducibility").
///
/// A Feistel network over the 2^m ≥ n values of m = max(⌈log₂ n⌉, 8) bits,
/// split into a high part of ⌊m/2⌋ bits and a low part of ⌈m/2⌉ (balanced
/// for even m; for odd m the parts trade sizes each round, as in NIST FF1).
/// Round r maps (high, low) to (low, high ⊕ F_r(low)), F_r(v) the first word
/// of the Philox block {replica, kSweepTag | r << 8 | permutation, epoch, v}
/// cut to the width of `high`. A value at or above n goes through the network
/// again (cycle walking) until it lands below n, which keeps the map a
/// bijection of [0, n) (Black and Rogaway 2002): on average 2^m/n < 2 passes
/// for n > 128, about 256/n below. `rounds` other than the default are for
/// tests that show a weaker network fails them.
class EpochPermutation {
 public:
  GN_HOST_DEVICE EpochPermutation(std::uint64_t seed, std::uint32_t replica, std::uint32_t epoch,
                                  std::int64_t n, int rounds = kPermutationRounds)
      : seed_(seed),
        replica_(replica),
        epoch_(epoch),
        n_(static_cast<std::uint64_t>(n)),
        high_bits_(network_bits(n) / 2),
        low_bits_(network_bits(n) - high_bits_),
        rounds_(rounds) {}

  /// The row at position `position` (in [0, n)) of the epoch's order.
  GN_HOST_DEVICE std::int64_t operator()(std::int64_t position) const {
    if (n_ <= 1) return 0;  // one row: walking would take a whole cycle of 2^8
    std::uint64_t value = network(static_cast<std::uint64_t>(position));
    while (value >= n_) value = network(value);
    return static_cast<std::int64_t>(value);
  }

 private:
  GN_HOST_DEVICE static int network_bits(std::int64_t n) {
    const int bits = bits_below(static_cast<std::uint64_t>(n));
    return bits > kPermutationMinBits ? bits : kPermutationMinBits;
  }

  /// One pass of the Feistel network: a bijection of [0, 2^m).
  GN_HOST_DEVICE std::uint64_t network(std::uint64_t value) const {
    int high_bits = high_bits_, low_bits = low_bits_;
    std::uint64_t high = value >> low_bits;
    std::uint64_t low = value & ((std::uint64_t{1} << low_bits) - 1);
    for (int round = 0; round < rounds_; ++round) {
      const std::uint32_t stream = kSweepTag | static_cast<std::uint32_t>(round) << 8 |
                                   static_cast<std::uint32_t>(SweepStream::permutation);
      const std::uint64_t f = philox(seed_, replica_, stream, epoch_, static_cast<std::uint32_t>(low))[0];
      const std::uint64_t mixed = (high ^ f) & ((std::uint64_t{1} << high_bits) - 1);
      high = low;
      low = mixed;
      const int held = high_bits;
      high_bits = low_bits;
      low_bits = held;
    }
    return high << low_bits | low;
  }

  std::uint64_t seed_;
  std::uint32_t replica_, epoch_;
  std::uint64_t n_;
  int high_bits_, low_bits_;  // the parts' widths at the first round
  int rounds_;
};

/// Without replacement (random reshuffling): batch `step` of b rows is
/// positions [first, first + b) of its epoch's permutation, ⌊n/b⌋ batches an
/// epoch (the last n mod b positions are skipped).
struct ReshuffledBatch {
  EpochPermutation permutation;
  std::int64_t first;

  GN_HOST_DEVICE std::int64_t row(std::int64_t slot) const { return permutation(first + slot); }
};

GN_HOST_DEVICE inline ReshuffledBatch reshuffled_batch(std::uint64_t seed, std::uint32_t replica,
                                                       std::int64_t step, std::int64_t b,
                                                       std::int64_t n) {
  const std::int64_t per_epoch = n / b;
  return {EpochPermutation(seed, replica, static_cast<std::uint32_t>(step / per_epoch), n),
          (step % per_epoch) * b};
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
