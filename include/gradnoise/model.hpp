// Chains of affine layers with no nonlinearity (docs/MATH.md "Data and models"):
// a_0 = x, a_l = W_l a_{l-1} + b_l, f(x) = a_L. Parameters are flattened as
// W_1 row-major, b_1, W_2 row-major, b_2, ... (a missing bias takes no slot).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gradnoise/data.hpp"

namespace gradnoise {

struct Layer {
  std::int64_t out = 0;
  std::int64_t in = 0;
  std::vector<double> weight;  // out×in, row-major
  std::vector<double> bias;    // out, or empty when the layer has no bias

  bool has_bias() const { return !bias.empty(); }
  std::int64_t num_params() const { return out * in + (has_bias() ? out : 0); }
};

struct Model {
  std::vector<Layer> layers;  // input to output

  std::int64_t num_layers() const { return static_cast<std::int64_t>(layers.size()); }
  std::int64_t input_dim() const { return layers.empty() ? 0 : layers.front().in; }
  std::int64_t output_dim() const { return layers.empty() ? 0 : layers.back().out; }
  std::int64_t num_params() const;
  /// Offset of layer l's first slot in the flattened parameter vector.
  std::int64_t param_offset(std::int64_t layer) const;
  /// "layer1", "layer2", ... as used in reports.
  static std::string layer_name(std::int64_t layer);

  /// Throws InputError unless consecutive layers chain (in_l = out_{l-1}),
  /// sizes match and every weight is finite.
  void validate() const;

  /// Flattened parameters θ (docs/MATH.md order) and the inverse.
  std::vector<double> flatten() const;
  void unflatten(std::span<const double> theta);
};

enum class Init { zeros, gaussian, lstsq };

/// A model of the given layer widths: widths = {D, H1, ..., K}. `gaussian`
/// draws W_l ~ N(0, 1/in_l) from a counter-based generator (Philox), so a seed
/// gives the same weights on every platform; biases start at zero.
/// `lstsq` is defined for the linear model only (one layer) and needs data;
/// use fit_least_squares for it.
Model make_model(std::span<const std::int64_t> widths, bool bias, Init init, std::uint64_t seed);

/// The minimum-norm least-squares solution of the linear model on real
/// targets: argmin_W Σ_i ½‖W x_i + b − y_i‖² (bias when `bias`), so profiles
/// can be taken at the minimum. Throws InputError for label targets.
Model fit_least_squares(const DataSource& data, bool bias);

}  // namespace gradnoise
