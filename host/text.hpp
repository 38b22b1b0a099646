// Small text helpers shared by the loaders' and generators' messages.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

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

/// The length of the well-formed UTF-8 sequence of a visible character that
/// starts `text` (2 to 4 bytes), or 0: a stray or overlong byte, a surrogate,
/// a C1 control (U+0080–U+009F, which some terminals obey like ESC) or an
/// invisible formatting character (zero-width, line/paragraph separators,
/// bidirectional overrides, the byte-order mark) that could hide or reorder
/// what a message shows.
inline std::size_t visible_utf8_length(std::string_view text) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(0);
  std::size_t length = 0;
  std::uint32_t code = 0;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2, code = lead & 0x1Fu;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3, code = lead & 0x0Fu;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4, code = lead & 0x07u;
  } else {
    return 0;
  }
  if (text.size() < length) return 0;
  for (std::size_t i = 1; i < length; ++i) {
    if ((byte(i) & 0xC0u) != 0x80u) return 0;
    code = (code << 6) | (byte(i) & 0x3Fu);
  }
  constexpr std::uint32_t kShortest[] = {0, 0, 0x80, 0x800, 0x10000};
  const bool well_formed = code >= kShortest[length] && code <= 0x10FFFF &&
                           !(code >= 0xD800 && code <= 0xDFFF);
  const bool invisible = code <= 0x9F || (code >= 0x200B && code <= 0x200F) ||
                         (code >= 0x2028 && code <= 0x202E) ||
                         (code >= 0x2060 && code <= 0x206F) || code == 0xFEFF;
  return well_formed && !invisible ? length : 0;
}

/// Bytes read from an input file (a token, a header, magic bytes), made safe
/// to put between double quotes in a message: a control byte, DEL, a byte
/// that is not part of visible UTF-8 text and the invisible characters above
/// become visible escapes (\x1b, \x00, \n, \r, \t), and '\' and '"' are
/// escaped, so a file can neither drive the terminal, cut the message at a
/// NUL nor break it over lines. Printable ASCII and other UTF-8 text (a
/// header "Größe") pass through.
inline std::string printable(std::string_view bytes) {
  std::string text;
  text.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    const auto byte = static_cast<unsigned char>(bytes[i]);
    if (byte >= 0x20 && byte < 0x7F) {
      if (byte == '\\' || byte == '"') text += '\\';
      text += static_cast<char>(byte);
      ++i;
    } else if (const std::size_t length = visible_utf8_length(bytes.substr(i)); length > 0) {
      text.append(bytes.substr(i, length));
      i += length;
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      switch (byte) {
        case '\n': text += "\\n"; break;
        case '\r': text += "\\r"; break;
        case '\t': text += "\\t"; break;
        default:
          text += "\\x";
          text += kHex[byte >> 4];
          text += kHex[byte & 0x0Fu];
      }
      ++i;
    }
  }
  return text;
}

}  // namespace gradnoise::detail
