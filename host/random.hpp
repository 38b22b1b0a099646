// Counter-based Gaussian numbers: value j of stream s under a seed is a pure
// function of (seed, s, j) (Philox4x32-10 from Random123 + Box–Muller), so
// weights and synthetic data are reproducible on every platform and any slice
// can be regenerated without replaying the ones before it.
#pragma once

#include <Random123/boxmuller.hpp>
#include <Random123/philox.h>

#include <cstdint>
#include <span>

namespace gradnoise::detail {

/// Standard normals number [first, first + out.size()) of `stream` under `seed`.
inline void fill_normal(std::uint64_t seed, std::uint64_t stream, std::span<double> out,
                        std::uint64_t first = 0) {
  r123::Philox4x32 philox;
  const r123::Philox4x32::key_type key = {
      {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
  // One Philox call yields two 64-bit uniforms, hence one Box–Muller pair.
  for (std::size_t i = 0; i < out.size(); ++i) {
    const std::uint64_t index = first + i;
    const std::uint64_t pair = index / 2;
    const r123::Philox4x32::ctr_type counter = {
        {static_cast<std::uint32_t>(pair), static_cast<std::uint32_t>(pair >> 32),
         static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)}};
    const auto bits = philox(counter, key);
    const std::uint64_t u0 = (std::uint64_t{bits[1]} << 32) | bits[0];
    const std::uint64_t u1 = (std::uint64_t{bits[3]} << 32) | bits[2];
    const r123::double2 normals = r123::boxmuller(u0, u1);
    out[i] = (index % 2 == 0) ? normals.x : normals.y;
  }
}

}  // namespace gradnoise::detail
