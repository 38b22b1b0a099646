// Counter-based Gaussian numbers: normal j of row r in stream s under a seed
// is a pure function of (seed, s, r, j) — Philox4x32-10 from Random123 and a
// Box–Muller pair per 128-bit block — so weights and synthetic data are
// reproducible whatever the thread count or generation order, and any row can
// be regenerated without replaying the ones before it. std::normal_distribution
// is avoided because its algorithm differs between standard libraries; what
// remains platform-dependent is the last-ulp rounding of libm's log/cos/sin.
#pragma once

#include <Random123/philox.h>

#include <cmath>
#include <cstdint>
#include <numbers>

namespace gradnoise::detail {

/// Fills out[0, count) with standard normals for `row` of `stream` under `seed`.
/// Philox block b of the row yields two 53-bit uniforms, i.e. normals 2b, 2b+1.
inline void fill_normals(std::uint64_t seed, std::uint32_t stream, std::uint64_t row, double* out,
                         std::int64_t count) {
  constexpr double kTwoToMinus53 = 1.0 / 9007199254740992.0;
  const r123::Philox4x32 generator;
  const r123::Philox4x32::key_type key = {
      {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
  for (std::int64_t index = 0; index < count; index += 2) {
    const r123::Philox4x32::ctr_type counter = {{static_cast<std::uint32_t>(row),
                                                 static_cast<std::uint32_t>(row >> 32), stream,
                                                 static_cast<std::uint32_t>(index / 2)}};
    const r123::Philox4x32::ctr_type bits = generator(counter, key);
    const std::uint64_t high = (std::uint64_t{bits[0]} << 32 | bits[1]) >> 11;
    const std::uint64_t low = (std::uint64_t{bits[2]} << 32 | bits[3]) >> 11;
    const double u_radius = static_cast<double>(high + 1) * kTwoToMinus53;  // (0, 1]: log is finite
    const double u_angle = static_cast<double>(low) * kTwoToMinus53;        // [0, 1)
    const double radius = std::sqrt(-2.0 * std::log(u_radius));
    const double angle = 2.0 * std::numbers::pi * u_angle;
    out[index] = radius * std::cos(angle);
    if (index + 1 < count) out[index + 1] = radius * std::sin(angle);
  }
}

}  // namespace gradnoise::detail
