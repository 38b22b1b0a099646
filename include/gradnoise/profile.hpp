// The exact gradient-noise profile (docs/MATH.md "Per-sample gradients",
// "Moments", "Minibatch variance for every batch size").
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gradnoise/data.hpp"
#include "gradnoise/model.hpp"

namespace gradnoise {

enum class Device { automatic, cpu, cuda };

/// The precision of a GPU session's resident copy of the inputs and real
/// targets: float32 (half the bytes, the default; every sum is still float64)
/// or float64 (the host's values exactly).
enum class GpuDtype { float32, float64 };

/// The names users write for them ("auto", "cpu", "cuda"; "float32",
/// "float64"), for the CLI and the Python module alike; nullopt for any other.
std::optional<Device> device_named(std::string_view name);
std::optional<GpuDtype> gpu_dtype_named(std::string_view name);

struct ProfileOptions {
  Loss loss = Loss::squared;
  Device device = Device::automatic;
  /// Rows per chunk of the single streaming pass; memory is O(chunk × widths + P).
  std::int64_t chunk_rows = 4096;
  /// Also compute param_var (costs three more products per layer and chunk).
  bool param_stats = false;
  /// CPU threads over chunks (0: one per hardware thread). The result depends
  /// on the chunk size and on this count (it fixes the merge order), so a
  /// caller that needs the same bits on every machine fixes both.
  int threads = 0;
  /// GPU only: profile linear models with K ≤ 16 by the fused one-read kernel
  /// (false forces the general GEMM pipeline, for comparisons).
  bool fused_linear = true;
};

/// The same statistics restricted to one layer's parameter slots.
struct LayerProfile {
  std::string name;
  std::int64_t num_params = 0;
  double grad_norm_sq = 0;              // ‖G_l‖²
  double trace_cov = 0;                 // tr Σ_l
  double mean_sample_grad_norm_sq = 0;  // (1/N) Σ_i ‖g_{l,i}‖²
  double noise_scale_simple = 0;        // tr Σ_l / ‖G_l‖² (inf when ‖G_l‖² = 0)
};

struct Profile {
  std::int64_t n = 0;
  std::int64_t num_params = 0;
  double loss = 0;                      // L(θ) = mean ℓ_i
  double loss_var = 0;                  // Var_i(ℓ_i), population
  double grad_norm_sq = 0;              // ‖G‖²
  double trace_cov = 0;                 // tr Σ
  double mean_sample_grad_norm_sq = 0;  // (1/N) Σ_i ‖g_i‖²
  double noise_scale_simple = 0;        // tr Σ / ‖G‖² (inf when ‖G‖² = 0)
  std::vector<LayerProfile> layers;
  std::vector<double> param_mean;       // G, P entries, docs/MATH.md flattening
  std::vector<double> param_var;        // diag Σ, P entries; empty unless asked
  std::string device;                   // "cpu" or the GPU's name
  double elapsed_s = 0;
};

/// Profiles `model` on `data` in one streaming pass: a one-shot convenience
/// over gradnoise::Profiler (gradnoise/session.hpp), which keeps the data and
/// the device's state between calls. Throws InputError when the
/// data and the model do not fit together (D, K, labels, N < 2, non-finite
/// values), RuntimeError when the device cannot be used.
Profile profile(const Model& model, const DataSource& data, const ProfileOptions& options);

// ---- Every batch size at once -------------------------------------------

/// c(b) = (N − b) / (b (N − 1)): E‖g_B − G‖² = c(b) tr Σ for a uniform b-subset.
double without_replacement_factor(std::int64_t n, std::int64_t batch_size);

struct CurvePoint {
  std::int64_t batch_size = 0;
  double var_without_replacement = 0;       // c(b) tr Σ
  double var_with_replacement = 0;          // tr Σ / b
  double loss_var_without_replacement = 0;  // c(b) Var_i(ℓ_i)
  double loss_var_with_replacement = 0;     // Var_i(ℓ_i) / b
};

/// Batch sizes from "all" (1..N), "pow2" (1, 2, 4, ..., and N) or a
/// comma-separated list; throws InputError for a size outside 1..N.
std::vector<std::int64_t> parse_batch_sizes(const std::string& spec, std::int64_t n);

std::vector<CurvePoint> batch_size_curve(const Profile& profile,
                                         std::span<const std::int64_t> batch_sizes);

}  // namespace gradnoise
