// Python arrays and tensors as the library sees them: DLPack (NumPy,
// PyTorch, CuPy, JAX) or the buffer protocol, read where they lie. Host
// arrays become gradnoise::ArrayView (any strides, float32/float64 or
// integers); CUDA ones stay device pointers for gradnoise::DeviceData.
#pragma once

#include <cstdint>
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "gradnoise/data.hpp"

namespace gradnoise::python {

namespace nb = nanobind;

/// Any array: read-only, any dtype, shape, strides and device.
using AnyArray = nb::ndarray<nb::ro>;

/// Imports `object` without copying it: by DLPack or the buffer protocol; a
/// PyTorch tensor that requires grad is detached first (its storage is the
/// same). Throws InputError naming `what` when the object is not an array.
AnyArray import_array(nb::handle object, const std::string& what);

/// "float32", "int64", "float16", ... for messages.
std::string dtype_name(const AnyArray& array);

/// Whether the array lives in host memory (CPU, or CUDA host/managed memory
/// the CPU can read).
bool on_host(const AnyArray& array);
bool on_cuda(const AnyArray& array);

/// A host array of 1 or 2 dimensions as a view (a vector is rows×1). Throws
/// InputError naming `what` for another rank or an element type the library
/// does not read.
ArrayView host_view(const AnyArray& array, const std::string& what);

}  // namespace gradnoise::python
