// Importing Python arrays without copies (arrays.hpp).
#include "arrays.hpp"

#include "gradnoise/error.hpp"

namespace gradnoise::python {

AnyArray import_array(nb::handle object, const std::string& what) {
  AnyArray array;
  if (nb::try_cast(object, array, /*convert=*/false)) return array;
  // A tensor that requires grad refuses DLPack; its detached view shares the storage.
  if (nb::hasattr(object, "detach") && nb::try_cast(object.attr("detach")(), array, false)) return array;
  throw InputError(what + " is a " + std::string(nb::type_name(object.type()).c_str()) +
                   "; expected an array (a NumPy array, a PyTorch tensor or anything with "
                   "__dlpack__ or the buffer protocol)");
}

std::string dtype_name(const AnyArray& array) {
  const nb::dlpack::dtype t = array.dtype();
  std::string kind;
  switch (static_cast<nb::dlpack::dtype_code>(t.code)) {
    case nb::dlpack::dtype_code::Int: kind = "int"; break;
    case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
    case nb::dlpack::dtype_code::Float: kind = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
    case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
    case nb::dlpack::dtype_code::Bool: return "bool";
    default: kind = "type" + std::to_string(t.code) + "_"; break;
  }
  return kind + std::to_string(t.bits);
}

bool on_host(const AnyArray& array) {
  const int type = array.device_type();
  return type == nb::device::cpu::value || type == nb::device::cuda_host::value ||
         type == nb::device::cuda_managed::value;
}

bool on_cuda(const AnyArray& array) { return array.device_type() == nb::device::cuda::value; }

namespace {

/// The library's element type of a DLPack dtype, if it reads that type.
bool element_type(const AnyArray& array, ElementType& type) {
  const nb::dlpack::dtype t = array.dtype();
  if (t.lanes != 1) return false;
  switch (static_cast<nb::dlpack::dtype_code>(t.code)) {
    case nb::dlpack::dtype_code::Float:
      if (t.bits == 32) type = ElementType::float32;
      else if (t.bits == 64) type = ElementType::float64;
      else return false;
      return true;
    case nb::dlpack::dtype_code::Int:
      if (t.bits == 8) type = ElementType::int8;
      else if (t.bits == 16) type = ElementType::int16;
      else if (t.bits == 32) type = ElementType::int32;
      else if (t.bits == 64) type = ElementType::int64;
      else return false;
      return true;
    case nb::dlpack::dtype_code::UInt:
      if (t.bits != 8) return false;
      type = ElementType::uint8;
      return true;
    default:
      return false;
  }
}

}  // namespace

ArrayView host_view(const AnyArray& array, const std::string& what) {
  if (array.ndim() < 1 || array.ndim() > 2) {
    throw InputError(what + " has " + std::to_string(array.ndim()) +
                     " dimensions; expected a matrix (or a vector)");
  }
  ArrayView view;
  if (!element_type(array, view.type)) {
    throw InputError(what + " holds " + dtype_name(array) +
                     " values; expected float32 or float64 (int8 to int64 or uint8 for class labels)");
  }
  view.data = array.data();
  view.rows = static_cast<std::int64_t>(array.shape(0));
  view.row_stride = array.stride(0);
  if (array.ndim() == 2) {
    view.cols = static_cast<std::int64_t>(array.shape(1));
    view.col_stride = array.stride(1);
  } else {
    view.cols = 1;
    view.col_stride = 1;
  }
  return view;
}

}  // namespace gradnoise::python
