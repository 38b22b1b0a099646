// A .npy file's rows where the engines read them (io_npy.cpp): the file's
// own bytes, memory-mapped, when they already are the array the engines take
// (float32 or float64, this host's byte order, C order, aligned); otherwise
// decoded over every core into storage that is never zero-filled first. The
// finiteness scan runs in the same pass as the decode (or is the one pass over
// a mapping), so a loaded X has been read exactly once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include "gradnoise/data.hpp"

namespace gradnoise::detail {

struct NpyRows {
  std::vector<std::int64_t> shape;  // the part's: shape[0] is its row count
  std::int64_t first_row = 0;       // where the part starts in the file
  std::int64_t whole_rows = 0;      // the file's rows
  /// The part's values, rows × (trailing dims) in C order: float32 for a
  /// float32 file (of either byte order or layout), float64 for every other
  /// dtype. Valid while `owner` lives.
  ArrayView values;
  std::shared_ptr<const void> owner;  // the mapping, or the decoded storage
  bool integral_dtype = false;
  bool in_place = false;  // `values` are the file's bytes, memory-mapped
  /// Index into `values` of the first NaN or infinity, or −1.
  std::int64_t first_non_finite = -1;
};

/// Part `part` of `parts` of a .npy file's rows (split_rows): dtypes as
/// read_npy, either byte order, C or Fortran order. A C-order part maps only
/// its own rows' pages; a truncated or overlong file is an InputError before
/// any page is touched (a mapping past the end of a file would SIGBUS). Pipes
/// and other non-regular files are read in order instead.
NpyRows map_npy_rows(const std::filesystem::path& path, int part = 0, int parts = 1);

}  // namespace gradnoise::detail
