#include "brute_force.hpp"

#include <chrono>
#include <cmath>
#include <limits>

namespace gradnoise {
namespace {

/// Forward and backward for one sample; writes its gradient into g (P slots).
double sample_gradient(const Model& model, const double* x, const double* y, std::int32_t label,
                       Loss loss, double* g) {
  const auto num_layers = static_cast<std::size_t>(model.num_layers());
  std::vector<std::vector<double>> a(num_layers + 1);
  a[0].assign(x, x + model.input_dim());
  for (std::size_t l = 0; l < num_layers; ++l) {
    const Layer& layer = model.layers[l];
    a[l + 1].assign(static_cast<std::size_t>(layer.out), 0.0);
    for (std::int64_t r = 0; r < layer.out; ++r) {
      double z = layer.has_bias() ? layer.bias[r] : 0.0;
      for (std::int64_t s = 0; s < layer.in; ++s) z += layer.weight[r * layer.in + s] * a[l][s];
      a[l + 1][r] = z;
    }
  }
  const std::vector<double>& f = a[num_layers];
  const auto k = static_cast<std::int64_t>(f.size());
  std::vector<double> delta(f.size());
  double value = 0;
  if (loss == Loss::squared) {
    for (std::int64_t c = 0; c < k; ++c) {
      delta[c] = f[c] - y[c];
      value += 0.5 * delta[c] * delta[c];
    }
  } else if (loss == Loss::binary_cross_entropy) {
    // Straight from the definition (no stabilisation): the tests keep |z| small.
    for (std::int64_t c = 0; c < k; ++c) {
      delta[c] = 1.0 / (1.0 + std::exp(-f[c])) - y[c];
      value += std::log(1.0 + std::exp(f[c])) - y[c] * f[c];
    }
  } else {
    double z_max = -std::numeric_limits<double>::infinity();
    for (double z : f) z_max = std::max(z_max, z);
    double total = 0;
    for (double z : f) total += std::exp(z - z_max);
    for (std::int64_t c = 0; c < k; ++c) delta[c] = std::exp(f[c] - z_max) / total;
    delta[label] -= 1.0;
    value = std::log(total) + z_max - f[label];
  }
  // Backward, last layer first; slots per docs/MATH.md: W_l row-major, then b_l.
  for (std::size_t l = num_layers; l-- > 0;) {
    const Layer& layer = model.layers[l];
    double* slot = g + model.param_offset(static_cast<std::int64_t>(l));
    for (std::int64_t r = 0; r < layer.out; ++r) {
      for (std::int64_t s = 0; s < layer.in; ++s) slot[r * layer.in + s] = delta[r] * a[l][s];
    }
    if (layer.has_bias()) {
      for (std::int64_t r = 0; r < layer.out; ++r) slot[layer.out * layer.in + r] = delta[r];
    }
    std::vector<double> below(static_cast<std::size_t>(layer.in), 0.0);
    for (std::int64_t r = 0; r < layer.out; ++r) {
      for (std::int64_t s = 0; s < layer.in; ++s) below[s] += layer.weight[r * layer.in + s] * delta[r];
    }
    delta = std::move(below);
  }
  return value;
}

}  // namespace

PerSample per_sample_gradients(const Model& model, const DataSource& data, Loss loss) {
  PerSample out;
  out.n = data.num_samples();
  out.p = model.num_params();
  const std::int64_t d = data.num_features();
  const std::int64_t k = data.num_targets();
  std::vector<double> x(static_cast<std::size_t>(out.n * d));
  const bool real = loss != Loss::cross_entropy;
  std::vector<double> y(real ? static_cast<std::size_t>(out.n * k) : 0);
  std::vector<std::int32_t> labels(real ? 0 : static_cast<std::size_t>(out.n));
  data.read(0, out.n, x.data(), y.data(), labels.data());
  out.loss.resize(static_cast<std::size_t>(out.n));
  out.grads.assign(static_cast<std::size_t>(out.n * out.p), 0.0);
  for (std::int64_t i = 0; i < out.n; ++i) {
    out.loss[i] = sample_gradient(model, x.data() + i * d,
                                  real ? y.data() + i * k : nullptr, real ? 0 : labels[i], loss,
                                  out.grads.data() + i * out.p);
  }
  return out;
}

double full_loss(const Model& model, const DataSource& data, Loss loss) {
  const PerSample ps = per_sample_gradients(model, data, loss);
  double total = 0;
  for (double v : ps.loss) total += v;
  return total / static_cast<double>(ps.n);
}

Profile profile_brute_force(const Model& model, const DataSource& data, Loss loss,
                            bool param_stats) {
  const auto start = std::chrono::steady_clock::now();
  const PerSample ps = per_sample_gradients(model, data, loss);
  const std::int64_t n = ps.n, p = ps.p;
  const double inv_n = 1.0 / static_cast<double>(n);

  Profile out;
  out.n = n;
  out.num_params = p;
  out.param_mean.assign(static_cast<std::size_t>(p), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < p; ++j) out.param_mean[j] += ps.grads[i * p + j];
  }
  for (double& g : out.param_mean) g *= inv_n;
  std::vector<double> var(static_cast<std::size_t>(p), 0.0);
  std::vector<double> sample_norm_sq(static_cast<std::size_t>(p), 0.0);  // Σ_i g_ij²
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < p; ++j) {
      const double g = ps.grads[i * p + j];
      const double e = g - out.param_mean[j];
      var[j] += e * e;
      sample_norm_sq[j] += g * g;
    }
  }
  for (double& v : var) v *= inv_n;

  for (std::int64_t l = 0; l < model.num_layers(); ++l) {
    LayerProfile lp;
    lp.name = Model::layer_name(l);
    lp.num_params = model.layers[l].num_params();
    const std::int64_t begin = model.param_offset(l);
    for (std::int64_t j = begin; j < begin + lp.num_params; ++j) {
      lp.grad_norm_sq += out.param_mean[j] * out.param_mean[j];
      lp.trace_cov += var[j];
      lp.mean_sample_grad_norm_sq += sample_norm_sq[j] * inv_n;
    }
    lp.noise_scale_simple = lp.grad_norm_sq > 0 ? lp.trace_cov / lp.grad_norm_sq
                                                : std::numeric_limits<double>::infinity();
    out.grad_norm_sq += lp.grad_norm_sq;
    out.trace_cov += lp.trace_cov;
    out.mean_sample_grad_norm_sq += lp.mean_sample_grad_norm_sq;
    out.layers.push_back(lp);
  }
  out.noise_scale_simple = out.grad_norm_sq > 0 ? out.trace_cov / out.grad_norm_sq
                                                : std::numeric_limits<double>::infinity();
  for (double v : ps.loss) out.loss += v;
  out.loss *= inv_n;
  for (double v : ps.loss) out.loss_var += (v - out.loss) * (v - out.loss);
  out.loss_var *= inv_n;
  if (param_stats) out.param_var = std::move(var);
  out.device = "brute-force";
  out.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace gradnoise
