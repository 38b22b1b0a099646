// Shared by the libFuzzer targets in tests/fuzz: a private scratch directory
// per fuzzing process (the readers take paths, so each input goes to a file
// there), the expected outcomes, and checks whose failure is a finding.
//
// A finding is anything but a return or a gradnoise::InputError/RuntimeError:
// a crash, a sanitizer report, a failed fuzz_check, or any other exception
// (printed with its type, then abort(), so libFuzzer saves the input).
#pragma once

#include <cxxabi.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <typeinfo>

#include "gradnoise/error.hpp"

namespace gradnoise::fuzz {

[[noreturn]] inline void finding(const std::string& what) {
  std::fprintf(stderr, "gradnoise fuzz finding: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

#define GRADNOISE_FUZZ_CHECK(condition, message)                                         \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      ::gradnoise::fuzz::finding(std::string(__FILE__ ":") + std::to_string(__LINE__) + \
                                 ": check failed: " #condition ": " + (message));        \
    }                                                                                    \
  } while (0)

/// The demangled type of the exception being handled.
inline std::string current_exception_type() {
  const std::type_info* type = abi::__cxa_current_exception_type();
  if (type == nullptr) return "unknown";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(
      abi::__cxa_demangle(type->name(), nullptr, nullptr, &status), std::free);
  return status == 0 && name ? name.get() : type->name();
}

/// Runs `fn`; returns true when it returned, false when it threw one of the
/// library's two documented errors. Any other exception is a finding.
template <class Fn>
bool returns_or_reports(const char* what, Fn&& fn) {
  try {
    fn();
    return true;
  } catch (const InputError&) {
    return false;
  } catch (const RuntimeError&) {
    return false;
  } catch (const std::exception& error) {
    finding(std::string(what) + " threw " + current_exception_type() + " (not InputError or " +
            "RuntimeError): " + error.what());
  } catch (...) {
    finding(std::string(what) + " threw a non-std exception of type " + current_exception_type());
  }
}

/// This process's scratch directory under $TMPDIR (created on first use,
/// removed at a normal exit; a crash leaves it for scripts/fuzz to remove).
inline const std::filesystem::path& scratch_dir() {
  // Never destroyed, so that the atexit handler can still read it.
  static const std::filesystem::path* const dir = [] {
    std::string pattern = (std::filesystem::temp_directory_path() / "gradnoise-fuzz-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) finding("cannot create a scratch directory " + pattern);
    auto* path = new std::filesystem::path(pattern);
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(scratch_dir(), ignored);
    });
    return path;
  }();
  return *dir;
}

/// Writes `size` bytes to `path` (replacing it).
inline void write_bytes(const std::filesystem::path& path, const void* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) finding("cannot write the fuzz input to " + path.string());
}

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  write_bytes(path, bytes.data(), bytes.size());
}

}  // namespace gradnoise::fuzz
