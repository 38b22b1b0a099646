#include "chunk_pass.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "gradnoise/error.hpp"
#include "forward_pass.hpp"
#include "host_exec.hpp"
#include "losses.hpp"

namespace gradnoise::detail {

std::int64_t first_bad_target_column(Loss loss, const double* y, std::int64_t k) {
  return losses::visit_loss(loss, [&](auto l) {
    for (std::int64_t c = 0; c < k; ++c) {
      if (!decltype(l)::target_ok(y + c, 0, 1)) return c;
    }
    return std::int64_t{-1};
  });
}

InputError bad_target(Loss loss, std::int64_t row, const double* y, std::int32_t label,
                      std::int64_t k) {
  if (loss_targets(loss) == TargetKind::labels) {
    return InputError("sample " + std::to_string(row) + " has label " + std::to_string(label) +
                      " but the model has " + std::to_string(k) +
                      " outputs; expected labels in [0, " + std::to_string(k) + ")");
  }
  const std::int64_t c = std::max<std::int64_t>(first_bad_target_column(loss, y, k), 0);
  return InputError("sample " + std::to_string(row) + " has target " + std::to_string(y[c]) +
                    " in column " + std::to_string(c) + " but --loss " + loss_name(loss) +
                    " expects " + loss_expected_targets(loss));
}

ChunkForward::ChunkForward(const Model& model, Loss loss, std::int64_t chunk_rows)
    : model_(model), loss_(loss) {
  const std::int64_t chunk = std::max<std::int64_t>(1, chunk_rows);
  const std::int64_t k = model.output_dim();
  for (const Layer& layer : model.layers) {
    inputs_.emplace_back(static_cast<std::size_t>(chunk * layer.in));
    errors_.emplace_back(static_cast<std::size_t>(chunk * layer.out));
    view_.inputs.push_back(inputs_.back().data());
    view_.errors.push_back(errors_.back().data());
  }
  output_.resize(static_cast<std::size_t>(chunk * k));
  losses_.resize(static_cast<std::size_t>(chunk));
  if (loss_targets(loss) == TargetKind::real) {
    y_.resize(static_cast<std::size_t>(chunk * k));
  } else {
    labels_.resize(static_cast<std::size_t>(chunk));
  }
  view_.outputs = output_.data();
  view_.losses = losses_.data();
}

const ChunkView& ChunkForward::run(const DataSource& data, std::int64_t first, std::int64_t m) {
  const std::int64_t k = model_.output_dim();
  const std::int64_t num_layers = model_.num_layers();
  const double* in_place = data.inputs_in_place(first, m);
  data.read(first, m, in_place ? nullptr : inputs_[0].data(), y_.empty() ? nullptr : y_.data(),
            labels_.empty() ? nullptr : labels_.data());
  view_.inputs[0] = in_place ? in_place : inputs_[0].data();

  // core/forward_pass.hpp's sequence through row-major BLAS; the output
  // errors (and the checks of outputs and targets) between the passes.
  std::vector<ForwardLayerBuffers> buffers(static_cast<std::size_t>(num_layers));
  for (std::int64_t l = 0; l < num_layers; ++l) {
    const Layer& layer = model_.layers[l];
    buffers[l] = {layer.weight.data(), layer.has_bias() ? layer.bias.data() : nullptr,
                  view_.inputs[l], (l + 1 < num_layers) ? inputs_[l + 1].data() : output_.data(),
                  errors_[l].data()};
  }
  RowMajorBlasExec exec;
  forward_backward(exec, model_, buffers, m, [&] {
    // A non-finite output means a non-finite input or weight reached it.
    double* delta = errors_[num_layers - 1].data();
    losses::visit_loss(loss_, [&](auto loss) {
      using L = decltype(loss);
      for (std::int64_t i = 0; i < m; ++i) {
        const double* z = output_.data() + i * k;
        for (std::int64_t c = 0; c < k; ++c) {
          if (!std::isfinite(z[c])) {
            throw InputError("sample " + std::to_string(first + i) +
                             " gives a non-finite model output; expected finite inputs and weights");
          }
        }
        const double* y = y_.empty() ? nullptr : y_.data() + i * k;
        const std::int32_t label = labels_.empty() ? 0 : labels_[i];
        if (!L::target_ok(y, label, k)) throw bad_target(loss_, first + i, y, label, k);
        losses_[i] = L::error_row(z, y, label, k, delta + i * k);
      }
    });
  });
  view_.first = first;
  view_.rows = m;
  return view_;
}

void for_each_chunk(const Model& model, const DataSource& data, Loss loss, std::int64_t chunk_rows,
                    const std::function<void(const ChunkView&)>& visit) {
  const std::int64_t n = data.num_samples();
  const std::int64_t chunk = std::max<std::int64_t>(1, std::min(chunk_rows, n));
  ChunkForward pass(model, loss, chunk);
  for (std::int64_t first = 0; first < n; first += chunk) {
    visit(pass.run(data, first, std::min(chunk, n - first)));
  }
}

}  // namespace gradnoise::detail
