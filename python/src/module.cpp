// gradnoise._gradnoise: the library's session (gradnoise::Profiler), its
// profile and shape, and sweeps, for Python. Data are read where they lie
// (arrays.hpp, gradnoise::BorrowedData, gradnoise::DeviceData); every
// computation runs with the GIL released; library errors become ValueError
// (InputError), RuntimeError and MemoryError with the library's sentence.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "arrays.hpp"
#include "gradnoise/cuda.hpp"
#include "gradnoise/data.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "gradnoise/report.hpp"
#include "gradnoise/session.hpp"
#include "gradnoise/shape.hpp"
#include "gradnoise/sweep.hpp"

namespace gradnoise::python {
namespace {

using Json = nlohmann::ordered_json;

// ---- Small conversions --------------------------------------------------------

nb::object to_python(const Json& value) {
  switch (value.type()) {
    case Json::value_t::null: return nb::none();
    case Json::value_t::boolean: return nb::bool_(value.get<bool>());
    case Json::value_t::number_integer: return nb::int_(value.get<std::int64_t>());
    case Json::value_t::number_unsigned: return nb::int_(value.get<std::uint64_t>());
    case Json::value_t::number_float: return nb::float_(value.get<double>());
    case Json::value_t::string: return nb::str(value.get_ref<const std::string&>().c_str());
    case Json::value_t::array: {
      nb::list list;
      for (const Json& item : value) list.append(to_python(item));
      return list;
    }
    case Json::value_t::object: {
      nb::dict dict;
      for (const auto& [key, item] : value.items()) dict[nb::str(key.c_str())] = to_python(item);
      return dict;
    }
    default: return nb::none();
  }
}

/// A NumPy array owning a copy of `values` (for results that outlive their source).
template <class T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> numpy_copy(const std::vector<T>& values) {
  auto* copy = new std::vector<T>(values);
  nb::capsule owner(copy, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T, nb::ndim<1>>(copy->data(), {copy->size()}, owner);
}

Device parse_device_name(const std::string& name) {
  if (const std::optional<Device> device = device_named(name)) return *device;
  throw InputError("device='" + name + "' is not known; expected 'auto', 'cpu' or 'cuda'");
}

Sampling parse_sampling_name(const std::string& name) {
  if (const std::optional<Sampling> sampling = sampling_named(name)) return *sampling;
  throw InputError("sampling='" + name + "' is not known; expected 'with' (replacement), 'without' "
                   "(random reshuffling) or 'fixed' (the data in order)");
}

/// "all", "pow2", "1,10,100" or a sequence of integers.
std::vector<std::int64_t> batch_sizes_from(nb::handle spec, std::int64_t n) {
  if (nb::isinstance<nb::str>(spec)) return parse_batch_sizes(nb::cast<std::string>(spec), n);
  std::vector<std::int64_t> sizes;
  try {
    for (nb::handle item : spec) sizes.push_back(nb::cast<std::int64_t>(item));
  } catch (const std::exception&) {
    throw InputError("batch_sizes must be 'all', 'pow2', a comma-separated string or a sequence of "
                     "integers in 1..N");
  }
  for (const std::int64_t b : sizes) {
    if (b < 1 || b > n) {
      throw InputError("batch size " + std::to_string(b) + " is outside 1.." + std::to_string(n) +
                       " (N = " + std::to_string(n) + ")");
    }
  }
  return sizes;
}

// ---- The model from arrays ------------------------------------------------------

/// A host array of weights as doubles; a CUDA tensor is brought to the host
/// first (weights are small: P values).
std::vector<double> weight_values(nb::handle object, const std::string& what, std::int64_t& rows,
                                  std::int64_t& cols, std::size_t& ndim) {
  AnyArray array = import_array(object, what);
  if (!on_host(array)) {
    if (!nb::hasattr(object, "cpu")) {
      throw InputError(what + " is in device memory; expected weights the host can read "
                       "(a NumPy array, or a tensor with .cpu())");
    }
    nb::object host = nb::hasattr(object, "detach") ? object.attr("detach")().attr("cpu")()
                                                     : object.attr("cpu")();
    array = import_array(host, what);
  }
  ndim = array.ndim();
  const ArrayView view = host_view(array, what);
  if (view.type != ElementType::float32 && view.type != ElementType::float64) {
    throw InputError(what + " holds " + dtype_name(array) + " values; expected float32 or float64 weights");
  }
  rows = view.rows;
  cols = view.cols;
  std::vector<double> values(static_cast<std::size_t>(rows * cols));
  copy_rows(view, 0, rows, values.data());
  return values;
}

/// The model from weights: [W1, b1, W2, b2, ...] (a 1-D array after a weight
/// is its bias; a weight not followed by one has none), [(W1, b1), (W2, None),
/// ...] or a single 2-D W. Chaining and finiteness are checked by Model::validate.
Model model_from_weights(nb::handle weights) {
  Model model;
  const auto add = [&model](nb::handle item, const std::string& what, bool bias_allowed_here) {
    std::int64_t rows = 0, cols = 0;
    std::size_t ndim = 0;
    std::vector<double> values = weight_values(item, what, rows, cols, ndim);
    if (ndim == 2) {
      Layer layer;
      layer.out = rows;
      layer.in = cols;
      layer.weight = std::move(values);
      model.layers.push_back(std::move(layer));
      return;
    }
    if (model.layers.empty() || !model.layers.back().bias.empty() || !bias_allowed_here) {
      throw InputError(what + " is a vector but does not follow a weight matrix; expected [W1, b1, "
                       "W2, b2, ...] with each bias right after its weight");
    }
    Layer& layer = model.layers.back();
    if (rows != layer.out) {
      throw InputError(what + " has " + std::to_string(rows) + " entries but its weight has " +
                       std::to_string(layer.out) + " rows; expected one bias per output");
    }
    layer.bias = std::move(values);
  };
  if (nb::isinstance<nb::list>(weights) || nb::isinstance<nb::tuple>(weights)) {
    std::size_t index = 0;
    for (nb::handle item : weights) {
      const std::string what = "weights[" + std::to_string(index++) + "]";
      if (nb::isinstance<nb::tuple>(item) || nb::isinstance<nb::list>(item)) {
        const std::size_t size = nb::len(item);
        if (size < 1 || size > 2) {
          throw InputError(what + " has " + std::to_string(size) + " items; expected (W,) or (W, b)");
        }
        const std::size_t before = model.layers.size();
        add(item[0], what + "[0]", false);
        if (model.layers.size() != before + 1) {
          throw InputError(what + "[0] is not a weight matrix; expected (W, b) with W 2-D");
        }
        if (size == 2 && !item[1].is_none()) add(item[1], what + "[1]", true);
      } else {
        add(item, what, true);
      }
    }
  } else {
    add(weights, "weights", false);
  }
  if (model.layers.empty()) {
    throw InputError("weights is empty; expected [W1, b1, W2, b2, ...] or [(W1, b1), ...]");
  }
  model.validate();
  return model;
}

// ---- Keeping caller memory alive -------------------------------------------------

/// The arrays a data source views; dropped with the GIL held, whichever
/// thread lets go of the source last.
struct HeldArrays {
  AnyArray x, y;
};

std::shared_ptr<const void> hold(AnyArray x, AnyArray y) {
  return std::shared_ptr<const void>(new HeldArrays{std::move(x), std::move(y)}, [](const void* p) {
    nb::gil_scoped_acquire gil;
    delete static_cast<const HeldArrays*>(p);
  });
}

// ---- Results ----------------------------------------------------------------------

/// A profile with what its report needs: the model's shape and the session's
/// description (shared, built once per session).
struct ProfileResult {
  Profile profile;
  Loss loss = Loss::squared;
  std::shared_ptr<const Model> model;
  std::shared_ptr<const Json> data;
  std::string device_requested;
  std::int64_t chunk_rows = 0;
  bool param_stats = false;
  std::vector<std::string> warnings;

  Json report() const {
    ReportContext context;
    context.loss = loss;
    context.model = model_json(*model);
    context.data = *data;
    context.options = {{"device_requested", device_requested},
                       {"chunk_rows", chunk_rows},
                       {"param_stats", param_stats}};
    Json json = report_json(profile, context);
    add_ranks_json(json, 1);  // one process, as report.json of a run without mpirun
    return json;
  }
};

/// The curve E‖g_B − G‖² (and of the minibatch loss) at the given batch sizes.
nb::dict curve_arrays(const Profile& profile, const std::vector<std::int64_t>& sizes) {
  const std::vector<CurvePoint> curve = batch_size_curve(profile, sizes);
  std::vector<std::int64_t> batch(curve.size());
  std::vector<double> without(curve.size()), with(curve.size()), loss_without(curve.size()),
      loss_with(curve.size());
  for (std::size_t j = 0; j < curve.size(); ++j) {
    batch[j] = curve[j].batch_size;
    without[j] = curve[j].var_without_replacement;
    with[j] = curve[j].var_with_replacement;
    loss_without[j] = curve[j].loss_var_without_replacement;
    loss_with[j] = curve[j].loss_var_with_replacement;
  }
  nb::dict out;
  out["batch_size"] = numpy_copy(batch);
  out["var_without_replacement"] = numpy_copy(without);
  out["var_with_replacement"] = numpy_copy(with);
  out["loss_var_without_replacement"] = numpy_copy(loss_without);
  out["loss_var_with_replacement"] = numpy_copy(loss_with);
  return out;
}

void warn_all(const std::vector<std::string>& warnings) {
  for (const std::string& warning : warnings) {
    if (PyErr_WarnEx(PyExc_RuntimeWarning, ("gradnoise: " + warning).c_str(), 2) != 0) {
      throw nb::python_error();
    }
  }
}

// ---- The session --------------------------------------------------------------------

class PyProfiler {
 public:
  PyProfiler(nb::handle x, nb::handle y, const std::string& loss, const std::string& device,
             std::int64_t chunk_rows, int threads, std::int64_t classes, const std::string& gpu_dtype)
      : loss_(parse_loss(loss)), device_(parse_device_name(device)), device_requested_(device),
        threads_(threads), x_object_(nb::borrow(x)), y_object_(nb::borrow(y)) {
    if (chunk_rows < 0) throw InputError("chunk_rows must be ≥ 1 (or 0 for the device's default)");
    if (threads < 0) throw InputError("threads must be ≥ 0 (0: one per hardware thread)");
    AnyArray x_array = import_array(x, "X");
    AnyArray y_array = import_array(y, "Y");
    const bool labels = loss_targets(loss_) == TargetKind::labels;
    if (on_cuda(x_array) || on_cuda(y_array)) {
      init_cuda(std::move(x_array), std::move(y_array), chunk_rows, labels, classes);
      return;
    }
    if (!on_host(x_array) || !on_host(y_array)) {
      throw InputError("X and Y must be in host or CUDA memory; got another device (DLPack device type " +
                       std::to_string(on_host(x_array) ? y_array.device_type() : x_array.device_type()) + ")");
    }
    const ArrayView x_view = host_view(x_array, "X");
    ArrayView y_view = host_view(y_array, "Y");
    if (x_array.ndim() != 2) {
      throw InputError("X has " + std::to_string(x_array.ndim()) +
                       " dimension(s); expected an N×D matrix (one sample per row)");
    }
    if (labels && y_array.ndim() != 1) {
      throw InputError("Y has shape " + shape_text(y_array) + "; " + loss_summary(loss_) +
                       " expects a vector of N integer class labels");
    }
    input_address_ = reinterpret_cast<std::uintptr_t>(x_view.data);
    auto data = std::make_shared<const BorrowedData>(
        x_view, y_view, labels ? TargetKind::labels : TargetKind::real,
        hold(std::move(x_array), std::move(y_array)), classes, "X", "Y");
    zero_copy_ = data->inputs_in_place(0, data->num_samples()) != nullptr;
    x_dtype_ = element_type_name(x_view.type);
    host_data_ = data;
    SessionOptions options;
    options.loss = loss_;
    options.device = device_;
    options.chunk_rows = chunk_rows;
    options.threads = threads;
    const std::optional<GpuDtype> dtype = gpu_dtype_named(gpu_dtype);
    if (!dtype) {
      throw InputError("gpu_dtype '" + gpu_dtype + "' is not known; expected 'float32' or 'float64'");
    }
    options.gpu_dtype = *dtype;
    session_.emplace(host_data_, options);
    describe(data->num_samples(), data->num_features(), data->num_targets());
  }

  std::string device() const {
    return session_ ? session_->device() : "cuda: " + cuda_device_name();
  }
  std::int64_t chunk_rows() const { return session_ ? session_->chunk_rows() : cuda_chunk_rows_; }
  std::int64_t n() const { return n_; }
  std::int64_t d() const { return d_; }
  std::int64_t k() const { return k_; }
  std::string loss() const { return loss_name(loss_); }
  bool zero_copy() const { return zero_copy_; }
  bool on_cuda_device() const { return !session_; }
  std::uintptr_t input_address() const { return input_address_; }

  ProfileResult profile(nb::handle weights, bool param_stats) {
    auto model = std::make_shared<const Model>(model_from_weights(weights));
    if (!session_) cuda_stream_ = torch_current_stream();
    ProfileResult result;
    {
      nb::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      result.profile = compute(*model, param_stats);
    }
    finish(result, std::move(model), param_stats);
    return result;
  }

  /// The shape at `weights` (or at the model last profiled).
  nb::tuple shape(nb::handle weights, std::int64_t spectrum, double theta, const std::string& hessian,
                  bool exact_trace_sq, nb::handle batch_sizes, nb::handle estimators,
                  std::uint64_t seed) {
    std::shared_ptr<const Model> model =
        weights.is_none() ? last_model_ : std::make_shared<const Model>(model_from_weights(weights));
    if (!model) {
      throw InputError("shape() needs weights: pass them, or call profile(weights) first");
    }
    if (hessian != "full" && hessian != "gn") {
      throw InputError("hessian='" + hessian + "' is not known; expected 'full' or 'gn' (Gauss-Newton)");
    }
    if (spectrum < 0) throw InputError("spectrum must be a number of eigenvalues ≥ 1 (or 0 for none)");
    if (!(theta >= 0) || !std::isfinite(theta)) throw InputError("theta must be a positive number (or 0 for no tests)");
    PyProfiler& host = host_session();
    ShapeOptions options;
    options.spectrum = spectrum;
    options.gauss_newton = hessian == "gn";
    options.exact_trace_sq = exact_trace_sq;
    options.theta = theta;
    options.seed = seed;
    if (!batch_sizes.is_none()) options.batch_sizes = batch_sizes_from(batch_sizes, host.n_);
    if (!estimators.is_none()) {
      std::vector<std::int64_t> spec;
      for (nb::handle item : estimators) spec.push_back(nb::cast<std::int64_t>(item));
      if (spec.size() < 2 || spec.size() > 3) {
        throw InputError("estimators must be (b_small, b_big) or (b_small, b_big, pairs)");
      }
      options.estimator_b_small = spec[0];
      options.estimator_b_big = spec[1];
      if (spec.size() == 3) options.estimator_pairs = spec[2];
    }
    ProfileResult result;
    ShapeResults shape;
    {
      nb::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(host.mutex_);
      result.profile = host.compute(*model, /*param_stats=*/theta > 0);
      shape = noise_shape(*host.session_, *model, result.profile, options);
    }
    host.finish(result, model, theta > 0);
    Json keys = Json::object();
    add_shape_json(keys, shape);
    nb::dict arrays;
    if (shape.tests) {
      const BatchTests& t = *shape.tests;
      nb::dict tests;
      tests["batch_size"] = numpy_copy(t.batch_sizes);
      tests["norm_test"] = numpy_copy(t.norm);
      tests["inner_product_test"] = numpy_copy(t.inner_product);
      tests["orthogonality_test"] = numpy_copy(t.orthogonality);
      arrays["tests"] = tests;
      arrays["gsnr"] = numpy_copy(t.gsnr);
    }
    return nb::make_tuple(to_python(keys), arrays, nb::cast(std::move(result)));
  }

  /// Σ·V or H·V for V of shape (P,) or (P, cols), at `weights`.
  nb::ndarray<nb::numpy, double> apply(nb::handle weights, nb::handle vectors, bool covariance,
                                       bool gauss_newton) {
    const Model model = model_from_weights(weights);
    const std::int64_t p = model.num_params();
    const AnyArray array = import_array(vectors, "V");
    if (!on_host(array)) throw InputError("V is in device memory; expected a host array of shape (P,) or (P, m)");
    const ArrayView view = host_view(array, "V");
    if (view.rows != p) {
      throw InputError("V has " + std::to_string(view.rows) + " rows but the model has P = " +
                       std::to_string(p) + " parameters; expected shape (P,) or (P, m)");
    }
    const std::int64_t cols = view.cols;
    // The library's blocks are column-major: vector j at [j·P, (j+1)·P).
    std::vector<double> row_major(static_cast<std::size_t>(p * cols));
    copy_rows(view, 0, p, row_major.data());
    auto in = std::make_unique<std::vector<double>>(row_major.size());
    for (std::int64_t i = 0; i < p; ++i) {
      for (std::int64_t j = 0; j < cols; ++j) (*in)[j * p + i] = row_major[i * cols + j];
    }
    std::vector<double> out(in->size());
    PyProfiler& host = host_session();
    {
      nb::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(host.mutex_);
      if (covariance) {
        const Profile profile = host.session_->profile(model, false);
        host.session_->cov_apply(model, profile.param_mean, in->data(), out.data(), cols);
      } else {
        host.session_->hessian_apply(model, gauss_newton, in->data(), out.data(), cols);
      }
    }
    // Back to the caller's (P,) or (P, m), row-major, in the buffer `in`.
    for (std::int64_t i = 0; i < p; ++i) {
      for (std::int64_t j = 0; j < cols; ++j) (*in)[i * cols + j] = out[j * p + i];
    }
    double* values = in->data();
    nb::capsule owner(in.release(), [](void* ptr) noexcept { delete static_cast<std::vector<double>*>(ptr); });
    if (array.ndim() == 1) {
      return nb::ndarray<nb::numpy, double>(values, {static_cast<std::size_t>(p)}, owner);
    }
    return nb::ndarray<nb::numpy, double>(values, {static_cast<std::size_t>(p), static_cast<std::size_t>(cols)},
                                          owner);
  }

  /// Seconds of each of `reps` calls of the C++ session's profile, timed in
  /// C++ (the benchmark's reference for the Python call overhead).
  std::vector<double> time_profile_calls(nb::handle weights, std::int64_t reps) {
    const Model model = model_from_weights(weights);
    std::vector<double> seconds;
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    for (std::int64_t r = 0; r < reps; ++r) {
      const auto start = std::chrono::steady_clock::now();
      const Profile profile = compute(model, false);
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return seconds;
  }

 private:
  static std::string shape_text(const AnyArray& array) {
    std::string text = "(";
    for (std::size_t i = 0; i < array.ndim(); ++i) text += (i ? ", " : "") + std::to_string(array.shape(i));
    return text + (array.ndim() == 1 ? ",)" : ")");
  }

  void describe(std::int64_t n, std::int64_t d, std::int64_t k) {
    n_ = n;
    d_ = d;
    k_ = k;
    data_description_ = std::make_shared<const Json>(Json{{"source", "python arrays"},
                                                          {"n", n},
                                                          {"d", d},
                                                          {"k", k},
                                                          {"x_dtype", x_dtype_},
                                                          {"zero_copy", zero_copy_},
                                                          {"on_cuda", !session_}});
  }

  /// CUDA tensors: float32 row-major X (and Y), int32 labels, on the device
  /// as given; another dtype or layout is converted on the device by the
  /// tensor's own methods (a copy there, never through the host).
  void init_cuda(AnyArray x_array, AnyArray y_array, std::int64_t chunk_rows, bool labels,
                 std::int64_t classes) {
    if (device_ == Device::cpu) {
      throw InputError("X and Y are CUDA tensors but device='cpu'; move them with .cpu() or use "
                       "device='cuda' or 'auto'");
    }
    if (!on_cuda(x_array) || !on_cuda(y_array)) {
      throw InputError("X and Y must be on the same device; one is a CUDA tensor and the other is not");
    }
    const auto to_device_layout = [](nb::object& object, AnyArray& array, const char* dtype,
                                     const std::string& what) {
      const bool contiguous = array.ndim() < 2 || (array.stride(1) == 1 &&
                                                   (array.shape(0) <= 1 || array.stride(0) == static_cast<std::int64_t>(array.shape(1))));
      const bool vector_ok = array.ndim() != 1 || array.stride(0) == 1 || array.shape(0) <= 1;
      if (dtype_name(array) == dtype && contiguous && vector_ok) return true;
      if (!nb::hasattr(object, "contiguous") || !nb::hasattr(object, "to")) {
        throw InputError(what + " is a CUDA array of " + dtype_name(array) + " that is not " + dtype +
                         " row-major; expected a " + dtype + " C-contiguous array (or a PyTorch tensor, "
                         "which is converted on the device)");
      }
      nb::object torch = nb::module_::import_("torch");
      object = object.attr("detach")().attr("to")(torch.attr(dtype)).attr("contiguous")();
      array = import_array(object, what);
      return false;
    };
    bool zero_copy = to_device_layout(x_object_, x_array, "float32", "X");
    if (x_array.ndim() != 2) throw InputError("X must be an N×D matrix (one sample per row)");
    zero_copy = to_device_layout(y_object_, y_array, labels ? "int32" : "float32", "Y") && zero_copy;
    device_data_.n = static_cast<std::int64_t>(x_array.shape(0));
    device_data_.d = static_cast<std::int64_t>(x_array.shape(1));
    if (static_cast<std::int64_t>(y_array.shape(0)) != device_data_.n) {
      throw InputError("Y has " + std::to_string(y_array.shape(0)) + " rows but X has " +
                       std::to_string(device_data_.n) + " samples; expected one target row per sample");
    }
    device_data_.x = static_cast<const float*>(x_array.data());
    if (labels) {
      if (y_array.ndim() != 1) throw InputError("Y must be a vector of N integer class labels");
      if (classes < 1) {
        // The class count is a device reduction the tensor can do.
        classes = nb::cast<std::int64_t>(y_object_.attr("max")().attr("item")()) + 1;
      }
      device_data_.k = classes;
      device_data_.labels = static_cast<const std::int32_t*>(y_array.data());
    } else {
      device_data_.k = y_array.ndim() == 2 ? static_cast<std::int64_t>(y_array.shape(1)) : 1;
      device_data_.y = static_cast<const float*>(y_array.data());
    }
    zero_copy_ = zero_copy;
    x_dtype_ = "float32";
    input_address_ = reinterpret_cast<std::uintptr_t>(device_data_.x);
    cuda_chunk_rows_ = chunk_rows;
    device_owner_ = hold(std::move(x_array), std::move(y_array));
    describe(device_data_.n, device_data_.d, device_data_.k);
  }

  /// PyTorch's current CUDA stream, so the profile is ordered after the work
  /// that wrote the tensors (null: the default stream).
  static CUstream_st* torch_current_stream() {
    nb::dict modules = nb::borrow<nb::dict>(PyImport_GetModuleDict());
    if (!modules.contains("torch")) return nullptr;
    nb::object stream = modules["torch"].attr("cuda").attr("current_stream")();
    return reinterpret_cast<CUstream_st*>(nb::cast<std::uintptr_t>(stream.attr("cuda_stream")));
  }

  Profile compute(const Model& model, bool param_stats) {
    if (session_) return session_->profile(model, param_stats);
    ProfileOptions options;
    options.loss = loss_;
    options.device = Device::cuda;
    options.param_stats = param_stats;
    options.threads = threads_;
    if (cuda_chunk_rows_ > 0) options.chunk_rows = cuda_chunk_rows_;
    return profile_cuda_device(model, device_data_, options, cuda_stream_);
  }

  void finish(ProfileResult& result, std::shared_ptr<const Model> model, bool param_stats) {
    if (host_data_ && rounding_floor_ < 0) rounding_floor_ = rounding_grad_norm_sq(*host_data_);
    const std::string rounding =
        undefine_rounding_ratios(result.profile, std::max(rounding_floor_, 0.0));
    result.warnings = profile_warnings(result.profile);
    if (!rounding.empty()) result.warnings.push_back(rounding);
    result.loss = loss_;
    result.model = model;
    result.data = data_description_;
    result.device_requested = device_requested_;
    result.chunk_rows = chunk_rows();
    result.param_stats = param_stats;
    last_model_ = std::move(model);
    warn_all(result.warnings);
  }

  /// The session the shape analyses and Σ·V / H·V run in: this one, or for
  /// CUDA tensors one over a host copy of them (made once; the analyses
  /// stream host data).
  PyProfiler& host_session() {
    if (session_) return *this;
    if (!host_copy_) {
      nb::object x = x_object_.attr("detach")().attr("cpu")();
      nb::object y = y_object_.attr("detach")().attr("cpu")();
      host_copy_ =
          std::make_unique<PyProfiler>(x, y, loss_name(loss_), "auto", 0, threads_, k_, "float32");
    }
    return *host_copy_;
  }

  Loss loss_;
  Device device_;
  std::string device_requested_;
  int threads_ = 0;
  nb::object x_object_, y_object_;
  std::int64_t n_ = 0, d_ = 0, k_ = 0;
  bool zero_copy_ = false;
  std::string x_dtype_;
  std::uintptr_t input_address_ = 0;
  std::shared_ptr<const Json> data_description_;
  std::mutex mutex_;

  // Host data: a session over the caller's memory.
  std::shared_ptr<const BorrowedData> host_data_;
  std::optional<Profiler> session_;
  double rounding_floor_ = -1;

  // CUDA data: the device-resident profile.
  DeviceData device_data_;
  std::shared_ptr<const void> device_owner_;
  std::int64_t cuda_chunk_rows_ = 0;
  CUstream_st* cuda_stream_ = nullptr;
  std::unique_ptr<PyProfiler> host_copy_;

  std::shared_ptr<const Model> last_model_;
};

// ---- Sweeps -------------------------------------------------------------------------

/// The whole data set as float64 (a sweep keeps its own copy).
Dataset dataset_copy(nb::handle x, nb::handle y, Loss loss, const std::string& x_name,
                     const std::string& y_name, std::int64_t classes) {
  AnyArray x_array = import_array(x, x_name);
  AnyArray y_array = import_array(y, y_name);
  if (!on_host(x_array) || !on_host(y_array)) {
    throw InputError(x_name + " and " + y_name + " must be host arrays for a sweep (which keeps its own "
                     "float64 copy); move tensors with .cpu()");
  }
  const bool labels = loss_targets(loss) == TargetKind::labels;
  const BorrowedData view(host_view(x_array, x_name), host_view(y_array, y_name),
                          labels ? TargetKind::labels : TargetKind::real, {}, classes, x_name, y_name);
  Dataset data;
  data.n = view.num_samples();
  data.d = view.num_features();
  data.k = view.num_targets();
  data.x.resize(static_cast<std::size_t>(data.n * data.d));
  if (labels) {
    data.labels.resize(static_cast<std::size_t>(data.n));
  } else {
    data.y.resize(static_cast<std::size_t>(data.n * data.k));
  }
  view.read(0, data.n, data.x.data(), labels ? nullptr : data.y.data(), labels ? data.labels.data() : nullptr);
  return data;
}

nb::tuple run_sweep(nb::handle x, nb::handle y, nb::handle batch_sizes, std::vector<double> lrs,
                    std::int64_t replicas, std::int64_t steps, nb::handle weights,
                    std::vector<std::int64_t> hidden, bool bias, const std::string& init,
                    const std::string& loss_text, const std::string& sampling, double label_noise,
                    double weight_decay, double momentum, std::int64_t log_every, std::uint64_t seed,
                    bool profile_runs, const std::string& device, int threads, nb::handle test,
                    std::int64_t first_replica, double divergence_factor) {
  const Loss loss = parse_loss(loss_text);
  Dataset train = dataset_copy(x, y, loss, "X", "Y", 0);
  Model model;
  Json model_description;
  if (!weights.is_none()) {
    model = model_from_weights(weights);
    model_description = model_json(model);
    model_description["init"] = "given";
  } else {
    if (init == "lstsq") {
      if (!hidden.empty()) throw InputError("init='lstsq' fits the linear model; hidden must be empty");
      model = fit_least_squares(train, bias);
    } else if (init == "zeros" || init == "gaussian") {
      std::vector<std::int64_t> widths{train.d};
      widths.insert(widths.end(), hidden.begin(), hidden.end());
      widths.push_back(train.k);
      model = make_model(widths, bias, init == "zeros" ? Init::zeros : Init::gaussian, seed);
    } else {
      throw InputError("init='" + init + "' is not known; expected 'zeros', 'gaussian' or 'lstsq'");
    }
    model_description = model_json(model);
    model_description["init"] = init;
    model_description["seed"] = seed;
  }
  std::optional<Dataset> test_data;
  if (!test.is_none()) {
    if (nb::len(test) != 2) throw InputError("test must be a pair (X_test, Y_test)");
    test_data = dataset_copy(test[0], test[1], loss, "test[0]", "test[1]", train.k);
  }
  SweepConfig config;
  config.loss = loss;
  config.batch_sizes = batch_sizes_from(batch_sizes, train.n);
  config.lrs = std::move(lrs);
  config.replicas = replicas;
  config.first_replica = first_replica;
  config.steps = steps;
  config.sampling = parse_sampling_name(sampling);
  config.label_noise = label_noise;
  config.weight_decay = weight_decay;
  config.momentum = momentum;
  config.log_every = log_every > 0 ? log_every : std::max<std::int64_t>(1, (steps + 19) / 20);
  config.seed = seed;
  config.profile = profile_runs;
  config.divergence_factor = divergence_factor;
  config.threads = threads;
  config.device = parse_device_name(device);

  SweepResult result;
  Profile start;
  {
    nb::gil_scoped_release release;
    Sweep sweep(model, train, test_data ? &*test_data : nullptr, config);
    ProfileOptions start_options;
    start_options.loss = loss;
    start_options.device = Device::cpu;
    start = gradnoise::profile(model, train, start_options);
    sweep.run();
    result = sweep.result();
  }
  Json data_description{{"source", "python arrays"}, {"n", train.n}, {"d", train.d}, {"k", train.k}};
  const SweepReportContext context{data_description, model_description, test_data.has_value(), device};
  const Json summary = sweep_summary_json(result, config, start, context);

  // The rows as columns (sweep --out's CSV columns); absent values are NaN.
  const std::size_t count = result.rows.size();
  const double nan = std::nan("");
  std::vector<std::int64_t> run(count), batch(count), replica(count), step(count);
  std::vector<double> lr(count), epoch(count), train_loss(count), test_loss(count), test_accuracy(count),
      grad_norm_sq(count), trace_cov(count), noise_scale(count), minibatch_loss(count),
      minibatch_grad(count), weight_norm(count);
  std::vector<std::uint8_t> diverged(count);
  for (std::size_t i = 0; i < count; ++i) {
    const SweepRow& row = result.rows[i];
    run[i] = row.run;
    batch[i] = row.batch_size;
    lr[i] = row.lr;
    replica[i] = row.replica;
    step[i] = row.step;
    epoch[i] = row.epoch;
    diverged[i] = row.diverged;
    train_loss[i] = row.diverged ? nan : row.train_loss;
    test_loss[i] = row.diverged ? nan : row.test_loss.value_or(nan);
    test_accuracy[i] = row.diverged ? nan : row.test_accuracy.value_or(nan);
    grad_norm_sq[i] = row.diverged ? nan : row.grad_norm_sq.value_or(nan);
    trace_cov[i] = row.diverged ? nan : row.trace_cov.value_or(nan);
    noise_scale[i] = row.diverged ? nan : row.noise_scale_simple.value_or(nan);
    minibatch_loss[i] = row.diverged ? nan : row.minibatch_loss;
    minibatch_grad[i] = row.diverged ? nan : row.minibatch_grad_norm_sq;
    weight_norm[i] = row.diverged ? nan : row.weight_norm_sq;
  }
  nb::dict rows;
  rows["run"] = numpy_copy(run);
  rows["batch_size"] = numpy_copy(batch);
  rows["lr"] = numpy_copy(lr);
  rows["replica"] = numpy_copy(replica);
  rows["step"] = numpy_copy(step);
  rows["epoch"] = numpy_copy(epoch);
  rows["diverged"] = numpy_copy(diverged);
  rows["train_loss"] = numpy_copy(train_loss);
  rows["test_loss"] = numpy_copy(test_loss);
  rows["test_accuracy"] = numpy_copy(test_accuracy);
  rows["grad_norm_sq"] = numpy_copy(grad_norm_sq);
  rows["trace_cov"] = numpy_copy(trace_cov);
  rows["noise_scale_simple"] = numpy_copy(noise_scale);
  rows["minibatch_loss"] = numpy_copy(minibatch_loss);
  rows["minibatch_grad_norm_sq"] = numpy_copy(minibatch_grad);
  rows["weight_norm_sq"] = numpy_copy(weight_norm);

  std::vector<double> flat;
  for (const std::vector<double>& w : result.final_weights) flat.insert(flat.end(), w.begin(), w.end());
  auto* weights_copy = new std::vector<double>(std::move(flat));
  nb::capsule owner(weights_copy, [](void* p) noexcept { delete static_cast<std::vector<double>*>(p); });
  nb::ndarray<nb::numpy, double, nb::ndim<2>> final_weights(
      weights_copy->data(), {result.final_weights.size(), static_cast<std::size_t>(result.num_params)}, owner);
  return nb::make_tuple(to_python(summary), rows, final_weights);
}

/// Fashion-MNIST by the library's reader: (X N×784 float64 in [0, 1], labels
/// int32), the arrays owning the loaded vectors (no copy).
nb::tuple fashion_mnist(const std::string& split, std::int64_t limit) {
  auto data = std::make_shared<Dataset>(load_fashion_mnist(fashion_mnist_dir(), split, Loss::cross_entropy, limit));
  auto* keep = new std::shared_ptr<Dataset>(data);
  nb::capsule owner(keep, [](void* p) noexcept { delete static_cast<std::shared_ptr<Dataset>*>(p); });
  nb::ndarray<nb::numpy, double, nb::ndim<2>> x(data->x.data(),
                                                {static_cast<std::size_t>(data->n), static_cast<std::size_t>(data->d)},
                                                owner);
  nb::ndarray<nb::numpy, std::int32_t, nb::ndim<1>> labels(data->labels.data(),
                                                           {static_cast<std::size_t>(data->n)}, owner);
  return nb::make_tuple(x, labels);
}

}  // namespace
}  // namespace gradnoise::python

NB_MODULE(_gradnoise, m) {
  using namespace gradnoise;
  using namespace gradnoise::python;
  m.doc() = "gradnoise's C++ library (the session, profiles, the noise's shape, sweeps); "
            "use it through the gradnoise package.";

  nb::register_exception_translator([](const std::exception_ptr& error, void*) {
    try {
      std::rethrow_exception(error);
    } catch (const InputError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const gradnoise::RuntimeError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  m.def("version", &gradnoise::version, "The library's version.");
  m.def("cuda_built", &cuda_built, "Whether this build contains the CUDA backend.");
  m.def("cuda_device_count", &cuda_device_count, "Usable CUDA devices (0 without the backend or a GPU).");
  m.def("losses", [] {
    std::vector<std::string> names;
    for (const Loss loss : all_losses()) names.push_back(loss_name(loss));
    return names;
  }, "The loss names: 'mse', 'ce', 'bce'.");

  m.def("fashion_mnist", &fashion_mnist, nb::arg("split") = "train", nb::arg("limit") = 0,
        "Fashion-MNIST from Debian's dataset-fashion-mnist (or $GRADNOISE_FASHION_MNIST_DIR): "
        "(X, labels) with X N×784 float64 pixels in [0, 1] and int32 labels in [0, 10); "
        "split 'train' (60000) or 'test' (10000); limit > 0 keeps the first `limit` samples.");

  nb::class_<LayerProfile>(m, "LayerProfile", "One layer's share of a profile.")
      .def_ro("name", &LayerProfile::name)
      .def_ro("num_params", &LayerProfile::num_params)
      .def_ro("grad_norm_sq", &LayerProfile::grad_norm_sq, "‖G_l‖²")
      .def_ro("trace_cov", &LayerProfile::trace_cov, "tr Σ_l")
      .def_ro("mean_sample_grad_norm_sq", &LayerProfile::mean_sample_grad_norm_sq, "(1/N) Σ_i ‖g_{l,i}‖²")
      .def_ro("noise_scale_simple", &LayerProfile::noise_scale_simple,
              "tr Σ_l / ‖G_l‖² (inf when ‖G_l‖² = 0; NaN at an exact fit)")
      .def("__repr__", [](const LayerProfile& l) {
        return "LayerProfile(name='" + l.name + "', num_params=" + std::to_string(l.num_params) +
               ", grad_norm_sq=" + std::to_string(l.grad_norm_sq) + ", trace_cov=" + std::to_string(l.trace_cov) + ")";
      });

  nb::class_<ProfileResult>(m, "Profile", "The exact gradient-noise profile at one θ (docs/MATH.md).")
      .def_prop_ro("n", [](const ProfileResult& r) { return r.profile.n; }, "N, the samples.")
      .def_prop_ro("num_params", [](const ProfileResult& r) { return r.profile.num_params; }, "P.")
      .def_prop_ro("loss", [](const ProfileResult& r) { return r.profile.loss; }, "L(θ) = mean ℓ_i.")
      .def_prop_ro("loss_var", [](const ProfileResult& r) { return r.profile.loss_var; }, "Var_i(ℓ_i).")
      .def_prop_ro("grad_norm_sq", [](const ProfileResult& r) { return r.profile.grad_norm_sq; }, "‖G‖².")
      .def_prop_ro("trace_cov", [](const ProfileResult& r) { return r.profile.trace_cov; }, "tr Σ.")
      .def_prop_ro("mean_sample_grad_norm_sq", [](const ProfileResult& r) { return r.profile.mean_sample_grad_norm_sq; },
                   "(1/N) Σ_i ‖g_i‖² = ‖G‖² + tr Σ.")
      .def_prop_ro("noise_scale_simple", [](const ProfileResult& r) { return r.profile.noise_scale_simple; },
                   "B_simple = tr Σ / ‖G‖² (inf when ‖G‖² = 0, NaN at an exact fit; None in to_dict()).")
      .def_prop_ro("layers", [](const ProfileResult& r) { return r.profile.layers; }, "Per layer, input to output.")
      .def_prop_ro("param_mean", [](nb::handle self) {
        const ProfileResult& r = nb::cast<const ProfileResult&>(self);
        return nb::ndarray<nb::numpy, const double, nb::ndim<1>>(r.profile.param_mean.data(),
                                                                {r.profile.param_mean.size()}, self);
      }, "G per parameter (W1 row-major, b1, W2, b2, ...), read-only.")
      .def_prop_ro("param_var", [](nb::handle self) -> nb::object {
        const ProfileResult& r = nb::cast<const ProfileResult&>(self);
        if (r.profile.param_var.empty()) return nb::none();
        return nb::cast(nb::ndarray<nb::numpy, const double, nb::ndim<1>>(
            r.profile.param_var.data(), {r.profile.param_var.size()}, self));
      }, "diag Σ per parameter; None unless profile(..., param_stats=True).")
      .def_prop_ro("device", [](const ProfileResult& r) { return r.profile.device; }, "'cpu' or the GPU's name.")
      .def_prop_ro("elapsed_s", [](const ProfileResult& r) { return r.profile.elapsed_s; })
      .def_prop_ro("loss_kind", [](const ProfileResult& r) { return loss_name(r.loss); }, "'mse', 'ce' or 'bce'.")
      .def_ro("warnings", &ProfileResult::warnings, "What to know about the numbers (also issued as RuntimeWarning).")
      .def("curve", [](const ProfileResult& r, nb::handle batch_sizes) {
        return curve_arrays(r.profile, batch_sizes_from(batch_sizes, r.profile.n));
      }, nb::arg("batch_sizes") = "all",
         "E‖g_B − G‖² for every batch size asked ('all', 'pow2', 'B1,B2,...' or a sequence): a dict of "
         "arrays batch_size, var_without_replacement, var_with_replacement, loss_var_without_replacement, "
         "loss_var_with_replacement.")
      .def("to_dict", [](const ProfileResult& r) { return to_python(r.report()); },
           "The report as `gradnoise profile --out` writes it (report.json's keys; null for non-finite).")
      .def("__repr__", [](const ProfileResult& r) {
        return "Profile(n=" + std::to_string(r.profile.n) + ", num_params=" + std::to_string(r.profile.num_params) +
               ", grad_norm_sq=" + std::to_string(r.profile.grad_norm_sq) + ", trace_cov=" +
               std::to_string(r.profile.trace_cov) + ", noise_scale_simple=" +
               std::to_string(r.profile.noise_scale_simple) + ", device='" + r.profile.device + "')";
      });

  nb::class_<PyProfiler>(m, "_Profiler")
      .def(nb::init<nb::handle, nb::handle, const std::string&, const std::string&, std::int64_t, int,
                    std::int64_t, const std::string&>(),
           nb::arg("X"), nb::arg("Y"), nb::arg("loss") = "mse", nb::arg("device") = "auto",
           nb::arg("chunk_rows") = 0, nb::arg("threads") = 0, nb::arg("classes") = 0,
           nb::arg("gpu_dtype") = "float32")
      .def_prop_ro("device", &PyProfiler::device)
      .def_prop_ro("loss", &PyProfiler::loss)
      .def_prop_ro("chunk_rows", &PyProfiler::chunk_rows)
      .def_prop_ro("n", &PyProfiler::n)
      .def_prop_ro("d", &PyProfiler::d)
      .def_prop_ro("k", &PyProfiler::k)
      .def_prop_ro("zero_copy", &PyProfiler::zero_copy)
      .def_prop_ro("on_cuda", &PyProfiler::on_cuda_device)
      .def_prop_ro("input_address", &PyProfiler::input_address)
      .def("profile", &PyProfiler::profile, nb::arg("weights"), nb::arg("param_stats") = false,
           "profile(weights, param_stats=False) -> Profile\n\n"
           "The exact profile at `weights`: [W1, b1, W2, b2, ...] (a bias right after its weight; "
           "a weight not followed by a vector has none), [(W1, b1), (W2, None), ...] or one 2-D W; "
           "NumPy arrays or tensors, float32 or float64, W out×in. param_stats=True adds param_var "
           "(diag Σ). One pass over the data, with the GIL released.")
      .def("shape", &PyProfiler::shape, nb::arg("weights").none(), nb::arg("spectrum"), nb::arg("theta"),
           nb::arg("hessian"), nb::arg("exact_trace_sq"), nb::arg("batch_sizes").none(),
           nb::arg("estimators").none(), nb::arg("seed"))
      .def("apply", &PyProfiler::apply, nb::arg("weights"), nb::arg("vectors"), nb::arg("covariance"),
           nb::arg("gauss_newton"))
      .def("_time_profile_calls", &PyProfiler::time_profile_calls, nb::arg("weights"), nb::arg("reps"));

  m.def("_sweep", &run_sweep, nb::arg("X"), nb::arg("Y"), nb::arg("batch_sizes"), nb::arg("lrs"),
        nb::arg("replicas"), nb::arg("steps"), nb::arg("weights").none(), nb::arg("hidden"), nb::arg("bias"),
        nb::arg("init"), nb::arg("loss"), nb::arg("sampling"), nb::arg("label_noise"), nb::arg("weight_decay"),
        nb::arg("momentum"), nb::arg("log_every"), nb::arg("seed"), nb::arg("profile"), nb::arg("device"),
        nb::arg("threads"), nb::arg("test").none(), nb::arg("first_replica"), nb::arg("divergence_factor"));
}
