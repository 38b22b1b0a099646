// One exception family for everything a user can get wrong: the message is a
// single sentence naming what was wrong and what was expected, so the CLI can
// print it as is and exit non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace gradnoise {

/// Bad input from the user: a file, a shape, an option, a value.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Something the environment cannot provide (no GPU, out of memory, I/O failure
/// while writing results).
class RuntimeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace gradnoise
