#include "chunk_pass.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "gradnoise/error.hpp"
#include "moments.hpp"

namespace gradnoise::detail {

void for_each_chunk(const Model& model, const DataSource& data, Loss loss, std::int64_t chunk_rows,
                    const std::function<void(const ChunkView&)>& visit) {
  const std::int64_t n = data.num_samples();
  const std::int64_t k = model.output_dim();
  const std::int64_t num_layers = model.num_layers();
  const std::int64_t chunk = std::max<std::int64_t>(1, std::min(chunk_rows, n));
  std::vector<std::vector<double>> inputs, errors;
  for (const Layer& layer : model.layers) {
    inputs.emplace_back(static_cast<std::size_t>(chunk * layer.in));
    errors.emplace_back(static_cast<std::size_t>(chunk * layer.out));
  }
  std::vector<double> output(static_cast<std::size_t>(chunk * k)), losses(static_cast<std::size_t>(chunk));
  std::vector<double> y(loss == Loss::squared ? static_cast<std::size_t>(chunk * k) : 0);
  std::vector<std::int32_t> labels(loss == Loss::squared ? 0 : static_cast<std::size_t>(chunk));

  ChunkView view;
  for (std::int64_t l = 0; l < num_layers; ++l) {
    view.inputs.push_back(inputs[l].data());
    view.errors.push_back(errors[l].data());
  }
  view.outputs = output.data();
  view.losses = losses.data();
  for (std::int64_t first = 0; first < n; first += chunk) {
    const std::int64_t m = std::min(chunk, n - first);
    data.read(first, m, inputs[0].data(), y.empty() ? nullptr : y.data(),
              labels.empty() ? nullptr : labels.data());
    for (std::int64_t l = 0; l < num_layers; ++l) {
      const Layer& layer = model.layers[l];
      double* next = (l + 1 < num_layers) ? inputs[l + 1].data() : output.data();
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                  static_cast<int>(layer.out), static_cast<int>(layer.in), 1.0, inputs[l].data(),
                  static_cast<int>(layer.in), layer.weight.data(), static_cast<int>(layer.in), 0.0,
                  next, static_cast<int>(layer.out));
      if (layer.has_bias()) {
        for (std::int64_t i = 0; i < m; ++i) {
          for (std::int64_t r = 0; r < layer.out; ++r) next[i * layer.out + r] += layer.bias[r];
        }
      }
    }
    double* delta = errors[num_layers - 1].data();
    for (std::int64_t i = 0; i < m; ++i) {
      const double* z = output.data() + i * k;
      for (std::int64_t c = 0; c < k; ++c) {
        if (!std::isfinite(z[c])) {
          throw InputError("sample " + std::to_string(first + i) +
                           " gives a non-finite model output; expected finite inputs and weights");
        }
      }
      if (loss == Loss::squared) {
        losses[i] = squared_error_row(z, y.data() + i * k, k, delta + i * k);
      } else {
        if (labels[i] < 0 || labels[i] >= k) {
          throw InputError("sample " + std::to_string(first + i) + " has label " +
                           std::to_string(labels[i]) + "; expected labels in [0, " +
                           std::to_string(k) + ")");
        }
        losses[i] = softmax_error_row(z, labels[i], k, delta + i * k);
      }
    }
    for (std::int64_t l = num_layers - 1; l > 0; --l) {
      const Layer& layer = model.layers[l];
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m),
                  static_cast<int>(layer.in), static_cast<int>(layer.out), 1.0, errors[l].data(),
                  static_cast<int>(layer.out), layer.weight.data(), static_cast<int>(layer.in), 0.0,
                  errors[l - 1].data(), static_cast<int>(layer.in));
    }
    view.first = first;
    view.rows = m;
    visit(view);
  }
}

}  // namespace gradnoise::detail
