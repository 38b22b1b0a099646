// The comparison benchmark's synthetic data, defined by a counter hash so that
// every implementation makes bit-identical float32 values from (seed, index)
// wherever it runs: the C++ timing programs on the host or the GPU, and
// bench/torch_baselines.py with integer tensor arithmetic. Nothing is read
// from files, so sizes of tens of GB need no disk.
//
//   X[i, j] = 0.25 + u(i·D + j, seed)        (inputs not centred: G ≠ 0)
//   Y[i, c] = u(i·K + c, seed + 1)           (squared loss)
//   label i = hash(i, seed + 2) mod K        (cross-entropy)
//
// with u(j, s) = (hash(j, s) >> 8) · 2⁻²³ − 1 ∈ [−1, 1), exact in float32.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GN_BENCH_HD __host__ __device__
#else
#define GN_BENCH_HD
#endif

namespace gradnoise::bench {

constexpr float kInputOffset = 0.25f;

GN_BENCH_HD inline std::uint32_t hash32(std::uint64_t index, std::uint32_t seed) {
  std::uint32_t h = static_cast<std::uint32_t>(index) * 2654435761u ^ seed ^
                    static_cast<std::uint32_t>(index >> 32) * 40503u;
  h ^= h >> 15;
  h *= 2246822519u;
  h ^= h >> 13;
  h *= 3266489917u;
  h ^= h >> 16;
  return h;
}

/// Uniform in [−1, 1) on a 2⁻²³ grid; every step is exact in float32.
GN_BENCH_HD inline float uniform_pm1(std::uint64_t index, std::uint32_t seed) {
  return static_cast<float>(hash32(index, seed) >> 8) * (1.0f / 8388608.0f) - 1.0f;
}

GN_BENCH_HD inline float input_value(std::int64_t row, std::int64_t col, std::int64_t d,
                                     std::uint32_t seed) {
  return kInputOffset + uniform_pm1(static_cast<std::uint64_t>(row * d + col), seed);
}

GN_BENCH_HD inline float target_value(std::int64_t row, std::int64_t col, std::int64_t k,
                                      std::uint32_t seed) {
  return uniform_pm1(static_cast<std::uint64_t>(row * k + col), seed + 1u);
}

GN_BENCH_HD inline std::int32_t label_value(std::int64_t row, std::int64_t k, std::uint32_t seed) {
  return static_cast<std::int32_t>(hash32(static_cast<std::uint64_t>(row), seed + 2u) %
                                   static_cast<std::uint32_t>(k));
}

}  // namespace gradnoise::bench
