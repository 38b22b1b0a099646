#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "gradnoise/error.hpp"
#include "gradnoise/model.hpp"
#include "random.hpp"

// LAPACK's minimum-norm least-squares solver (SVD with divide and conquer).
extern "C" void dgelsd_(const int* m, const int* n, const int* nrhs, double* a, const int* lda,
                        double* b, const int* ldb, double* s, const double* rcond, int* rank,
                        double* work, const int* lwork, int* iwork, int* info);

namespace gradnoise {

std::int64_t Model::num_params() const {
  std::int64_t total = 0;
  for (const Layer& layer : layers) total += layer.num_params();
  return total;
}

std::int64_t Model::param_offset(std::int64_t layer) const {
  std::int64_t offset = 0;
  for (std::int64_t l = 0; l < layer; ++l) offset += layers[l].num_params();
  return offset;
}

std::string Model::layer_name(std::int64_t layer) { return "layer" + std::to_string(layer + 1); }

void Model::validate() const {
  if (layers.empty()) throw InputError("the model has no layers; expected at least one");
  for (std::int64_t l = 0; l < num_layers(); ++l) {
    const Layer& layer = layers[l];
    const std::string name = layer_name(l);
    if (layer.out < 1 || layer.in < 1) {
      throw InputError(name + " has shape " + std::to_string(layer.out) + "×" +
                       std::to_string(layer.in) + "; expected positive dimensions");
    }
    if (static_cast<std::int64_t>(layer.weight.size()) != layer.out * layer.in) {
      throw InputError(name + " has " + std::to_string(layer.weight.size()) +
                       " weights; expected out×in = " + std::to_string(layer.out * layer.in));
    }
    if (layer.has_bias() && static_cast<std::int64_t>(layer.bias.size()) != layer.out) {
      throw InputError(name + " has a bias of length " + std::to_string(layer.bias.size()) +
                       "; expected " + std::to_string(layer.out) + " (its number of outputs)");
    }
    if (l > 0 && layer.in != layers[l - 1].out) {
      throw InputError(name + " takes " + std::to_string(layer.in) + " inputs but " +
                       layer_name(l - 1) + " gives " + std::to_string(layers[l - 1].out) +
                       " outputs; consecutive layers must chain");
    }
    const auto finite = [](double v) { return std::isfinite(v); };
    if (!std::all_of(layer.weight.begin(), layer.weight.end(), finite)) {
      throw InputError(name + " has a non-finite weight; expected finite numbers");
    }
    if (!std::all_of(layer.bias.begin(), layer.bias.end(), finite)) {
      throw InputError(name + " has a non-finite bias; expected finite numbers");
    }
  }
}

std::vector<double> Model::flatten() const {
  std::vector<double> theta;
  theta.reserve(static_cast<std::size_t>(num_params()));
  for (const Layer& layer : layers) {
    theta.insert(theta.end(), layer.weight.begin(), layer.weight.end());
    theta.insert(theta.end(), layer.bias.begin(), layer.bias.end());
  }
  return theta;
}

void Model::unflatten(std::span<const double> theta) {
  if (static_cast<std::int64_t>(theta.size()) != num_params()) {
    throw InputError("a parameter vector of length " + std::to_string(theta.size()) +
                     " does not fit a model of " + std::to_string(num_params()) + " parameters");
  }
  auto it = theta.begin();
  for (Layer& layer : layers) {
    std::copy_n(it, layer.weight.size(), layer.weight.begin());
    it += static_cast<std::ptrdiff_t>(layer.weight.size());
    std::copy_n(it, layer.bias.size(), layer.bias.begin());
    it += static_cast<std::ptrdiff_t>(layer.bias.size());
  }
}

Model make_model(std::span<const std::int64_t> widths, bool bias, Init init, std::uint64_t seed) {
  if (widths.size() < 2) {
    throw InputError("a model needs at least an input and an output width");
  }
  if (init == Init::lstsq) {
    throw InputError("--init lstsq is fitted to the data (fit_least_squares), not drawn");
  }
  Model model;
  for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
    if (widths[l] < 1 || widths[l + 1] < 1) {
      throw InputError("layer widths must be positive; got " + std::to_string(widths[l]) + " → " +
                       std::to_string(widths[l + 1]));
    }
    Layer layer;
    layer.in = widths[l];
    layer.out = widths[l + 1];
    layer.weight.assign(static_cast<std::size_t>(layer.out * layer.in), 0.0);
    if (bias) layer.bias.assign(static_cast<std::size_t>(layer.out), 0.0);
    if (init == Init::gaussian) {
      // Variance 1/fan-in keeps activations O(1) through the chain; one
      // counter stream per layer so adding a layer leaves the others unchanged.
      for (std::int64_t r = 0; r < layer.out; ++r) {
        detail::fill_normals(seed, static_cast<std::uint32_t>(l), static_cast<std::uint64_t>(r),
                             layer.weight.data() + r * layer.in, layer.in);
      }
      const double scale = 1.0 / std::sqrt(static_cast<double>(layer.in));
      for (double& w : layer.weight) w *= scale;
    }
    model.layers.push_back(std::move(layer));
  }
  return model;
}

Model fit_least_squares(const DataSource& data, bool bias) {
  if (data.target_kind() != TargetKind::real) {
    throw InputError("--init lstsq needs real targets (squared loss); got class labels");
  }
  const std::int64_t n = data.num_samples();
  const std::int64_t d = data.num_features();
  const std::int64_t k = data.num_targets();
  const std::int64_t cols = d + (bias ? 1 : 0);
  if (n > std::numeric_limits<int>::max() || cols > std::numeric_limits<int>::max()) {
    throw InputError("--init lstsq supports at most 2^31 samples and features");
  }
  // LAPACK wants column-major A (n×cols) and B (max(n, cols)×k).
  const std::int64_t ldb = std::max(n, cols);
  std::vector<double> a(static_cast<std::size_t>(n * cols));
  std::vector<double> b(static_cast<std::size_t>(ldb * k), 0.0);
  {
    std::vector<double> x(static_cast<std::size_t>(n * d));
    std::vector<double> y(static_cast<std::size_t>(n * k));
    data.read(0, n, x.data(), y.data(), nullptr);
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < d; ++j) a[j * n + i] = x[i * d + j];
      if (bias) a[d * n + i] = 1.0;
      for (std::int64_t c = 0; c < k; ++c) b[c * ldb + i] = y[i * k + c];
    }
  }
  const int m_i = static_cast<int>(n), n_i = static_cast<int>(cols), k_i = static_cast<int>(k);
  const int lda = m_i, ldb_i = static_cast<int>(ldb);
  // Singular values below eps·max(n, cols)·σ_max count as zero (NumPy's default).
  const double rcond = std::numeric_limits<double>::epsilon() * static_cast<double>(ldb);
  std::vector<double> singular(static_cast<std::size_t>(std::min(n, cols)));
  int rank = 0, info = 0, lwork = -1, iwork_query = 0;
  double work_query = 0;
  dgelsd_(&m_i, &n_i, &k_i, a.data(), &lda, b.data(), &ldb_i, singular.data(), &rcond, &rank,
          &work_query, &lwork, &iwork_query, &info);
  if (info != 0) throw RuntimeError("LAPACK dgelsd workspace query failed (info " + std::to_string(info) + ")");
  lwork = static_cast<int>(work_query);
  std::vector<double> work(static_cast<std::size_t>(lwork));
  std::vector<int> iwork(static_cast<std::size_t>(std::max(iwork_query, 1)));
  dgelsd_(&m_i, &n_i, &k_i, a.data(), &lda, b.data(), &ldb_i, singular.data(), &rcond, &rank,
          work.data(), &lwork, iwork.data(), &info);
  if (info != 0) {
    throw RuntimeError("the least-squares fit did not converge (LAPACK dgelsd info " +
                       std::to_string(info) + ")");
  }
  Layer layer;
  layer.out = k;
  layer.in = d;
  layer.weight.resize(static_cast<std::size_t>(k * d));
  for (std::int64_t c = 0; c < k; ++c) {
    for (std::int64_t j = 0; j < d; ++j) layer.weight[c * d + j] = b[c * ldb + j];
  }
  if (bias) {
    layer.bias.resize(static_cast<std::size_t>(k));
    for (std::int64_t c = 0; c < k; ++c) layer.bias[c] = b[c * ldb + d];
  }
  Model model;
  model.layers.push_back(std::move(layer));
  return model;
}

}  // namespace gradnoise
