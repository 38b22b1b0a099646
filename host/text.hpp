// Small text helpers shared by the loaders' and generators' messages.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace gradnoise::detail {

/// Shortest round-trip form ("0.5", "nan"), unlike std::to_string's "0.500000".
inline std::string format_number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", value);
  // Prefer the shortest of %.15g/%.17g that reads back exactly.
  char shorter[32];
  std::snprintf(shorter, sizeof shorter, "%.15g", value);
  return std::strtod(shorter, nullptr) == value ? shorter : text;
}

}  // namespace gradnoise::detail
